"""Loading, LoRA, saving and reward-model pooling on tiny Llama models saved to tmp_path."""

from __future__ import annotations

import json

import pytest
import torch
from test_models_tiny import make_tiny_lm, save_tiny_lm

from alignlab.config import LoraSettings, ModelSettings
from alignlab.models import gguf as gguf_mod
from alignlab.models.loading import (
    ModelLoadError,
    load_causal_lm,
    load_reward_model,
    resolve_model_source,
    save_model,
)
from alignlab.models.logprobs import final_hidden_states, reward_scores
from alignlab.models.reference import ReferenceModelError, adapter_disabled

IDS = torch.tensor([[5, 9, 30, 41, 12, 7], [8, 3, 22, 60, 70, 11]])
MASK = torch.ones_like(IDS)


@pytest.fixture()
def lm_dir(tmp_path):
    return save_tiny_lm(tmp_path / "lm")


def _logits(model, ids=IDS, mask=MASK):
    with torch.no_grad():
        return model(input_ids=ids, attention_mask=mask).logits


def _perturb_lora(model, seed=1):
    """LoRA B starts at zero (adapter = identity); give it random weights so it changes outputs."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)


def test_load_folder_matches_saved_model_and_sets_pad(lm_dir):
    model, tok = load_causal_lm(ModelSettings(path=str(lm_dir)), for_training=False)
    assert tok.pad_token == tok.eos_token == "</s>"
    assert model.config.pad_token_id == tok.eos_token_id
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    torch.testing.assert_close(_logits(model), _logits(make_tiny_lm(0)), rtol=0, atol=1e-6)


def test_for_training_keeps_grads(lm_dir):
    model, _ = load_causal_lm(ModelSettings(path=str(lm_dir)))
    assert model.training and all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("path", ["./no/such/model", "/no/such/model", "~/no-such-model-xyz"])
def test_missing_local_path_is_named_without_hub_call(path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "hf_hub_download",
                        lambda *a, **k: pytest.fail("hub contacted"))
    with pytest.raises(ModelLoadError, match="no such file or folder") as info:
        load_causal_lm(ModelSettings(path=path))
    assert path in str(info.value)


def test_bin_only_folder_is_refused(tmp_path):
    folder = tmp_path / "binonly"
    folder.mkdir()
    model = make_tiny_lm(0)
    model.config.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors only") as info:
        load_causal_lm(ModelSettings(path=str(folder)))
    assert "use_safetensors=False" in str(info.value) and str(folder) in str(info.value)


def test_non_gguf_file_is_refused(tmp_path):
    path = tmp_path / "weights.txt"
    path.write_text("x")
    with pytest.raises(ModelLoadError, match="not a .gguf file"):
        resolve_model_source(ModelSettings(path=str(path)))


def test_hub_name_passes_through_with_revision():
    source, extra = resolve_model_source(ModelSettings(path="org/model", revision="abc"))
    assert (source, extra) == ("org/model", {"revision": "abc"})


def test_lora_wraps_and_adapter_disabled_gives_base(lm_dir):
    lora = LoraSettings(r=4, alpha=8, target_modules=["q_proj", "v_proj"])
    model, _ = load_causal_lm(ModelSettings(path=str(lm_dir), lora=lora))
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    base = _logits(make_tiny_lm(0))
    torch.testing.assert_close(_logits(model), base, rtol=0, atol=1e-6)  # B = 0 at init
    _perturb_lora(model)
    assert (_logits(model) - base).abs().max() > 1e-2
    with adapter_disabled(model):
        torch.testing.assert_close(_logits(model), base, rtol=0, atol=1e-6)
    assert (_logits(model) - base).abs().max() > 1e-2  # adapter back on afterwards


def test_adapter_disabled_on_plain_model_asks_for_a_reference():
    with pytest.raises(ReferenceModelError, match="separate frozen reference"), \
            adapter_disabled(make_tiny_lm(0)):
        pass


def test_save_model_merges_lora(lm_dir, tmp_path):
    lora = LoraSettings(r=4, alpha=8)  # all-linear
    model, tok = load_causal_lm(ModelSettings(path=str(lm_dir), lora=lora))
    _perturb_lora(model)
    model.eval()
    wrapped = _logits(model)
    out = save_model(model, tok, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / "adapter_config.json").exists()
    assert hasattr(model, "peft_config")  # the live model stays wrapped
    reloaded, tok2 = load_causal_lm(ModelSettings(path=str(out)), for_training=False)
    torch.testing.assert_close(_logits(reloaded), wrapped, rtol=1e-5, atol=1e-5)
    assert tok2.pad_token_id == tok.pad_token_id


def _manual_scores(model, ids, mask):
    """Score head applied by hand to the hidden state at the last mask == 1 position."""
    with torch.no_grad():
        hidden = final_hidden_states(model, ids, mask)
        last = [int(torch.nonzero(row).max()) for row in mask]
        pooled = torch.stack([hidden[i, last[i]] for i in range(len(last))])
        return (pooled @ model.score.weight.T)[:, 0]


def test_reward_model_pools_last_real_token_right_padding(lm_dir):
    model, tok = load_reward_model(ModelSettings(path=str(lm_dir)), for_training=False)
    assert model.config.num_labels == 1 and model.config.pad_token_id == tok.pad_token_id
    pad = tok.pad_token_id
    ids = torch.tensor([[5, 9, 30, 41, 12, 7], [8, 3, 22, pad, pad, pad]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        scores = reward_scores(model, ids, mask)
        hf_pooled = model(input_ids=ids, attention_mask=mask).logits[:, 0]
        alone = reward_scores(model, ids[1:, :3], mask[1:, :3])
    torch.testing.assert_close(scores, _manual_scores(model, ids, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores, hf_pooled, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(scores[1:], alone, rtol=1e-5, atol=1e-5)  # padding changes nothing


def test_reward_pooling_keeps_final_eos_when_pad_is_eos(lm_dir):
    """Text ending in eos (== pad): HF's id-based pooling would skip it; reward_scores must not."""
    model, tok = load_reward_model(ModelSettings(path=str(lm_dir)), for_training=False)
    eos = tok.eos_token_id
    ids = torch.tensor([[5, 9, 30, eos, eos, eos], [8, 3, 22, 7, 9, eos]])
    mask = torch.tensor([[1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    with torch.no_grad():
        scores = reward_scores(model, ids, mask)
        left = reward_scores(model, torch.tensor([[eos, eos, 5, 9, 30, eos]]),
                             torch.tensor([[0, 0, 1, 1, 1, 1]]))
    torch.testing.assert_close(scores, _manual_scores(model, ids, mask), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(left, scores[:1], rtol=1e-5, atol=1e-5)  # left padding agrees


def test_reward_lora_trains_head_and_saves_merged(lm_dir, tmp_path):
    lora = LoraSettings(r=4, alpha=8)
    model, tok = load_reward_model(ModelSettings(path=str(lm_dir), lora=lora))
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("score" in n for n in trainable) and any("lora_" in n for n in trainable)
    _perturb_lora(model)
    model.eval()
    mask = torch.ones_like(IDS)
    with torch.no_grad():
        before = reward_scores(model, IDS, mask)
    out = save_model(model, tok, tmp_path / "rm")
    reloaded, _ = load_reward_model(ModelSettings(path=str(out)), for_training=False)
    with torch.no_grad():
        torch.testing.assert_close(reward_scores(reloaded, IDS, mask), before, rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- GGUF cache logic


def _fake_converter(calls):
    def write(gguf_path, dtype, out):
        calls.append(str(gguf_path))
        (out / "config.json").write_text("{}")
        (out / gguf_mod.SOURCE_NOTE).write_text(json.dumps({"dtype": dtype}))
    return write


GGUF_HEADER = b"GGUF" + (3).to_bytes(4, "little") + bytes(16)  # a valid, empty v3 header


def test_gguf_converted_once_then_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))
    calls: list[str] = []
    monkeypatch.setattr(gguf_mod, "_write_converted", _fake_converter(calls))
    f = tmp_path / "m.gguf"
    f.write_bytes(GGUF_HEADER)
    first, extra = resolve_model_source(ModelSettings(path=str(f)))
    second, _ = resolve_model_source(ModelSettings(path=str(tmp_path), gguf_file="m.gguf"))
    assert first == second and len(calls) == 1 and extra == {}
    assert first.startswith(str(tmp_path / "cache" / "gguf"))
    f.write_bytes(GGUF_HEADER + b"-changed")  # new size → new conversion
    third, _ = resolve_model_source(ModelSettings(path=str(f)))
    assert third != first and len(calls) == 2


def test_gguf_killed_conversion_leaves_no_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("ALIGNLAB_CACHE", str(tmp_path / "cache"))

    def crash(gguf_path, dtype, out):
        (out / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(gguf_mod, "_write_converted", crash)
    f = tmp_path / "m.gguf"
    f.write_bytes(GGUF_HEADER)
    with pytest.raises(KeyboardInterrupt):
        resolve_model_source(ModelSettings(path=str(f)))
    assert list((tmp_path / "cache" / "gguf").iterdir()) == []


def test_gguf_file_missing_in_folder_is_named(tmp_path):
    with pytest.raises(ModelLoadError, match="'absent.gguf' not found"):
        resolve_model_source(ModelSettings(path=str(tmp_path), gguf_file="absent.gguf"))


def test_pkg_scheme_locates_file_in_installed_package_without_importing_it():
    """pkg://PACKAGE/file resolves inside the package folder; a missing package is a clear error."""
    import json as json_pkg
    from pathlib import Path

    from alignlab.models.loading import ModelLoadError, resolve_package_path

    resolved = resolve_package_path("pkg://json/decoder.py")
    assert resolved == str(Path(json_pkg.__file__).parent / "decoder.py")
    assert resolve_package_path("./plain/folder") == "./plain/folder"
    with pytest.raises(ModelLoadError, match="package 'no_such_pkg_xyz' is not installed"):
        resolve_package_path("pkg://no_such_pkg_xyz/model.gguf")
