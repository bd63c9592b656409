"""The weak-to-strong stage: tasks, readers, validation, the paper's split, PGR report, resume."""

import json
import random
import shutil

import pytest
import torch
from test_models_tiny import make_tokenizer, save_tiny_lm

from alignlab.config import ConfigError, DataSettings
from alignlab.data.errors import RecordError
from alignlab.data.labelled import check_probability_rows, load_labelled
from alignlab.data.records import Message, PreferencePair
from alignlab.models.logprobs import reward_scores
from alignlab.stages import build_stage_config, run_stage
from alignlab.w2s import pipeline
from alignlab.w2s.tasks import class_logits, collate_items, encode_example, pair_examples

PROMPT = (Message("user", "pick"),)


def _jsonl(path, rows, extra=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra))
    return str(path)


def test_pair_examples_flip_soft_labels_skip_ties_and_balance_the_order():
    pairs = [PreferencePair(PROMPT, f"good{i}", f"bad{i}", 1.0) for i in range(200)]
    pairs[3] = PreferencePair(PROMPT, "bad3", "good3", 0.2)  # the rejected one is preferred
    pairs[5] = PreferencePair(PROMPT, "x", "y", 0.5)
    examples, ties = pair_examples(pairs, seed=0)
    assert ties == 1 and len(examples) == 199
    for ex in examples:
        preferred = ex.record.chosen if ex.label == 1 else ex.record.rejected
        assert preferred.startswith("good"), ex
    assert 80 <= sum(ex.label for ex in examples) <= 120  # a seeded coin per pair


def test_pairwise_logits_are_the_two_rewards_so_p1_is_bradley_terry(tmp_path):
    from transformers import AutoModelForSequenceClassification

    folder = save_tiny_lm(tmp_path / "lm")
    model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=1).eval()
    tok = make_tokenizer()
    tok.pad_token = tok.eos_token
    examples, _ = pair_examples([PreferencePair(PROMPT, "aaa", "b", 1.0),
                                 PreferencePair(PROMPT, "cc", "dddd", 1.0)], seed=1)
    items = [encode_example(tok, ex, [0.5, 0.5], 32, 16) for ex in examples]
    batch = collate_items(items, tok.pad_token_id)
    with torch.no_grad():
        logits = class_logits(model, batch)
        rewards = reward_scores(model, batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (2, 2)
    assert torch.allclose(logits[:, 1], rewards[:2], atol=1e-5)  # A rows first
    assert torch.allclose(logits[:, 0], rewards[2:], atol=1e-5)


def test_labelled_reader_names_file_line_and_field_or_counts_skips(tmp_path):
    rows = [{"text": "a", "label": 0}, {"prompt": "q", "response": "r", "label": 2},
            {"text": "b", "label": 3}, {"text": "c", "label": True}, {"prompt": "q", "label": 1}]
    path = _jsonl(tmp_path / "cls.jsonl", rows)
    with pytest.raises(RecordError, match=r"cls.jsonl:3: field 'label': class index 3 is outside"):
        load_labelled(DataSettings(path=path), num_classes=3)
    loaded = load_labelled(DataSettings(path=path, on_bad_record="skip"), num_classes=3)
    assert [r.label for r in loaded.records] == [0, 2] and loaded.bad.skipped == 3
    assert loaded.records[1].prompt == (Message("user", "q"),)


def test_probability_rows_are_checked_with_line_numbers():
    good = [{"index": 4, "probs": [0.25, 0.75]}]
    assert check_probability_rows("l.jsonl", good, 2) == {4: [0.25, 0.75]}
    for bad, field in [({"index": 1, "probs": [0.5, 0.6]}, "probs"),
                       ({"index": 1, "probs": [1.0]}, "probs"),
                       ({"index": "1", "probs": [0.5, 0.5]}, "index"),
                       ({"index": 4, "probs": [0.5, 0.5]}, "index")]:
        with pytest.raises(RecordError, match=rf"l.jsonl:2: field '{field}'"):
            check_probability_rows("l.jsonl", good + [bad], 2)


# ----------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def ladder(tmp_path_factory):
    """A weak (1 layer, hidden 16) and a strong (2 layers, hidden 32) tiny Llama."""
    root = tmp_path_factory.mktemp("ladder")
    weak = save_tiny_lm(root / "weak", hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                        num_attention_heads=2, num_key_value_heads=1)
    return str(weak), str(save_tiny_lm(root / "strong"))


def _task_file(tmp_path, n=160):
    rng = random.Random(0)
    rows = []
    for _ in range(n):
        text = "".join(rng.choice("abcdefgh") for _ in range(6))
        rows.append({"text": text, "label": int("a" in text)})
    return _jsonl(tmp_path / "task.jsonl", rows)


def _config(ladder, tmp_path, **extra):
    train = {"learning_rate": 3e-3, "batch_size": 16, "epochs": 2, "lr_schedule": "constant",
             "save_every": 2}
    raw = {"stage": "w2s", "out": str(tmp_path / "run"),
           "task": {"kind": "classify", "data": {"path": _task_file(tmp_path)}},
           "models": [{"name": "weak", "model": {"path": ladder[0]}, "train": train},
                      {"name": "strong", "model": {"path": ladder[1]}, "train": train}],
           "losses": ["ce", "aux_conf"], **extra}
    return build_stage_config(raw, source="test")


def _probs(path):
    return {r["index"]: r["probs"] for r in map(json.loads, path.read_text().splitlines())}


def _accuracy(probs, gold):
    return sum(max(range(2), key=probs[i].__getitem__) == gold[i] for i in probs) / len(probs)


@pytest.fixture(scope="module")
def finished(ladder, tmp_path_factory):
    """A finished run (ce and aux_conf students, checkpoints kept) that tests copy before changing."""
    root = tmp_path_factory.mktemp("finished")
    run_stage(_config(ladder, root, keep_checkpoints=True))
    return root


def _copy(finished, tmp_path):
    shutil.copytree(finished, tmp_path, dirs_exist_ok=True)
    return tmp_path


def test_w2s_follows_the_paper_split_and_reports_pgr_from_the_predictions(finished):
    tmp_path = finished
    out = tmp_path / "run"
    split = json.loads((out / "split.json").read_text())
    assert (len(split["test"]), len(split["half_a"]), len(split["half_b"])) == (32, 64, 64)
    assert not set(split["half_a"]) & set(split["half_b"]) and not set(split["test"]) & set(
        split["half_a"] + split["half_b"])
    units = out / "units" / "s0"
    labels = _probs(units / "weak" / "weak" / "labels.jsonl")
    assert sorted(labels) == sorted(split["half_b"])  # the supervisor labels half B only
    rows = [json.loads(line) for line in (tmp_path / "task.jsonl").read_text().splitlines()]
    gold = {i: r["label"] for i, r in enumerate(rows)}
    report = json.loads((out / "report.json").read_text())
    student = next(r for r in report["students"] if r["loss"] == "ce")
    weak = _accuracy(_probs(units / "weak" / "weak" / "test.jsonl"), gold)
    w2s = _accuracy(_probs(units / "student" / "weak-to-strong" / "ce" / "test.jsonl"), gold)
    ceiling = _accuracy(_probs(units / "ceiling" / "strong" / "test.jsonl"), gold)
    assert (student["acc_weak"], student["acc_w2s"], student["acc_ceiling"]) == pytest.approx(
        (weak, w2s, ceiling), abs=1e-4)
    assert student["gap"] == pytest.approx(ceiling - weak, abs=1e-4)
    assert 0.0 <= student["no_gap_share"] <= 1.0
    if ceiling > weak:
        assert student["pgr"] == pytest.approx((w2s - weak) / (ceiling - weak), abs=1e-3)
        assert student["pgr_low"] <= student["pgr"] <= student["pgr_high"]
    else:
        assert student["pgr"] is None
    assert (out / "w2s.png").stat().st_size > 0 and "| weak | strong | ce |" in \
        (out / "report.md").read_text()


def test_w2s_resume_retrains_nothing_finished_and_only_predicts_what_is_missing(
        ladder, finished, tmp_path, monkeypatch):
    _copy(finished, tmp_path)
    out = tmp_path / "run"
    before = [r for r in json.loads((out / "report.json").read_text())["students"]
              if r["loss"] == "ce"]
    unit = out / "units" / "s0" / "student" / "weak-to-strong" / "ce"
    # a kill after training (the final checkpoint is written) half way through the test
    # predictions, in the middle of a line
    (unit / "DONE").unlink()
    (out / "DONE").unlink()
    lines = (unit / "test.jsonl").read_text().splitlines(keepends=True)
    (unit / "test.jsonl").write_text("".join(lines[:10]) + lines[10][:7])
    calls = []
    real = pipeline.train_member

    def counting(*args, **kwargs):
        calls.append(args[-1])
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "train_member", counting)
    run_stage(_config(ladder, tmp_path, losses=["ce"]))
    log = (unit / "log.txt").read_text()
    assert "resumed from" in log and log.count("training 8 steps") == 2
    assert "step 1/8" not in log.split("resumed from")[1]  # no step was trained again
    assert calls == [unit]
    assert json.loads((out / "report.json").read_text())["students"] == before
    assert len(_probs(unit / "test.jsonl")) == 32


def test_w2s_refuses_a_changed_split_and_validates_models(ladder, finished, tmp_path):
    _copy(finished, tmp_path)
    fewer = _config(ladder, tmp_path, losses=["ce"])
    (tmp_path / "fewer").mkdir()
    fewer.task.data.path = _task_file(tmp_path / "fewer", n=150)
    with pytest.raises(ValueError, match="different split"):
        run_stage(fewer)
    other = _config(ladder, tmp_path, losses=["ce"])
    other.models[1].train.learning_rate = 1e-3
    with pytest.raises(ValueError, match="unit.json: this unit was trained with other settings"):
        run_stage(other)
    labels = tmp_path / "run" / "units" / "s0" / "weak" / "weak" / "labels.jsonl"
    lines = labels.read_text().splitlines(keepends=True)
    lines[2] = json.dumps({"index": 7, "probs": [0.9, 0.3]}) + "\n"
    labels.write_text("".join(lines))
    with pytest.raises(RecordError, match=r"labels.jsonl:3: field 'probs'.*sum to 1.2"):
        run_stage(_config(ladder, tmp_path, losses=["ce"]))
    raw = _config(ladder, tmp_path).model_dump()
    raw["models"].reverse()
    with pytest.warns(UserWarning, match="listed as stronger"):
        build_stage_config(raw, source="test")
    head = tmp_path / "head3"
    save_tiny_lm(head)
    config = json.loads((head / "config.json").read_text())
    config.update(architectures=["LlamaForSequenceClassification"],
                  id2label={"0": "a", "1": "b", "2": "c"})
    (head / "config.json").write_text(json.dumps(config))
    raw = _config(ladder, tmp_path).model_dump()
    raw["models"][1]["model"]["path"] = str(head)
    with pytest.raises(ConfigError, match="3 output.*the task needs 2"):
        build_stage_config(raw, source="test")


def test_multiclass_task_with_the_confidence_and_product_losses(ladder, tmp_path):
    rng = random.Random(1)
    rows = [{"text": t, "label": "abc".index(t[0])}
            for t in ("".join(rng.choice("abc") for _ in range(5)) for _ in range(120))]
    raw = {"stage": "w2s", "out": str(tmp_path / "run"),
           "task": {"kind": "classify", "num_classes": 3,
                    "data": {"path": _jsonl(tmp_path / "three.jsonl", rows)}},
           "models": [{"name": n, "model": {"path": p},
                       "train": {"learning_rate": 3e-3, "batch_size": 16, "epochs": 1}}
                      for n, p in zip(("weak", "strong"), ladder)],
           "losses": ["aux_conf", "product"], "pairs": "extremes"}
    run_stage(build_stage_config(raw, source="test"))
    out = tmp_path / "run"
    labels = _probs(out / "units" / "s0" / "weak" / "weak" / "labels.jsonl")
    assert len(labels) == 48 and all(len(p) == 3 for p in labels.values())
    report = json.loads((out / "report.json").read_text())
    assert sorted(r["loss"] for r in report["students"]) == ["aux_conf", "product"]
    gold = {i: r["label"] for i, r in enumerate(rows)}
    for r in report["students"]:
        probs = _probs(out / "units" / "s0" / "student" / "weak-to-strong" / r["loss"] / "test.jsonl")
        hits = [max(range(3), key=p.__getitem__) == gold[i] for i, p in probs.items()]
        assert r["acc_w2s"] == pytest.approx(sum(hits) / len(hits), abs=1e-4)
    raw["losses"] = ["window"]
    with pytest.raises(ConfigError, match="two classes"):
        build_stage_config(raw, source="test")


def test_encoder_classifiers_pool_their_cls_token_through_their_own_head(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

    from alignlab.data.labelled import LabelledText
    from alignlab.w2s.tasks import Example, encode_text

    vocab = {t: i for i, t in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c"])}
    core = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="[UNK]", pad_token="[PAD]",
                                  cls_token="[CLS]", sep_token="[SEP]")
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32, num_labels=3)).eval()
    enc = encode_text(tok, LabelledText("a b c", 1), max_length=3, max_prompt_length=2)
    assert enc.input_ids == [tok.cls_token_id, 5, 6]  # [CLS] first, then cut at max_length
    items = [encode_example(tok, Example(i, 0, LabelledText(t, 0)), [1.0, 0.0, 0.0], 8, 4)
             for i, t in enumerate(["a", "b c a"])]
    batch = collate_items(items, tok.pad_token_id)
    with torch.no_grad():
        logits = class_logits(model, batch)
        alone = model(input_ids=torch.tensor([items[0].sequences[0].input_ids])).logits
    assert logits.shape == (2, 3)
    assert torch.allclose(logits[0], alone[0], atol=1e-5)  # padding does not change the pooled [CLS]
