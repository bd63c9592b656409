"""Context distillation (Askell et al. 2021): coarsened KL, teacher top-k alignment, resumable
teacher pass, and the stage end to end on a tiny Llama with a character tokenizer."""

import json
import math
import random
import string

import pytest
import torch
import yaml
from test_train_stages import _tokenizer, _write_jsonl

from alignlab.config import ConfigError, DataSettings, ModelSettings, TrainSettings
from alignlab.data.records import Conversation, Message
from alignlab.data.tokenize import Encoded, encode_conversation, prompt_ids
from alignlab.losses.distill import coarse_kl
from alignlab.runs import RunFolder, read_metrics
from alignlab.train import distill as D
from alignlab.train.distill import DistillConfig

CONTEXT = "<system>always answer zzz, loudly!!!\n<user>q\n<assistant>zzz!!!\n"


# ----------------------------------------------------------------------------- loss


def test_coarse_kl_matches_hand_numbers():
    # vocab 3, k = 1. Student logits (0, 0, ln 2) -> q = (1/4, 1/4, 1/2).
    # Row 1: teacher keeps token 2 with p = 0.8, so r_p = 0.2; q_top = 1/2, r_q = 1/4 + 1/4 = 1/2:
    #   0.8 ln(0.8 / 0.5) + 0.2 ln(0.2 / 0.5) = 0.8 * 0.4700036 - 0.2 * 0.9162907 = 0.1927448
    # Row 2: teacher keeps token 0 with p = 1.0, r_p = 0 (0 log 0 = 0): 1.0 ln(1 / 0.25) = ln 4
    # Row 3: teacher keeps token 1 with p = 0.5, r_p = 0.5, r_q = 3/4:
    #   0.5 ln(0.5 / 0.25) + 0.5 ln(0.5 / 0.75) = 0.5 * 0.6931472 - 0.5 * 0.4054651 = 0.1438410
    logits = torch.tensor([[0.0, 0.0, math.log(2.0)]]).repeat(3, 1)
    ids = torch.tensor([[2], [0], [1]])
    probs = torch.tensor([[0.8], [1.0], [0.5]])
    got = coarse_kl(logits, ids, probs)
    assert torch.allclose(got, torch.tensor([0.1927448, math.log(4.0), 0.1438410]), atol=1e-6)


def test_coarse_kl_with_full_vocabulary_is_the_exact_kl():
    torch.manual_seed(0)
    student = torch.randn(6, 11, dtype=torch.float64)
    teacher = torch.softmax(torch.randn(6, 11, dtype=torch.float64) * 2, -1)
    exact = torch.nn.functional.kl_div(torch.log_softmax(student, -1), teacher,
                                       reduction="none").sum(-1)
    top = torch.topk(teacher, 11, dim=-1)
    assert torch.allclose(coarse_kl(student, top.indices, top.values), exact, atol=1e-10)
    for k in (1, 3, 7):  # coarsening can only lose information: KL_k <= KL
        top = torch.topk(teacher, k, dim=-1)
        coarse = coarse_kl(student, top.indices, top.values)
        assert bool((coarse <= exact + 1e-12).all()) and bool((coarse > 0).all())


def test_coarse_kl_gradient_is_finite_when_rest_mass_vanishes():
    logits = torch.tensor([[30.0, -30.0, 0.0]], requires_grad=True)
    ids, probs = torch.tensor([[1, 0, 2]]), torch.tensor([[0.7, 0.3, 0.0]])
    loss = coarse_kl(logits, ids, probs).sum()
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()
    with pytest.raises(ValueError, match="disagree"):
        coarse_kl(logits, ids[:, :2], probs)


# ----------------------------------------------------------------------------- teacher pass


def _save_peaky(folder, seed):
    """A 2-layer Llama with large initial weights (so a context moves its predictions a lot)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(seed)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=256, pad_token_id=0, bos_token_id=1, eos_token_id=2,
                      initializer_range=0.2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def peaky_model(tmp_path_factory):
    return _save_peaky(tmp_path_factory.mktemp("peaky"), seed=0)


def _conversations(n, seed):
    rng = random.Random(seed)
    words = lambda k: "".join(rng.choices(string.ascii_lowercase + " ", k=k)).strip() or "a"
    return [{"messages": [{"role": "user", "content": words(6)},
                          {"role": "assistant", "content": words(9)}]} for _ in range(n)]


def _config(model, data, out, context, **extra):
    train = TrainSettings(learning_rate=3e-3, batch_size=8, max_length=40, max_prompt_length=20,
                          lr_schedule="constant", log_every=5, seed=0, **extra.pop("train", {}))
    return DistillConfig(model=ModelSettings(path=model), data=DataSettings(path=data),
                         context=context, out=str(out), train=train, **extra)


def test_trained_positions_all_and_assistant():
    enc = Encoded([1, 5, 6, 7, 8], [0, 0, 0, 1, 1])
    assert D.trained_positions(enc, "all") == [0, 1, 2, 3]
    assert D.trained_positions(enc, "assistant") == [2, 3]  # positions predicting tokens 3 and 4


@pytest.mark.parametrize("bos_in_template", [False, True])
@pytest.mark.parametrize("positions", ["all", "assistant"])
def test_teacher_topk_equals_direct_forward_on_context_then_text(peaky_model, tmp_path, positions,
                                                                 bos_in_template):
    from transformers import AutoModelForCausalLM

    tok = _tokenizer()
    if bos_in_template:  # the template writes the bos itself, so encoding adds none
        tok.chat_template = "<s>" + tok.chat_template
    ctx_file = tmp_path / "ctx.txt"
    ctx_file.write_text(CONTEXT + "\n\n")
    data = _write_jsonl(tmp_path / "d.jsonl", _conversations(3, 1))
    cfg = _config(peaky_model, data, tmp_path / "run", str(ctx_file), top_k=5, positions=positions)
    store = D.build_teacher_outputs(cfg, tmp_path / "teacher", tokenizer=tok, log=lambda m: None)
    items = store.load()
    model = AutoModelForCausalLM.from_pretrained(peaky_model).eval()
    context_ids = prompt_ids(tok, CONTEXT.rstrip())
    assert context_ids[0] == tok.bos_token_id
    for row, item in zip(_conversations(3, 1), items):
        conv = Conversation(tuple(Message(**m) for m in row["messages"]))
        enc = encode_conversation(tok, conv, 40, 20)
        assert item.input_ids == enc.input_ids and enc.input_ids[0] == tok.bos_token_id
        # an added bos moves in front of C; a bos written by the template stays part of X
        x = enc.input_ids if bos_in_template else enc.input_ids[1:]
        full = torch.tensor([context_ids + x])
        with torch.no_grad():
            probs = torch.softmax(model(full).logits[0].float(), -1)
        # the logit at index i predicts full[i + 1]; X's token t + 1 sits at len(C) + t (+1 with
        # its own bos kept), so its prediction is read at index len(C) + t - 1 (or len(C) + t)
        shift = len(context_ids) - (0 if bos_in_template else 1)
        assert full[0, shift + 1].item() == enc.input_ids[1]
        assert item.positions == D.trained_positions(enc, positions)
        want = torch.topk(probs[[t + shift for t in item.positions]], 5, dim=-1)
        assert torch.equal(item.topk_ids.long(), want.indices)
        assert torch.allclose(item.topk_probs, want.values, atol=1e-5)


def test_teacher_pass_resumes_at_the_next_shard(peaky_model, tmp_path, monkeypatch):
    monkeypatch.setattr(D, "SHARD_RECORDS", 2)
    data = _write_jsonl(tmp_path / "d.jsonl", _conversations(5, 2))
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    cfg = _config(peaky_model, data, tmp_path / "run", str(tmp_path / "ctx.txt"), top_k=4)
    calls = []
    real_shard = D.TeacherPass.shard

    def dying_shard(self, chunk, shard, source, first):
        calls.append(shard)
        if shard == 2 and len(calls) == 3:
            raise KeyboardInterrupt("killed")
        return real_shard(self, chunk, shard, source, first)

    monkeypatch.setattr(D.TeacherPass, "shard", dying_shard)
    quiet = lambda m: None
    with pytest.raises(KeyboardInterrupt):
        D.build_teacher_outputs(cfg, tmp_path / "a", log=quiet)
    index = json.loads((tmp_path / "a" / "index.json").read_text())
    assert sorted(index["shards"]) == ["0", "1"]
    D.build_teacher_outputs(cfg, tmp_path / "a", log=quiet)
    assert calls == [0, 1, 2, 2]  # shards 0 and 1 were not recomputed
    resumed = D.TeacherStore(tmp_path / "a").load()
    straight = D.build_teacher_outputs(cfg, tmp_path / "b", log=quiet).load()
    assert len(resumed) == len(straight) == 5
    for a, b in zip(resumed, straight):
        assert a.input_ids == b.input_ids and a.positions == b.positions
        assert torch.equal(a.topk_ids, b.topk_ids) and torch.equal(a.topk_probs, b.topk_probs)
    changed = cfg.model_copy(update={"top_k": 3})
    with pytest.raises(ValueError, match="other settings"):
        D.build_teacher_outputs(changed, tmp_path / "a", log=quiet)


def test_generated_responses_come_from_the_teacher_with_the_context(tmp_path):
    model = _save_peaky(tmp_path / "model", seed=3)  # seed 3: greedy replies are not empty
    prompts = [{"prompt": [{"role": "user", "content": q}]} for q in ("ab", "hello", "x y z")]
    data = _write_jsonl(tmp_path / "p.jsonl", prompts)
    (tmp_path / "ctx.txt").write_text(CONTEXT)
    greedy = {"max_new_tokens": 6, "temperature": 0.0, "num_samples": 2}
    cfg = _config(model, data, tmp_path / "run", str(tmp_path / "ctx.txt"), top_k=3,
                  positions="assistant", generation=greedy)
    items = D.build_teacher_outputs(cfg, tmp_path / "t", log=lambda m: None).load()
    assert len(items) == 6 and items[0].input_ids == items[1].input_ids
    tok, compared = _tokenizer(), 0
    for item, prompt in zip(items[::2], prompts):
        head = prompt_ids(tok, tok.apply_chat_template(prompt["prompt"], tokenize=False,
                                                       add_generation_prompt=True))
        assert item.input_ids[:len(head)] == head and item.positions[0] == len(head) - 1
        # greedy decoding under [C; prompt]: each sampled token is the teacher's top-1 there
        # (the last two targets are the template's "\n" and the eos, not sampled tokens)
        sampled = [item.input_ids[t + 1] for t in item.positions[:-2]]
        assert item.topk_ids[:-2, 0].tolist() == sampled
        compared += len(sampled)
    assert compared >= 6


# ----------------------------------------------------------------------------- stage


def _cli(args):
    from typer.testing import CliRunner

    from alignlab.cli import app

    return CliRunner().invoke(app, args)


def test_missing_context_file_is_a_config_error_naming_it(tiny_path_data, tmp_path):
    model, data = tiny_path_data
    missing = tmp_path / "nowhere" / "hhh.txt"
    result = _cli(["distill", f"model.path={model}", f"data.path={data}", f"context={missing}",
                   f"out={tmp_path / 'run'}"])
    assert result.exit_code == 2
    assert str(missing) in result.output
    with pytest.raises(ConfigError, match="nowhere"):
        D.read_context(str(missing))


def test_default_context_is_short_and_ends_cleanly():
    text = D.read_context("default")
    assert 100 < len(text.split()) < 350
    assert text == text.rstrip() and "\n\nHuman: " in text and "\n\nAssistant: " in text


@pytest.fixture
def tiny_path_data(peaky_model, tmp_path):
    return peaky_model, _write_jsonl(tmp_path / "d.jsonl", _conversations(4, 3))


@pytest.mark.slow
def test_cli_distillation_cuts_heldout_kl_to_the_teacher(peaky_model, tmp_path):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text(CONTEXT)
    train = _write_jsonl(tmp_path / "train.jsonl", _conversations(64, 10))
    held = _write_jsonl(tmp_path / "held.jsonl", _conversations(16, 11))
    config = {"model": {"path": peaky_model}, "data": {"path": train}, "context": str(ctx),
              "top_k": 8, "positions": "all", "out": str(tmp_path / "run"),
              "train": {"learning_rate": 3e-3, "batch_size": 8, "epochs": 8, "max_length": 40,
                        "max_prompt_length": 20, "lr_schedule": "constant", "log_every": 8}}
    path = tmp_path / "distill.yaml"
    path.write_text(yaml.safe_dump(config))
    result = _cli(["distill", "--config", str(path)])
    assert result.exit_code == 0, result.output
    held_cfg = DistillConfig(**{**config, "data": {"path": held}})
    D.build_teacher_outputs(held_cfg, tmp_path / "held_teacher", log=lambda m: None)
    before = D.kl_to_teacher(ModelSettings(path=peaky_model), tmp_path / "held_teacher")
    after = D.kl_to_teacher(ModelSettings(path=str(tmp_path / "run" / "model")),
                            tmp_path / "held_teacher")
    assert before > 0.3, before  # the context really moves the teacher
    assert after < 0.5 * before, (before, after)
    kls = [r["kl"] for r in read_metrics(tmp_path / "run") if "kl" in r]
    assert kls[-1] < kls[0]
    assert (tmp_path / "run" / "teacher" / "index.json").is_file()


def test_held_out_kl_during_training_matches_kl_to_teacher(peaky_model, tmp_path):
    ctx = tmp_path / "ctx.txt"
    ctx.write_text(CONTEXT)
    train = _write_jsonl(tmp_path / "train.jsonl", _conversations(8, 10))
    held = _write_jsonl(tmp_path / "held.jsonl", _conversations(4, 11))
    cfg = _config(peaky_model, train, tmp_path / "run", str(ctx), top_k=8,
                  eval_data=DataSettings(path=held), train={"max_steps": 4, "eval_every": 2})
    D.run_distill(cfg, RunFolder(cfg.out, cfg, echo=False))
    rows = [r for r in read_metrics(tmp_path / "run") if "eval/kl" in r]
    assert [r["step"] for r in rows] == [2, 4]
    direct = D.kl_to_teacher(ModelSettings(path=str(tmp_path / "run" / "model")),
                             tmp_path / "run" / "teacher_eval")
    assert rows[-1]["eval/kl"] == pytest.approx(direct, rel=1e-4)
    assert rows[-1]["eval/loss"] == pytest.approx(direct, rel=1e-4)
