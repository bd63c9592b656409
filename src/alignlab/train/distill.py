"""Context distillation stage (Askell et al. 2021, "A General Language Assistant as a Laboratory
for Alignment", sec. 3.1).

Teacher pass. Each conversation X of ``data`` is encoded exactly as the student will see it
(``encode_conversation``, the training encoding). The teacher reads the context C before it:
``prompt_ids(C)`` (C's tokens with the tokenizer's bos, when it has one, in front) followed by X
without the bos that encoding X added (if it added one). C and X are tokenised separately, so X's
ids are the student's ids exactly. The teacher logit at index ``t + shift`` (``shift`` = len(C ids)
minus the dropped bos) is its prediction of X[t+1]; at each trained position t (``positions: all``:
t = 0 .. len(X)-2; ``assistant``: the t whose next token is an assistant target) the top-k ids
and probabilities are kept. With ``generation`` set, ``data`` holds prompts and the teacher first
samples responses from ``C + rendered prompt`` (tokenised as one prompt text).

Storage. ``run.path/teacher/shard-NNNNN.safetensors`` (one per ``SHARD_RECORDS`` data records)
plus ``index.json`` listing the finished shards and a fingerprint of every setting they depend on.
A shard is written to a temporary name and renamed, then the index is rewritten the same way; a
killed pass resumes at the first shard missing from the index, and a changed setting is refused.

Student. The student reads X alone and is trained with the shared loop (checkpoint/resume, LoRA,
gradient accumulation) on the coarsened KL of :mod:`alignlab.losses.distill`, token-mean over the
trained positions of each optimiser step. Departure from the paper: the paper distils the full
distribution; here only the teacher's top k plus one rest bucket (the KL is a lower bound of the
full one). The teacher pass runs on the main process only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import partial
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch.utils.checkpoint import checkpoint

from alignlab import crashpoint
from alignlab.config import (
    ConfigError,
    DataSettings,
    GenerationSettings,
    ModelSettings,
    StageConfig,
    TrainSettings,
)
from alignlab.data.collate import pad_encoded
from alignlab.data.errors import RecordError
from alignlab.data.loading import load_prompt_data, load_records
from alignlab.data.records import Conversation, Message
from alignlab.data.tokenize import Encoded, encode_conversation, prompt_ids, render_prompt, text_ids
from alignlab.generation.hf import HFGenerator
from alignlab.losses.distill import coarse_kl_sum
from alignlab.models.loading import load_causal_lm, load_tokenizer, resolve_model_source
from alignlab.models.logprobs import final_hidden_states, head_logits
from alignlab.runs import RunFolder
from alignlab.train.common import batched, keep_best, report_data, save_final, start_stage
from alignlab.train.held_out import HeldOut
from alignlab.train.loop import main_log, train_loop


class DistillConfig(StageConfig):
    """Context distillation (Askell et al. 2021, "A General Language Assistant as a Laboratory for
    Alignment", section 3.1).

    The teacher (``teacher``; default: the student's starting weights) reads ``context`` (the HHH
    prompt; ``default`` is the one shipped with alignlab, or a path to a text file) followed by each
    conversation in ``data``; its top-``top_k`` next-token probabilities at every position of the
    conversation (``positions``) are stored. The student (``model``) is trained without the context
    on the KL from those stored distributions. With ``generation`` set, ``data`` holds prompts and
    the teacher first samples the responses (with the context). ``eval_data`` (same form as
    ``data``) gets its own teacher pass (``teacher_eval/``) and the student's held-out KL to the
    teacher is reported during training (``eval/kl``, ``train.eval_every``) and at the end.
    """

    stage: Literal["distill"] = "distill"
    model: ModelSettings
    teacher: ModelSettings | None = None
    data: DataSettings
    context: str = "default"
    top_k: int = Field(50, ge=1)
    positions: Literal["all", "assistant"] = "all"
    generation: GenerationSettings | None = None
    train: TrainSettings = Field(default_factory=TrainSettings)
    eval_data: DataSettings | None = None
    out: str


SHARD_RECORDS = 64
HEAD_CHUNK = 256


# ----------------------------------------------------------------------------- context


def read_context(spec: str) -> str:
    """The context text: the shipped HHH prompt for ``default``, else the file ``spec``.

    Trailing whitespace is removed so the conversation's own rendering follows directly. A missing
    or empty file is a ConfigError naming the path.
    """
    if spec == "default":
        text = (resources.files("alignlab") / "resources" / "hhh_context.txt").read_text()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise ConfigError(f"context: file {spec!r} not found ({path.resolve()}); give "
                              "'default' or the path of a text file")
        text = path.read_text()
    if not text.strip():
        raise ConfigError(f"context {spec!r} is empty")
    return text.rstrip()


def bos_was_added(tokenizer, messages) -> bool:
    """Whether encoding the conversation put a bos in front of its rendered prompt."""
    first = next(i for i, m in enumerate(messages) if m.role == "assistant")
    head = render_prompt(tokenizer, messages[:first])
    return len(prompt_ids(tokenizer, head)) > len(text_ids(tokenizer, head))


def teacher_sequence(context_ids: list[int], x_ids: list[int],
                     bos_added: bool) -> tuple[list[int], int]:
    """``(teacher ids, shift)``: C's ids then X (minus its added bos); the teacher's logit at
    ``t + shift`` predicts ``x_ids[t + 1]``."""
    drop = 1 if bos_added else 0
    return context_ids + x_ids[drop:], len(context_ids) - drop


def trained_positions(encoded: Encoded, mode: str) -> list[int]:
    """Positions t whose next-token prediction is trained (``all`` or ``assistant`` targets)."""
    last = len(encoded.input_ids) - 1
    if mode == "all":
        return list(range(last))
    return [t for t in range(last) if encoded.loss_mask[t + 1]]


# ----------------------------------------------------------------------------- forward passes


def _picked_hidden(model, input_ids, attention_mask, rows, cols) -> torch.Tensor:
    hidden = final_hidden_states(model, input_ids, attention_mask)
    return hidden[rows, cols]


def _row_col(positions: list[list[int]], shifts: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
    rows = [i for i, pos in enumerate(positions) for _ in pos]
    cols = [t + s for pos, s in zip(positions, shifts) for t in pos]
    return torch.tensor(rows, dtype=torch.long), torch.tensor(cols, dtype=torch.long)


@torch.no_grad()
def teacher_topk(model, sequences: list[list[int]], positions: list[list[int]], shifts: list[int],
                 k: int, pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``[N, k]`` top-k token ids (int32) and probabilities (float32) of the teacher at index
    ``t + shift`` of each sequence, for every t of its ``positions``, rows in that order."""
    batch = pad_encoded([Encoded(s, [0] * len(s)) for s in sequences], pad_id)
    device = next(model.parameters()).device
    rows, cols = _row_col(positions, shifts)
    hidden = _picked_hidden(model, batch["input_ids"].to(device),
                            batch["attention_mask"].to(device), rows.to(device), cols.to(device))
    ids, probs = [], []
    for start in range(0, hidden.shape[0], HEAD_CHUNK):
        p = torch.softmax(head_logits(model, hidden[start:start + HEAD_CHUNK]), dim=-1)
        top = torch.topk(p, min(k, p.shape[-1]), dim=-1)
        ids.append(top.indices.int().cpu())
        probs.append(top.values.float().cpu())
    return torch.cat(ids), torch.cat(probs)


def _chunk_kl(hidden, ids, probs, model) -> torch.Tensor:
    return coarse_kl_sum(head_logits(model, hidden), ids, probs)[0]


class DistillModule(torch.nn.Module):
    """``forward(batch) -> summed coarse KL`` of the student over the batch's trained positions.

    Only the selected positions go through the vocabulary head, ``HEAD_CHUNK`` rows at a time and
    checkpointed under grad (as :func:`alignlab.models.logprobs.token_logprobs` does)."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, batch: dict) -> torch.Tensor:
        hidden = _picked_hidden(self.model, batch["input_ids"], batch["attention_mask"],
                                batch["rows"], batch["cols"])
        use_ckpt = torch.is_grad_enabled()
        total = hidden.new_zeros((), dtype=torch.float32)
        for s in range(0, hidden.shape[0], HEAD_CHUNK):
            args = (hidden[s:s + HEAD_CHUNK], batch["topk_ids"][s:s + HEAD_CHUNK],
                    batch["topk_probs"][s:s + HEAD_CHUNK], self.model)
            total = total + (checkpoint(_chunk_kl, *args, use_reentrant=False) if use_ckpt
                             else _chunk_kl(*args))
        return total


# ----------------------------------------------------------------------------- storage


@dataclass
class DistillItem:
    """One student sequence X with the teacher's top-k at its trained positions."""

    input_ids: list[int]
    positions: list[int]
    topk_ids: torch.Tensor
    topk_probs: torch.Tensor


def collate_distill(items: list[DistillItem], pad_id: int) -> dict:
    """Right-padded ``input_ids``/``attention_mask`` plus flat ``rows``/``cols`` (batch row and
    position of each trained position) aligned with the concatenated ``topk_ids``/``topk_probs``."""
    batch = pad_encoded([Encoded(it.input_ids, [0] * len(it.input_ids)) for it in items], pad_id)
    rows, cols = _row_col([it.positions for it in items], [0] * len(items))
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "rows": rows, "cols": cols, "topk_ids": torch.cat([it.topk_ids for it in items]),
            "topk_probs": torch.cat([it.topk_probs for it in items])}


def _offsets(lengths: list[int]) -> torch.Tensor:
    return torch.tensor([0] + lengths, dtype=torch.long).cumsum(0)


def shard_tensors(items: list[DistillItem], records: list[int]) -> dict[str, torch.Tensor]:
    """The flat tensors of one shard (``load_shard`` reads them back)."""
    k = items[0].topk_ids.shape[1] if items else 1
    empty_ids, empty_probs = torch.zeros(0, k, dtype=torch.int32), torch.zeros(0, k)
    return {
        "record": torch.tensor(records, dtype=torch.long),
        "seq_offsets": _offsets([len(it.input_ids) for it in items]),
        "input_ids": torch.tensor([t for it in items for t in it.input_ids], dtype=torch.int32),
        "pos_offsets": _offsets([len(it.positions) for it in items]),
        "positions": torch.tensor([t for it in items for t in it.positions], dtype=torch.int32),
        "topk_ids": torch.cat([it.topk_ids for it in items]) if items else empty_ids,
        "topk_probs": torch.cat([it.topk_probs for it in items]) if items else empty_probs,
    }


def load_shard(path: Path) -> list[DistillItem]:
    """The items of one shard file, in the order they were written."""
    t = load_file(str(path))
    so, po = t["seq_offsets"].tolist(), t["pos_offsets"].tolist()
    return [DistillItem(t["input_ids"][so[i]:so[i + 1]].tolist(),
                        t["positions"][po[i]:po[i + 1]].tolist(),
                        t["topk_ids"][po[i]:po[i + 1]], t["topk_probs"][po[i]:po[i + 1]])
            for i in range(len(so) - 1)]


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    crashpoint.hit("teacher_shard")
    os.replace(tmp, path)


class TeacherStore:
    """The ``teacher/`` folder: shards plus ``index.json`` (module docstring). ``fingerprint``
    None opens it read-only for an existing, finished-or-not index."""

    def __init__(self, folder: str | Path, fingerprint: str | None = None):
        self.folder = Path(folder)
        self.index_path = self.folder / "index.json"
        self.index = json.loads(self.index_path.read_text()) if self.index_path.is_file() else None
        if fingerprint is None:
            if self.index is None:
                raise FileNotFoundError(f"{self.index_path}: no teacher outputs here")
            return
        if self.index is not None and self.index["fingerprint"] != fingerprint:
            raise ValueError(f"{self.index_path}: the stored teacher outputs were made with other "
                             "settings (context, teacher, data, top_k, positions, lengths or "
                             f"generation); use a new out or delete {self.folder}")
        if self.index is None:
            self.index = {"fingerprint": fingerprint, "shards": {}}

    def done(self, shard: int) -> bool:
        """Whether ``shard`` is recorded in the index (finished)."""
        return str(shard) in self.index["shards"]

    def write(self, shard: int, items: list[DistillItem], records: list[int], dropped: int) -> None:
        """Write one shard, then record it in the index (both atomically)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        name = f"shard-{shard:05d}.safetensors"
        tensors = shard_tensors(items, records)
        _atomic_write(self.folder / name, lambda p: save_file(tensors, str(p)))
        self.index["shards"][str(shard)] = {
            "file": name, "sequences": len(items), "dropped": dropped,
            "positions": int(tensors["positions"].numel()),
            "top_k_mass": float(tensors["topk_probs"].sum(-1).mean()) if items else None}
        _atomic_write(self.index_path, lambda p: p.write_text(json.dumps(self.index, indent=1)))

    def load(self) -> list[DistillItem]:
        """Every stored item, shards in order."""
        shards = sorted(self.index["shards"].items(), key=lambda kv: int(kv[0]))
        return [it for _, meta in shards for it in load_shard(self.folder / meta["file"])]


# ----------------------------------------------------------------------------- teacher pass


def teacher_settings(cfg: DistillConfig) -> ModelSettings:
    """``cfg.teacher``, or the student's starting weights (its settings without LoRA)."""
    return cfg.teacher or cfg.model.model_copy(update={"lora": None})


def student_tokenizer(cfg: DistillConfig):
    """The student's tokenizer (X is always encoded with it), without loading its weights."""
    source, extra = resolve_model_source(cfg.model)
    return load_tokenizer(source, cfg.model, extra)


def load_source(cfg: DistillConfig):
    """Conversations (no ``generation``) or prompts (with it), as LoadedData."""
    if cfg.generation is None:
        return load_records(cfg.data, "conversation")
    return load_prompt_data(cfg.data)


def fingerprint(cfg: DistillConfig, context: str, num_records: int) -> str:
    """Hash of every setting the stored teacher outputs depend on."""
    keys = {"context": context, "teacher": teacher_settings(cfg).model_dump(mode="json"),
            "data": cfg.data.model_dump(mode="json"), "top_k": cfg.top_k,
            "positions": cfg.positions,
            "max_length": cfg.train.max_length, "max_prompt_length": cfg.train.max_prompt_length,
            "generation": cfg.generation.model_dump(mode="json") if cfg.generation else None,
            "num_records": num_records, "shard_records": SHARD_RECORDS}
    return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:20]


def _conversations(cfg: DistillConfig, teacher, tokenizer, context: str, chunk: list, shard: int):
    """``(record offset in chunk, Conversation)``: the records, or teacher samples for prompts."""
    if cfg.generation is None:
        return list(enumerate(chunk))
    settings = cfg.generation.model_copy(update={"seed": cfg.generation.seed + shard})
    generator = HFGenerator(teacher, tokenizer,
                            render_prompt=lambda tok, msgs: context + render_prompt(tok, msgs))
    samples = generator.generate(chunk, settings)
    return [(i, Conversation(tuple(p) + (Message("assistant", s.text),)))
            for i, (p, outs) in enumerate(zip(chunk, samples)) for s in outs]


@dataclass
class TeacherInput:
    """One encoded sequence X waiting for the teacher: its record, the student's ids and trained
    positions, and the teacher's ids ``[C; X]`` with the index shift between the two."""

    record: int
    x_ids: list[int]
    positions: list[int]
    teacher_ids: list[int]
    shift: int


class TeacherPass:
    """Computes and stores the teacher's top-k for every record of ``cfg.data`` (resumable)."""

    def __init__(self, cfg: DistillConfig, tokenizer, context: str, log=print):
        self.cfg, self.tokenizer, self.context, self.log = cfg, tokenizer, context, log
        self.context_ids = prompt_ids(tokenizer, context)
        self.teacher = None

    def run(self, folder: Path, loaded) -> TeacherStore:
        """Fill ``folder`` with the shards that are not there yet."""
        records = loaded.records
        store = TeacherStore(folder, fingerprint(self.cfg, self.context, len(records)))
        n_shards = -(-len(records) // SHARD_RECORDS)
        for shard in range(n_shards):
            if store.done(shard):
                continue
            first = shard * SHARD_RECORDS
            chunk = records[first:first + SHARD_RECORDS]
            items, recs, dropped = self.shard(chunk, shard, loaded.source, first)
            store.write(shard, items, recs, dropped)
            meta = store.index["shards"][str(shard)]
            self.log(f"teacher: shard {shard + 1}/{n_shards}: {meta['sequences']} sequences, "
                     f"{meta['positions']} positions, {dropped} dropped, "
                     f"mean top-k mass {meta['top_k_mass']}")
        return store

    def _load_teacher(self):
        if self.teacher is None:
            settings = teacher_settings(self.cfg)
            self.teacher, tok = load_causal_lm(settings, for_training=False)
            if tok.get_vocab() != self.tokenizer.get_vocab():
                raise ValueError(f"teacher {settings.path!r} and student {self.cfg.model.path!r} "
                                 "have different vocabularies")
        return self.teacher

    def shard(self, chunk: list, shard: int, source: str, first: int):
        """``(items, record indices, dropped count)`` for one shard of records."""
        teacher = self._load_teacher()
        inputs, dropped = [], 0
        pairs = _conversations(self.cfg, teacher, self.tokenizer, self.context, chunk, shard)
        for offset, conv in pairs:
            prepared = self._prepare(conv, source, first + offset)
            if prepared is None:
                dropped += 1
            else:
                inputs.append(prepared)
        items = []
        for group in batched(inputs, self.cfg.train.batch_size):
            items += self._score(teacher, group)
        return items, [x.record for x in inputs], dropped

    def _prepare(self, conv: Conversation, source: str, record: int) -> TeacherInput | None:
        """The conversation encoded for student and teacher; None without a trained position."""
        cfg, tok = self.cfg, self.tokenizer
        try:
            enc = encode_conversation(tok, conv, cfg.train.max_length, cfg.train.max_prompt_length)
        except ValueError as exc:
            raise RecordError(source, record + 1, None, f"cannot tokenise record: {exc}") from None
        positions = trained_positions(enc, cfg.positions)
        if not positions:
            return None
        seq, shift = teacher_sequence(self.context_ids, enc.input_ids,
                                      bos_was_added(tok, conv.messages))
        limit = getattr(self.teacher.config, "max_position_embeddings", None)
        if limit is not None and len(seq) > limit:
            raise ValueError(f"context {cfg.context!r} ({len(self.context_ids)} tokens) plus a "
                             f"{len(enc.input_ids)}-token sequence exceeds the teacher's {limit} "
                             "positions; shorten the context or train.max_length")
        return TeacherInput(record, enc.input_ids, positions, seq, shift)

    def _score(self, teacher, group: list[TeacherInput]) -> list[DistillItem]:
        ids, probs = teacher_topk(teacher, [x.teacher_ids for x in group],
                                  [x.positions for x in group], [x.shift for x in group],
                                  self.cfg.top_k, self.tokenizer.pad_token_id)
        items, start = [], 0
        for x in group:
            end = start + len(x.positions)
            items.append(DistillItem(x.x_ids, x.positions, ids[start:end], probs[start:end]))
            start = end
        return items


def build_teacher_outputs(cfg: DistillConfig, folder: str | Path, tokenizer=None, log=print,
                          loaded=None) -> TeacherStore:
    """Run (or resume) the teacher pass of ``cfg`` into ``folder``; returns the store."""
    context = read_context(cfg.context)
    tokenizer = student_tokenizer(cfg) if tokenizer is None else tokenizer
    loaded = load_source(cfg) if loaded is None else loaded
    return TeacherPass(cfg, tokenizer, context, log).run(Path(folder), loaded)


# ----------------------------------------------------------------------------- training


def distill_step(model, batch: dict):
    """``(kl_sum, n_positions, {"kl": kl_sum})`` for one micro-batch (``model``: DistillModule)."""
    total = model(batch)
    return total, int(batch["rows"].numel()), {"kl": total.detach()}


def count_positions(batch: dict) -> int:
    """Trained positions in a collated batch (the loss units of the shared loop)."""
    return int(batch["rows"].numel())


@torch.no_grad()
def mean_kl(model, items: list[DistillItem], pad_id: int, batch_size: int = 16) -> float:
    """Token-mean coarse KL of ``model`` (a plain causal LM) to the stored teacher outputs."""
    module, total, count = DistillModule(model).eval(), 0.0, 0
    device = next(model.parameters()).device
    for group in batched(items, batch_size):
        batch = {k: v.to(device) for k, v in collate_distill(group, pad_id).items()}
        total += float(module(batch))
        count += count_positions(batch)
    return total / max(count, 1)


def kl_to_teacher(settings: ModelSettings, folder: str | Path, batch_size: int = 16) -> float:
    """Mean coarse KL of the model ``settings`` to the teacher outputs stored in ``folder``."""
    model, tokenizer = load_causal_lm(settings, for_training=False)
    return mean_kl(model, TeacherStore(folder).load(), tokenizer.pad_token_id, batch_size)


def run_distill(cfg: DistillConfig, run: RunFolder) -> Path:
    """Teacher pass (resumable) then KL training of the student; returns the saved model folder."""
    context = read_context(cfg.context)
    acc = start_stage("distill", cfg.train.seed, run)
    loaded = load_source(cfg)
    report_data(acc, run, loaded, "prompt" if cfg.generation else "conversation")
    tokenizer = student_tokenizer(cfg)
    folder = run.path / "teacher"
    if acc.is_main_process:
        main_log(acc, run, f"context: {len(prompt_ids(tokenizer, context))} tokens; "
                           f"top_k {cfg.top_k}, positions {cfg.positions}")
        build_teacher_outputs(cfg, folder, tokenizer, partial(main_log, acc, run), loaded)
    acc.wait_for_everyone()
    items = TeacherStore(folder).load()
    if not items:
        raise ValueError(f"{loaded.source}: no sequence has a trained position within max_length")
    main_log(acc, run, f"{len(items)} sequences, {sum(len(i.positions) for i in items)} positions")
    held_items = held_out_teacher(cfg, acc, run, tokenizer)
    model, tokenizer = load_causal_lm(cfg.model)
    collate = partial(collate_distill, pad_id=tokenizer.pad_token_id)
    held_out = None
    if held_items:
        held_out = HeldOut(held_items, collate, distill_step, cfg.train.batch_size,
                           save_best=keep_best(run, tokenizer, lambda module: module.model))
    result = train_loop(DistillModule(model), items, collate, distill_step, count_positions,
                        cfg.train, run, acc, held_out)
    return save_final(acc, run, result.model.model, tokenizer, cfg.train.save_best is not None)


def held_out_teacher(cfg: DistillConfig, acc, run: RunFolder, tokenizer) -> list[DistillItem]:
    """The teacher's outputs on ``eval_data`` (its own resumable pass into ``teacher_eval/``)."""
    if cfg.eval_data is None:
        return []
    held_cfg = cfg.model_copy(update={"data": cfg.eval_data})
    folder = run.path / "teacher_eval"
    if acc.is_main_process:
        loaded = load_source(held_cfg)
        report_data(acc, run, loaded, "held-out " + ("prompt" if cfg.generation else "conversation"))
        build_teacher_outputs(held_cfg, folder, tokenizer, partial(main_log, acc, run), loaded)
    acc.wait_for_everyone()
    items = TeacherStore(folder).load()
    main_log(acc, run, f"{len(items)} held-out sequences, "
                       f"{sum(len(i.positions) for i in items)} positions")
    return items
