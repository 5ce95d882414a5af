"""The data path of a training run: a global sample order that does not depend on the number of
ranks, and the DataLoader that decodes the batches of that order ahead of the training step.

Global order (`DataOrder`). Epoch e draws one seeded permutation of the training samples
(`torch.randperm`, generator seed·1_000_003 + e: the order single-process training always
had). Its units (samples; a packing plan may group them into rows, `units=`) are cut into
global batches of G = batch_size × dp_size × gradient_accumulation_steps units, the incomplete
last one dropped. Optimizer step s of the epoch trains on global batch s: its micro-step m
is units [m·b·n, (m+1)·b·n) of it, of which data-parallel rank r takes the b units
[m·b·n + r·b, m·b·n + (r+1)·b). Every split of G (2 ranks × batch 1, 1 rank × batch 2,
batch 1 × 2 accumulation steps) therefore trains on the same global batches, and the position
in the data is (epoch, optimizer steps done in it): G·steps global samples, which a run of any
world size with the same G continues (checkpoint.py saves it, `check_resume` refuses another G).

DataLoader (`TrainLoader`). A map-style Dataset calls the source's `item(i)` (read, decode and
truncate one sample) in `num_workers` worker processes, `StepSampler` (this rank's
micro-batches from a position) is its batch sampler, and the source's `collate` pads (or packs)
them there too; the main process only moves the batch to the device (pinned memory on CUDA,
`prefetch_factor` batches ahead per worker, persistent workers) and, online, runs the target
(`source.finish`). The DataLoader returns batches in the sampler's order whatever the number
of workers, so 0 and 2 workers give identical batches (tests/test_dataloader.py). The loader
draws its worker seeds from its own generator: the global RNG is not touched.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from draftsmith.errors import InputError


def epoch_permutation(num_samples: int, epoch: int, seed: int) -> list[int]:
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return torch.randperm(num_samples, generator=g).tolist()


@dataclass(frozen=True)
class DataOrder:
    """Which units this data-parallel rank trains on, step by step (module docstring)."""

    num_samples: int
    seed: int
    batch_size: int                 # units per micro-batch on each rank
    dp_rank: int = 0
    dp_size: int = 1
    accum: int = 1                  # micro-batches per optimizer step
    units: Callable[[list[int], int], list[list[int]]] | None = None   # (permutation, epoch) -> rows

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.dp_size * self.accum

    def epoch_units(self, epoch: int) -> list[list[int]]:
        order = epoch_permutation(self.num_samples, epoch, self.seed)
        return [[i] for i in order] if self.units is None else self.units(order, epoch)

    def steps_in_epoch(self, epoch: int = 0) -> int:
        n = self.num_samples if self.units is None else len(self.epoch_units(epoch))
        return n // self.global_batch

    def micro_batches(self, epoch: int, start_step: int = 0) -> list[list[list[int]]]:
        """This rank's micro-batches (each a list of units) from optimizer step `start_step` on."""
        units, g, b = self.epoch_units(epoch), self.global_batch, self.batch_size
        out = []
        for step in range(start_step, len(units) // g):
            for m in range(self.accum):
                first = step * g + m * b * self.dp_size + self.dp_rank * b
                out.append(units[first:first + b])
        return out

    def position(self, epoch: int, step_in_epoch: int) -> dict:
        """The data position a checkpoint records (what `check_resume` compares)."""
        return {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_batch": self.global_batch,
                "samples_in_epoch": step_in_epoch * self.global_batch, "num_samples": self.num_samples,
                "seed": self.seed}

    def check_resume(self, saved: dict, path=None) -> None:
        """Refuse a resume that would not continue the saved run's sample order."""
        if saved.get("global_batch") != self.global_batch:
            n = self.dp_size * self.accum
            hint = (f"--batch-size {saved['global_batch'] // n} keeps it with {self.dp_size} data-parallel "
                    f"rank(s) and {self.accum} accumulation step(s)" if saved.get("global_batch", 0) % n == 0
                    else "choose --batch-size × ranks × --gradient-accumulation-steps equal to it")
            raise InputError(f"the checkpoint's global batch is {saved.get('global_batch')} samples, this run's "
                             f"{self.global_batch} (batch {self.batch_size} × {self.dp_size} rank(s) × "
                             f"{self.accum} accumulation): {hint}", path=path, field="--resume")
        for key in ("num_samples", "seed"):
            if saved.get(key) != getattr(self, key):
                raise InputError(f"the checkpoint was trained with {key} {saved.get(key)}, this run has "
                                 f"{getattr(self, key)}: the sample order would differ", path=path, field="--resume")


def epoch_batches(num_samples: int, batch_size: int, epoch: int, seed: int, dp_rank: int,
                  dp_size: int, accum: int = 1) -> list[list[int]]:
    """This rank's micro-batches of sample indices for an epoch (`DataOrder` without packing)."""
    order = DataOrder(num_samples, seed, batch_size, dp_rank, dp_size, accum)
    return [[u[0] for u in mb] for mb in order.micro_batches(epoch)]


# ----- the DataLoader ------------------------------------------------------------------------------

class StepSampler(Sampler):
    """Batch sampler: this rank's micro-batches of `order` for one epoch from one optimizer step
    (`seek` before each `iter(loader)`). A micro-batch is a list of (sample, row) keys, the row
    being the unit's place in the micro-batch (packed rows hold several samples)."""

    def __init__(self, order: DataOrder):
        self.order, self.epoch, self.start = order, 0, 0

    def seek(self, epoch: int, start_step: int) -> None:
        self.epoch, self.start = epoch, start_step

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for micro in self.order.micro_batches(self.epoch, self.start):
            yield [(i, row) for row, unit in enumerate(micro) for i in unit]

    def __len__(self) -> int:
        return (self.order.steps_in_epoch(self.epoch) - self.start) * self.order.accum


class SourceDataset(Dataset):
    """Map-style view of a feature source: key (sample, row) -> (row, the sample's tensors)."""

    def __init__(self, source):
        self.source = source

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, key: tuple[int, int]):
        i, row = key
        return row, self.source.item(i)


class Collate:
    """(batch dict, row sizes or None): the source's collate, in the worker. `packed`: units are
    rows of several samples (row_sizes given to the source), else one sample per row."""

    def __init__(self, source, packed: bool):
        self.source, self.packed = source, packed

    def __call__(self, keyed: list[tuple[int, dict]]):
        items = [item for _, item in keyed]
        row_sizes = None
        if self.packed:
            row_sizes = []
            for k, (row, _) in enumerate(keyed):
                if k == 0 or row != keyed[k - 1][0]:
                    row_sizes.append(0)
                row_sizes[-1] += 1
        return self.source.collate(items, row_sizes), row_sizes


def default_workers(mode: str) -> int:
    """`--num-workers` unset: online none (the main process runs the target; tokenized rows are
    cheap); offline one worker per spare CPU core of this rank, 1 to 4 (the decode of an 8B
    target's int4 features is ~7x a SmolLM2 one's per token, and a GPU step is short; on a
    2-core CPU a single worker already keeps up, bench/dataloader.py)."""
    if mode != "offline":
        return 0
    per_rank = (os.cpu_count() or 1) // max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(1, min(4, per_rank - 1))


class TrainLoader:
    """The run's DataLoader over `source` in `order`; `epoch(e, start_step)` iterates this rank's
    micro-batches, ready on `device`."""

    def __init__(self, source, order: DataOrder, device: torch.device, num_workers: int = 0,
                 prefetch_factor: int = 2, packed: bool = False):
        self.source, self.device = source, device
        self.sampler = StepSampler(order)
        extra = {"prefetch_factor": prefetch_factor, "persistent_workers": True} if num_workers else {}
        self.loader = DataLoader(SourceDataset(source), batch_sampler=self.sampler, num_workers=num_workers,
                                 collate_fn=Collate(source, packed), pin_memory=device.type == "cuda",
                                 generator=torch.Generator().manual_seed(order.seed), **extra)

    def epoch(self, epoch: int, start_step: int = 0) -> Iterator[dict[str, torch.Tensor]]:
        self.sampler.seek(epoch, start_step)
        for batch, row_sizes in self.loader:
            yield self.source.finish(batch, self.device, row_sizes)
