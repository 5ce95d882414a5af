"""Resume on another number of ranks (gloo, CPU): a run saved by 2 FSDP2 ranks × batch 1 continues
on 1 rank × batch 2, and a run saved by 1 rank continues on 2 FSDP2 ranks, both training on the
global batches of the uninterrupted 1-rank run and ending with its weights.

The checkpoint is cut at step 3 of 4 per epoch (mid-epoch) and the runs continue to step 6,
across the epoch boundary, so both the position inside an epoch and the next epoch's order
are exercised. Eight rows of different lengths and supervised counts: a wrong position or
order changes the per-step token counts (compared exactly) and the losses. One torchrun
launch (tests/_equivalence_worker.py) runs both 2-rank parts. Tolerance as in
tests/test_equivalence.py (fp32 summation order across splits, amplified by AdamW): losses
rel 1e-4, weights rtol 1e-4 / atol 1e-5.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from _train_helpers import online_config, run_two_ranks
from draftsmith.errors import InputError
from draftsmith.train.trainer import TrainConfig, Trainer, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CUT, STEPS = 3, 6            # 8 rows, global batch 2: 4 steps per epoch, 2 epochs


def _rows() -> list[dict]:
    g = torch.Generator().manual_seed(11)
    rows = []
    for i in range(8):
        n = int(torch.randint(12, 40, (1,), generator=g))
        start = int(torch.randint(2, n - 4, (1,), generator=g))
        rows.append({"id": f"row-{i}", "input_ids": torch.randint(3, 49152, (n,), generator=g).tolist(),
                     "loss_mask": [0] * start + [1] * (n - start)})
    return rows


def _config(target: Path, data: Path, out: Path, **kw) -> dict:
    return online_config(target, data, out, **{**dict(ttt_length=2, num_epochs=2, max_steps=STEPS, batch_size=2,
                                                      learning_rate=5e-3, warmup_ratio=0.25, save_interval=CUT,
                                                      seed=4), **kw})


def _metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def _weights(out: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / "final" / "model.safetensors"))


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    from datasets import Dataset

    root = tmp_path_factory.mktemp("resume_world_size")
    data = root / "data"
    Dataset.from_list(_rows()).save_to_disk(str(data))
    cfg = lambda name, **kw: _config(tiny_llama_dir, data, root / name, **kw)  # noqa: E731
    train(TrainConfig(**cfg("ref")))                                     # 1 rank × batch 2, uninterrupted
    one = root / "one_to_two"                                            # its step_3 checkpoint alone
    one.mkdir()
    for name in ("step_3", "metrics.jsonl", "train_config.json"):
        (shutil.copytree if (root / "ref" / name).is_dir() else shutil.copy)(root / "ref" / name, one / name)
    two_ranks = [cfg("two_to_one", parallel="fsdp", batch_size=1, max_steps=CUT),
                 cfg("one_to_two", parallel="fsdp", batch_size=1, resume="latest")]
    proc = run_two_ranks(two_ranks, root / "runs.json")
    assert proc.returncode == 0, proc.stderr[-4000:]
    state = json.loads((root / "two_to_one" / "step_3" / "training_state" / "trainer.json").read_text())
    assert state["world_size"] == 2 and state["data"]["step_in_epoch"] == 3 and state["data"]["global_batch"] == 2
    with pytest.raises(InputError, match="--batch-size 2 keeps it"):        # 1 rank × batch 1: not the same order
        Trainer(TrainConfig(**cfg("two_to_one", batch_size=1, resume="latest"))).train()
    train(TrainConfig(**cfg("two_to_one", resume="latest")))               # 1 rank × batch 2 from the 2-rank state
    return {name: root / name for name in ("ref", "two_to_one", "one_to_two")}


@pytest.mark.parametrize("name", ["two_to_one", "one_to_two"])
def test_resume_on_another_world_size_continues_the_run(runs, name):
    ref, got = _metrics(runs["ref"]), _metrics(runs[name])
    assert [r["step"] for r in got] == [r["step"] for r in ref] == list(range(1, STEPS + 1))
    assert [r["epoch"] for r in got] == [0] * 4 + [1] * 2
    for ra, rb in zip(ref, got):
        assert ra["tokens"] == rb["tokens"], ra["step"]                  # the same samples, step by step
        assert ra["loss_k"] == pytest.approx(rb["loss_k"], rel=1e-4), ra["step"]
        assert ra["lr"] == pytest.approx(rb["lr"], rel=1e-12)
    wa, wb = _weights(runs["ref"]), _weights(runs[name])
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")
    state = json.loads((runs[name] / "final" / "training_state" / "trainer.json").read_text())
    assert state["global_step"] == STEPS and state["data"]["epoch"] == 1 and state["data"]["step_in_epoch"] == 2
    assert state["world_size"] == (1 if name == "two_to_one" else 2)
