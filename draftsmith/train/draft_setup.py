"""The draft a training run starts from: its vocabulary, config, weights and target heads.

`build_draft(cfg, setup, info)` turns the feature sources' `SourceSetup` (train/sources.py:
the target's config, embeddings, lm_head, aux layers, the tokenized data or the store) into
- the `Eagle3Draft` over its draft vocabulary, seeded by `--seed`, with the target's frozen
  embeddings; the vocabulary comes from the one selection of data/vocab.py (from the tokenized
  data's cache, or, for a store alone, from the same counts over its rows), and a top-K store's
  vocabulary must have the same digest;
- the target lm_head rows of the draft vocabulary (the hidden-state signal's projection) and
  the whole lm_head (the full-vocab argmax the servers verify against, train/ttt.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from draftsmith import dist
from draftsmith.data.vocab import build_vocab_mapping, mapping_from_counts, vocab_digest
from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import Eagle3Draft
from draftsmith.errors import InputError
from draftsmith.logs import get_logger
from draftsmith.train.config import TrainConfig
from draftsmith.train.sources import SourceSetup, store_token_counts

log = get_logger(__name__)


def build_draft(cfg: TrainConfig, setup: SourceSetup, info: dist.DistInfo
                ) -> tuple[Eagle3Draft, torch.Tensor | None, torch.Tensor | None]:
    """(draft, target_head, full_head); sets `cfg.draft_vocab_size` to a top-K store's."""
    device = info.device
    if setup.topk_draft_vocab is not None:
        if cfg.draft_vocab_size != setup.topk_draft_vocab:
            log.info("the top-K store was made over a %d-token draft vocab; using it", setup.topk_draft_vocab)
        cfg.draft_vocab_size = setup.topk_draft_vocab
    vd = min(cfg.draft_vocab_size, setup.vocab_size)
    d2t, t2d = vocab_mapping(setup, vd, info)
    if setup.topk_draft_vocab is not None:
        want, got = setup.store.draft_vocab_digest, vocab_digest(torch.arange(vd) + d2t)
        if want and want != got:
            raise InputError("the store's top-K draft vocabulary differs from the one built from the data "
                             "(give the --train-data-path the store was made from)",
                             path=cfg.train_hidden_states_path, field="draft_vocab")
    overrides = None
    if cfg.draft_model_config:
        try:
            overrides = json.loads(Path(cfg.draft_model_config).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read draft config overrides: {e}", path=cfg.draft_model_config,
                             field="--draft-model-config") from None
    dcfg = Eagle3Config.from_target_config(setup.target_config, draft_vocab_size=vd,
                                           aux_layer_ids=setup.aux_layers, overrides=overrides)
    dcfg.dtype = "bfloat16" if device.type == "cuda" else "float32"
    torch.manual_seed(cfg.seed)
    draft = Eagle3Draft(dcfg).to(device)
    draft.set_vocab_mapping(d2t.to(device), t2d.to(device))
    draft.load_embeddings(setup.embed.to(device))
    target_head = full_head = None
    lm_head = setup.lm_head
    if cfg.lm_head_init == "target":   # a resumed run loads its own lm_head over this
        with torch.no_grad():
            draft.lm_head.weight.copy_(lm_head.index_select(0, draft.draft_to_target.to(lm_head.device)))
    if setup.train.signal == "hidden":
        target_head = lm_head.index_select(0, draft.draft_to_target.to(lm_head.device)).to(device).detach()
        if vd < setup.vocab_size:
            full_head = lm_head.to(device).detach()
    for name, source in (("train", setup.train), ("eval", setup.eval)):
        if source is not None and not source.has_target_argmax and vd < setup.vocab_size:
            log.warning("the %s top-K store predates stored full-vocab argmaxes: its served tau is unknown "
                        "(reported as null; tau_draft_vocab overstates it). Rerun hidden-states to get it.", name)
    return draft, target_head, full_head


def vocab_mapping(setup: SourceSetup, vd: int, info: dist.DistInfo) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t, t2d) of a `vd`-token draft vocabulary; the identity when vd covers the target's."""
    if vd >= setup.vocab_size:
        return torch.zeros(setup.vocab_size, dtype=torch.long), torch.ones(setup.vocab_size, dtype=torch.bool)
    if setup.data_dir is None:    # a hidden-state store alone: the same selection over its rows
        vm = mapping_from_counts(*store_token_counts(setup.store, setup.vocab_size), setup.vocab_size, vd)
        return vm.d2t, vm.t2d
    if info.is_main:              # rank 0 builds the cached mapping, the others read it
        vm = build_vocab_mapping(str(setup.data_dir), target_vocab_size=setup.vocab_size, draft_vocab_size=vd)
    dist.barrier()
    if not info.is_main:
        vm = build_vocab_mapping(str(setup.data_dir), target_vocab_size=setup.vocab_size, draft_vocab_size=vd)
    return vm.d2t.long(), vm.t2d.bool()
