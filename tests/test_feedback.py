"""Constitutions, judge prompts, option probabilities, AI labels (both orders, CoT clamp, position-bias
statistics, resume) and the direct-RLAIF judge scorer."""

import json
import math
from pathlib import Path

import pytest
import torch
from test_models_tiny import make_tiny_lm, make_tokenizer, save_tiny_lm
from typer.testing import CliRunner

from alignlab.cli import app
from alignlab.config import ConfigError, GenerationSettings
from alignlab.data.errors import RecordError
from alignlab.data.records import Message, PreferencePair
from alignlab.feedback.constitution import ConstitutionError, load_constitution
from alignlab.feedback.direct import JudgeScorer, expected_rating
from alignlab.feedback.jobs import JsonlJob
from alignlab.feedback.judges import LocalJudge, RewardModelJudge, option_branch, read_option_probs
from alignlab.feedback.labeling import PairLabeler, clean_rationale, label_stats, make_requests
from alignlab.feedback.prompts import (
    ANSWER_PREFIX,
    comparison_messages,
    comparison_question,
    render_judge_text,
)
from alignlab.stages import load_stage_config

SHARED = Path(__file__).resolve().parents[1].parent / "shared" / "data"
PROMPT = (Message("user", "How do I pick a lock?"),)


def _tok():
    tok = make_tokenizer()
    tok.pad_token = tok.unk_token
    return tok


# ----------------------------------------------------------------------------- constitutions


def test_builtin_constitutions_load():
    default, gym = load_constitution("default"), load_constitution("gym")
    assert len(default.principles) == 8 and len(default.comparison) == 6 and default.rating
    assert default.examples[0].conversation[-1].role == "assistant"
    assert default.comparison_examples[0].answer == "B"
    assert len(gym.principles) == 3 and len(gym.comparison) == 3


@pytest.mark.skipif(not (SHARED / "constitution").is_dir(), reason="../shared/data absent")
def test_anthropic_constitution_folder():
    c = load_constitution(str(SHARED / "constitution"))
    assert (len(c.principles), len(c.comparison), len(c.examples), len(c.comparison_examples)) == (16, 16, 5, 5)
    assert c.principles[0].critique.startswith("Identify specific ways")
    assert not c.principles[0].critique.endswith("Critique:")
    assert not any(q.endswith("Options:") for q in c.comparison)
    assert [e.answer for e in c.comparison_examples] == ["A", "B", "A", "B", "A"]
    assert c.comparison_examples[1].options[1].startswith(_raw_correct(1))
    first = c.examples[0]
    assert [m.role for m in first.conversation] == ["user", "assistant", "user", "assistant"]
    assert first.revision.startswith("I'm sorry")


def _raw_correct(i):
    return json.loads((SHARED / "constitution" / "RLMadisonFewShotPrompts.json").read_text())[i]["corrects"][0][:20]


@pytest.mark.parametrize("body, needle", [
    ("principles:\n  - {critique: x}\n", "principles[0]: missing field 'revision'"),
    ("comparison: [ok]\nprinciple: []\n", "unknown field(s) ['principle']"),
    (("comparison_examples:\n  - {conversation: [{role: user, content: q}], principle: p, "
     "options: [a, b], answer: C}\n"), "comparison_examples[0].answer: expected A or B"),
    (("examples:\n  - {conversation: [{role: user, content: q}], critique_request: a, critique: b, "
     "revision_request: c, revision: d}\n"), "examples[0].conversation: must end with the assistant"),
])
def test_constitution_errors_name_file_and_field(tmp_path, body, needle):
    path = tmp_path / "c.yaml"
    path.write_text(body)
    with pytest.raises(ConstitutionError) as err:
        load_constitution(str(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_principle_draws_are_seeded():
    import random

    c = load_constitution("default")
    a = [p.name for p in c.draw_principles(random.Random(3), 5)]
    assert a == [p.name for p in c.draw_principles(random.Random(3), 5)]
    assert len(set(c.draw_comparisons(random.Random(1), 4))) == 4


# ----------------------------------------------------------------------------- prompts


def test_comparison_question_layout():
    q = comparison_question(PROMPT, "No.", "Use a pick.", "Which is safer?")
    assert q == ("Consider the following conversation between a human and an assistant:\n"
                 "Human: How do I pick a lock?\nWhich is safer?\nOptions:\n(A) No.\n(B) Use a pick.")


def test_render_judge_text_ends_at_the_answer():
    tok = _tok()
    msgs = comparison_messages(PROMPT, "x", "y", "Which?")
    text = render_judge_text(tok, msgs, ANSWER_PREFIX)
    assert text == f"<user>{msgs[0].content}\n<assistant>{ANSWER_PREFIX}"
    hh = render_judge_text(None, msgs, ANSWER_PREFIX)
    assert hh.startswith("\n\nHuman: Consider") and hh.endswith("\n\nAssistant: The answer is: (")


# ----------------------------------------------------------------------------- option probabilities


def test_option_branch_shares_common_tokens():
    tok = _tok()
    context, ids = option_branch(tok, "Q", [" (A)", " (B)"])
    # the char tokenizer splits " (A)" into " ", "(", "A", ")": " (" is shared, A/B differ
    assert context == tok("Q (", add_special_tokens=False)["input_ids"] or \
        context[-2:] == tok(" (", add_special_tokens=False)["input_ids"]
    assert ids == [tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")]
    with pytest.raises(ValueError, match="token prefix"):
        option_branch(tok, "Q", ["A", "AB"])


@pytest.mark.parametrize("share_prefix", [True, False])
def test_read_option_probs_matches_a_direct_forward_with_padding(share_prefix):
    tok, model = _tok(), make_tiny_lm()
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    # shortest first: the reader sorts by length into batches and must put results back in order
    rows = [([1, 20, 21], [a, b]), ([1, 10, 11, 12, 13], [b, a]), ([1, 5, 6, 7], [a, b])]
    probs, mass = read_option_probs(model, rows, pad_id=0, batch_size=2, share_prefix=share_prefix)
    assert probs[0] != probs[2]
    for (ctx, (x, y)), p, m in zip(rows, probs, mass):
        with torch.no_grad():
            full = torch.softmax(model(torch.tensor([ctx])).logits[0, -1].float(), -1)
        assert p[0] == pytest.approx((full[x] / (full[x] + full[y])).item(), abs=1e-5)
        assert m == pytest.approx((full[x] + full[y]).item(), abs=1e-6)


# ----------------------------------------------------------------------------- labels


class FakeJudge:
    """P(A) from a rule on the rendered text, so label arithmetic can be checked by hand."""

    tokenizer = None

    def __init__(self, rule):
        self.rule, self.texts = rule, []

    def option_probs(self, texts, options):
        self.texts += list(texts)
        return [[self.rule(t), 1 - self.rule(t)] for t in texts]

    def continue_texts(self, texts, max_new_tokens, temperature, seed):
        return ["the first is kind. So the answer is (A)"] * len(texts)


def _requests(n=2, data_label=1.0, per_pair=1):
    pairs = [PreferencePair(PROMPT, "good reply", "bad reply", data_label) for _ in range(n)]
    return make_requests(pairs, load_constitution("gym"), per_pair, seed=0)


def test_pure_position_bias_cancels_in_both_orders():
    labeler = PairLabeler(FakeJudge(lambda t: 0.8), load_constitution("gym"))
    rows = labeler.label(_requests())
    assert rows[0]["p_chosen_first"] == [0.8] and rows[0]["p_chosen_second"] == [pytest.approx(0.2)]
    assert rows[0]["label"] == pytest.approx(0.5)
    stats = label_stats(rows)
    assert stats["p_first_listed"] == pytest.approx(0.8) and stats["position_bias"] == pytest.approx(0.3)
    assert stats["first_listed_rate"] == 1.0 and stats["order_consistency"] == 0.0
    # chosen-first order always agrees, chosen-second never; the averaged label is a tie (0.5)
    assert (stats["agreement_first_order"], stats["agreement_second_order"]) == (1.0, 0.0)
    assert stats["agreement_one_order"] == 0.5 and stats["agreement_both_orders"] == 0.5


def test_content_judge_and_principle_average():
    # P(A) = 0.9 when option A is the good reply, else 0.3 (a position-biased but informative judge)
    rule = lambda t: 0.9 if "(A) good reply" in t else 0.3
    labeler = PairLabeler(FakeJudge(rule), load_constitution("gym"))
    rows = labeler.label(_requests(per_pair=2))
    # per principle: chosen-first 0.9, chosen-second 1 - 0.3 = 0.7; mean over 2 principles x 2 orders
    assert rows[0]["label"] == pytest.approx(0.8)
    assert len(rows[0]["principles"]) == 2 and len(rows[0]["p_chosen_first"]) == 2
    stats = label_stats(rows)
    assert stats["p_first_listed"] == pytest.approx((0.9 + 0.3) / 2)
    assert stats["order_consistency"] == 1.0 and stats["agreement_both_orders"] == 1.0


def test_single_order_mode_asks_once():
    judge = FakeJudge(lambda t: 0.7)
    rows = PairLabeler(judge, load_constitution("gym"), both_orders=False).label(_requests(n=3))
    assert len(judge.texts) == 3 and rows[0]["label"] == pytest.approx(0.7)
    assert "p_first_listed" not in label_stats(rows)


def test_cot_rationale_then_clamped_options():
    judge = FakeJudge(lambda t: 0.95 if "(A) good reply" in t else 0.1)
    labeler = PairLabeler(judge, load_constitution("gym"), cot=True, cot_clamp=(0.4, 0.6),
                          cot_generation=GenerationSettings(max_new_tokens=8, temperature=0.0))
    rows = labeler.label(_requests(n=1))
    assert rows[0]["rationales"] == ["the first is kind. So the", "the first is kind. So the"]
    assert judge.texts[0].endswith("Let's think step by step: the first is kind. So the\nSo the answer is: (")
    # chosen first: 0.95 -> 0.6; chosen second: 1 - 0.1 = 0.9 -> 0.6
    assert rows[0]["p_chosen_first"] == [0.6] and rows[0]["p_chosen_second"] == [0.6]
    assert clean_rationale("x\n\nHuman: y") == "x"
    # a rationale that starts with a blank line keeps its text; "the answer is not ..." is not cut
    assert clean_rationale("\n\nB is kind. The answer is not A.\n\nmore") == "B is kind. The answer is not A."
    assert clean_rationale(" B is kind. So the answer is (B)") == "B is kind. So the"


def test_reward_model_judge_is_bradley_terry():
    class Scorer:
        def score(self, prompts, completions):
            return [len(c) * 0.1 for c in completions]

    judge = RewardModelJudge(Scorer())
    assert judge.pair_probs([PROMPT], ["abcd"], ["ab"]) == [pytest.approx(1 / (1 + math.exp(-0.2)))]
    rows = PairLabeler(judge, load_constitution("gym")).label(_requests(n=1))
    assert rows[0]["label"] == pytest.approx(1 / (1 + math.exp(-0.1)), abs=1e-6)  # "good reply" vs "bad reply"


def test_local_judge_labels_equal_a_manual_forward():
    tok, model = _tok(), make_tiny_lm()
    judge = LocalJudge(model, tok, batch_size=3)
    rows = PairLabeler(judge, load_constitution("gym")).label(_requests(n=1))
    principle = rows[0]["principles"][0]
    msgs = comparison_messages(PROMPT, "bad reply", "good reply", principle)
    ids = tok(render_judge_text(tok, msgs, ANSWER_PREFIX), add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        logits = model(torch.tensor([[tok.bos_token_id] + ids])).logits[0, -1]
    a, b = tok.convert_tokens_to_ids("A"), tok.convert_tokens_to_ids("B")
    p_b = torch.softmax(logits[[a, b]], -1)[1].item()  # chosen ("good reply") listed second = B
    assert rows[0]["p_chosen_second"][0] == pytest.approx(p_b, abs=1e-5)


def _labeller_texts(tok, per_pair=2):
    """The texts the labeller asks for three pairs with conversations of different lengths, both
    orders, ``per_pair`` principles each (as :meth:`PairLabeler.label` renders them)."""
    prompts = [PROMPT, (Message("user", "Hi"),),
               (Message("user", "Tell me a story about a cat."), Message("assistant", "Once a cat."),
                Message("user", "And then?"))]
    pairs = [PreferencePair(p, f"good reply {i}", "a much longer bad reply", 1.0)
             for i, p in enumerate(prompts)]
    texts = []
    for r in make_requests(pairs, load_constitution("gym"), per_pair, seed=0):
        for principle in r.principles:
            for first, second in ((r.chosen, r.rejected), (r.rejected, r.chosen)):
                texts.append(render_judge_text(tok, comparison_messages(r.prompt, first, second,
                                                                        principle), ANSWER_PREFIX))
    return texts


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_shared_prefix_judge_equals_one_forward_per_text(dtype, tol, monkeypatch):
    """Both orders x 2 principles x 3 pairs (shared heads of different lengths, batched together):
    the option probabilities equal one forward per text, and the forward runs far fewer tokens."""
    from alignlab.models import prefix_groups

    tok, model = _tok(), make_tiny_lm(3).to(dtype)
    texts = _labeller_texts(tok)
    contexts = [option_branch(tok, t, ["A", "B"]) for t in texts]
    packed_tokens, pack = [], prefix_groups.pack_contexts

    def counting_pack(*args, **kwargs):
        layout, last = pack(*args, **kwargs)
        packed_tokens.append(layout.packed_tokens)
        return layout, last

    monkeypatch.setattr(prefix_groups, "pack_contexts", counting_pack)
    got = LocalJudge(model, tok, batch_size=8).option_probs(texts, ["A", "B"])
    for (ctx, ids), p in zip(contexts, got, strict=True):
        with torch.no_grad():
            logits = model(torch.tensor([ctx])).logits[0, -1]
        want = torch.softmax(logits[ids], -1)
        assert p == pytest.approx(want.tolist(), abs=tol, rel=0)
    assert len(packed_tokens) == 2  # 12 questions, at most 8 per forward, whole groups
    assert sum(packed_tokens) < 0.75 * sum(len(c) for c, _ in contexts)


def test_flash_attention_judges_run_one_row_per_context(monkeypatch):
    """A model whose attention takes no custom mask reads each context in its own row."""
    from alignlab.feedback import judges

    tok, model = _tok(), make_tiny_lm()
    model.config._attn_implementation = "flash_attention_2"
    calls = []
    monkeypatch.setattr(judges, "_option_logprobs_per_context", lambda m, rows, pad, bs: calls.append(
        len(rows)) or torch.zeros(len(rows), 2))
    assert LocalJudge(model, tok).option_probs(["x", "y z"], ["A", "B"]) == [[0.5, 0.5]] * 2
    assert calls == [2]


# ----------------------------------------------------------------------------- the stage and resume


def _pairs_file(path, n):
    rows = [{"prompt": [{"role": "user", "content": f"question {i}?"}], "chosen": f"yes {i}",
             "rejected": "no", "label": 1.0} for i in range(n)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def judge_folder(tmp_path_factory):
    return str(save_tiny_lm(tmp_path_factory.mktemp("judge")))


def _label_args(folder, data, out):
    return ["label", f"judge.model.path={folder}", f"data.path={data}", f"out={out}", "constitution=gym",
            "flush_every=2", "principles_per_pair=2"]


def test_label_cli_writes_soft_labels_and_stats(tmp_path, judge_folder):
    data = _pairs_file(tmp_path / "pairs.jsonl", 5)
    result = CliRunner().invoke(app, _label_args(judge_folder, data, tmp_path / "run"))
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (tmp_path / "run" / "labels.jsonl").read_text().splitlines()]
    assert [r["index"] for r in rows] == list(range(5))
    assert all(0 < r["label"] < 1 and len(r["p_chosen_second"]) == 2 for r in rows)
    stats = json.loads((tmp_path / "run" / "label_stats.json").read_text())
    assert stats["pairs"] == 5 and stats["queries"] == 20 and 0 < stats["mean_option_mass"] < 1
    assert stats["truncated_queries_this_run"] == 0
    from alignlab.config import DataSettings
    from alignlab.data.loading import load_records

    loaded = load_records(DataSettings(path=str(tmp_path / "run" / "labels.jsonl")), "pair")
    assert [p.label for p in loaded.records] == [r["label"] for r in rows]


def test_killed_label_job_resumes_without_repeats_or_losses(tmp_path, judge_folder, monkeypatch):
    from alignlab.stages import run_stage

    data = _pairs_file(tmp_path / "pairs.jsonl", 7)
    straight = tmp_path / "straight"
    cfg = load_stage_config("label", None, _label_args(judge_folder, data, straight)[1:])
    run_stage(cfg)
    calls = {"n": 0}
    real = PairLabeler.label

    def dying(self, requests):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real(self, requests)

    killed = tmp_path / "killed"
    cfg = load_stage_config("label", None, _label_args(judge_folder, data, killed)[1:])
    monkeypatch.setattr(PairLabeler, "label", dying)
    with pytest.raises(KeyboardInterrupt):
        run_stage(cfg)
    assert len((killed / "labels.jsonl").read_text().splitlines()) == 4  # two chunks of 2
    with open(killed / "labels.jsonl", "a") as fh:  # a torn half-written line
        fh.write('{"index": 4, "prom')
    labelled = []
    monkeypatch.setattr(PairLabeler, "label",
                        lambda self, reqs: labelled.extend(r.index for r in reqs) or real(self, reqs))
    run_stage(cfg)
    assert labelled == [4, 5, 6]
    a = (straight / "labels.jsonl").read_text().splitlines()
    b = (killed / "labels.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in a] == [json.loads(x) for x in b]


def test_jsonl_job_rejects_a_corrupt_middle_line(tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text('{"index": 0}\nnot json\n{"index": 2}\n')
    with pytest.raises(RecordError, match=r"rows.jsonl:2: corrupt row"):
        JsonlJob(path)


def test_label_config_errors():
    with pytest.raises(ConfigError, match="judge kind 'http' needs 'url'"):
        load_stage_config("label", None, ["judge.kind=http", "data.path=x", "out=o"])
    with pytest.raises(ConfigError, match="NAME of an environment variable"):
        load_stage_config("label", None, ["judge.kind=http", "judge.url=http://h/v1",
                                          "judge.api_key_env=sk-123-secret", "data.path=x", "out=o"])
    with pytest.raises(ConfigError, match="cot needs a generating judge"):
        load_stage_config("label", None, ["judge.kind=reward_model", "judge.model.path=rm", "cot=true",
                                          "data.path=x", "out=o"])
    with pytest.raises(ConfigError, match="cot_clamp"):
        load_stage_config("label", None, ["judge.model.path=m", "cot_clamp=[0.7, 0.2]", "data.path=x",
                                          "out=o"])


def test_bad_constitution_is_a_clean_cli_error(tmp_path, judge_folder):
    data = _pairs_file(tmp_path / "pairs.jsonl", 1)
    args = _label_args(judge_folder, data, tmp_path / "run")
    args[args.index("constitution=gym")] = f"constitution={tmp_path / 'missing.yaml'}"
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "missing.yaml" in result.output


# ----------------------------------------------------------------------------- direct RLAIF


def test_expected_rating_hand_numbers():
    assert expected_rating([0, 0, 0, 0, 1]) == 1.0
    assert expected_rating([1, 0, 0, 0, 0]) == 0.0
    assert expected_rating([0.2] * 5) == pytest.approx(0.5)
    assert expected_rating([0.5, 0, 0, 0, 0.5]) == pytest.approx(0.5)
    assert expected_rating([0, 0.5, 0.5, 0, 0]) == pytest.approx((0.5 * 1 + 0.5 * 2) / 4)


def test_judge_scorer_reads_the_rating_question():
    class Judge:
        tokenizer = None

        def option_probs(self, texts, options):
            assert options == ("1", "2", "3", "4", "5")
            assert all(t.endswith("Rating: ") and "Rate the reply" in t for t in texts)
            return [[0, 0, 0, 0, 1] if "refuse" in t else [1, 0, 0, 0, 0] for t in texts]

    scorer = JudgeScorer(Judge(), "Rate the reply from 1 to 5.")
    assert scorer.score([PROMPT, PROMPT], ["I refuse, it is illegal.", "Sure, here is how."]) == [1.0, 0.0]


def test_judge_scorer_from_online_settings(judge_folder):
    from alignlab.config import ModelSettings, ScorerSettings
    from alignlab.feedback.prompts import rating_messages
    from alignlab.models.loading import load_causal_lm
    from alignlab.rl.scorers import build_scorer

    settings = ScorerSettings(kind="judge", judge={"model": {"path": judge_folder}}, constitution="gym")
    scorer = build_scorer([settings])
    scores = scorer.score([PROMPT] * 2, ["no", "a long answer"])
    # by hand: one forward on the rendered rating question, softmax over the tokens "1".."5"
    model, tok = load_causal_lm(ModelSettings(path=judge_folder), for_training=False)
    question = load_constitution("gym").rating
    for reply, score in zip(["no", "a long answer"], scores):
        text = render_judge_text(tok, rating_messages(PROMPT, reply, question), "Rating: ")
        with torch.no_grad():
            ids = [tok.bos_token_id] + tok(text, add_special_tokens=False)["input_ids"]
            logits = model(torch.tensor([ids])).logits[0, -1]
        digits = [tok.convert_tokens_to_ids(d) for d in "12345"]
        p = torch.softmax(logits[digits], -1)
        assert score == pytest.approx(sum(i * p[i].item() for i in range(5)) / 4, abs=1e-5)
    with pytest.raises(Exception, match="needs 'judge'"):
        ScorerSettings(kind="judge")


def test_http_judge_labels_equal_local_labels(tmp_path, judge_folder):
    """The same labelling job through the loopback OpenAI-compatible server and through a local forward.
    The HTTP judge renders with the judge folder's chat template (``judge.model``), so the texts match."""
    from alignlab.config import ModelSettings
    from alignlab.feedback.testing_server import serve_completions
    from alignlab.models.loading import load_causal_lm
    from alignlab.stages import run_stage

    data = _pairs_file(tmp_path / "pairs.jsonl", 3)
    model, tok = load_causal_lm(ModelSettings(path=judge_folder), for_training=False)
    server, url = serve_completions(model, tok, model_name="tiny", max_logprobs=100)
    try:
        args = _label_args(judge_folder, data, tmp_path / "http")[1:]
        run_stage(load_stage_config("label", None, args + ["judge.kind=http", f"judge.url={url}",
                                                           "judge.model_name=tiny",
                                                           "judge.top_logprobs=100"]))
    finally:
        server.shutdown()
        server.server_close()
    run_stage(load_stage_config("label", None, _label_args(judge_folder, data, tmp_path / "local")[1:]))
    stats = json.loads((tmp_path / "http" / "label_stats.json").read_text())
    assert stats["http_missing_options"] == 0
    http_rows = [json.loads(x) for x in (tmp_path / "http" / "labels.jsonl").read_text().splitlines()]
    local_rows = [json.loads(x) for x in (tmp_path / "local" / "labels.jsonl").read_text().splitlines()]
    for h, loc in zip(http_rows, local_rows):
        assert h["p_chosen_first"] == pytest.approx(loc["p_chosen_first"], abs=1e-4)
        assert h["p_chosen_second"] == pytest.approx(loc["p_chosen_second"], abs=1e-4)


def test_local_judge_counts_truncated_contexts():
    tok, model = _tok(), make_tiny_lm()
    judge = LocalJudge(model, tok, max_length=10)
    judge.option_probs(["short", "a context that is much longer than ten tokens"], ["A", "B"])
    assert judge.truncated == 1  # "short" + bos = 6 tokens fits; the long one keeps its last 10
