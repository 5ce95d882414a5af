"""Tokenized datasets made from token lists (no tokenizer or template involved)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest


def make_tokenized(path: Path, num_rows: int, vocab_size: int = 49152, min_len: int = 3, max_len: int = 70,
                   seed: int = 0) -> Path:
    """A tokenized dataset ✱ folder with id / input_ids / loss_mask, lengths in [min_len, max_len]."""
    from datasets import Dataset

    rng = random.Random(seed)
    rows = []
    for i in range(num_rows):
        n = rng.randint(min_len, max_len)
        start = rng.randint(1, n - 1)
        rows.append({"id": f"row-{i}", "input_ids": [rng.randrange(3, vocab_size) for _ in range(n)],
                     "loss_mask": [0] * start + [1] * (n - start)})
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def store_files(root: Path) -> dict[str, bytes]:
    """Every file of a finished store except the lock: what must be identical across runs."""
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != ".lock"}


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Tiny models run fastest on one thread; on a loaded 2-core box a second thread only waits."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
