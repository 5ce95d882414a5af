"""Held-out evaluation during training, and the checkpoint chosen by it.

Every `--eval-interval` steps the trainer measures the draft on a held-out split (the
`--eval-data-path` / `--eval-hidden-states-path` rows, or `--eval-holdout N` rows taken
out of the training set):

- `tau`: the simulated acceptance length as a server verifies it (the target's
  full-vocab argmax, train/ttt.py), and `tau_draft_vocab` beside it;
- with `--eval-decode N`, `decode_tau`: real greedy speculative decoding
  (eval/spec_decode.py, a chain of `--ttt-length` draft tokens per verify step) of the
  first reply of N held-out rows, `--eval-decode-tokens` new tokens each, tokens emitted per
  target verify step (the prefill's token excluded, as eval/report.py counts).

The figure that picks `best/` is `decode_tau` when decoding, else `tau` (else, for an old
top-K store that cannot give it, `tau_draft_vocab`). `BestTracker` keeps the best value, its
step and the evaluations since then; it is saved in each checkpoint's trainer.json so a
resumed run keeps choosing and early-stopping as the uninterrupted one would.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

SELECTION_ORDER = ("decode_tau", "tau", "tau_draft_vocab")


def holdout_split(num_samples: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """(train indices, held-out indices): `holdout` samples drawn by a seeded permutation, both sorted."""
    if not 0 < holdout < num_samples:
        raise ValueError(f"cannot hold out {holdout} of {num_samples} samples")
    g = torch.Generator().manual_seed(seed * 7_919 + 17)
    order = torch.randperm(num_samples, generator=g).tolist()
    return sorted(order[holdout:]), sorted(order[:holdout])


class SubsetSource:
    """A feature source restricted to some of its samples (index i -> indices[i])."""

    def __init__(self, source, indices: list[int]):
        self.source, self.indices = source, list(indices)
        self.signal, self.has_target_argmax = source.signal, source.has_target_argmax

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def lengths(self) -> list[int]:
        lengths = self.source.lengths
        return [lengths[i] for i in self.indices]

    def batch(self, indices: list[int], device: torch.device, row_sizes: list[int] | None = None):
        return self.source.batch([self.indices[i] for i in indices], device, row_sizes)

    def item(self, i: int) -> dict[str, torch.Tensor]:          # the DataLoader's steps (train/data.py)
        return self.source.item(self.indices[i])

    def collate(self, items, row_sizes=None):
        return self.source.collate(items, row_sizes)

    def finish(self, batch, device, row_sizes=None):
        return self.source.finish(batch, device, row_sizes)

    def prompt_ids(self, i: int) -> list[int]:
        return self.source.prompt_ids(self.indices[i])


def selection_figure(row: dict) -> tuple[str, float]:
    """(name, value) of the figure an evaluation row is judged by."""
    for name in SELECTION_ORDER:
        if row.get(name) is not None:
            return name, float(row[name])
    raise ValueError("an evaluation row without any tau")


@dataclass
class BestTracker:
    """The best held-out figure so far, at which step, and evaluations since it improved."""

    value: float | None = None
    step: int | None = None
    metric: str | None = None
    evals_since: int = 0

    def update(self, metric: str, value: float, step: int) -> bool:
        """Record one evaluation; True if it is a new best (strictly higher)."""
        if self.value is None or value > self.value:
            self.value, self.step, self.metric, self.evals_since = value, step, metric, 0
            return True
        self.evals_since += 1
        return False

    def exhausted(self, patience: int | None) -> bool:
        return patience is not None and self.evals_since >= patience

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict | None) -> "BestTracker":
        return cls(**(data or {}))


@torch.no_grad()
def decode_tau(hf_model, draft, prompts: list[list[int]], num_steps: int, max_new_tokens: int,
               eos_token_ids: tuple[int, ...]) -> float | None:
    """Real greedy speculative decoding of each prompt; tokens emitted per target verify step."""
    from draftsmith.eval.spec_decode import SpecConfig, speculative_generate

    cfg = SpecConfig(num_steps=num_steps, topk=1, max_new_tokens=max_new_tokens, eos_token_ids=eos_token_ids)
    was_training = draft.training
    draft.eval()
    emitted = []
    try:
        for prompt in prompts:
            g = speculative_generate(hf_model, draft, prompt, cfg, aux_layers=list(draft.config.aux_layer_ids))
            emitted += g.emitted
    finally:
        draft.train(was_training)
    return sum(emitted) / len(emitted) if emitted else None
