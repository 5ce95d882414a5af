"""A draftsmith checkpoint for the tiny test targets, as the trainer writes it."""

from __future__ import annotations

from pathlib import Path

import torch

from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft

AUX = [1, 2, 3]          # explicit ids, not the default [2, L//2, L-3], so the id conventions are exercised
DRAFT_VOCAB = 512


def vocab_mapping(vocab: int, draft_vocab: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A non-identity mapping: the draft keeps every third target id."""
    target_ids = torch.arange(draft_vocab) * 3
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[target_ids] = True
    return target_ids - torch.arange(draft_vocab), t2d


def make_checkpoint(target_dir: Path, out: Path) -> Path:
    """Eagle3Draft.save_pretrained of a random draft for the target in `target_dir`."""
    from transformers import AutoConfig

    cfg = Eagle3Config.from_target_config(AutoConfig.from_pretrained(target_dir), draft_vocab_size=DRAFT_VOCAB,
                                          aux_layer_ids=AUX)
    draft = Eagle3Draft(cfg)
    draft.set_vocab_mapping(*vocab_mapping(cfg.vocab_size, DRAFT_VOCAB))
    return draft.save_pretrained(out)


def make_full_vocab_checkpoint(target_dir: Path, out: Path) -> Path:
    """Eagle3Draft.save_pretrained of a random draft whose vocabulary is the target's own."""
    from transformers import AutoConfig

    target = AutoConfig.from_pretrained(target_dir)
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=target.vocab_size, aux_layer_ids=AUX)
    return Eagle3Draft(cfg).save_pretrained(out)
