"""The `hidden-states` stage: run the target over a tokenized dataset, fill a feature store.

Work is planned once, deterministically, from the settings alone: rows sorted by
length (longest first, so an out-of-memory shows at once) and cut into shards of about
`shard_mb`; shard j belongs to data-parallel replica j % dp_size, and a shard's samples
are batched in plan order. Nothing in the plan depends on the world size or the batch
size, and the backend's features do not depend on batch neighbours, so 1 process, N
processes and a killed-then-resumed run all write byte-identical shards.

A shard is done when its index file (`shards/shard-NNNNN.json`) exists beside a shard
file of the recorded size; a rerun skips done shards and redoes the rest. The last step
(rank 0) gathers the shard indexes into `manifest.json`.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import queue
import shutil
import sys
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from draftsmith import dist
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.features.codecs import CODECS, DEFAULT_CODEC, get_codec
from draftsmith.features.store import (FORMAT, MANIFEST, PLAN, SHARDS, VERSION, sample_checksum, shard_name,
                                       write_shard)
from draftsmith.fsutil import write_json_atomic
from draftsmith.target.dtype import DTYPE_HELP
from draftsmith.train.ttt import full_vocab_argmax

VOCAB_FILE = "vocab.safetensors"
SPECFORGE_BYTES = "8*H+16"


@dataclass
class HiddenStatesConfig:
    model_path: str
    data_path: str
    output_path: str | None = None          # None -> cache/hidden_states/<model>-<data>
    chat_template: str | None = None
    tokenizer: str | None = None             # None -> the model's
    is_preformatted: bool = False
    max_length: int = 2048
    num_samples: int | None = None           # None -> all rows
    aux_layers: list[int] | None = None      # None -> [2, L//2, L-3]
    dtype: str = "auto"                      # draftsmith.target.dtype: bf16 where native, else float32
    codec: str = DEFAULT_CODEC
    target_signal: str = "hidden"            # "hidden" | "topk:K"
    draft_vocab_size: int = 32000
    batch_size: int = 4
    pad_multiple: int = 32                   # samples are computed at their length rounded up to this
    tp_size: int = 1
    mem_frac: float = 0.75
    shard_mb: float = 256.0
    force: bool = False
    device: str | None = None                # None -> cuda:<local rank> if available, else cpu
    trust_remote_code: bool = False
    progress: bool = True


def parse_target_signal(signal: str) -> int | None:
    """'hidden' -> None; 'topk:K' (or 'topk', K=32) -> K."""
    if signal == "hidden":
        return None
    if signal == "topk":
        return 32
    if signal.startswith("topk:"):
        try:
            k = int(signal[5:])
        except ValueError:
            k = 0
        if k > 0:
            return k
    raise DraftsmithError(f"--target-signal must be 'hidden' or 'topk:K' with K > 0, got {signal!r}")


def default_output_path(model_path: str, data_path: str) -> Path:
    from draftsmith.resources import cache_root

    model = Path(str(model_path).rstrip("/")).name
    data = Path(str(data_path).rstrip("/"))
    data_name = data.name if data.is_dir() else data.stem
    return cache_root() / "hidden_states" / f"{model}-{data_name}"


# ---------------------------------------------------------------- input rows

def load_tokenized(cfg: HiddenStatesConfig):
    """The tokenized dataset ✱ for the config: the folder itself, or build-dataset's output."""
    from draftsmith.data.build import load_tokenized as load

    return load(cfg.data_path, tokenizer=cfg.tokenizer or cfg.model_path, chat_template=cfg.chat_template,
                max_length=cfg.max_length, is_preformatted=cfg.is_preformatted, flag="--data-path")


def row_lengths(ds, path: Path) -> list[int]:
    """Token count of every row; checks that loss_mask has the same length as input_ids."""
    import pyarrow.compute as pc

    table = ds.data.table
    n_ids = pc.list_value_length(table.column("input_ids")).to_pylist()
    n_mask = pc.list_value_length(table.column("loss_mask")).to_pylist()
    for i, (a, b) in enumerate(zip(n_ids, n_mask)):
        if a != b:
            raise InputError(f"loss_mask has {b} values for {a} input_ids", path=path, index=i, field="loss_mask")
    return [0 if a is None else int(a) for a in n_ids]


def make_plan(lengths: list[int], num_samples: int | None, max_length: int, shard_tokens: int) -> list[list[int]]:
    """Row indices per shard: the first `num_samples` non-empty rows, longest first, cut by token budget."""
    rows = [i for i, n in enumerate(lengths) if n > 0]
    if num_samples is not None:
        rows = rows[:num_samples]
    rows.sort(key=lambda i: (-min(lengths[i], max_length), i))
    shards, current, tokens = [], [], 0
    for i in rows:
        current.append(i)
        tokens += min(lengths[i], max_length)
        if tokens >= shard_tokens:
            shards.append(current)
            current, tokens = [], 0
    if current:
        shards.append(current)
    return shards


def bytes_per_token(codec: str, hidden_size: int, num_aux: int, topk: int | None,
                    supervised_fraction: float = 1.0, logit_bytes: int = 2) -> float:
    """Stored bytes per token: ids (4) + loss mask (1) + aux rows + target signal (top-K: K ids and
    logits plus the full-vocab argmax id per supervised row)."""
    c = get_codec(codec)
    signal = c.row_bytes(hidden_size) if topk is None else supervised_fraction * (topk * (4 + logit_bytes) + 4)
    return 5 + c.row_bytes(num_aux * hidden_size) + signal


# ---------------------------------------------------------------- writer thread

@dataclass
class _Batch:
    shard: int
    rows: list[int]           # dataset indices, plan order
    ids: list[str]
    lengths: list[int]
    topk_rows: list[int]
    tensors: dict[str, torch.Tensor]   # token-aligned (or topk-row-aligned) encoded parts, maybe on device


@dataclass
class _ShardDone:
    shard: int
    tokens: int


class ShardWriter:
    """Background thread: gathers a shard's encoded batches, writes it, then its index.

    Running beside the forward passes, it takes the device->host copies, checksums,
    serialization and fsyncs off the critical path.
    """

    def __init__(self, root: Path, metadata: dict[str, str], max_pending: int = 8):
        self.root = root
        self.metadata = metadata
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.pending: dict[int, list[_Batch]] = {}
        self.thread = threading.Thread(target=self._loop, name="draftsmith-shard-writer", daemon=True)
        self.thread.start()

    def put(self, item: _Batch | _ShardDone) -> None:
        if self.error is not None:
            raise DraftsmithError(f"shard writer failed: {self.error}") from self.error
        self.queue.put(item)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        if self.error is not None:
            raise DraftsmithError(f"shard writer failed: {self.error}") from self.error

    def _loop(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                return
            if self.error is not None:
                continue
            try:
                if isinstance(item, _Batch):
                    item.tensors = {k: v.cpu() for k, v in item.tensors.items()}
                    self.pending.setdefault(item.shard, []).append(item)
                else:
                    self._write(item.shard, self.pending.pop(item.shard, []))
            except BaseException as e:  # reported to the main thread on its next put/close
                self.error = e

    def _write(self, shard: int, batches: list[_Batch]) -> None:
        names = sorted(batches[0].tensors)
        tensors = {n: torch.cat([b.tensors[n] for b in batches]) for n in names}
        samples, offset, topk_offset = [], 0, 0
        for b in batches:
            for row, sid, length, topk_rows in zip(b.rows, b.ids, b.lengths, b.topk_rows):
                part = {n: (t[topk_offset:topk_offset + topk_rows] if n.startswith("topk_")
                            else t[offset:offset + length]) for n, t in tensors.items()}
                samples.append({"index": row, "id": sid, "offset": offset, "length": length,
                                "topk_offset": topk_offset, "topk_rows": topk_rows,
                                "crc32": sample_checksum(part)})
                offset += length
                topk_offset += topk_rows
        name = shard_name(shard)
        sha, size = write_shard(self.root / SHARDS / f"{name}.safetensors", tensors, self.metadata)
        write_json_atomic(self.root / SHARDS / f"{name}.json", {
            "file": f"{name}.safetensors", "sha256": sha, "bytes": size,
            "num_samples": len(samples), "num_tokens": offset, "samples": samples})


# ---------------------------------------------------------------- run

def _lock(root: Path):
    """Exclusive flock on <root>/.lock, released by the OS when the process dies (kill -9 too)."""
    root.mkdir(parents=True, exist_ok=True)
    fd = os.open(root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DraftsmithError(f"{root} is being written by another hidden-states run (pid {holder}); "
                              "wait for it or choose another --output-path") from None
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    return fd


def _shard_done(root: Path, shard: int) -> bool:
    index = root / SHARDS / f"{shard_name(shard)}.json"
    if not index.exists():
        return False
    try:
        meta = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    file = root / SHARDS / meta.get("file", "")
    return file.exists() and file.stat().st_size == meta.get("bytes")


def _local_or_name(path: str) -> str:
    """An absolute path for a local folder/file (so a store names its inputs from anywhere), else a hub name."""
    return str(Path(path).resolve()) if Path(path).exists() else str(path)


def _settings(cfg: HiddenStatesConfig, target, data_fingerprint: str, num_samples: int, shard_tokens: int,
              topk: int | None, vocab_digest: str | None) -> dict:
    """Everything that changes the store's bytes (the batch size and world size do not)."""
    return {"model": _local_or_name(cfg.model_path), "data": data_fingerprint, "num_samples": num_samples,
            "max_length": cfg.max_length, "aux_layers": target.aux_layers, "dtype": str(target.dtype),
            "codec": cfg.codec, "target_signal": "hidden" if topk is None else f"topk:{topk}",
            "draft_vocab": vocab_digest, "shard_tokens": shard_tokens, "pad_multiple": cfg.pad_multiple}


def _prepare_output(root: Path, settings: dict, shards: list[list[int]], estimate: float, force: bool) -> dict:
    """Rank 0, holding the lock: check or write plan.json, clear temp files, check the disk."""
    plan_path = root / PLAN
    if plan_path.exists():
        try:
            old = json.loads(plan_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"unreadable plan: {e}; delete the folder to start over", path=plan_path) from e
        if old.get("settings") != settings:
            diff = sorted(k for k in settings if old.get("settings", {}).get(k) != settings[k])
            raise DraftsmithError(f"{root} holds a store made with other settings ({', '.join(diff)}); "
                                  "choose another --output-path or delete it")
    else:
        write_json_atomic(plan_path, {"format": FORMAT, "version": VERSION, "settings": settings, "shards": shards})
    (root / SHARDS).mkdir(exist_ok=True)
    for tmp in (root / SHARDS).glob(".*.tmp"):
        tmp.unlink()
    free = shutil.disk_usage(root).free
    print(f"hidden-states: estimated disk use {estimate / 1e9:.3f} GB, {free / 1e9:.1f} GB free at {root}",
          file=sys.stderr)
    if estimate > free and not force:
        raise DraftsmithError(f"not enough disk at {root}: need about {estimate / 1e9:.2f} GB, "
                              f"{free / 1e9:.2f} GB free (--force starts anyway)")
    return {"ok": True}


def _write_manifest(root: Path, cfg: HiddenStatesConfig, target, settings: dict, num_shards: int,
                    topk: int | None, draft_vocab_size: int | None) -> dict:
    shards, samples = [], []
    for j in range(num_shards):
        index_path = root / SHARDS / f"{shard_name(j)}.json"
        if not _shard_done(root, j):
            raise DraftsmithError(f"shard {j} was not written ({index_path}); rerun to resume")
        meta = json.loads(index_path.read_text(encoding="utf-8"))
        shards.append({k: meta[k] for k in ("file", "sha256", "bytes", "num_samples", "num_tokens")})
        samples += [dict(s, shard=j) for s in meta["samples"]]
    samples.sort(key=lambda s: s["index"])
    num_tokens = sum(s["length"] for s in samples)
    total_bytes = sum(s["bytes"] for s in shards)
    manifest = {
        "format": FORMAT, "version": VERSION, "model": _local_or_name(cfg.model_path),
        "data": _local_or_name(cfg.data_path),
        "aux_layers": target.aux_layers, "hidden_size": target.hidden_size, "num_layers": target.num_layers,
        "vocab_size": target.vocab_size, "dtype": str(target.dtype).replace("torch.", ""),
        "codec": cfg.codec, "target_signal": settings["target_signal"], "topk": topk,
        "draft_vocab_size": draft_vocab_size, "max_length": cfg.max_length, "settings": settings,
        "num_samples": len(samples), "num_tokens": num_tokens, "bytes": total_bytes,
        "bytes_per_token": total_bytes / max(num_tokens, 1), "shards": shards, "samples": samples,
    }
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


def _draft_vocab(cfg: HiddenStatesConfig, data_dir: Path, vocab_size: int) -> torch.Tensor:
    if cfg.draft_vocab_size >= vocab_size:
        return torch.arange(vocab_size)
    from draftsmith.data.vocab import build_vocab_mapping

    vm = build_vocab_mapping(str(data_dir), target_vocab_size=vocab_size, draft_vocab_size=cfg.draft_vocab_size)
    return vm.draft_to_target.long()


class _Progress:
    """Rank 0 shows global tokens/s and ETA; every rank publishes its count in torchrun's store."""

    def __init__(self, info: dist.DistInfo, total: int, enabled: bool, publishers: list[int]):
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


def padded_width(length: int, pad_multiple: int) -> int:
    """The width a sample is always computed at: its length rounded up to `pad_multiple`."""
    return -(-length // pad_multiple) * pad_multiple


def plan_batches(rows: list[int], lengths: list[int], max_length: int, batch_size: int,
                 pad_multiple: int) -> list[tuple[list[int], int]]:
    """(rows, width) batches of a shard: consecutive rows sharing a padded width, <= batch_size each.

    A sample is thus computed at the same width, right-padded, whatever the batch size,
    which makes its features (and the store's bytes) independent of the batch size.
    """
    out: list[tuple[list[int], int]] = []
    for i in rows:
        width = padded_width(min(lengths[i], max_length), pad_multiple)
        if out and out[-1][1] == width and len(out[-1][0]) < batch_size:
            out[-1][0].append(i)
        else:
            out.append(([i], width))
    return out


def run_hidden_states(cfg: HiddenStatesConfig, draft_to_target: torch.Tensor | None = None) -> dict:
    """Fill (or finish) the store at cfg.output_path; returns the run summary (on every rank)."""
    from draftsmith.target.hf import load_target

    topk = parse_target_signal(cfg.target_signal)
    codec = get_codec(cfg.codec)
    if cfg.batch_size < 1 or cfg.pad_multiple < 1 or cfg.max_length < 1:
        raise DraftsmithError("--batch-size, --pad-multiple and --max-length must be >= 1")
    info = dist.init_distributed(cfg.device)
    dist.set_memory_fraction(cfg.mem_frac, info.device)
    tp = max(1, cfg.tp_size)
    if tp > 1 and tp != info.world_size:
        raise DraftsmithError(f"--tp-size {tp} must equal the number of torchrun processes ({info.world_size}): "
                              "transformers' tensor parallelism spans the whole world")
    dp_rank, dp_size = dist.dp_coords(info, tp)
    writes = info.rank % tp == 0
    root = Path(cfg.output_path) if cfg.output_path else default_output_path(cfg.model_path, cfg.data_path)
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
    data_dir = data["path"]
    cfg_data = HiddenStatesConfig(**{**asdict(cfg), "data_path": data_dir})
    ds, data_dir = load_tokenized(cfg_data)
    lengths = row_lengths(ds, data_dir)

    target = load_target(cfg.model_path, dtype=cfg.dtype, device=info.device, aux_layers=cfg.aux_layers,
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
    settings = _settings(cfg, target, f"{getattr(ds, '_fingerprint', '')}:{len(ds)}", sum(map(len, shards)),
                         shard_tokens, topk, vocab_digest)

    lock_fd, status = None, {"ok": True}
    if info.is_main:
        try:
            lock_fd = _lock(root)
            done_before = [j for j in range(len(shards)) if _shard_done(root, j)]
            remaining_tokens = sum(min(lengths[i], cfg.max_length) for j, rows in enumerate(shards)
                                   if j not in set(done_before) for i in rows)
            status = _prepare_output(root, settings, shards, bpt * remaining_tokens, cfg.force)
            if topk is not None:
                from safetensors.torch import save_file

                from draftsmith.fsutil import atomic_path

                with atomic_path(root / VOCAB_FILE) as tmp:
                    save_file({"draft_to_target": draft_to_target}, str(tmp))
        except (DraftsmithError, OSError) as e:  # every rank must hear of it, or they would wait forever
            status = {"ok": False, "error": str(e)}
    status = dist.broadcast_object(status)
    if not status["ok"]:
        if lock_fd is not None:
            os.close(lock_fd)
        raise DraftsmithError(status["error"])

    todo = [j for j in range(len(shards)) if j % dp_size == dp_rank and not _shard_done(root, j)]
    all_todo = [j for j in range(len(shards)) if not _shard_done(root, j)]
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
                writer.put(_ShardDone(j, 0))
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
        manifest = _write_manifest(root, cfg, target, settings, len(shards), topk,
                                   None if topk is None else int(draft_to_target.numel()))
        loop_s = t_loop_end - t_loop
        summary = {
            "path": str(root), "samples": manifest["num_samples"], "tokens": manifest["num_tokens"],
            "bytes": manifest["bytes"], "bytes_per_token": manifest["bytes_per_token"],
            "specforge_bytes_per_token": 8 * target.hidden_size + 16,
            "shards": len(shards), "shards_written": len(all_todo), "tokens_this_run": tokens_all,
            "loop_s": loop_s, "wall_s": time.monotonic() - t_start,
            "tokens_per_s": tokens_all / loop_s if loop_s > 0 else 0.0,
        }
        print(format_summary(summary), file=sys.stderr)
        os.close(lock_fd)
    target.close()
    return dist.broadcast_object(summary)


def _encode_batch(target, codec, rows, ids, seqs, masks, width, topk, draft_to_target, data_dir, shard) -> _Batch:
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
    return _Batch(shard=shard, rows=list(rows), ids=ids, lengths=lengths, topk_rows=topk_rows, tensors=tensors)


def format_summary(s: dict) -> str:
    ratio = s["bytes_per_token"] / s["specforge_bytes_per_token"]
    return (f"hidden-states: {s['samples']} samples, {s['tokens']} tokens, {s['bytes'] / 1e6:.2f} MB "
            f"({s['bytes_per_token']:.1f} bytes/token = {ratio:.3f}x SpecForge's {SPECFORGE_BYTES}), "
            f"{s['tokens_per_s']:.0f} tokens/s this run ({s['shards_written']}/{s['shards']} shards written) "
            f"-> {s['path']}")


# ---------------------------------------------------------------- CLI

def _aux_layers(text: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--aux-layers wants comma-separated integers, got {text!r}") from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("--model-path", required=True, help="target model: HF folder or hub name")
    p.add_argument("--enable-aux-hidden-states", action="store_true",
                   help="accepted for SpecForge compatibility: the aux hidden states are always stored")
    p.add_argument("--data-path", required=True,
                   help="conversations / pre-formatted JSONL (tokenized by build-dataset) or a tokenized dataset folder")
    p.add_argument("--chat-template", default=None, help="chat template name for build-dataset (default: hf)")
    p.add_argument("--max-length", type=int, default=2048, help="tokens per sample; longer rows are truncated")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    p.add_argument("--is-preformatted", action="store_true", help="rows are {'id','text'} already templated")
    p.add_argument("--num-samples", type=int, default=None, help="first N rows only (default: all)")
    p.add_argument("--output-path", default=None, help="store folder (default: cache/hidden_states/<model>-<data>)")
    p.add_argument("--aux-layers", type=_aux_layers, default=None,
                   help="HF output_hidden_states indices, e.g. 2,15,27 (default: 2,L//2,L-3)")
    p.add_argument("--dtype", default="auto", help="target dtype: " + DTYPE_HELP)
    p.add_argument("--codec", default=DEFAULT_CODEC, choices=sorted(CODECS),
                   help=f"feature codec (default {DEFAULT_CODEC}: 4.5 bits/value)")
    p.add_argument("--target-signal", default="hidden",
                   help="'hidden' (final hidden state) or 'topk:K' (target top-K logits over the draft vocab)")
    p.add_argument("--draft-vocab-size", type=int, default=32000, help="draft vocabulary size for topk:K")
    p.add_argument("--tp-size", type=int, default=1, help="tensor-parallel ranks per model replica")
    p.add_argument("--batch-size", type=int, default=4, help="samples per forward (batched by length)")
    p.add_argument("--pad-multiple", type=int, default=32,
                   help="each sample is padded to a multiple of this, whatever its batch (batch-size invariance)")
    p.add_argument("--mem-frac", type=float, default=0.75,
                   help="cap on this process's share of accelerator memory (no-op on CPU)")
    p.add_argument("--shard-mb", type=float, default=256.0, help="approximate shard file size")
    p.add_argument("--device", default=None, help="cpu | cuda (default: cuda:<local rank> if available)")
    p.add_argument("--force", action="store_true", help="start even if the disk estimate exceeds free space")
    p.add_argument("--trust-remote-code", action="store_true", help="allow the model's own Python code (opt-in)")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    fields = HiddenStatesConfig.__dataclass_fields__
    cfg = HiddenStatesConfig(**{k: v for k, v in vars(args).items() if k in fields})
    run_hidden_states(cfg)
    dist.cleanup()  # on an error the process just exits: torchrun stops the other ranks
    return 0
