"""The training data path (train/data.py): the global sample order is the same for every split of
the global batch over ranks and accumulation steps, a resume position continues it, and the
DataLoader gives the same batches with 0 and 2 workers as the source read directly."""

from __future__ import annotations

import pytest
import torch

from _hidden_states_helpers import make_tokenized, one_torch_thread  # noqa: F401 (autouse fixture)
from draftsmith.errors import InputError
from draftsmith.train.data import DataOrder, TrainLoader, epoch_batches

SPLITS = [(4, 1, 1), (2, 2, 1), (1, 2, 2), (1, 4, 1), (2, 1, 2)]    # (batch, dp ranks, accumulation): G = 4


def _global_batches(order_of: dict, epoch: int) -> list[list[int]]:
    """Per optimizer step, every sample any rank trains on in it (sorted)."""
    steps = None
    for rank, order in order_of.items():
        micro = order.micro_batches(epoch)
        per_step = [sorted(i for mb in micro[s:s + order.accum] for u in mb for i in u)
                    for s in range(0, len(micro), order.accum)]
        steps = per_step if steps is None else [sorted(a + b) for a, b in zip(steps, per_step)]
    return steps


@pytest.mark.parametrize("epoch", [0, 3])
def test_every_split_of_the_global_batch_trains_on_the_same_samples(epoch):
    n, seed = 11, 7
    reference = None
    for b, dp, accum in SPLITS:
        orders = {r: DataOrder(n, seed, b, r, dp, accum) for r in range(dp)}
        steps = _global_batches(orders, epoch)
        assert all(o.steps_in_epoch() == n // 4 == len(steps) for o in orders.values())
        flat = [i for s in steps for i in s]
        assert len(flat) == len(set(flat)) == 4 * (n // 4)          # each sample at most once, the rest dropped
        reference = reference or steps
        assert steps == reference, (b, dp, accum)
    # one process, no accumulation: the epoch's permutation in order (what training always did)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch)).tolist()
    assert [i for mb in epoch_batches(n, 4, epoch, seed, 0, 1) for i in mb] == perm[:8]
    assert reference == [sorted(perm[:4]), sorted(perm[4:8])]


def test_position_continues_the_order_and_refuses_another_global_batch():
    two = DataOrder(12, 1, 1, 0, 2)           # rank 0 of 2, batch 1
    one = DataOrder(12, 1, 2, 0, 1)           # 1 rank, batch 2
    assert one.micro_batches(0, 4) == one.micro_batches(0)[4:]
    saved = two.position(epoch=0, step_in_epoch=4)
    assert saved["samples_in_epoch"] == 8
    one.check_resume(saved)                                # same global batch of 2: fine
    with pytest.raises(InputError, match="--batch-size 2 keeps it") as err:
        DataOrder(12, 1, 1, 0, 1).check_resume(saved, path="ckpt")
    assert err.value.field == "--resume"
    with pytest.raises(InputError, match="seed"):
        DataOrder(12, 2, 2, 0, 1).check_resume(saved)


@pytest.fixture(scope="module")
def source(tiny_llama_dir, tmp_path_factory):
    """An int4 store (the default codec) over several small shards, read through OfflineSource."""
    from draftsmith.features import FeatureStore
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
    from draftsmith.train.sources import OfflineSource

    root = tmp_path_factory.mktemp("loader")
    data = make_tokenized(root / "data", 10, max_len=30)
    run_hidden_states(HiddenStatesConfig(target_model_path=str(tiny_llama_dir), data_path=str(data),
                                         output_dir=str(root / "store"), shard_mb=0.01, batch_size=4,
                                         device="cpu", progress=False))
    store = FeatureStore.open(root / "store")
    assert store.manifest["codec"] == "int4" and len(store.manifest["shards"]) > 1
    return OfflineSource(store, max_length=24)


def _drain(loader: TrainLoader, epoch: int, start: int = 0) -> list[dict[str, torch.Tensor]]:
    return list(loader.epoch(epoch, start))


def test_workers_give_the_batches_of_the_source_in_the_global_order(source):
    cpu = torch.device("cpu")
    order = DataOrder(len(source), 3, 2, 1, 2, 1)          # rank 1 of 2, batch 2: G = 4, 2 steps per epoch
    expected = {e: [source.batch([u[0] for u in mb], cpu) for mb in order.micro_batches(e)] for e in (0, 1)}
    inline = TrainLoader(source, order, cpu, num_workers=0)
    workers = TrainLoader(source, order, cpu, num_workers=2, prefetch_factor=1)
    for loader in (inline, workers):
        for epoch in (0, 1, 0):                             # persistent workers: epochs re-seek the sampler
            got = _drain(loader, epoch)
            assert len(got) == len(expected[epoch]) == 2
            for a, b in zip(got, expected[epoch]):
                assert a.keys() == b.keys()
                assert all(torch.equal(a[k], b[k]) for k in a)
        tail = _drain(loader, 1, start=1)                   # a resumed position: the epoch's remaining steps
        assert len(tail) == 1 and all(torch.equal(tail[0][k], expected[1][1][k]) for k in tail[0])
    stop = workers.epoch(0)                                 # leaving an epoch early, then the next one
    next(stop)
    again = _drain(workers, 1)
    assert all(torch.equal(again[0][k], expected[1][0][k]) for k in again[0])


def test_default_workers_follow_the_spare_cores_of_a_rank(monkeypatch):
    from draftsmith.train import data

    for cores, ranks, online, offline in ((2, 1, 0, 1), (2, 2, 0, 1), (16, 1, 0, 4), (96, 8, 0, 4), (8, 4, 0, 1)):
        monkeypatch.setattr(data.os, "cpu_count", lambda: cores)
        monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
        assert (data.default_workers("online"), data.default_workers("offline")) == (online, offline), (cores, ranks)
