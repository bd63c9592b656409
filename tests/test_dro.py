"""DRO (Richemond et al. 2024, arXiv 2405.19107): the loss against hand-derived numbers, the rated
single-response reader, the config, the gym's rated data and the stage end to end on a tiny Llama.

Hand derivation (r = 1, V = 0.2, ℓ = 0.3, τ = 2): residual δ = 1 − 0.2 − 2·0.3 = 0.2, loss ½δ² = 0.02,
∂L/∂V = −δ = −0.2, ∂L/∂ℓ = −τδ = −0.4."""

import json
import math
import random
import string

import pytest
import torch
from safetensors.torch import load_file
from test_train_stages import _prompt, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import ConfigError, ModelSettings, build_config
from alignlab.data.errors import RecordError
from alignlab.data.rated import RatedDataSettings, RatedResponse, load_rated
from alignlab.data.records import Message
from alignlab.losses.single import dro_loss
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.dro import DROConfig, collate_rated, encode_rated, run_dro

# ----------------------------------------------------------------------------- the loss


def _grads(r, v, logp, ref, tau, scale=1.0):
    values = torch.tensor([v], requires_grad=True)
    logps = torch.tensor([logp], requires_grad=True)
    losses, metrics = dro_loss(torch.tensor([r]), values, logps, torch.tensor([ref]), tau, scale)
    losses.sum().backward()
    return float(losses[0].detach()), float(values.grad[0]), float(logps.grad[0]), metrics


def test_loss_and_gradients_match_the_hand_derivation():
    loss, d_value, d_logp, metrics = _grads(1.0, 0.2, 0.3, 0.0, tau=2.0)
    assert loss == pytest.approx(0.02, abs=1e-6)
    assert d_value == pytest.approx(-0.2, abs=1e-6)
    assert d_logp == pytest.approx(-0.4, abs=1e-6)
    assert float(metrics["log_ratio"][0]) == pytest.approx(0.3)
    assert float(metrics["residual"][0]) == pytest.approx(0.2, abs=1e-6)
    assert float(metrics["value_loss"][0]) == pytest.approx(0.5 * 0.8 ** 2)
    # the reference enters only through the log-ratio: ℓ = 1.3 − 1.0 gives the same numbers
    assert _grads(1.0, 0.2, 1.3, 1.0, tau=2.0)[:3] == pytest.approx((0.02, -0.2, -0.4), abs=1e-5)


def test_policy_grad_scale_scales_only_the_policy_gradient():
    loss, d_value, d_logp, _ = _grads(1.0, 0.2, 0.3, 0.0, tau=2.0, scale=0.5)
    assert (loss, d_value, d_logp) == pytest.approx((0.02, -0.2, -0.2), abs=1e-6)


def test_tau_to_zero_policy_gradient_vanishes_and_value_regresses_to_mean_rating():
    _, _, d_logp, _ = _grads(1.0, 0.2, 0.3, 0.0, tau=0.0)
    assert d_logp == 0.0
    ratings = torch.tensor([1.0, 3.0, 2.0, 6.0])
    value = torch.zeros(1, requires_grad=True)
    logps = torch.tensor([0.5, -1.0, 2.0, 0.3], requires_grad=True)
    opt = torch.optim.SGD([value], lr=0.1)
    for _ in range(300):
        opt.zero_grad()
        logps.grad = None
        losses, _ = dro_loss(ratings, value.expand(4), logps, torch.zeros(4), tau=1e-9)
        losses.mean().backward()
        opt.step()
    assert float(value.detach()) == pytest.approx(3.0, abs=1e-4)
    assert float(logps.grad.abs().max()) < 1e-8


def test_negative_tau_is_refused():
    with pytest.raises(ValueError, match="tau"):
        dro_loss(torch.ones(1), torch.zeros(1), torch.zeros(1), torch.zeros(1), tau=-1.0)


# ----------------------------------------------------------------------------- the reader


def test_reader_accepts_every_layout(tmp_path):
    rows = [{"prompt": "hi", "response": "hello", "rating": 1},
            {"prompt": _prompt("sky?"), "completion": {"role": "assistant", "content": "blue"},
             "score": -0.5},
            {"messages": _prompt("cat?") + [{"role": "assistant", "content": "meow"}], "reward": 2.5}]
    loaded = load_rated(RatedDataSettings(path=_write_jsonl(tmp_path / "r.jsonl", rows)))
    assert loaded.format == "rated" and loaded.bad.skipped == 0
    assert [r.rating for r in loaded.records] == [1.0, -0.5, 2.5]
    assert loaded.records[2] == RatedResponse(
        loaded.records[2].prompt, "meow", 2.5) and loaded.records[2].prompt[-1].content == "cat?"
    assert loaded.records[1].response == "blue"


BAD_ROWS = [  # (row text, field, words of the problem)
    ('{"prompt": "q", "response": "a"}', "rating", "required field is missing"),
    ('{"prompt": "q", "response": "a", "rating": "high"}', "rating", "expected"),
    ('{"prompt": "q", "response": "a", "rating": true}', "rating", "expected"),
    ('{"prompt": "q", "response": "a", "rating": NaN}', "rating", "finite"),
    ('{"prompt": "q", "response": "a", "score": Infinity}', "score", "finite"),
    ('{"prompt": "q", "response": "a", "rating": 1, "score": 2}', "rating", "only one of"),
    ('{"prompt": "q", "response": "  ", "rating": 1}', "response", "empty"),
    ('{"prompt": "q", "rating": 1}', "response", "required field is missing"),
    (('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": ""}], '
      '"rating": 1}'), "messages[1].content", "empty"),
    ('{"response": "a", "rating": 1}', "prompt", "required field is missing"),
]


@pytest.mark.parametrize(("text", "field", "problem"), BAD_ROWS)
def test_malformed_rows_name_file_line_and_field(tmp_path, text, field, problem):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok", "response": "fine", "rating": 0.5}\n' + text + "\n")
    with pytest.raises(RecordError) as err:
        load_rated(RatedDataSettings(path=str(path)))
    message = str(err.value)
    assert message.startswith(f"{path}:2: field {field!r}:") and problem in message
    assert "\n" not in message


def test_skip_counts_every_bad_row(tmp_path):
    good = '{"prompt": "ok", "response": "fine", "rating": 0.5}\n'
    path = tmp_path / "mixed.jsonl"
    path.write_text(good + "".join(text + "\n" for text, _, _ in BAD_ROWS) + "not json\n" + good)
    loaded = load_rated(RatedDataSettings(path=str(path), on_bad_record="skip"))
    assert len(loaded.records) == 2 and loaded.bad.skipped == len(BAD_ROWS) + 1
    assert loaded.bad.examples[0].startswith(f"{path}:2: field 'rating'")


# ----------------------------------------------------------------------------- the gym


def test_gym_rated_ratings_come_from_the_noisy_annotator():
    from alignlab.gym.annotators import Annotator
    from alignlab.gym.corpus import rated_responses
    from alignlab.gym.gold import score
    from alignlab.gym.prompts import make_prompt_pools
    from alignlab.gym.world import generate_world

    world = generate_world(0)
    train, _ = make_prompt_pools(world, 0, 200, 10)
    rated = rated_responses(random.Random(0), world, train, Annotator(2.0), 600)
    again = rated_responses(random.Random(0), world, train, Annotator(2.0), 600)
    assert rated == again and len(rated) == 600
    gold = [score(world, r.prompt, r.response).reward for r in rated]
    ratings = [r.rating for r in rated]
    assert len({(g, r) for g, r in zip(gold, ratings)}) > len(set(gold))  # noisy, not a gold map
    mean_g, mean_r = sum(gold) / len(gold), sum(ratings) / len(ratings)
    cov = sum((g - mean_g) * (r - mean_r) for g, r in zip(gold, ratings))
    assert cov > 0  # but informative about gold


# ----------------------------------------------------------------------------- config


def _raw(tmp_path, **extra):
    return {"model": {"path": "m"}, "data": {"path": str(tmp_path / "r.jsonl")},
            "out": str(tmp_path / "o"), **extra}


@pytest.mark.parametrize("extra", [{"tau": 0}, {"tau": -1.0}, {"value_learning_rate": 0},
                                   {"policy_grad_scale": 0}, {"taus": 1.0},
                                   {"data": {"path": "x.jsonl", "format": "alignlab"}},
                                   {"train": {"save_best": {"metric": "eval/loss"}}}])
def test_bad_parameters_fail_when_the_config_is_read(tmp_path, extra):
    with pytest.raises(ConfigError):
        build_config(DROConfig, _raw(tmp_path, **extra))


# ----------------------------------------------------------------------------- the stage


def _rated_rows(n_prompts=8, seed=0):
    rng = random.Random(seed)
    prompts = ["".join(rng.choices(string.ascii_lowercase, k=4)) for _ in range(n_prompts)]
    return [{"prompt": _prompt(p), "response": text, "rating": rating}
            for p in prompts for text, rating in (("good answer", 2.0), ("bad reply", 0.0))]


def _config(tiny_model, data, out, **extra):  # noqa: F811
    train = {"max_steps": 12, "learning_rate": 3e-3, "batch_size": 8, **extra.pop("train", {})}
    return DROConfig(model=extra.pop("model", ModelSettings(path=tiny_model)),
                     data=RatedDataSettings(path=data), out=str(out), train=_train(**train),
                     **{"reference_cache": "none", "value_learning_rate": 3e-2, **extra})


def _run(cfg):
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_dro(cfg, run)
    return model_dir, [r for r in read_metrics(run.path) if "loss" in r], run


def _final_models(run, rows, start_dir):
    """Per row of ``rows``: (log-ratio of the trained policy to the start model, V(x) of the trained
    value model), recomputed from the saved folders."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

    from alignlab.models.logprobs import reward_scores, sequence_logprobs

    tok = AutoTokenizer.from_pretrained(run.path / "model")
    records = [RatedResponse((Message("user", r["prompt"][0]["content"]),), r["response"], 0.0)
               for r in rows]
    batch = collate_rated([encode_rated(tok, r, 64, 32) for r in records], tok.pad_token_id)
    policy = AutoModelForCausalLM.from_pretrained(run.path / "model").eval()
    start = AutoModelForCausalLM.from_pretrained(start_dir).eval()
    value = AutoModelForSequenceClassification.from_pretrained(run.path / "value").eval()
    with torch.no_grad():
        ratio = sequence_logprobs(policy, batch) - sequence_logprobs(start, batch)
        values = reward_scores(value, batch["prompt_input_ids"], batch["prompt_attention_mask"])
    return ratio, values


def test_dro_raises_the_high_rated_response_relative_to_the_low_one(tiny_model, tmp_path):  # noqa: F811
    rows = _rated_rows()  # per prompt: "good answer" rated 2, "bad reply" rated 0
    data = _write_jsonl(tmp_path / "rated.jsonl", rows)
    _, history, run = _run(_config(tiny_model, data, tmp_path / "dro"))
    first, last = history[0], history[-1]
    # step 1: the policy is the reference, so every log-ratio is 0 and the loss is V's fit alone
    assert first["log_ratio"] == pytest.approx(0.0, abs=1e-5)
    assert first["loss"] == pytest.approx(first["value_loss"], abs=1e-5)
    assert sum(r["loss"] for r in history[-3:]) / 3 < first["loss"]
    ratio, values = _final_models(run, rows, tiny_model)
    gap = ratio[0::2] - ratio[1::2]  # ℓ(good) − ℓ(bad), per prompt
    assert float(gap.min()) > 0.5
    # V tracks r − τℓ: the mean residual shrinks from |mean r − V_0| (ℓ = 0 at the start)
    ratings = torch.tensor([r["rating"] for r in rows])
    residual = float((ratings - values - 1.0 * ratio).mean())
    assert abs(residual) < 0.5 * abs(1.0 - first["value"])
    assert {"value", "log_ratio", "residual", "value_loss", "lr"} <= last.keys()
    assert any("score" in name for name in load_file(str(run.path / "value" / "model.safetensors")))


def test_small_tau_value_regresses_to_the_mean_rating(tiny_model, tmp_path):  # noqa: F811
    rows = _rated_rows()  # mean rating of every prompt: 1
    data = _write_jsonl(tmp_path / "rated.jsonl", rows)
    _, history, run = _run(_config(tiny_model, data, tmp_path / "dro", tau=1e-3,
                                   value_learning_rate=1e-2, train={"max_steps": 16}))
    _, values = _final_models(run, rows[0::2], tiny_model)
    assert abs(history[0]["value"] - 1.0) > 0.5
    assert float((values - 1.0).abs().max()) < 0.25


def test_resume_after_a_checkpoint_gives_the_same_final_loss(tiny_model, tmp_path):  # noqa: F811
    data = _write_jsonl(tmp_path / "rated.jsonl", _rated_rows(4))
    short = {"train": {"max_steps": 4, "save_every": 2, "batch_size": 4}}
    _run(_config(tiny_model, data, tmp_path / "a", **short))
    _, resumed, run = _run(_config(tiny_model, data, tmp_path / "a",
                                   train={"max_steps": 6, "save_every": 2, "batch_size": 4}))
    _, straight, _ = _run(_config(tiny_model, data, tmp_path / "b",
                                  train={"max_steps": 6, "batch_size": 4}))
    assert "resumed from" in (run.path / "log.txt").read_text()
    assert [r["step"] for r in resumed] == [1, 2, 3, 4, 5, 6]
    assert resumed[-1]["loss"] == pytest.approx(straight[-1]["loss"], abs=1e-5)
    assert [r["value"] for r in resumed] == pytest.approx([r["value"] for r in straight], abs=1e-5)


def test_lora_policy_uses_its_base_as_reference(tiny_model, tmp_path):  # noqa: F811
    from alignlab.config import LoraSettings

    data = _write_jsonl(tmp_path / "rated.jsonl", _rated_rows(2))
    model = ModelSettings(path=tiny_model, lora=LoraSettings(r=4))
    model_dir, history, run = _run(_config(tiny_model, data, tmp_path / "lora", model=model,
                                           train={"max_steps": 2, "batch_size": 4}))
    assert history[0]["log_ratio"] == pytest.approx(0.0, abs=1e-5)
    assert (model_dir / "model.safetensors").is_file()
    assert "adapter disabled" in (run.path / "log.txt").read_text()
    assert math.isfinite(history[-1]["loss"])
    assert json.loads((run.path / "value" / "config.json").read_text())["id2label"] == {"0": "LABEL_0"}
