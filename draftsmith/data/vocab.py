"""Draft vocabulary: the target token ids the draft predicts, and the d2t / t2d maps of the checkpoint.

The draft's lm_head covers the `draft_vocab_size` target ids most frequent among the
supervised tokens of the training set (sorted by id). When the data has fewer
distinct supervised ids than that, the rest is filled with the most frequent other
ids of the whole dataset, then the lowest unused ids: never a duplicate. The mapping
is saved beside the dataset (safetensors, keyed by the two sizes and the dataset's
build key) so a second call is instant and a rebuilt dataset never reuses it.

This module is the one owner of the selection (`select_draft_vocab`, reached through
`mapping_from_counts`) and of its digest (`vocab_digest`): build-dataset, hidden-states
(a top-K store's vocab) and the trainer (from a tokenized folder or from a feature store's
rows) all call them, so the same data gives the same vocabulary everywhere.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from draftsmith.errors import DraftsmithError, InputError
from draftsmith.fsutil import atomic_path

VOCAB_DIR = "vocab"


@dataclass
class VocabMapping:
    """`draft_to_target[d]` is the target id of draft id d; `d2t[d] = draft_to_target[d] - d`
    (the checkpoint's offset form, target = draft + d2t[draft]); `t2d[t]` is True iff t is in the draft vocab.
    `coverage`: fraction of the dataset's supervised tokens inside the draft vocab."""

    draft_to_target: torch.Tensor
    d2t: torch.Tensor
    t2d: torch.Tensor
    coverage: float
    path: Path | None = None

    @classmethod
    def from_draft_to_target(cls, draft_to_target: torch.Tensor, target_vocab_size: int,
                             coverage: float = float("nan"), path: Path | None = None) -> "VocabMapping":
        draft_to_target = draft_to_target.to(torch.int64)
        d2t = draft_to_target - torch.arange(len(draft_to_target), dtype=torch.int64)
        t2d = torch.zeros(target_vocab_size, dtype=torch.bool)
        t2d[draft_to_target] = True
        return cls(draft_to_target, d2t, t2d, coverage, path)

    def save(self, path: str | Path, metadata: dict[str, str]) -> None:
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            save_file({"draft_to_target": self.draft_to_target, "d2t": self.d2t, "t2d": self.t2d}, str(tmp),
                      metadata={**metadata, "coverage": repr(self.coverage)})

    @classmethod
    def load(cls, path: str | Path) -> "VocabMapping":
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in ("draft_to_target", "d2t", "t2d")}
            coverage = float((f.metadata() or {}).get("coverage", "nan"))
        return cls(tensors["draft_to_target"], tensors["d2t"], tensors["t2d"], coverage, Path(path))


def select_draft_vocab(supervised_counts: np.ndarray, all_counts: np.ndarray, draft_vocab_size: int) -> np.ndarray:
    """Sorted target ids: most frequent supervised ids first, then most frequent others, then lowest unused."""
    vocab = len(supervised_counts)
    ids = np.arange(vocab)
    # order by (-supervised count, -all count, id): lexsort sorts by the last key first
    order = np.lexsort((ids, -all_counts, -supervised_counts))
    return np.sort(order[:draft_vocab_size])


def mapping_from_counts(supervised: np.ndarray, every: np.ndarray, target_vocab_size: int, draft_vocab_size: int,
                        path: Path | None = None) -> VocabMapping:
    """The mapping `select_draft_vocab` picks from (supervised, all-token) counts per target id."""
    chosen = select_draft_vocab(supervised, every, draft_vocab_size)
    total = int(supervised.sum())
    coverage = float(supervised[chosen].sum() / total) if total else 0.0
    return VocabMapping.from_draft_to_target(torch.from_numpy(chosen), target_vocab_size, coverage, path)


def vocab_digest(draft_to_target: torch.Tensor) -> str:
    """sha256 of the draft's target ids (int64 bytes): what a top-K feature store records of its vocab."""
    return hashlib.sha256(draft_to_target.long().cpu().numpy().tobytes()).hexdigest()


def token_counts(dataset_path: str | Path, vocab_size: int) -> tuple[np.ndarray, np.ndarray]:
    """(supervised counts, all-token counts) per target id over a built dataset."""
    from datasets import load_from_disk

    table = load_from_disk(str(dataset_path)).with_format("arrow")
    supervised = np.zeros(vocab_size, dtype=np.int64)
    every = np.zeros(vocab_size, dtype=np.int64)
    for batch in table.iter(batch_size=4096):
        ids = batch["input_ids"].combine_chunks().flatten().to_numpy()
        mask = batch["loss_mask"].combine_chunks().flatten().to_numpy().astype(bool)
        if ids.size and (ids.max() >= vocab_size or ids.min() < 0):
            raise InputError(f"token id {int(ids.max())} is outside the target vocab of {vocab_size}: "
                             "the dataset was built with another tokenizer", path=dataset_path, field="input_ids")
        every += np.bincount(ids, minlength=vocab_size)
        supervised += np.bincount(ids[mask], minlength=vocab_size)
    return supervised, every


def _dataset_key(dataset_path: Path) -> str:
    manifest = dataset_path / "draftsmith_build.json"
    if manifest.is_file():
        return json.loads(manifest.read_text(encoding="utf-8")).get("key", "")
    state = dataset_path / "state.json"
    return json.loads(state.read_text(encoding="utf-8")).get("_fingerprint", "") if state.is_file() else ""


def build_vocab_mapping(dataset_path: str | Path, target_vocab_size: int, draft_vocab_size: int) -> VocabMapping:
    """The draft vocab mapping of a built dataset, cached beside it."""
    dataset_path = Path(dataset_path)
    if draft_vocab_size <= 0 or draft_vocab_size > target_vocab_size:
        raise DraftsmithError(f"draft vocab size {draft_vocab_size} must be in 1..{target_vocab_size} "
                              "(the target vocab size)")
    key = _dataset_key(dataset_path)
    path = dataset_path / VOCAB_DIR / f"draft{draft_vocab_size}_target{target_vocab_size}.safetensors"
    if path.is_file():
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            cached_key = (f.metadata() or {}).get("dataset_key")
        if cached_key == key:
            return VocabMapping.load(path)
    supervised, every = token_counts(dataset_path, target_vocab_size)
    vm = mapping_from_counts(supervised, every, target_vocab_size, draft_vocab_size, path)
    vm.save(path, {"dataset_key": key, "draft_vocab_size": str(draft_vocab_size),
                   "target_vocab_size": str(target_vocab_size)})
    return vm


def target_vocab_size_of(model_or_tokenizer: str, trust_remote_code: bool = False) -> int:
    """The target's vocab size: config.json's `vocab_size` (the lm_head rows) if present, else len(tokenizer)."""
    config = Path(model_or_tokenizer) / "config.json"
    if config.is_file():
        cfg = json.loads(config.read_text(encoding="utf-8"))
        size = cfg.get("vocab_size") or (cfg.get("text_config") or {}).get("vocab_size")
        if size:
            return int(size)
    from draftsmith.target.loading import load_tokenizer

    return len(load_tokenizer(model_or_tokenizer, trust_remote_code))
