"""Draft vocab: selection by supervised frequency, fill without duplicates, d2t/t2d, cache keyed by size."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from datasets import Dataset

from draftsmith.data.vocab import (VocabMapping, build_vocab_mapping, select_draft_vocab, target_vocab_size_of,
                                   token_counts, vocab_digest)


def _dataset(path, rows):
    Dataset.from_dict({"id": [str(i) for i in range(len(rows))], "input_ids": [r[0] for r in rows],
                       "loss_mask": [r[1] for r in rows]}).save_to_disk(str(path))
    return path


def test_select_by_supervised_frequency_then_fill():
    supervised = np.array([0, 5, 0, 9, 1, 0, 0, 0])
    every = np.array([7, 5, 2, 9, 1, 0, 3, 0])
    # supervised: 3 (9), 1 (5), 4 (1); then unsupervised by all-count: 0 (7), 6 (3), 2 (2); then lowest unused: 5
    assert select_draft_vocab(supervised, every, 3).tolist() == [1, 3, 4]
    assert select_draft_vocab(supervised, every, 5).tolist() == [0, 1, 3, 4, 6]
    full = select_draft_vocab(supervised, every, 8)
    assert full.tolist() == list(range(8))
    assert select_draft_vocab(supervised, every, 7).tolist() == [0, 1, 2, 3, 4, 5, 6]


def test_ties_break_by_lower_id():
    assert select_draft_vocab(np.array([2, 2, 2, 2]), np.array([2, 2, 2, 2]), 2).tolist() == [0, 1]


def test_mapping_tensors():
    vm = VocabMapping.from_draft_to_target(torch.tensor([1, 3, 4]), 8)
    assert vm.d2t.dtype == torch.int64 and vm.t2d.dtype == torch.bool
    assert (torch.arange(3) + vm.d2t).tolist() == [1, 3, 4]
    assert vm.t2d.nonzero().flatten().tolist() == [1, 3, 4] and len(vm.t2d) == 8


def test_build_counts_only_supervised_tokens(tmp_path):
    path = _dataset(tmp_path / "ds", [([5, 6, 7, 7], [0, 1, 1, 1]), ([5, 5, 5, 9], [0, 0, 0, 1])])
    supervised, every = token_counts(path, 10)
    assert supervised.tolist() == [0, 0, 0, 0, 0, 0, 1, 2, 0, 1]
    assert every.tolist() == [0, 0, 0, 0, 0, 4, 1, 2, 0, 1]
    vm = build_vocab_mapping(path, target_vocab_size=10, draft_vocab_size=4)
    assert vm.draft_to_target.tolist() == [5, 6, 7, 9]  # 7, 6, 9 supervised; 5 fills (most frequent other)
    assert vm.coverage == 1.0
    small = build_vocab_mapping(path, target_vocab_size=10, draft_vocab_size=1)
    assert small.draft_to_target.tolist() == [7] and small.coverage == 0.5
    assert small.path != vm.path and vm.path.parent == path / "vocab"


def test_cache_reuse_and_rebuilt_dataset(tmp_path):
    path = _dataset(tmp_path / "ds", [([1, 2, 2], [1, 1, 1])])
    first = build_vocab_mapping(path, 10, 2)
    assert first.draft_to_target.tolist() == [1, 2]
    mtime = first.path.stat().st_mtime_ns
    again = build_vocab_mapping(path, 10, 2)
    assert again.path.stat().st_mtime_ns == mtime and torch.equal(again.d2t, first.d2t)
    # the dataset is rebuilt in place with other tokens: the mapping must not be reused
    vocab_dir = path / "vocab"
    tmp_vocab = tmp_path / "keep"
    vocab_dir.rename(tmp_vocab)
    _dataset(path, [([3, 4, 4], [1, 1, 1])])
    tmp_vocab.rename(vocab_dir)
    assert build_vocab_mapping(path, 10, 2).draft_to_target.tolist() == [3, 4]


def test_errors(tmp_path):
    path = _dataset(tmp_path / "ds", [([1, 12], [1, 1])])
    with pytest.raises(Exception, match="outside the target vocab of 10"):
        build_vocab_mapping(path, 10, 2)
    with pytest.raises(Exception, match="must be in 1..10"):
        build_vocab_mapping(path, 10, 11)


def test_target_vocab_size_of(tmp_path, smollm2_dir):
    assert target_vocab_size_of(str(smollm2_dir)) == 49152


def test_build_dataset_and_the_trainer_from_a_store_pick_the_same_vocab(tmp_path, tiny_llama_dir):
    """The draft vocab of a tokenized dataset (build-dataset's cache) equals the one the trainer
    selects from a feature store alone (train/draft_setup.py: counts over the store's rows), ties
    included: ids drawn from 300 values, so many share a supervised count and the all-token
    count (then the id) decides."""
    from _hidden_states_helpers import make_tokenized

    from draftsmith.cli import run_command
    from draftsmith.dist import init_distributed
    from draftsmith.features import FeatureStore
    from draftsmith.train.draft_setup import vocab_mapping
    from draftsmith.train.sources import SourceSetup

    data = make_tokenized(tmp_path / "data", 24, vocab_size=300, max_len=30, seed=3)
    assert run_command("hidden-states", ["--target-model-path", str(tiny_llama_dir), "--data-path", str(data),
                                         "--output-dir", str(tmp_path / "store"), "--dtype", "float32",
                                         "--max-length", "64", "--no-progress"]) == 0
    store = FeatureStore.open(tmp_path / "store")
    vocab = 49152
    built = build_vocab_mapping(data, target_vocab_size=vocab, draft_vocab_size=40)
    setup = SourceSetup(train=None, eval=None, model_path=str(tiny_llama_dir), target_config=None, aux_layers=[],
                        embed=torch.zeros(0), lm_head=torch.zeros(0), vocab_size=vocab, store=store, data_dir=None)
    d2t, t2d = vocab_mapping(setup, 40, init_distributed("cpu"))
    assert torch.equal(torch.arange(40) + d2t, built.draft_to_target)
    assert torch.equal(t2d, built.t2d)
    assert vocab_digest(torch.arange(40) + d2t) == vocab_digest(built.draft_to_target)
