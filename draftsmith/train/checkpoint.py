"""Training checkpoints ✱: one manager that saves, loads and finds them.

A checkpoint `<output-dir>/<name>/` (`step_<N>`, `best`, `final`) is a folder SGLang loads as
it is (config.json + model.safetensors, written by `Eagle3Draft.save_pretrained` from the full
state dict gathered on rank 0) plus `training_state/`, what `--resume` needs to continue the
run on any number of ranks:

    shard-<r>-model-00001-of-00001.safetensors
                      torch.distributed.checkpoint (DCP) of the draft's weights and buffers and
                      the AdamW state, written by every rank in parallel through DCP's safetensors
                      storage (`HuggingFaceStorageWriter(save_distributed=True)`): under FSDP2
                      each rank's shards, under DDP / one process each tensor once; every
                      piece's offsets are in its file's safetensors metadata, so DCP loads
                      them into any sharding (2 ranks -> 1 and 1 -> 2).
    optimizer.json    the optimizer's param_groups (hyper-parameters, parameter names)
    trainer.json      format and version, global step, data position (train/data.py
                      `DataOrder.position`: epoch, optimizer steps in it, global batch, seed),
                      the LR scheduler, the best/ tracker, the world size and the config

No RNG state is saved: the training step draws no random numbers (the data order is a
function of the seed, the epoch and the position), so nothing depends on one.

Safe by construction: safetensors and JSON only — DCP's default storage pickles its
metadata, the safetensors storage does not, and nothing is read with `torch.load`. The folder
is written under a temporary name (every rank writes its DCP shard there; all ranks must see
one filesystem, as for any DCP checkpoint) and renamed by rank 0 once complete, so a crash
never leaves a half-written checkpoint under its real name. Checkpoints of the earlier format
(optimizer.safetensors + rng.safetensors, before DCP) are refused with an error naming the
folder: their weights still load (`Eagle3Draft.from_pretrained`, export), their state does not.
"""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import torch

from draftsmith import dist
from draftsmith.errors import DraftsmithError, InputError
from draftsmith.fsutil import write_json_atomic

STATE_DIR = "training_state"
RESUMABLE = ("step_*", "final")   # what `--resume latest` picks from (best/ is resumed only by name)
FORMAT, VERSION = "draftsmith-training-state", 2


def _dcp():
    import torch.distributed.checkpoint as dcp

    # one process (no group) is a supported DCP use, not worth a warning per checkpoint
    warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)

    if not hasattr(dcp, "HuggingFaceStorageWriter"):
        raise DraftsmithError(f"training checkpoints need torch.distributed.checkpoint's safetensors storage "
                              f"(HuggingFaceStorageWriter, torch >= 2.9); this torch is {torch.__version__}")
    return dcp


def sharded_state(module: torch.nn.Module, optimizer) -> tuple[dict, list]:
    """({"model": ..., "optim": {"state": ...}}, param_groups): this rank's part of the training
    state as DCP saves and loads it (DTensor shards under FSDP2, plain tensors otherwise)."""
    from torch.distributed.checkpoint.state_dict import get_state_dict

    model_state, optim_state = get_state_dict(module, optimizer)
    groups = optim_state.pop("param_groups")
    return {"model": model_state, "optim": optim_state}, groups


class CheckpointManager:
    """Saves and loads the checkpoints of one output dir. `module` is the unwrapped training module
    (its state dict keys are `draft.<name>`), `draft` the Eagle3Draft inside it."""

    def __init__(self, output_dir: Path, info: dist.DistInfo):
        self.output_dir = Path(output_dir)
        self.info = info
        _dcp()                  # an unsupported torch fails here, not at the first checkpoint

    def save(self, name: str, module: torch.nn.Module, draft, optimizer, scheduler, state: dict,
             config: dict) -> Path:
        """Write `<output_dir>/<name>/`; `state` holds global_step, epoch, the data position and best
        (collective: every rank calls it)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        dcp = _dcp()
        full = get_model_state_dict(module, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        sharded, groups = sharded_state(module, optimizer)
        final, tmp = self.output_dir / name, self.output_dir / f".{name}.tmp"
        if self.info.is_main:
            shutil.rmtree(tmp, ignore_errors=True)
            (tmp / STATE_DIR).mkdir(parents=True)
        dist.barrier()
        dcp.save(sharded, storage_writer=dcp.HuggingFaceStorageWriter(str(tmp / STATE_DIR), save_distributed=True),
                 no_dist=not torch.distributed.is_initialized())
        if self.info.is_main:
            weights = {k.removeprefix("draft."): v.contiguous() for k, v in full.items()}
            weights["d2t"], weights["t2d"] = weights["d2t"].long(), weights["t2d"].bool()
            draft.save_pretrained(tmp, state_dict=weights)
            write_json_atomic(tmp / STATE_DIR / "optimizer.json", {"param_groups": groups})
            write_json_atomic(tmp / STATE_DIR / "trainer.json", {
                "format": FORMAT, "version": VERSION, **state, "scheduler": scheduler.state_dict(),
                "world_size": self.info.world_size, "config": config})
            if final.exists():
                old = self.output_dir / f".{name}.old"
                shutil.rmtree(old, ignore_errors=True)
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, final)
        dist.barrier()
        return final

    def load(self, path: Path, module: torch.nn.Module, optimizer, scheduler) -> dict:
        """Restore weights, optimizer and scheduler from `path` (saved with any world size); return
        its trainer.json (the caller checks and restores the data position)."""
        from torch.distributed.checkpoint.state_dict import set_state_dict

        path = Path(path)
        state_dir = path / STATE_DIR
        meta = json.loads((state_dir / "trainer.json").read_text(encoding="utf-8"))
        if meta.get("format") != FORMAT:
            raise InputError("a training checkpoint of an earlier draftsmith (optimizer.safetensors + "
                             "rng.safetensors, before torch.distributed.checkpoint): its state cannot be resumed "
                             "by this version; its weights (model.safetensors) still load and export", path=path,
                             field="--resume")
        if meta.get("version", 0) > VERSION:
            raise InputError(f"training state version {meta['version']} is newer than this draftsmith's {VERSION}",
                             path=state_dir / "trainer.json", field="version")
        dcp = _dcp()
        sharded, _ = sharded_state(module, optimizer)
        dcp.load(sharded, storage_reader=dcp.HuggingFaceStorageReader(str(state_dir)),
                 no_dist=not torch.distributed.is_initialized())
        groups = json.loads((state_dir / "optimizer.json").read_text(encoding="utf-8"))["param_groups"]
        set_state_dict(module, optimizer, model_state_dict=sharded["model"],
                       optim_state_dict={**sharded["optim"], "param_groups": groups})
        scheduler.load_state_dict(meta["scheduler"])
        return meta

    def find_resume(self, resume: str) -> Path | None:
        """`latest`: the step_*/final checkpoint of the output dir with the highest step (None if
        there is none); anything else: that folder, which must be a training checkpoint."""
        if resume != "latest":
            path = Path(resume)
            if not (path / STATE_DIR / "trainer.json").exists():
                raise InputError("not a training checkpoint (no training_state/trainer.json)", path=path,
                                 field="--resume")
            return path
        found, found_step = None, -1
        for path in [p for pattern in RESUMABLE for p in self.output_dir.glob(pattern)]:
            meta = path / STATE_DIR / "trainer.json"
            if meta.exists():
                step = json.loads(meta.read_text(encoding="utf-8"))["global_step"]
                if step > found_step:
                    found, found_step = path, step
        return found
