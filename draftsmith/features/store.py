"""The feature store ✱: sharded safetensors files + one JSON manifest, read lazily.

Layout of a store folder (docs/feature-store.md):

    manifest.json              written once, atomically, when every shard is done
    plan.json                  settings + which dataset rows go into which shard
    shards/shard-00000.safetensors   rows of all samples of the shard, encoded by the codec
    shards/shard-00000.json          the shard's index: sha256, bytes, per-sample entries
    .lock                      held (filelock) by the writing run (features/writer.py)

A shard's tensors are token-aligned: `input_ids` [N], `loss_mask` [N], `aux.<part>`
[N, ...], `hidden.<part>` [N, ...]; with a top-k target signal, `topk_ids` and
`topk_logits` [M, K] (draft-vocab ids) and `topk_argmax` [M] (the target's argmax over
its full vocabulary, a target id; absent in stores written before it existed) hold only
the M rows at supervised positions. Sample i is the row
slice [offset, offset + length) (and [topk_offset, topk_offset + topk_rows)).
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save as safetensors_bytes
from torch.utils.data import Dataset

from draftsmith.errors import InputError
from draftsmith.features.codecs import get_codec

FORMAT = "draftsmith-feature-store"
VERSION = 1
MANIFEST = "manifest.json"
PLAN = "plan.json"
SHARDS = "shards"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def sample_checksum(tensors: dict[str, torch.Tensor]) -> int:
    """crc32 over a sample's stored bytes, tensors in name order."""
    crc = 0
    for name in sorted(tensors):
        crc = zlib.crc32(tensors[name].contiguous().view(torch.uint8).numpy(), crc)
    return crc


def write_shard(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> tuple[str, int]:
    """Write a safetensors shard atomically (temp name, fsync, rename); return (sha256, bytes)."""
    blob = safetensors_bytes({k: v.contiguous() for k, v in tensors.items()}, metadata=metadata)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(blob)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return hashlib.sha256(blob).hexdigest(), len(blob)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def _parts(names: list[str], prefix: str) -> list[str]:
    return sorted(n[len(prefix) + 1:] for n in names if n.startswith(prefix + "."))


class FeatureStore(Dataset):
    """Map-style dataset over a finished store; decodes one sample per `store[i]`.

    Shard files are opened lazily, once per process (safe to use from DataLoader
    workers). A truncated shard is reported when the store is opened, a corrupted one
    when a sample it holds is read; both name the file.
    """

    def __init__(self, root: Path, manifest: dict):
        self.root = root
        self.manifest = manifest
        self.samples: list[dict] = manifest["samples"]
        self.codec = get_codec(manifest["codec"])
        self.hidden_size = int(manifest["hidden_size"])
        self.num_aux = len(manifest["aux_layers"])
        self.topk = manifest.get("topk")
        self._handles: dict[int, object] = {}
        self._pid = os.getpid()

    @classmethod
    def open(cls, path: str | os.PathLike) -> "FeatureStore":
        root = Path(path)
        manifest_path = root / MANIFEST
        if not manifest_path.exists():
            hint = " (a run started here but did not finish: rerun hidden-states to resume)" \
                if (root / PLAN).exists() else ""
            raise InputError(f"not a finished feature store: no {MANIFEST}{hint}", path=root)
        try:
            manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"unreadable manifest: {e}", path=manifest_path) from e
        if manifest.get("format") != FORMAT:
            raise InputError(f"not a {FORMAT} manifest", path=manifest_path, field="format")
        if manifest.get("version") != VERSION:
            raise InputError(f"store version {manifest.get('version')} is not {VERSION}",
                             path=manifest_path, field="version")
        for shard in manifest["shards"]:
            file = root / SHARDS / shard["file"]
            if not file.exists():
                raise InputError("shard file is missing", path=file)
            size = file.stat().st_size
            if size != shard["bytes"]:
                raise InputError(f"shard is truncated or altered: {size} bytes, manifest says {shard['bytes']}",
                                 path=file)
        return cls(root, manifest)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def lengths(self) -> list[int]:
        return [s["length"] for s in self.samples]

    @property
    def ids(self) -> list[str]:
        return [s["id"] for s in self.samples]

    # typed views of the manifest (docs/feature-store.md), for readers that are not the store
    @property
    def model(self) -> str | None:
        """The target model the features were computed with (path or hub name)."""
        return self.manifest.get("model")

    @property
    def data_path(self) -> str | None:
        """The tokenized dataset (or data file) the store was made from."""
        return self.manifest.get("data")

    @property
    def aux_layers(self) -> list[int]:
        return list(self.manifest["aux_layers"])

    @property
    def signal(self) -> str:
        """"hidden" (the final hidden state) or "topk" (the target's top-K over a draft vocab)."""
        return "hidden" if self.topk in (None, 0) else "topk"

    @property
    def draft_vocab_size(self) -> int | None:
        """The draft vocab size a top-K store was made over (None for a hidden-state store)."""
        size = self.manifest.get("draft_vocab_size")
        return None if size is None else int(size)

    @property
    def draft_vocab_digest(self) -> str | None:
        """Which draft vocab a top-K store is over: data/vocab.py `vocab_digest` of its draft_to_target."""
        return self.manifest.get("settings", {}).get("draft_vocab")

    @property
    def has_target_argmax(self) -> bool:
        """A top-K store that holds the target's full-vocab argmax per row (`topk_argmax`)."""
        return self.topk is not None and bool(self.samples) and \
            "topk_argmax" in self._handle(self.samples[0]["shard"]).keys()

    def _shard_path(self, shard: int) -> Path:
        return self.root / SHARDS / self.manifest["shards"][shard]["file"]

    def _handle(self, shard: int):
        if self._pid != os.getpid():
            self._handles, self._pid = {}, os.getpid()
        handle = self._handles.get(shard)
        if handle is None:
            try:
                handle = safe_open(str(self._shard_path(shard)), framework="pt")
            except Exception as e:  # safetensors raises its own error types for a bad header
                raise InputError(f"corrupted shard: {e}", path=self._shard_path(shard)) from e
            self._handles[shard] = handle
        return handle

    def raw(self, i: int) -> dict[str, torch.Tensor]:
        """The stored (encoded) tensors of sample i, checksum-verified."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"sample {i} out of range for a store of {len(self)}")
        entry = self.samples[i]
        f = self._handle(entry["shard"])
        out = {}
        try:
            for name in f.keys():
                if name.startswith("topk_"):
                    a = entry["topk_offset"]
                    out[name] = f.get_slice(name)[a:a + entry["topk_rows"]]
                else:
                    a = entry["offset"]
                    out[name] = f.get_slice(name)[a:a + entry["length"]]
        except Exception as e:
            raise InputError(f"corrupted shard, cannot read sample {entry['id']!r}: {e}",
                             path=self._shard_path(entry["shard"]), index=i) from e
        if sample_checksum(out) != entry["crc32"]:
            raise InputError(f"corrupted shard: checksum mismatch for sample {entry['id']!r}",
                             path=self._shard_path(entry["shard"]), index=i)
        return out

    def __getitem__(self, i: int) -> dict:
        raw = self.raw(i)
        names = list(raw)
        entry = self.samples[i]
        loss_mask = raw["loss_mask"].long()
        item = {"id": entry["id"], "input_ids": raw["input_ids"].long(), "loss_mask": loss_mask}
        aux = {p: raw[f"aux.{p}"] for p in _parts(names, "aux")}
        item["aux_hidden_states"] = self.codec.decode(aux, self.num_aux * self.hidden_size)
        if self.topk is None:
            hidden = {p: raw[f"hidden.{p}"] for p in _parts(names, "hidden")}
            item["hidden_state"] = self.codec.decode(hidden, self.hidden_size)
        else:
            length, k = entry["length"], int(self.topk)
            rows = topk_positions(loss_mask)
            ids = torch.zeros(length, k, dtype=torch.long)
            logits = torch.full((length, k), float("-inf"))
            ids[rows] = raw["topk_ids"].long()
            logits[rows] = raw["topk_logits"].float()
            item["target_topk_ids"], item["target_topk_logits"] = ids, logits
            if "topk_argmax" in raw:
                argmax = torch.full((length,), -1, dtype=torch.long)
                argmax[rows] = raw["topk_argmax"].long()
                item["target_argmax"] = argmax
        return item

    def verify(self) -> None:
        """Recompute every shard's sha256 against the manifest (reads the whole store)."""
        for shard in self.manifest["shards"]:
            file = self.root / SHARDS / shard["file"]
            if file_sha256(file) != shard["sha256"]:
                raise InputError("corrupted shard: sha256 differs from the manifest", path=file)


def topk_positions(loss_mask: torch.Tensor) -> torch.Tensor:
    """Positions p whose next token p+1 is supervised: where the target's top-k is stored."""
    nxt = torch.zeros_like(loss_mask, dtype=torch.bool)
    nxt[:-1] = loss_mask[1:].bool()
    return nxt.nonzero(as_tuple=True)[0]
