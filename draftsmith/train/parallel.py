"""How the draft is replicated under torchrun, applied from outside the model.

`parallelize(module, info, parallel)` returns what the loop calls: the module itself in a
single process; under torchrun either DDP (`torch.nn.parallel.DistributedDataParallel`,
the default: every rank holds the whole draft, gradients all-reduced) or FSDP2
(`torch.distributed.fsdp.fully_shard` over the data-parallel mesh: parameters, gradients
and optimizer state sharded, gathered for each forward; kept gathered after the forward
since the TTT backward needs them at once). The draft never knows which: DDP's `no_sync`
and FSDP2's `set_requires_gradient_sync` are what the loop uses for gradient accumulation.
Process groups come from `draftsmith.dist` (gloo on CPU, nccl on CUDA).
"""

from __future__ import annotations

import torch

from draftsmith import dist

PARALLEL = ("ddp", "fsdp")


def parallelize(module: torch.nn.Module, info: dist.DistInfo, parallel: str) -> torch.nn.Module:
    if info.world_size == 1:
        return module
    if parallel == "fsdp":
        from torch.distributed.fsdp import fully_shard

        fully_shard(module, mesh=dist.device_mesh(info, 1)["dp"], reshard_after_forward=False)
        return module          # fully_shard changes the module in place
    if parallel == "ddp":
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [info.device.index] if info.device.type == "cuda" else None
        return DDP(module, device_ids=ids, broadcast_buffers=False)
    raise ValueError(f"unknown parallel mode {parallel!r} ({', '.join(PARALLEL)})")
