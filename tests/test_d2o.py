"""D2O (Duan et al. 2024, arXiv 2403.03419, eq. 3): the loss by hand, its limits and gradient signs,
bad parameters and lists, the ``sample`` stage's d2o.jsonl, and the dpo stage end to end."""

import math

import pytest
import torch
from test_sampling_stage import _config as _sample_config
from test_sampling_stage import _rows
from test_train_stages import _pairs, _sequence_margin, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import DataSettings, ModelSettings
from alignlab.losses.inputs import ListInputs, PairInputs
from alignlab.losses.registry import get_loss
from alignlab.runs import RunFolder, read_metrics

LOG2 = math.log(2.0)


def _d2o(inputs, **params):
    spec = get_loss("d2o")
    return spec.build(spec.parse(params))(inputs)


def test_loss_matches_the_hand_computed_value():
    # K = 2, beta = alpha = 0.1; log-ratios h = logps - ref = (-3+5, -6+5, -2+5) = (2, -1, 3)
    # positives 2 and -1 (mean 0.5), negative 3 (scored lowest):
    #   margin = 0.1 * 0.5 - 0.1 * 3 = 0.05 - 0.3 = -0.25
    #   loss   = -log sigma(-0.25) = log(1 + e^0.25) = log(2.2840254) = 0.8259394
    # second list: one padding slot (NaN, invalid), positive h = 1, negative h = -1 (K = 1):
    #   margin = 0.1 * 1 + 0.1 * 1 = 0.2, loss = log(1 + e^-0.2) = log(1.8187308) = 0.5981389
    logps = torch.tensor([[-3.0, -6.0, -2.0], [-4.0, float("nan"), -6.0]], requires_grad=True)
    inputs = ListInputs.of(logps, [[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]],
                           ref_logps=[[-5.0, -5.0, -5.0], [-5.0, 0.0, -5.0]],
                           valid=[[True, True, True], [True, False, True]])
    losses, metrics = _d2o(inputs, beta=0.1, alpha=0.1)
    assert losses.tolist() == pytest.approx([0.8259394, 0.5981389], abs=1e-6)
    assert metrics["rewards/margin"].tolist() == pytest.approx([-0.25, 0.2], abs=1e-6)
    assert metrics["rewards/accuracy"].tolist() == [0.0, 1.0]
    losses.sum().backward()
    assert torch.isfinite(logps.grad).all() and logps.grad[1, 1] == 0.0  # padding: no NaN, no grad
    # without scores the list is best first: the negative listed last is the lowest (-2 < -1 < 0)
    unscored = ListInputs.of([[-3.0, -6.0, -2.0]], [[0.0, -1.0, -2.0]],
                             ref_logps=[[-5.0, -5.0, -5.0]])
    assert _d2o(unscored)[0].item() == pytest.approx(0.8259394, abs=1e-6)


def test_alpha_zero_keeps_only_the_positives_term():
    logps = torch.tensor([[-3.0, -6.0, -2.0]], requires_grad=True)
    inputs = ListInputs.of(logps, [[1.0, 1.0, 0.0]], ref_logps=[[-5.0, -5.0, -5.0]])
    loss = _d2o(inputs, beta=0.5, alpha=0.0)[0]
    # -log sigma(0.5 * mean(2, -1)) = log(1 + e^-0.25) = 0.5759394
    assert loss.item() == pytest.approx(0.5759394, abs=1e-6)
    loss.sum().backward()
    assert logps.grad[0, 2].item() == 0.0 and (logps.grad[0, :2] < 0).all()


@pytest.mark.parametrize("beta", [0.1, 0.5, 2.0])
def test_one_sample_with_alpha_equal_beta_is_dpo(beta):
    chosen, rejected = [-3.0, -7.5, -1.0], [-4.0, -2.0, -9.0]
    ref_c, ref_r = [-3.5, -6.0, -2.0], [-3.0, -2.5, -8.0]
    dpo = get_loss("dpo")
    expected, _ = dpo.build(dpo.parse({"beta": beta}))(PairInputs.of(chosen, rejected, ref_c, ref_r))
    lists = ListInputs.of([list(p) for p in zip(chosen, rejected)], [[1.0, 0.0]] * 3,
                          ref_logps=[list(p) for p in zip(ref_c, ref_r)])
    losses, _ = _d2o(lists, beta=beta, alpha=beta)
    assert losses.tolist() == pytest.approx(expected.tolist(), abs=1e-6)


def test_gradient_pushes_the_negative_down_and_the_samples_up():
    logps = torch.tensor([[-3.0, -6.0, -1.0, -2.0]], requires_grad=True)
    inputs = ListInputs.of(logps, [[1.0, 1.0, 1.0, 0.0]], ref_logps=[[-4.0, -4.0, -4.0, -4.0]])
    _d2o(inputs, beta=0.1, alpha=0.3)[0].sum().backward()
    grad = logps.grad[0]
    assert grad[3] > 0 and (grad[:3] < 0).all()  # descent lowers the negative, raises each sample
    # each sample's weight is beta/K of the sigmoid factor, the negative's is alpha: ratio 0.1/3 : 0.3
    assert grad[0].item() == pytest.approx(-grad[3].item() * (0.1 / 3) / 0.3, rel=1e-5)


@pytest.mark.parametrize("params, message", [
    ({"beta": 0.0}, "beta"), ({"alpha": -0.1}, "alpha"), ({"gamma": 1.0}, "gamma")])
def test_bad_parameters_fail_when_read(params, message):
    with pytest.raises(ValueError, match=f"loss 'd2o': {message}"):
        get_loss("d2o").parse(params)


@pytest.mark.parametrize("scores, valid", [
    ([[1.0, 0.0, 0.0]], [[True, True, True]]),  # two negatives tied at the lowest score
    ([[1.0, 0.0, 0.0]], [[False, False, True]]),  # a negative and no sample
])
def test_lists_without_one_negative_and_a_sample_are_refused(scores, valid):
    inputs = ListInputs.of([[-1.0, -2.0, -3.0]], scores, ref_logps=[[-1.0, -1.0, -1.0]], valid=valid)
    with pytest.raises(ValueError, match="exactly one negative"):
        _d2o(inputs)


def _sampled_rows(pairs, positives):
    return [{"index": i, "prompt": p["prompt"],
             "samples": [{"text": t, "score": 0.0} for t in positives]} for i, p in enumerate(pairs)]


def _d2o_lists(tmp_path, pairs, rows):
    """d2o.jsonl written by the sample stage's outputs from ``rows`` and negatives ``pairs``."""
    from alignlab.sampling.stage import write_outputs
    from alignlab.stages import build_stage_config

    negatives = _write_jsonl(tmp_path / "negatives.jsonl", pairs)
    raw = _sample_config(tmp_path, tmp_path / "unused").model_dump()
    raw["d2o_negatives"] = {"path": negatives}
    cfg = build_stage_config(raw, source="test")
    summary = write_outputs(cfg, RunFolder(tmp_path / "sampled"), rows)
    return tmp_path / "sampled" / "d2o.jsonl", summary


def test_sample_stage_joins_samples_with_the_negatives(tmp_path):
    pairs = _pairs(3, 1, "good answer", "bad reply")
    rows = _sampled_rows(pairs[:2], [" good answer", "fine answer\n"])
    path, summary = _d2o_lists(tmp_path, pairs, rows)
    assert summary["d2o_lists"] == 2 and summary["d2o_unmatched"] == 1
    assert _rows(path) == [{"prompt": p["prompt"], "responses": ["good answer", "fine answer",
                                                                 "bad reply"],
                            "scores": [1.0, 1.0, 0.0]} for p in pairs[:2]]


def test_a_bad_negatives_row_names_its_line(tmp_path):
    from alignlab.sampling.d2o import load_negatives

    path = _write_jsonl(tmp_path / "neg.jsonl", _pairs(1, 0, "a", "b"),
                        ['{"prompt": "q", "chosen": "a", "rejected": 7}\n'])
    with pytest.raises(Exception, match=r"neg\.jsonl:2.*rejected"):
        load_negatives(DataSettings(path=path))


def test_dpo_stage_trains_d2o_from_sampled_lists(tiny_model, tmp_path):  # noqa: F811
    from alignlab.train.preference import PreferenceConfig, run_preference

    pairs = _pairs(16, 1, "good answer", "bad reply")
    path, _ = _d2o_lists(tmp_path, pairs, _sampled_rows(pairs, ["good answer", "fine answer"]))
    cfg = PreferenceConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=str(path)),
                           loss=[{"name": "d2o", "beta": 0.1, "alpha": 0.1}], reference_cache="none",
                           out=str(tmp_path / "d2o"), train=_train(max_steps=12, learning_rate=3e-3))
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_preference(cfg, run)
    rows = [r for r in read_metrics(run.path) if "loss" in r]
    assert "ranked: 16 records" in (run.path / "log.txt").read_text()
    # step 1: the policy is the reference, every log-ratio is 0, so the loss is log 2
    assert rows[0]["loss"] == pytest.approx(LOG2, abs=1e-4)
    assert rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert rows[-1]["loss"] < 0.5 and rows[-1]["rewards/margin"] > 0.5
    # the negative falls below the reference, the samples rise above it (measured: -1.57, +1.44)
    assert rows[-1]["rewards/negative"] < -0.3 and rows[-1]["rewards/positives"] > 0.3
    # the negative's log-prob falls relative to the sampled "good answer" (measured: -8.3 -> 24.3)
    before = _sequence_margin(tiny_model, tiny_model, pairs)
    after = _sequence_margin(str(model_dir), tiny_model, pairs)
    assert after - before > 5.0, (before, after)
