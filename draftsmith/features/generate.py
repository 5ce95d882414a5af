"""The `hidden-states` stage: run the target over a tokenized dataset, fill a feature store.

`HiddenStatesConfig` is the stage's one source of flags, defaults and config-file keys
(draftsmith/config.py). The work is planned once, deterministically, from the settings
alone (features/plan.py); every data-parallel replica computes its shards' features here
(`run_hidden_states`: target forward, codec, optional top-K target signal) and hands them
to the background writer (features/writer.py), which also owns the folder's lock, plan
file, shard indexes and the manifest written last (rank 0).
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from draftsmith import config, dist
from draftsmith.config import option
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.features.codecs import CODECS, DEFAULT_CODEC, get_codec
from draftsmith.features.plan import (bytes_per_token, default_output_dir, local_or_name, make_plan,
                                      parse_target_signal, plan_batches, row_lengths, store_settings)
from draftsmith.features.store import FORMAT
from draftsmith.features.writer import (Batch, ShardDone, ShardWriter, lock_output, prepare_output, shard_done,
                                        write_manifest)
from draftsmith.logs import get_logger
from draftsmith.target.dtype import DTYPE_HELP
from draftsmith.train.ttt import full_vocab_argmax

log = get_logger(__name__)
VOCAB_FILE = "vocab.safetensors"
SPECFORGE_BYTES = "8*H+16"


@dataclass
class HiddenStatesConfig:
    target_model_path: str = option(group="input", aliases=("--model-path",),
                                    help="target model: HF folder or hub name")
    data_path: str = option(group="input", help="conversations / pre-formatted JSONL (tokenized by build-dataset) "
                                                "or a tokenized dataset folder")
    chat_template: str | None = option(None, group="input", help="chat template name for build-dataset (default: hf)")
    tokenizer_path: str | None = option(None, group="input", deprecated=("--tokenizer",),
                                        help="tokenizer folder (default: the target's)")
    is_preformatted: bool = option(False, group="input", help="rows are {'id','text'} already templated")
    max_length: int = option(2048, group="input", help="tokens per sample; longer rows are truncated")
    num_samples: int | None = option(None, group="input", help="first N rows only (default: all)")
    output_dir: Path | None = option(None, group="store", aliases=("--output-path",),
                                     help="store folder (default: cache/hidden_states/<model>-<data>)")
    aux_layers: list[int] | None = option(None, group="store", sep=",",
                                          help="HF output_hidden_states indices, e.g. 2,15,27 (default: 2,L//2,L-3)")
    codec: str = option(DEFAULT_CODEC, group="store", choices=tuple(sorted(CODECS)),
                        help=f"feature codec ({DEFAULT_CODEC}: 4.5 bits/value)")
    target_signal: str = option("hidden", group="store",
                                help="'hidden' (final hidden state) or 'topk:K' (target top-K logits over the draft vocab)")
    draft_vocab_size: int = option(32000, group="store", help="draft vocabulary size for topk:K")
    shard_mb: float = option(256.0, group="store", help="approximate shard file size in MB")
    pad_multiple: int = option(32, group="store", help="each sample is padded to a multiple of this, whatever its "
                                                       "batch (batch-size invariance)")
    enable_aux_hidden_states: bool = option(False, group="store", help="accepted for SpecForge compatibility: the "
                                                                       "aux hidden states are always stored")
    dtype: str = option("auto", group="run", help="target dtype: " + DTYPE_HELP)
    batch_size: int = option(4, group="run", help="samples per forward (batched by length)")
    tp_size: int = option(1, group="run", help="tensor-parallel ranks per model replica")
    mem_frac: float = option(0.75, group="run",
                             help="cap on this process's share of accelerator memory (no-op on CPU)")
    device: str | None = option(None, group="run", help="cpu | cuda (default: cuda:<local rank> if available)")
    force: bool = option(False, group="run", help="start even if the disk estimate exceeds free space")
    trust_remote_code: bool = option(False, group="run", help="allow the model's own Python code (opt-in)")
    progress: bool = option(True, group="run", help="progress bar")

    def __post_init__(self):
        parse_target_signal(self.target_signal)
        for name in ("batch_size", "pad_multiple", "max_length", "tp_size"):
            if getattr(self, name) < 1:
                raise InputError(f"must be >= 1, got {getattr(self, name)}", field="--" + name.replace("_", "-"))
        if self.shard_mb <= 0:
            raise InputError(f"must be > 0, got {self.shard_mb}", field="--shard-mb")


CONFIG = HiddenStatesConfig


def load_tokenized(cfg: HiddenStatesConfig):
    """The tokenized dataset ✱ for the config: the folder itself, or build-dataset's output."""
    from draftsmith.data.build import load_tokenized as load

    return load(cfg.data_path, tokenizer=cfg.tokenizer_path or cfg.target_model_path, chat_template=cfg.chat_template,
                max_length=cfg.max_length, is_preformatted=cfg.is_preformatted, flag="--data-path")


def _draft_vocab(cfg: HiddenStatesConfig, data_dir: Path, vocab_size: int) -> torch.Tensor:
    if cfg.draft_vocab_size >= vocab_size:
        return torch.arange(vocab_size)
    from draftsmith.data.vocab import build_vocab_mapping

    vm = build_vocab_mapping(str(data_dir), target_vocab_size=vocab_size, draft_vocab_size=cfg.draft_vocab_size)
    return vm.draft_to_target.long()


class _Progress:
    """Rank 0 shows global tokens/s and ETA; every rank publishes its count in torchrun's store."""

    def __init__(self, info: dist.DistInfo, total: int, enabled: bool, publishers: list[int]):
        import sys

        self.info, self.store, self.publishers = info, dist.kv_store(), publishers
        self.local, self.last = 0, 0.0
        self.bar = None
        if info.is_main and enabled:
            from tqdm import tqdm

            self.bar = tqdm(total=total, unit="tok", unit_scale=True, desc="hidden-states", mininterval=1.0,
                            file=sys.stderr, dynamic_ncols=True)
        if self.store is not None:
            self.store.set(f"draftsmith/hidden-states/{info.rank}", "0")

    def add(self, tokens: int, force: bool = False) -> None:
        self.local += tokens
        now = time.monotonic()
        if not force and now - self.last < 1.0:
            return
        self.last = now
        if self.store is not None:
            self.store.set(f"draftsmith/hidden-states/{self.info.rank}", str(self.local))
        if self.bar is not None:
            total = self.local
            if self.store is not None:
                total = sum(int(self.store.get(f"draftsmith/hidden-states/{r}")) for r in self.publishers)
            self.bar.update(total - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run_hidden_states(cfg: HiddenStatesConfig, draft_to_target: torch.Tensor | None = None) -> dict:
    """Fill (or finish) the store at cfg.output_dir; returns the run summary (on every rank)."""
    from draftsmith.target.hf import load_target

    topk = parse_target_signal(cfg.target_signal)
    codec = get_codec(cfg.codec)
    info = dist.init_distributed(cfg.device)
    dist.set_memory_fraction(cfg.mem_frac, info.device)
    tp = cfg.tp_size
    dist.check_tp_size(info, tp)      # world / tp replicas of tp consecutive ranks (draftsmith/dist.py)
    root = Path(cfg.output_dir) if cfg.output_dir else default_output_dir(cfg.target_model_path, cfg.data_path)
    t_start = time.monotonic()

    data = None
    if info.is_main:  # builds (and caches) the dataset once; the other ranks open the folder
        try:
            data = {"ok": True, "path": str(load_tokenized(cfg)[1])}
        except (DraftsmithError, OSError) as e:
            data = {"ok": False, "error": DraftsmithError(str(e))}
    data = dist.broadcast_object(data)
    if not data["ok"]:
        raise data["error"]
    ds, data_dir = load_tokenized(replace(cfg, data_path=data["path"]))
    lengths = row_lengths(ds, data_dir)

    target = load_target(cfg.target_model_path, dtype=cfg.dtype, device=info.device, aux_layers=cfg.aux_layers,
                         tp_size=tp, trust_remote_code=cfg.trust_remote_code, stage="hidden-states")
    vocab_digest = None
    if topk is not None:
        if draft_to_target is None:
            draft_to_target = _draft_vocab(cfg, data_dir, target.vocab_size) if info.is_main else None
            draft_to_target = dist.broadcast_object(draft_to_target)
        draft_to_target = draft_to_target.long()
        from draftsmith.data.vocab import vocab_digest as digest

        vocab_digest = digest(draft_to_target)
    logit_bytes = torch.empty((), dtype=target.dtype).element_size()
    bpt = bytes_per_token(cfg.codec, target.hidden_size, len(target.aux_layers), topk, 1.0, logit_bytes)
    shard_tokens = max(1, int(cfg.shard_mb * 2 ** 20 / bpt))
    shards = make_plan(lengths, cfg.num_samples, cfg.max_length, shard_tokens)
    settings = store_settings(cfg.target_model_path, f"{getattr(ds, '_fingerprint', '')}:{len(ds)}",
                              sum(map(len, shards)), cfg.max_length, target.aux_layers, str(target.dtype),
                              cfg.codec, topk, vocab_digest, shard_tokens, cfg.pad_multiple)

    lock, status = None, {"ok": True}
    if info.is_main:
        try:
            lock = lock_output(root)
            done_before = {j for j in range(len(shards)) if shard_done(root, j)}
            remaining_tokens = sum(min(lengths[i], cfg.max_length) for j, rows in enumerate(shards)
                                   if j not in done_before for i in rows)
            status = prepare_output(root, settings, shards, bpt * remaining_tokens, cfg.force)
            if topk is not None:
                from safetensors.torch import save_file

                from draftsmith.fsutil import atomic_path

                with atomic_path(root / VOCAB_FILE) as tmp:
                    save_file({"draft_to_target": draft_to_target}, str(tmp))
        except (DraftsmithError, OSError) as e:  # every rank must hear of it, or they would wait forever
            status = {"ok": False, "error": str(e)}
    status = dist.broadcast_object(status)
    try:
        if not status["ok"]:
            raise DraftsmithError(status["error"])
        summary = _fill(cfg, info, target, codec, ds, data_dir, lengths, shards, settings, root, topk,
                        draft_to_target, t_start)
    finally:
        if lock is not None:
            lock.release()
    target.close()
    return dist.broadcast_object(summary)


def _fill(cfg: HiddenStatesConfig, info, target, codec, ds, data_dir: Path, lengths: list[int],
          shards: list[list[int]], settings: dict, root: Path, topk: int | None,
          draft_to_target: torch.Tensor | None, t_start: float) -> dict | None:
    """Compute and write this rank's shards not done yet; rank 0 then writes the manifest."""
    tp = cfg.tp_size
    dp_rank, dp_size = dist.dp_coords(info, tp)
    writes = info.rank % tp == 0
    todo = [j for j in range(len(shards)) if j % dp_size == dp_rank and not shard_done(root, j)]
    all_todo = [j for j in range(len(shards)) if not shard_done(root, j)]
    total_todo = sum(min(lengths[i], cfg.max_length) for j in all_todo for i in shards[j])
    progress = _Progress(info, total_todo, cfg.progress, publishers=list(range(0, info.world_size, tp)))
    dist.barrier()

    # one key: safetensors writes its metadata map in hash order, which would differ run to run
    metadata = {FORMAT: json.dumps({"codec": cfg.codec, "hidden_size": target.hidden_size,
                                    "aux_layers": target.aux_layers}, sort_keys=True)}
    writer = ShardWriter(root, metadata) if writes else None
    has_ids = "id" in ds.column_names
    t_loop = time.monotonic()
    tokens_run = 0
    try:
        for j in todo:
            for rows, width in plan_batches(shards[j], lengths, cfg.max_length, cfg.batch_size, cfg.pad_multiple):
                batch = ds[rows]
                seqs = [list(x)[:cfg.max_length] for x in batch["input_ids"]]
                masks = [list(x)[:cfg.max_length] for x in batch["loss_mask"]]
                ids = [str(x) for x in batch["id"]] if has_ids else [str(r) for r in rows]
                item = _encode_batch(target, codec, rows, ids, seqs, masks, width, topk, draft_to_target, data_dir, j)
                if writer is not None:
                    writer.put(item)
                tokens_run += sum(item.lengths)
                progress.add(sum(item.lengths))
            if writer is not None:
                writer.put(ShardDone(j))
        if writer is not None:
            writer.close()
            writer = None
    finally:
        if writer is not None:
            writer.close()
        progress.add(0, force=True)  # publish this rank's final count
    t_loop_end = time.monotonic()
    dist.barrier()
    progress.add(0, force=True)  # every count is final now: the bar ends at the global total
    progress.close()
    tokens_all = sum(dist.all_gather_objects(tokens_run if writes else 0))

    summary = None
    if info.is_main:
        header = {
            "model": local_or_name(cfg.target_model_path), "data": local_or_name(cfg.data_path),
            "aux_layers": target.aux_layers, "hidden_size": target.hidden_size, "num_layers": target.num_layers,
            "vocab_size": target.vocab_size, "dtype": str(target.dtype).replace("torch.", ""),
            "codec": cfg.codec, "target_signal": settings["target_signal"], "topk": topk,
            "draft_vocab_size": None if topk is None else int(draft_to_target.numel()),
            "max_length": cfg.max_length, "settings": settings,
        }
        manifest = write_manifest(root, len(shards), header)
        loop_s = t_loop_end - t_loop
        summary = {
            "path": str(root), "samples": manifest["num_samples"], "tokens": manifest["num_tokens"],
            "bytes": manifest["bytes"], "bytes_per_token": manifest["bytes_per_token"],
            "specforge_bytes_per_token": 8 * target.hidden_size + 16,
            "shards": len(shards), "shards_written": len(all_todo), "tokens_this_run": tokens_all,
            "loop_s": loop_s, "wall_s": time.monotonic() - t_start,
            "tokens_per_s": tokens_all / loop_s if loop_s > 0 else 0.0,
        }
        log.info(format_summary(summary))
    return summary


def _encode_batch(target, codec, rows, ids, seqs, masks, width, topk, draft_to_target, data_dir, shard) -> Batch:
    lengths = [len(s) for s in seqs]
    input_ids = torch.zeros(len(seqs), width, dtype=torch.long)
    attention = torch.zeros(len(seqs), width, dtype=torch.long)
    loss = torch.zeros(len(seqs), width, dtype=torch.uint8)
    for b, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[b, :len(s)] = torch.tensor(s, dtype=torch.long)
        attention[b, :len(s)] = 1
        loss[b, :len(s)] = torch.tensor(m, dtype=torch.uint8)
    if int(input_ids.max()) >= target.vocab_size or int(input_ids.min()) < 0:
        bad = next(b for b, s in enumerate(seqs) if max(s) >= target.vocab_size or min(s) < 0)
        raise InputError(f"token id outside the target vocabulary (size {target.vocab_size})",
                         path=data_dir, index=rows[bad], field="input_ids")
    feats = target.features(input_ids, attention)
    valid = attention.bool().to(target.device)
    tensors = {"input_ids": input_ids[attention.bool()].to(torch.int32), "loss_mask": loss[attention.bool()]}
    tensors.update({f"aux.{k}": v for k, v in codec.encode(feats["aux_hidden_states"][valid]).items()})
    if topk is None:
        tensors.update({f"hidden.{k}": v for k, v in codec.encode(feats["hidden_state"][valid]).items()})
        topk_rows = [0] * len(seqs)
    else:
        nxt = torch.zeros_like(loss, dtype=torch.bool)
        nxt[:, :-1] = loss[:, 1:].bool()
        topk_rows = nxt.sum(dim=1).tolist()
        hidden = feats["hidden_state"][nxt.to(target.device)]
        top_ids, top_logits = target.topk(hidden, draft_to_target, topk)
        tensors["topk_ids"], tensors["topk_logits"] = top_ids.to(torch.int32), top_logits
        # the full-vocab argmax: what SGLang / vLLM verify a draft token against (train/ttt.py)
        tensors["topk_argmax"] = full_vocab_argmax(hidden, target.lm_head_weight).to(torch.int32)
    return Batch(shard=shard, rows=list(rows), ids=ids, lengths=lengths, topk_rows=topk_rows, tensors=tensors)


def format_summary(s: dict) -> str:
    ratio = s["bytes_per_token"] / s["specforge_bytes_per_token"]
    return (f"hidden-states: {s['samples']} samples, {s['tokens']} tokens, {s['bytes'] / 1e6:.2f} MB "
            f"({s['bytes_per_token']:.1f} bytes/token = {ratio:.3f}x SpecForge's {SPECFORGE_BYTES}), "
            f"{s['tokens_per_s']:.0f} tokens/s this run ({s['shards_written']}/{s['shards']} shards written) "
            f"-> {s['path']}")


# ---------------------------------------------------------------- CLI

def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, HiddenStatesConfig)


def run(args: argparse.Namespace) -> int:
    run_hidden_states(config.from_args(HiddenStatesConfig, args))
    dist.cleanup()  # on an error the process just exits: torchrun stops the other ranks
    return 0
