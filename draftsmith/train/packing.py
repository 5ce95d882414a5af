"""Packing (`train --packing`): several conversations in one row of up to --max-length tokens.

A padded batch spends compute on padding wherever its conversations differ in length (the
ShareGPT distribution is long-tailed). Packed rows concatenate conversations instead, and
training-time test keeps them apart (train/ttt.py: rope positions restart, attention and
the shifted targets of every TTT step stay inside a conversation), so a packed batch has
the loss, gradients and metrics of the same conversations unpacked.

- `plan_rows(lengths, capacity, order)`: best-fit decreasing bin packing (each sample,
  longest first, goes into the fullest row it still fits; ties keep `order`); every row
  holds <= capacity tokens. Deterministic: it depends only on the lengths and `order`.
- `PackedUnits(lengths, capacity, seed)`: the `units` of train/data.py's `DataOrder`: an
  epoch's seeded sample permutation packed into rows, the rows then shuffled by a generator
  of (seed, epoch). `DataOrder` cuts these rows into global batches exactly as it cuts
  samples without packing (`--batch-size` then counts rows), so the order stays independent
  of the number of ranks. Best-fit decreasing packs the same multiset of lengths into the
  same number of rows, so every epoch has the same number of steps.
- `pack_items(items, row_sizes)`: the collate: consecutive per-sample tensors (token-aligned,
  first dim = tokens) concatenated into rows of `row_sizes[r]` samples, right-padded, plus
  `attention_mask`, `position_ids` (0, 1, ... in each conversation, 0 on padding) and
  `doc_ids` (the sample's index within its row, -1 on padding), all [R, T] int64.
- `split_padded(batch)`: a right-padded batch back into per-sample items. Online training
  runs the target on the conversations as the usual right-padded batch (each conversation
  on its own rows, so its features are exactly the unpacked ones), then packs the features.
"""

from __future__ import annotations

import bisect

import torch

# padding value of a packed tensor (0 elsewhere): padded top-K logits are -inf as in sources.pad_batch
FILL = {"target_topk_logits": float("-inf"), "doc_ids": -1}


def plan_rows(lengths: list[int], capacity: int, order: list[int] | None = None) -> list[list[int]]:
    """Rows of sample indices, each summing to <= `capacity` tokens (best-fit decreasing)."""
    order = list(range(len(lengths))) if order is None else list(order)
    ranked = sorted(order, key=lambda i: -lengths[i])            # stable: equal lengths keep `order`
    rows: list[list[int]] = []
    free: list[tuple[int, int]] = []                             # (tokens left, row), sorted
    for i in ranked:
        n = int(lengths[i])
        if n > capacity:
            raise ValueError(f"sample {i} has {n} tokens, more than a row of {capacity}")
        j = bisect.bisect_left(free, (n, -1))                    # the fullest row with room for n
        if j == len(free):
            rows.append([i])
            room, row = capacity - n, len(rows) - 1
        else:
            room, row = free.pop(j)
            rows[row].append(i)
            room -= n
        if room > 0:
            bisect.insort(free, (room, row))
    return rows


class PackedUnits:
    """(epoch permutation, epoch) -> the epoch's packed rows in training order (module docstring).
    The last epoch's plan is kept: `DataOrder` asks for it more than once per epoch."""

    def __init__(self, lengths: list[int], capacity: int, seed: int):
        self.lengths, self.capacity, self.seed = list(lengths), capacity, seed
        self._last: tuple[tuple[int, ...], list[list[int]]] | None = None

    def __call__(self, order: list[int], epoch: int) -> list[list[int]]:
        key = (epoch, *order)
        if self._last is None or self._last[0] != key:
            rows = plan_rows(self.lengths, self.capacity, order)
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch + 500_009)
            self._last = (key, [rows[i] for i in torch.randperm(len(rows), generator=g).tolist()])
        return self._last[1]


def pack_items(items: list[dict[str, torch.Tensor]], row_sizes: list[int]) -> dict[str, torch.Tensor]:
    """Concatenate consecutive samples into packed rows (module docstring). The tensors stay
    on the items' device."""
    if sum(row_sizes) != len(items) or any(n < 1 for n in row_sizes):
        raise ValueError(f"row sizes {row_sizes} do not split {len(items)} samples")
    sizes = [int(it["input_ids"].shape[0]) for it in items]
    starts = [0]
    for n in row_sizes:
        starts.append(starts[-1] + n)
    width = max(sum(sizes[a:b]) for a, b in zip(starts, starts[1:]))
    first, device = items[0], items[0]["input_ids"].device
    names = [n for n, v in first.items() if isinstance(v, torch.Tensor)]
    rows = len(row_sizes)
    out = {name: torch.full((rows, width, *first[name].shape[1:]), FILL.get(name, 0), dtype=first[name].dtype,
                            device=device) for name in names}
    out["attention_mask"] = torch.zeros(rows, width, dtype=torch.long, device=device)
    out["position_ids"] = torch.zeros(rows, width, dtype=torch.long, device=device)
    out["doc_ids"] = torch.full((rows, width), FILL["doc_ids"], dtype=torch.long, device=device)
    for r, (a, b) in enumerate(zip(starts, starts[1:])):
        offset = 0
        for doc, i in enumerate(range(a, b)):
            n, span = sizes[i], slice(offset, offset + sizes[i])
            for name in names:
                out[name][r, span] = items[i][name]
            out["attention_mask"][r, span] = 1
            out["position_ids"][r, span] = torch.arange(n, device=device)
            out["doc_ids"][r, span] = doc
            offset += n
    return out


def split_padded(batch: dict[str, torch.Tensor]) -> list[dict[str, torch.Tensor]]:
    """The samples of a right-padded batch (attention_mask gives each one's length)."""
    lengths = batch["attention_mask"].sum(-1).tolist()
    names = [n for n in batch if n != "attention_mask"]
    return [{name: batch[name][r, :int(n)] for name in names} for r, n in enumerate(lengths)]
