"""SFT, reward-model and DPO stages end to end on a tiny Llama with a character tokenizer."""

import json
import random
import string

import pytest
import torch
from safetensors.torch import load_file

from alignlab.config import DataSettings, ModelSettings, TrainSettings
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.preference import PreferenceConfig, run_preference
from alignlab.train.reward import RMConfig, run_rm
from alignlab.train.sft import SFTConfig, run_sft

CHARS = list(string.ascii_lowercase + string.digits + " ?!.,")
TEMPLATE = ("{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}<assistant>{% endif %}")


def _tokenizer():
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>", "<user>", "<assistant>", "<system>", "\n"]
    vocab = {tok: i for i, tok in enumerate(specials + CHARS)}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"<[a-z]+>|."), behavior="isolated")
    core.decoder = decoders.Fuse()
    tok = PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                                  eos_token="</s>", pad_token="<pad>")
    tok.chat_template = TEMPLATE
    return tok


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A 2-layer Llama (hidden 32) and its char tokenizer saved as an HF folder."""
    return save_tiny_char_model(tmp_path_factory.mktemp("tiny"))


def save_tiny_char_model(folder) -> str:
    """Save the 2-layer Llama (hidden 32, seed 0) and the char tokenizer to ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=128, pad_token_id=0, bos_token_id=1, eos_token_id=2)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def _write_jsonl(path, rows, extra_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(extra_lines))
    return str(path)


def _prompt(text):
    return [{"role": "user", "content": text}]


def _train(**extra):
    base = {"learning_rate": 1e-2, "batch_size": 4, "log_every": 1, "lr_schedule": "constant",
            "max_length": 64, "max_prompt_length": 32, "seed": 0}
    return TrainSettings(**{**base, **extra})


def _sft_config(tiny_model, tmp_path, out, **train):
    rows = [{"messages": _prompt(q) + [{"role": "assistant", "content": a}]}
            for q, a in [("hi", "hello there"), ("2+2?", "4"), ("sky?", "blue"), ("cat?", "meow")]]
    data = _write_jsonl(tmp_path / "sft.jsonl", rows, ['{"messages": 7}\n'])
    return SFTConfig(model=ModelSettings(path=tiny_model), out=str(out), train=_train(**train),
                     data=DataSettings(path=data, format="alignlab", on_bad_record="skip"))


def test_sft_memorises_and_reports_bad_records(tiny_model, tmp_path):
    cfg = _sft_config(tiny_model, tmp_path, tmp_path / "run", max_steps=20)
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_sft(cfg, run)
    rows = read_metrics(run.path)
    assert rows[0]["bad_records_skipped"] == 1
    losses = [r["loss"] for r in rows if "loss" in r]
    assert len(losses) == 20
    assert losses[-1] < 0.3 * losses[0], (losses[0], losses[-1])
    assert (model_dir / "model.safetensors").exists() and (model_dir / "tokenizer.json").exists()


def test_sft_resume_matches_uninterrupted(tiny_model, tmp_path):
    first = _sft_config(tiny_model, tmp_path, tmp_path / "a", max_steps=4, save_every=2)
    run_sft(first, RunFolder(first.out, first, echo=False))
    again = _sft_config(tiny_model, tmp_path, tmp_path / "a", max_steps=6, save_every=2)
    resumed = RunFolder(again.out, again, echo=False)
    run_sft(again, resumed)
    straight = _sft_config(tiny_model, tmp_path, tmp_path / "b", max_steps=6)
    run_sft(straight, RunFolder(straight.out, straight, echo=False))
    assert "resumed from" in (tmp_path / "a" / "log.txt").read_text()
    steps = [r["step"] for r in read_metrics(tmp_path / "a") if "loss" in r]
    assert steps == [1, 2, 3, 4, 5, 6]  # 1-4 from the first run, 5-6 after resuming
    a = load_file(str(tmp_path / "a" / "model" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / "model" / "model.safetensors"))
    assert max(float((a[k] - b[k]).abs().max()) for k in a) < 1e-6


def _pairs(n, seed, chosen, rejected):
    rng = random.Random(seed)
    return [{"prompt": _prompt("".join(rng.choices(string.ascii_lowercase, k=4))),
             "chosen": chosen, "rejected": rejected, "label": 1.0} for _ in range(n)]


def test_reward_model_separates_trivial_pairs(tiny_model, tmp_path):
    data = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(48, 0, "yes, gladly.", "no!"))
    cfg = RMConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=data),
                   eval_fraction=0.25, out=str(tmp_path / "rm"),
                   train=_train(max_steps=20, learning_rate=3e-3))
    run = RunFolder(cfg.out, cfg, echo=False)
    run_rm(cfg, run)
    scores = json.loads((run.path / "eval.json").read_text())
    assert scores["n"] == 12
    assert scores["accuracy"] > 0.9
    assert scores["margin"] > 0
    assert 0.0 <= scores["ece"] <= 1.0
    rows = read_metrics(run.path)
    assert rows[-1]["eval/accuracy"] == scores["accuracy"]
    assert {"accuracy", "margin"} <= rows[1].keys()


def _sequence_margin(model_dir, tokenizer_dir, pairs):
    """Mean over pairs of log pi(chosen) - log pi(rejected) under the model in ``model_dir``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from alignlab.data.collate import collate_pairs
    from alignlab.data.records import Message, PreferencePair
    from alignlab.data.tokenize import encode_pair
    from alignlab.models.logprobs import sequence_logprobs

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    encoded = [encode_pair(tok, PreferencePair((Message("user", p["prompt"][0]["content"]),),
                                               p["chosen"], p["rejected"]), 64, 32) for p in pairs]
    with torch.no_grad():
        seq = sequence_logprobs(model, collate_pairs(encoded, tok.pad_token_id))
    return float((seq[:len(pairs)] - seq[len(pairs):]).mean())


def test_dpo_increases_chosen_margin(tiny_model, tmp_path):
    pairs = _pairs(16, 1, "good answer", "bad reply")
    data = _write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = PreferenceConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=data),
                           loss=[{"name": "dpo", "beta": 0.1}], reference_cache="none",
                           out=str(tmp_path / "dpo"), train=_train(max_steps=12, learning_rate=3e-3))
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_preference(cfg, run)
    rows = [r for r in read_metrics(run.path) if "loss" in r]
    # step 1: the policy is the reference, so the implicit-reward margin is 0 and the loss log 2
    assert rows[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert rows[0]["loss"] == pytest.approx(0.693147, abs=1e-4)
    assert rows[-1]["rewards/margin"] > 0.5 and rows[-1]["loss"] < 0.5
    before = _sequence_margin(tiny_model, tiny_model, pairs)
    after = _sequence_margin(str(model_dir), tiny_model, pairs)
    assert after - before > 5.0, (before, after)


def test_pmp_binarises_vote_pairs_then_rm_fine_tunes_from_it(tiny_model, tmp_path):
    """PMP on Stack Exchange-style rows: 16 questions x 1 ranked pair, 4 held out -> 24 training and
    8 eval GOOD/BAD pairs; the discrimination is learnt; ``rm`` starts from the PMP model."""
    from alignlab.train.pmp import PMPConfig, run_pmp

    rows = [{"question": f"question {i}?", "answers": [
        {"text": "yes, gladly.", "upvotes": 12}, {"text": "no!", "upvotes": -3}]} for i in range(16)]
    data = _write_jsonl(tmp_path / "forum.jsonl", rows)
    cfg = PMPConfig(model=ModelSettings(path=tiny_model), data=DataSettings(path=data),
                    eval_fraction=0.25, out=str(tmp_path / "pmp"),
                    train=_train(max_steps=25, learning_rate=3e-3))
    run = RunFolder(cfg.out, cfg, echo=False)
    model_dir = run_pmp(cfg, run)
    assert "binarised: 24 training and 8 eval GOOD/BAD pairs" in (run.path / "log.txt").read_text()
    scores = json.loads((run.path / "eval.json").read_text())
    assert scores["n"] == 8 and scores["accuracy"] == 1.0
    prefs = _write_jsonl(tmp_path / "pairs.jsonl", _pairs(8, 0, "yes, gladly.", "no!"))
    rm = RMConfig(model=ModelSettings(path=str(model_dir)), data=DataSettings(path=prefs),
                  eval_fraction=0.0, out=str(tmp_path / "rm"), train=_train(max_steps=1))
    assert (run_rm(rm, RunFolder(rm.out, rm, echo=False)) / "model.safetensors").is_file()
