"""torchrun / process-group helpers shared by the feature generator and the trainer.

A plain `python` process is world size 1 and never touches torch.distributed. Under
torchrun (RANK/WORLD_SIZE/LOCAL_RANK in the environment) `init_distributed` starts the
default group: gloo on CPU, nccl on CUDA.

Layout: a world of W ranks with `--tp-size` t is W / t data-parallel replicas, each a
tensor-parallel group of t *consecutive* ranks (rank r is tp rank r % t of replica r // t;
`dp_coords`, `device_mesh`). torchrun numbers ranks node by node, so with
nproc_per_node a multiple of t a group never spans two nodes (its all-reduces stay on the
node's fast links) and only the data-parallel traffic crosses nodes. The same holds for
`--nnodes N` on one host: the layout depends on RANK / WORLD_SIZE alone.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from draftsmith.errors import DraftsmithError


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    local_world_size: int = 1          # ranks on this node (torchrun's LOCAL_WORLD_SIZE)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return default if value is None else int(value)


def pick_device(device: str | None, local_rank: int = 0) -> torch.device:
    """`None`/"auto" -> this rank's CUDA device when there is one, else CPU."""
    if device in (None, "auto"):
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device(f"cuda:{local_rank}")
    return dev


def init_distributed(device: str | None = None, timeout_minutes: float = 240.0) -> DistInfo:
    """Join the torchrun group if there is one (idempotent); return this rank's place and device."""
    rank, world, local_rank = _env_int("RANK", 0), _env_int("WORLD_SIZE", 1), _env_int("LOCAL_RANK", 0)
    dev = pick_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if dev.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=timedelta(minutes=timeout_minutes))
    if dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    return DistInfo(rank=rank, world_size=world, local_rank=local_rank, device=dev,
                    local_world_size=_env_int("LOCAL_WORLD_SIZE", world))


def check_tp_size(info: DistInfo, tp_size: int) -> None:
    """Refuse a --tp-size that does not cut the world into whole groups; warn when a group would
    span two nodes (legal, but its all-reduces would then cross the network)."""
    if tp_size < 1 or info.world_size % tp_size:
        raise DraftsmithError(f"--tp-size {tp_size} must divide the number of torchrun processes "
                              f"({info.world_size}): the world is cut into groups of {tp_size} consecutive ranks, "
                              "one model replica each")
    if tp_size > 1 and info.local_world_size % tp_size and info.local_world_size < info.world_size:
        _warn_groups_span_nodes(tp_size, info.local_world_size)


@functools.lru_cache(maxsize=None)
def _warn_groups_span_nodes(tp_size: int, per_node: int) -> None:
    """Once per process and layout."""
    from draftsmith.logs import get_logger

    get_logger(__name__).warning(
        "--tp-size %d does not divide the %d processes per node: some tensor-parallel groups span two nodes",
        tp_size, per_node)


def device_mesh(info: DistInfo, tp_size: int):
    """A 2-D DeviceMesh ("dp", "tp"): ranks r with the same r // tp_size form one tp group."""
    check_tp_size(info, tp_size)
    from torch.distributed.device_mesh import init_device_mesh

    return init_device_mesh(info.device.type, (info.world_size // tp_size, tp_size), mesh_dim_names=("dp", "tp"))


def dp_coords(info: DistInfo, tp_size: int) -> tuple[int, int]:
    """(dp_rank, dp_size): which data-parallel replica this rank belongs to, and how many there are."""
    check_tp_size(info, tp_size)
    return info.rank // tp_size, info.world_size // tp_size


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def broadcast_object(obj: object, src: int = 0) -> object:
    """Rank `src`'s object on every rank (a no-op in a single process)."""
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_gather_objects(obj: object) -> list[object]:
    if not dist.is_initialized():
        return [obj]
    out: list[object] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def kv_store():
    """A client of the key-value store torchrun's agent already runs at MASTER_ADDR:MASTER_PORT
    (public `torch.distributed.TCPStore`); None in a single process or a group made without
    those variables (progress is then this rank's own).

    Ranks publish small progress counters here without a collective, so rank 0 can show
    global figures while the ranks run unequal amounts of work.
    """
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if not dist.is_initialized() or not addr or not port:
        return None
    return dist.TCPStore(addr, int(port), is_master=False, timeout=timedelta(minutes=5))


def set_memory_fraction(fraction: float, device: torch.device) -> None:
    """Cap this process's share of the accelerator memory; a no-op on CPU (nothing to cap)."""
    if not 0.0 < fraction <= 1.0:
        raise DraftsmithError(f"--mem-frac must be in (0, 1], got {fraction}")
    if device.type == "cuda":
        torch.cuda.set_per_process_memory_fraction(fraction, device)


def cleanup() -> None:
    """Leave the group together after a successful run: no rank tears its connections down while
    a peer still uses them. (After an error just exit; torchrun stops the other ranks.)"""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
