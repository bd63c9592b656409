"""The reference log-prob cache: keyed on model, layout and data; verified on load.

The stage-level tests use 1024 pairs so that DPO's first cached block (1024 pairs) and NPO's first
block (1024 of its 2048 unpaired completions) have the same number of examples: the case in which the
old key (model + row digest only) handed NPO DPO's values (NPO first) or crashed DPO (DPO after NPO).
"""

import json
import os
import shutil
import time

import pytest
import torch
from test_train_stages import _pairs, _train, _write_jsonl, tiny_model  # noqa: F401

from alignlab.config import DataSettings, ModelSettings
from alignlab.data.tokenize import Encoded
from alignlab.models.fingerprint import hub_commit, local_identity, model_identity
from alignlab.runs import RunFolder, read_metrics
from alignlab.train.pref_examples import Example
from alignlab.train.preference import PreferenceConfig, run_preference
from alignlab.train.reference_cache import (
    CACHE_VERSION,
    ReferenceCache,
    cache_meta,
    cached_reference,
    example_layout,
)

DPO = [{"name": "dpo", "beta": 0.1}]
NPO = [{"name": "npo", "beta": 0.1}]


@pytest.fixture(scope="module")
def big_pair_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("pairs") / "pairs.jsonl"
    return _write_jsonl(path, _pairs(1024, 3, "good answer", "bad reply"))


def _run(model, data, out, loss, cache, **extra):
    cfg = PreferenceConfig(model=ModelSettings(path=model), data=DataSettings(path=data), loss=loss,
                           out=str(out), reference_cache=cache,
                           train=_train(max_steps=2, batch_size=4, learning_rate=3e-3), **extra)
    run = RunFolder(cfg.out, cfg, echo=False)
    run_preference(cfg, run)
    losses = [r["loss"] for r in read_metrics(run.path) if "loss" in r]
    return losses, (run.path / "log.txt").read_text()


@pytest.mark.slow
def test_npo_after_dpo_gets_its_own_reference(tiny_model, big_pair_file, tmp_path):  # noqa: F811
    cache = str(tmp_path / "cache")
    _run(tiny_model, big_pair_file, tmp_path / "dpo", DPO, cache)
    cached, log = _run(tiny_model, big_pair_file, tmp_path / "npo", NPO, cache)
    uncached, _ = _run(tiny_model, big_pair_file, tmp_path / "npo_fresh", NPO, "none")
    assert "0 cached block(s) reused" in log
    assert cached == pytest.approx(uncached, abs=1e-6)
    assert len(list((tmp_path / "cache").iterdir())) == 2


@pytest.mark.slow
def test_dpo_after_npo_runs_with_its_own_reference(tiny_model, big_pair_file, tmp_path):  # noqa: F811
    cache = str(tmp_path / "cache")
    _run(tiny_model, big_pair_file, tmp_path / "npo", NPO, cache)
    cached, log = _run(tiny_model, big_pair_file, tmp_path / "dpo", DPO, cache)
    uncached, _ = _run(tiny_model, big_pair_file, tmp_path / "dpo_fresh", DPO, "none")
    assert "0 cached block(s) reused" in log
    assert cached == pytest.approx(uncached, abs=1e-6)
    again, log2 = _run(tiny_model, big_pair_file, tmp_path / "dpo_again", DPO, cache)
    assert "1 cached block(s) reused" in log2 and again == cached


def _copy_model(tiny_model, dest):  # noqa: F811
    shutil.copytree(tiny_model, dest)  # copy2: sizes and mtimes kept
    return dest


def _replace_keeping_size_and_mtime(path):
    """Flip one byte of the last 4 bytes (tensor data) and restore the old mtime."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    time.sleep(0.01)
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@pytest.mark.parametrize("check", ["stat", "content"])
def test_weights_replaced_with_equal_size_and_mtime_change_the_identity(tiny_model, tmp_path,  # noqa: F811
                                                                        check):
    folder = _copy_model(tiny_model, tmp_path / "m")
    before = local_identity(folder, check)
    _replace_keeping_size_and_mtime(folder / "model.safetensors")
    assert local_identity(folder, check) != before


def test_content_identity_covers_subfolders_and_ignores_the_path(tiny_model, tmp_path):  # noqa: F811
    folder = _copy_model(tiny_model, tmp_path / "m")
    moved = _copy_model(tiny_model, tmp_path / "elsewhere")
    assert local_identity(folder, "content") == local_identity(moved, "content")
    assert local_identity(folder, "stat") != local_identity(moved, "stat")
    (folder / "sub").mkdir()
    (folder / "sub" / "extra.bin").write_bytes(b"x")
    names = [entry[0] for entry in local_identity(folder, "content")["files"]]
    assert "sub/extra.bin" in names and "model.safetensors" in names


@pytest.mark.slow
def test_content_mode_recomputes_after_a_same_size_same_mtime_swap(tiny_model, tmp_path):  # noqa: F811
    folder = _copy_model(tiny_model, tmp_path / "m")
    pairs = _write_jsonl(tmp_path / "p.jsonl", _pairs(8, 1, "good answer", "bad reply"))
    cache = str(tmp_path / "cache")
    extra = {"reference_cache_weights": "content"}
    _run(str(folder), pairs, tmp_path / "a", DPO, cache, **extra)
    _, log_same = _run(str(folder), pairs, tmp_path / "b", DPO, cache, **extra)
    _replace_keeping_size_and_mtime(folder / "model.safetensors")
    _, log_swapped = _run(str(folder), pairs, tmp_path / "c", DPO, cache, **extra)
    assert "1 cached block(s) reused" in log_same
    assert "0 cached block(s) reused" in log_swapped


def test_hub_model_without_resolvable_commit_is_not_cached(monkeypatch, tmp_path):
    import huggingface_hub.constants as hub

    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert model_identity("org/model", None, is_local=False) is None
    sha = "a" * 40
    assert model_identity("org/model", sha, is_local=False) == {"hub": "org/model", "commit": sha}
    repo = tmp_path / "hub" / "models--org--model"
    (repo / "refs").mkdir(parents=True)
    commit = "0123456789abcdef0123456789abcdef01234567"
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "config.json").write_text("{}")
    assert hub_commit("org/model", None) == commit


# ----------------------------------------------------------------------------- block checks


def _examples(n, slots):
    row = Encoded(input_ids=[1, 5, 6], loss_mask=[0, 1, 1])
    return [Example(tuple(row for _ in range(slots)), label=1.0) for _ in range(n)]


def _meta(examples, block_size=4):
    return cache_meta({"weights": "w"}, example_layout("pair", examples, False), examples, block_size)


def _attach(examples, cache, logs):
    calls = []

    def compute(block):
        calls.append(len(block))
        return torch.arange(len(block) * 2, dtype=torch.float32).reshape(len(block), 2) - 100.0

    out = cached_reference(examples, cache, compute, True, lambda: None, logs.append)
    return out, calls


def test_corrupt_and_wrongly_shaped_blocks_are_recomputed(tmp_path):
    examples = _examples(10, 2)
    logs: list[str] = []
    first, calls = _attach(examples, ReferenceCache(tmp_path, _meta(examples), logs.append), logs)
    assert calls == [4, 4, 2]
    folder = next(tmp_path.iterdir())
    (folder / "block-00000.pt").write_bytes(b"not a tensor")
    torch.save(torch.zeros(4, 1), folder / "block-00001.pt")
    torch.save(torch.full((2, 2), float("nan")), folder / "block-00002.pt")
    logs.clear()
    second, calls = _attach(examples, ReferenceCache(tmp_path, _meta(examples), logs.append), logs)
    assert calls == [4, 4, 2]
    assert [e.ref for e in second] == [e.ref for e in first]
    assert any("unreadable" in m for m in logs)
    assert any("shape (4, 1), expected (4, 2)" in m for m in logs)
    assert any("non-finite" in m for m in logs)
    _, calls = _attach(examples, ReferenceCache(tmp_path, _meta(examples), logs.append), logs)
    assert calls == []


def test_a_different_meta_json_distrusts_and_replaces_every_block(tmp_path):
    examples = _examples(8, 2)
    logs: list[str] = []
    cache = ReferenceCache(tmp_path, _meta(examples), logs.append)
    _attach(examples, cache, logs)
    stored = json.loads((cache.folder / "meta.json").read_text())
    assert stored["version"] == CACHE_VERSION and stored["layout"]["slots"] == 2
    (cache.folder / "meta.json").write_text(json.dumps({**stored, "examples": 99}))
    torch.save(torch.zeros(4, 2), cache.folder / "block-00001.pt")  # stale, shape-compatible
    logs.clear()
    again = ReferenceCache(tmp_path, _meta(examples), logs.append)
    out, calls = _attach(examples, again, logs)
    assert calls == [4, 4]
    assert any("differs from this run in examples" in m for m in logs)
    assert out[5].ref == (-98.0, -97.0)
    assert json.loads((cache.folder / "meta.json").read_text()) == _meta(examples)


def test_layout_and_version_change_the_key(tmp_path):
    pairs, singles = _examples(4, 2), _examples(8, 1)
    a = ReferenceCache(tmp_path, _meta(pairs), print)
    b = ReferenceCache(tmp_path, cache_meta({"weights": "w"}, example_layout("binary", singles, False),
                                            singles, 4), print)
    assert a.folder != b.folder
    assert ReferenceCache(tmp_path, cache_meta(None, _meta(pairs)["layout"], pairs, 4),
                          print).folder is None
