"""The self-rewarding judge (Yuan et al. 2024): score parsing, averaging, the digits mode against a
hand computation, unscored samples and ties in pair selection, the agreement report, config errors,
and a resumed sample stage that judges nothing twice."""

import json
import math

import pytest
import torch
from test_models_tiny import make_tokenizer, save_tiny_lm

from alignlab.config import ModelSettings, SelfRewardSettings
from alignlab.data.records import Message
from alignlab.eval.agreement import judge_agreement, pair_agreement
from alignlab.feedback import self_reward
from alignlab.feedback.self_reward import SelfRewardScorer, mean_of_parsed, parse_score
from alignlab.generation.base import Sample
from alignlab.runs import RunFolder
from alignlab.stages import build_stage_config, run_stage

PROMPT = (Message("user", "hi"),)


@pytest.mark.parametrize("text, expected", [
    ("Score: 4", 4.0), ("It is fine.\nscore: 3/5", 3.0), ("Score: 4.0", 4.0),
    ("Score: 1 at first... on reflection Score: 2", 2.0), ("**Score:** 5", 5.0),
    ("SCORE = 0", 0.0), ("no number here", None), ("Score: 7", None), ("Score: 3/10", None),
    ("Score: five", None)])
def test_parse_score_reads_the_last_score_in_range(text, expected):
    assert parse_score(text) == expected


def test_mean_of_parsed_leaves_failures_out():
    assert mean_of_parsed([4.0, None, 1.0]) == 2.5
    assert mean_of_parsed([None, None]) is None


class CannedGenerator:
    """Returns fixed judgement texts, ``num_samples`` per prompt, in order."""

    def __init__(self, texts):
        self.texts = iter(texts)

    def generate(self, prompts, settings):
        return [[Sample(next(self.texts), []) for _ in range(settings.num_samples)] for _ in prompts]


def test_parse_mode_averages_parsed_judgements_and_marks_unparsed(monkeypatch):
    texts = ["Score: 4", "bad", "Score: 2", "nothing", "at all", "Score: 9"]
    monkeypatch.setattr("alignlab.generation.factory.make_generator",
                        lambda *a, **k: CannedGenerator(texts))
    model, tokenizer = _tiny(None)
    scorer = SelfRewardScorer(model, tokenizer, SelfRewardSettings(judgements=3))
    scores = scorer.score([PROMPT, PROMPT], ["a", "b"])
    assert scores[0] == 3.0 and math.isnan(scores[1])
    assert scorer.last_details == [{"judgements": [4.0, None, 2.0]},
                                   {"judgements": [None, None, None]}]
    monkeypatch.setattr("alignlab.generation.factory.make_generator",
                        lambda *a, **k: CannedGenerator(texts))
    scorer.settings = SelfRewardSettings(judgements=3, fallback=0.0)
    assert scorer.score([PROMPT, PROMPT], ["a", "b"]) == [3.0, 0.0]


_MODELS = {}


def _tiny(tmp_path):
    if "lm" not in _MODELS:
        import tempfile
        from pathlib import Path

        from alignlab.models.loading import load_causal_lm

        folder = save_tiny_lm(Path(tempfile.mkdtemp()) / "lm", seed=3)
        _MODELS["lm"] = load_causal_lm(ModelSettings(path=str(folder)), for_training=False)
    return _MODELS["lm"]


def test_digits_mode_is_the_expected_score_of_the_next_token_digits():
    """By hand: one forward over the judge prompt + the template's ``Score:`` + the space the digit
    options share; softmax over the vocabulary, the six digits renormalised, sum_n p_n n."""
    from alignlab.data.tokenize import prompt_ids

    model, tokenizer = _tiny(None)
    template = "Q: {prompt} A: {response} Rate 0-5."
    scorer = SelfRewardScorer(model, tokenizer, SelfRewardSettings(mode="digits", judgements=1),
                              template)
    got = scorer.score([PROMPT, PROMPT], ["yes", "no way"])
    for response, value in zip(["yes", "no way"], got):
        text = self_reward.judge_text(tokenizer, template, PROMPT, response) + "Score:"
        assert self_reward.score_prefix(tokenizer) == "Score:"
        with torch.no_grad():
            logits = model(torch.tensor([prompt_ids(tokenizer, text + " ")])).logits[0, -1]
        probs = torch.softmax(logits.double(), -1)
        digits = probs[[tokenizer.convert_tokens_to_ids(str(n)) for n in range(6)]]
        expected = float((digits * torch.arange(6)).sum() / digits.sum())
        assert value == pytest.approx(expected, abs=1e-5)
    assert got[0] != pytest.approx(got[1], abs=1e-6)
    assert len(scorer.last_details[0]["digit_probs"]) == 6


def test_agreement_on_a_hand_made_example():
    counts = pair_agreement([1.0, 2.0, 3.0], [0.1, 0.3, 0.2])
    assert (counts.compared, counts.agree, counts.judge_ties) == (3, 2, 0)
    report = judge_agreement([([1.0, 2.0, 3.0], [0.1, 0.3, 0.2]),
                              ([5.0, 5.0, None], [0.0, 1.0, 2.0]),  # one judge tie, one unscored
                              ([1.0, 2.0], [0.4, 0.4])])  # gold tie: not compared
    assert report["pairs_compared"] == 4 and report["judge_ties"] == 1
    assert report["pair_agreement"] == pytest.approx((2 + 0.5) / 4)
    assert report["strict_agreement"] == pytest.approx(2 / 3)
    only = judge_agreement([([1.0, 2.0, 3.0], [0.1, 0.3, 0.2])])
    # ranks (1, 2, 3) vs (1, 3, 2): Spearman 0.5; Pearson: sum dxdy 0.1 / sqrt(2 * 0.02) = 0.5
    assert only["spearman"] == pytest.approx(0.5) and only["pearson"] == pytest.approx(0.5)


def _sample_config(tmp_path, model, **scorer):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"say {w}"}) + "\n"
                               for w in ["a", "bb", "ccc", "dddd", "e", "ff"]))
    judge = {"kind": "self_reward", "template": "Q: {prompt} A: {response} Score",
             "self_reward": {"mode": "parse", "judgements": 2, "max_new_tokens": 6}, **scorer}
    raw = {"stage": "sample", "out": str(tmp_path / "run"), "policy": {"path": str(model)},
           "prompts": {"path": str(prompts)},
           "generation": {"num_samples": 3, "max_new_tokens": 8, "temperature": 1.0, "seed": 0},
           "scorers": [judge], "flush_every": 2, "pairs": True,
           "monitors": [{"kind": "function", "function": "test_sampling_stage:length_score",
                         "name": "length"}]}
    return build_stage_config(raw, source="test")


def test_ties_and_unscored_samples_are_kept_out_of_pairs(tmp_path):
    from alignlab.sampling.stage import write_outputs

    cfg = _sample_config(tmp_path, tmp_path / "unused")

    def row(i, scores, judged):
        return {"index": i, "prompt": [{"role": "user", "content": f"q{i}"}],
                "samples": [{"text": f" t{j}", "score": s, "monitor": {"gold": float(j)},
                             "details": {"self_reward": {"judgements": judged}}}
                            for j, s in enumerate(scores)]}

    rows = [row(0, [2.0, 2.0, 2.0], [2.0, 2.0]),  # tie: no pair
            row(1, [None, 1.0, 3.0], [None, 1.0]),  # the unscored sample is never chosen
            row(2, [None, None, 1.0], [None, None]),  # one scored sample: best-of-N, no pair
            row(3, [None, None, None], [None, None])]  # nothing scored
    summary = write_outputs(cfg, RunFolder(tmp_path / "out"), rows)
    pairs = [json.loads(line) for line in (tmp_path / "out" / "pairs.jsonl").read_text().splitlines()]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("t2", "t1")]
    assert summary["pairs_skipped_all_equal"] == 1 and summary["samples_unscored"] == 6
    assert summary["prompts_unscored"] == 1 and summary["prompts"] == 4
    assert summary["self_reward_judgements"] == 24 and summary["self_reward_unparsed"] == 15
    report = json.loads((tmp_path / "out" / "judge_agreement.json").read_text())["gold"]
    # compared pairs: row 0's three (all judge ties) and row 1's (1, 2) which agrees
    assert report["pairs_compared"] == 4 and report["judge_ties"] == 3
    assert report["selected_pairs"] == 1 and report["selected_pair_agreement"] == 1.0
    assert summary["gold_pair_agreement"] == pytest.approx((1 + 1.5) / 4)


@pytest.mark.parametrize("settings, message", [
    ({"mode": "vote"}, "mode"), ({"judgements": 0}, "judgements"),
    ({"mode": "digits", "judgements": 3}, "judgements: 1")])
def test_bad_self_reward_settings_fail_when_the_config_is_read(tmp_path, settings, message):
    with pytest.raises(Exception, match=message):
        _sample_config(tmp_path, tmp_path / "m", self_reward=settings)


def test_self_reward_settings_and_template_are_checked(tmp_path):
    with pytest.raises(Exception, match="belong to kind 'self_reward'"):
        _sample_config(tmp_path, tmp_path / "m", kind="gym_gold", gym="g")
    with pytest.raises(Exception, match="prompt.*response"):
        _sample_config(tmp_path, tmp_path / "m", template="no slots")


def test_a_resumed_sample_stage_judges_only_the_unfinished_prompts(tmp_path, monkeypatch):
    """parse mode end to end on a tiny model (its judgements made parseable for some lengths), killed
    after 4 of 6 prompts: the rerun judges the last 2 prompts' 3 samples only, and the summary's
    parse counts are the same as the uninterrupted run's (the details live in samples.jsonl)."""
    monkeypatch.setattr(self_reward, "parse_score",
                        lambda text: None if len(text) % 3 == 0 else float(len(text) % 6))
    model = save_tiny_lm(tmp_path / "lm")
    run_stage(_sample_config(tmp_path, model))
    out = tmp_path / "run"
    first = json.loads((out / "summary.json").read_text())
    assert first["self_reward_judgements"] == 36 and 0 < first["self_reward_unparsed"] < 36
    assert (out / "judge_agreement.json").exists()
    lines = (out / "samples.jsonl").read_text().splitlines(keepends=True)
    (out / "samples.jsonl").write_text("".join(lines[:4]) + lines[4][:20])
    (out / "DONE").unlink()
    judged, real = [], SelfRewardScorer.score

    def counting(self, prompts, completions):
        judged.append(len(completions))
        return real(self, prompts, completions)

    monkeypatch.setattr(SelfRewardScorer, "score", counting)
    run_stage(_sample_config(tmp_path, model))
    assert judged == [6]
    again = json.loads((out / "summary.json").read_text())
    assert [again[k] for k in ("self_reward_judgements", "self_reward_unparsed")] == \
        [first["self_reward_judgements"], first["self_reward_unparsed"]]
    assert (out / "samples.jsonl").read_text().splitlines()[:4] == [x.rstrip("\n") for x in lines[:4]]


# ----------------------------------------------------------------------------- EFT seed data

def test_quantile_scores_by_hand():
    """Six distinct ratings in six bins: each gets its rank as its score; ties share the lower bin;
    with fewer bins the ranks are grouped evenly."""
    ratings = [0.1, 0.5, 0.2, 0.9, 0.4, 0.7]
    assert self_reward.quantile_scores(ratings, 6) == [0, 3, 1, 5, 2, 4]
    assert self_reward.quantile_scores(ratings, 3) == [0, 1, 0, 2, 1, 2]
    assert self_reward.quantile_scores([1.0, 1.0, 2.0, 3.0], 2) == [0, 0, 1, 1]
    assert self_reward.quantile_scores([5.0, 5.0, 5.0]) == [0, 0, 0]
    with pytest.raises(ValueError):
        self_reward.quantile_scores(ratings, 0)


def test_eft_conversations_are_the_judge_prompt_and_a_score_line():
    from alignlab.data.rated import RatedResponse

    template = "R: {prompt} | A: {response} | end"
    multi = (Message("user", "hi"), Message("assistant", "hello"), Message("user", "2+2?"))
    rated = [RatedResponse((Message("user", "q1"),), " answer one ", 0.3),
             RatedResponse(multi, "4", 2.0), RatedResponse((Message("user", "q3"),), "x", -1.0)]
    convs = self_reward.eft_conversations(rated, template, bins=3)
    assert [[(m.role, m.content) for m in c.messages] for c in convs] == [
        [("user", "R: q1 | A: answer one | end"), ("assistant", "Score: 1")],
        [("user", "R: user: hi\nassistant: hello\nuser: 2+2? | A: 4 | end"),
         ("assistant", "Score: 2")],
        [("user", "R: q3 | A: x | end"), ("assistant", "Score: 0")]]
    assert parse_score(convs[1].messages[-1].content) == 2.0  # what parse mode reads back
    # the user turn is exactly what the judge is asked at sampling time
    tokenizer = make_tokenizer()
    assert self_reward.judge_text(tokenizer, template, multi, "4") == \
        "<user>" + convs[1].messages[0].content + "\n<assistant>"


def test_eft_target_survives_truncation_only_when_it_fits():
    """Character tokenizer: bos + judge prompt + ``Score: 4`` target (+ its newline and eos); the
    target is whole at exactly its length, loses its eos one token shorter, and a short prompt
    budget cuts the rubric's start but never the target."""
    from alignlab.data.rated import RatedResponse
    from alignlab.data.tokenize import encode_conversation

    tokenizer = make_tokenizer()
    (conv,) = self_reward.eft_conversations(
        [RatedResponse((Message("user", "2+2?"),), "4", 1.0)], "Q: {prompt} A: {response}", bins=5)
    assert conv.messages[-1].content == "Score: 0"
    fit = self_reward.eft_fit(tokenizer, conv, 256, 256)
    prompt_len = 1 + len("<user>Q: 2+2? A: 4\n<assistant>")
    assert fit == {"tokens": prompt_len + len("Score: 0\n") + 1, "target_cut": False,
                   "prompt_cut": False}
    n = fit["tokens"]
    assert self_reward.eft_fit(tokenizer, conv, n, n)["target_cut"] is False
    assert self_reward.eft_fit(tokenizer, conv, n - 1, n)["target_cut"] is True
    cut_prompt = self_reward.eft_fit(tokenizer, conv, n, 10)
    assert cut_prompt["prompt_cut"] is True and cut_prompt["target_cut"] is False
    kept = encode_conversation(tokenizer, conv, n, n)
    target = [t for t, m in zip(kept.input_ids, kept.loss_mask) if m]
    assert tokenizer.decode(target[:8]) == "Score: 0" and target[-1] == tokenizer.eos_token_id
    assert len(target) == len("Score: 0\n") + 1  # the char tokenizer maps the newline to <unk>
