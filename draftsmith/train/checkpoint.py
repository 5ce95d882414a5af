"""Training checkpoints ✱: one manager that saves, loads and finds them.

A checkpoint `<output-dir>/<name>/` (`step_<N>`, `best`, `final`) is a folder SGLang loads as
it is (config.json + model.safetensors, written by `Eagle3Draft.save_pretrained`) plus
`training_state/`, enough for `--resume` to continue the exact same run:

    optimizer.safetensors   every tensor of the optimizer state, named "<param index>::<name>"
    optimizer.json          param_groups and the non-tensor state entries (AdamW's `step` ...)
    rng.safetensors         torch (+ CUDA) generator states and numpy's key array
    trainer.json            data position (global_step, epoch, batch_in_epoch), the LR scheduler,
                            python/numpy RNG scalars, world size, the best/ tracker and the config

Safe by construction: safetensors and JSON only — no pickle anywhere, and nothing is read
with `torch.load`. Model and optimizer state go through `torch.distributed.checkpoint.
state_dict` (full, CPU-offloaded state dicts), so the same files serve a single process,
DDP and FSDP2. Rank 0 writes the folder under a temporary name and renames it when complete
(a crash never leaves a half-written checkpoint under its real name).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from draftsmith import dist
from draftsmith.errors import InputError
from draftsmith.fsutil import write_json_atomic

STATE_DIR = "training_state"
RESUMABLE = ("step_*", "final")   # what `--resume latest` picks from (best/ is resumed only by name)


# ----- optimizer and RNG state as tensors + JSON -------------------------------------------------

def flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    tensors, meta = {}, {"param_groups": state["param_groups"], "state": {}}
    for key, entry in state["state"].items():
        meta["state"][str(key)] = {}
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{key}::{name}"] = value.detach().cpu().contiguous()
                meta["state"][str(key)][name] = {"tensor": f"{key}::{name}"}
            else:
                meta["state"][str(key)][name] = {"value": value}
    return tensors, meta


def unflatten_optimizer(tensors: dict[str, torch.Tensor], meta: dict) -> dict:
    state = {}
    for key, entry in meta["state"].items():
        state[key] = {name: tensors[v["tensor"]] if "tensor" in v else v["value"] for name, v in entry.items()}
    return {"state": state, "param_groups": meta["param_groups"]}


def rng_state() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's python / numpy / torch (/ CUDA) generator states as (tensors, JSON)."""
    py, np_state = random.getstate(), np.random.get_state()
    tensors = {"torch": torch.get_rng_state(),
               "numpy_keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64))}
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []
    for i, s in enumerate(cuda):
        tensors[f"cuda_{i}"] = s
    meta = {"python": [py[0], list(py[1]), py[2]],
            "numpy": [np_state[0], int(np_state[2]), int(np_state[3]), float(np_state[4])], "cuda": len(cuda)}
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    p = meta["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))
    n = meta["numpy"]
    np.random.set_state((n[0], tensors["numpy_keys"].numpy().astype(np.uint32), n[1], n[2], n[3]))
    torch.set_rng_state(tensors["torch"])
    if meta.get("cuda") and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[f"cuda_{i}"] for i in range(meta["cuda"])])


# ----- the manager -------------------------------------------------------------------------------

class CheckpointManager:
    """Saves and loads the checkpoints of one output dir. `module` is the unwrapped training module
    (its state dict keys are `draft.<name>`), `draft` the Eagle3Draft inside it."""

    def __init__(self, output_dir: Path, info: dist.DistInfo):
        self.output_dir = Path(output_dir)
        self.info = info

    def save(self, name: str, module: torch.nn.Module, draft, optimizer, scheduler, state: dict,
             config: dict) -> Path:
        """Write `<output_dir>/<name>/`; `state` holds global_step, epoch, batch_in_epoch and best."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                             get_optimizer_state_dict)

        opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
        model_state = get_model_state_dict(module, options=opts)           # collective under FSDP
        optim_state = get_optimizer_state_dict(module, optimizer, options=opts)
        final = self.output_dir / name
        if self.info.is_main:
            tmp = self.output_dir / f".{name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            weights = {k.removeprefix("draft."): v.contiguous() for k, v in model_state.items()}
            weights["d2t"], weights["t2d"] = weights["d2t"].long(), weights["t2d"].bool()
            draft.save_pretrained(tmp, state_dict=weights)
            state_dir = tmp / STATE_DIR
            state_dir.mkdir()
            tensors, meta = flatten_optimizer(optim_state)
            save_file(tensors, str(state_dir / "optimizer.safetensors"))
            write_json_atomic(state_dir / "optimizer.json", meta)
            rng_tensors, rng_meta = rng_state()
            save_file(rng_tensors, str(state_dir / "rng.safetensors"))
            write_json_atomic(state_dir / "trainer.json", {
                **state, "scheduler": scheduler.state_dict(), "rng": rng_meta,
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
        """Restore weights, optimizer, scheduler and RNG from `path`; return its trainer.json."""
        from torch.distributed.checkpoint.state_dict import (StateDictOptions, set_model_state_dict,
                                                             set_optimizer_state_dict)

        state_dir = path / STATE_DIR
        meta = json.loads((state_dir / "trainer.json").read_text(encoding="utf-8"))
        if meta["world_size"] != self.info.world_size:
            raise InputError(f"checkpoint was written by {meta['world_size']} ranks, this run has "
                             f"{self.info.world_size}: the data position would not match", path=path,
                             field="--resume")
        weights = load_file(str(path / "model.safetensors"))
        opts = StateDictOptions(full_state_dict=True, broadcast_from_rank0=False)
        set_model_state_dict(module, {f"draft.{k}": v for k, v in weights.items()}, options=opts)
        optim_meta = json.loads((state_dir / "optimizer.json").read_text(encoding="utf-8"))
        optim = unflatten_optimizer(load_file(str(state_dir / "optimizer.safetensors")), optim_meta)
        set_optimizer_state_dict(module, optimizer, optim, options=opts)
        scheduler.load_state_dict(meta["scheduler"])
        restore_rng(load_file(str(state_dir / "rng.safetensors")), meta["rng"])
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
