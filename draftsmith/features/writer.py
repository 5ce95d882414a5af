"""The hidden-states stage's writer: the store folder's lock, plan file, shards and manifest.

Contract (layout in features/store.py):
- `lock_output(root)`: one writing run per folder (`filelock` on `<root>/.lock`, released by
  the OS when the process dies, kill -9 too); a second run is refused at once.
- `prepare_output`: checks (or writes) `plan.json` against this run's settings, clears
  temporary files of a killed run, and checks the disk.
- `ShardWriter`: a background thread that gathers a shard's encoded batches and writes the
  shard file, then its index (`shards/shard-NNNNN.json`). Running beside the forward passes,
  it takes the device->host copies, checksums, serialization and fsyncs off the critical path.
- A shard is done when its index exists beside a shard file of the recorded size
  (`shard_done`); a rerun skips done shards and redoes the rest.
- `write_manifest`: the last step gathers the shard indexes into `manifest.json`.
"""

from __future__ import annotations

import json
import queue
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from draftsmith.errors import DraftsmithError, InputError
from draftsmith.features.store import FORMAT, MANIFEST, PLAN, SHARDS, VERSION, sample_checksum, shard_name, write_shard
from draftsmith.fsutil import write_json_atomic
from draftsmith.logs import get_logger

log = get_logger(__name__)
LOCK_FILE = ".lock"


def lock_output(root: Path):
    """The held `filelock.FileLock` of `root`; DraftsmithError when another run holds it."""
    from filelock import FileLock, Timeout

    root.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(root / LOCK_FILE), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise DraftsmithError(f"{root} is being written by another hidden-states run; "
                              "wait for it or choose another --output-dir") from None
    return lock


def shard_done(root: Path, shard: int) -> bool:
    index = root / SHARDS / f"{shard_name(shard)}.json"
    if not index.exists():
        return False
    try:
        meta = json.loads(index.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return False
    file = root / SHARDS / meta.get("file", "")
    return file.exists() and file.stat().st_size == meta.get("bytes")


def prepare_output(root: Path, settings: dict, shards: list[list[int]], estimate: float, force: bool) -> dict:
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
                                  "choose another --output-dir or delete it")
    else:
        write_json_atomic(plan_path, {"format": FORMAT, "version": VERSION, "settings": settings, "shards": shards})
    (root / SHARDS).mkdir(exist_ok=True)
    for tmp in (root / SHARDS).glob(".*.tmp"):
        tmp.unlink()
    free = shutil.disk_usage(root).free
    log.info("hidden-states: estimated disk use %.3f GB, %.1f GB free at %s", estimate / 1e9, free / 1e9, root)
    if estimate > free and not force:
        raise DraftsmithError(f"not enough disk at {root}: need about {estimate / 1e9:.2f} GB, "
                              f"{free / 1e9:.2f} GB free (--force starts anyway)")
    return {"ok": True}


def write_manifest(root: Path, num_shards: int, header: dict) -> dict:
    """manifest.json: `header` (model, data, target facts, settings) + the shards' indexes gathered."""
    shards, samples = [], []
    for j in range(num_shards):
        index_path = root / SHARDS / f"{shard_name(j)}.json"
        if not shard_done(root, j):
            raise DraftsmithError(f"shard {j} was not written ({index_path}); rerun to resume")
        meta = json.loads(index_path.read_text(encoding="utf-8"))
        shards.append({k: meta[k] for k in ("file", "sha256", "bytes", "num_samples", "num_tokens")})
        samples += [dict(s, shard=j) for s in meta["samples"]]
    samples.sort(key=lambda s: s["index"])
    num_tokens = sum(s["length"] for s in samples)
    total_bytes = sum(s["bytes"] for s in shards)
    manifest = {
        "format": FORMAT, "version": VERSION, **header,
        "num_samples": len(samples), "num_tokens": num_tokens, "bytes": total_bytes,
        "bytes_per_token": total_bytes / max(num_tokens, 1), "shards": shards, "samples": samples,
    }
    write_json_atomic(root / MANIFEST, manifest)
    return manifest


@dataclass
class Batch:
    shard: int
    rows: list[int]           # dataset indices, plan order
    ids: list[str]
    lengths: list[int]
    topk_rows: list[int]
    tensors: dict[str, torch.Tensor]   # token-aligned (or topk-row-aligned) encoded parts, maybe on device


@dataclass
class ShardDone:
    shard: int


class ShardWriter:
    """Background thread: gathers a shard's encoded batches, writes it, then its index."""

    def __init__(self, root: Path, metadata: dict[str, str], max_pending: int = 8):
        self.root = root
        self.metadata = metadata
        self.queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self.error: BaseException | None = None
        self.pending: dict[int, list[Batch]] = {}
        self.thread = threading.Thread(target=self._loop, name="draftsmith-shard-writer", daemon=True)
        self.thread.start()

    def put(self, item: Batch | ShardDone) -> None:
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
                if isinstance(item, Batch):
                    item.tensors = {k: v.cpu() for k, v in item.tensors.items()}
                    self.pending.setdefault(item.shard, []).append(item)
                else:
                    self._write(item.shard, self.pending.pop(item.shard, []))
            except BaseException as e:  # reported to the main thread on its next put/close
                self.error = e

    def _write(self, shard: int, batches: list[Batch]) -> None:
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
