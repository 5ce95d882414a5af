"""The trainer's parts on their own (fast, no target): checkpoint manager, metrics logger
(W&B run id kept across resume), the rank filter of the logs."""

from __future__ import annotations

import json
import logging
import sys
import types

import pytest
import torch

from _train_helpers import small_draft
from draftsmith import dist
from draftsmith.train.checkpoint import STATE_DIR, CheckpointManager
from draftsmith.train.metrics import WANDB_ID_FILE, MetricsLogger
from draftsmith.train.trainer import TTTModule

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _module_and_optimizer(seed: int):
    draft = small_draft(seed=seed)
    module = TTTModule(draft, torch.randn(300, 64), 2, 0.8, "blockwise")
    params = [p for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0 / (s + 1))
    return draft, module, optimizer, scheduler


def test_checkpoint_round_trip_without_pickle(tmp_path, monkeypatch):
    """Weights, AdamW state, scheduler and the trainer state come back exactly, from DCP's
    safetensors storage + JSON only (torch.load / pickle never run), in one process (no group)."""
    info = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    draft, module, optimizer, scheduler = _module_and_optimizer(0)
    for _ in range(2):
        sum(p.square().sum() for p in module.parameters() if p.requires_grad).backward()
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad()
    manager = CheckpointManager(tmp_path, info)
    state = {"global_step": 2, "epoch": 0, "data": {"epoch": 0, "step_in_epoch": 2},
             "best": {"value": 1.5, "step": 2}}
    path = manager.save("step_2", module, draft, optimizer, scheduler, state, {"seed": 0})
    files = sorted(p.name for p in (path / STATE_DIR).iterdir())
    assert [f for f in files if not f.endswith(".safetensors")] == ["optimizer.json", "trainer.json"]
    assert [f for f in files if f.endswith(".safetensors")]                 # the DCP shard(s)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors", STATE_DIR]
    assert not list(tmp_path.glob(".*"))                           # the temporary folder was renamed

    def no_pickle(*a, **k):
        raise AssertionError("checkpoints must not be unpickled")

    monkeypatch.setattr(torch, "load", no_pickle)
    monkeypatch.setattr("pickle.loads", no_pickle)
    monkeypatch.setattr("pickle.load", no_pickle)
    draft2, module2, optimizer2, scheduler2 = _module_and_optimizer(1)
    meta = manager.load(manager.find_resume("latest"), module2, optimizer2, scheduler2)
    assert (meta["global_step"], meta["data"], meta["best"]) == (2, state["data"], state["best"])
    for (name, a), (_, b) in zip(module.state_dict().items(), module2.state_dict().items()):
        assert torch.equal(a, b), name
    s1, s2 = optimizer.state_dict(), optimizer2.state_dict()
    assert json.loads(json.dumps(s1["param_groups"])) == json.loads(json.dumps(s2["param_groups"]))  # tuples: lists
    for k in s1["state"]:
        for name, value in s1["state"][k].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(s2["state"][k][name]))
    assert scheduler2.state_dict()["last_epoch"] == 2
    # best/ is resumed by name only; `latest` picks the highest step of step_*/final
    manager.save("best", module, draft, optimizer, scheduler, {**state, "global_step": 9}, {})
    assert manager.find_resume("latest").name == "step_2"
    assert manager.find_resume(str(tmp_path / "best")).name == "best"


def test_checkpoint_of_the_earlier_format_is_refused_naming_the_folder(tmp_path):
    """A pre-DCP checkpoint (optimizer.safetensors + rng.safetensors, no format in trainer.json)."""
    from draftsmith.errors import InputError

    old = tmp_path / "step_4"
    (old / STATE_DIR).mkdir(parents=True)
    (old / STATE_DIR / "trainer.json").write_text(json.dumps({"global_step": 4, "epoch": 0, "batch_in_epoch": 4}))
    info = dist.DistInfo(rank=0, world_size=1, local_rank=0, device=torch.device("cpu"))
    manager = CheckpointManager(tmp_path, info)
    assert manager.find_resume("latest") == old
    _, module, optimizer, scheduler = _module_and_optimizer(0)
    with pytest.raises(InputError, match="earlier draftsmith") as err:
        manager.load(old, module, optimizer, scheduler)
    assert str(old) in str(err.value)


class _FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.inits, self.logged, self.counter = [], [], 0
        self.util = types.SimpleNamespace(generate_id=self._new_id)

    def _new_id(self):
        self.counter += 1
        return f"run{self.counter}"

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda row, step: self.logged.append((step, row)))


def test_wandb_run_id_is_kept_across_resume_and_metrics_truncate(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    logger = MetricsLogger(tmp_path, "wandb", True, {"seed": 0})
    logger.open(None, 10, progress=False)
    for step in (1, 2, 3):
        logger.log({"step": step, "tau": None, "tau_draft_vocab": 1.5})
    assert (tmp_path / WANDB_ID_FILE).read_text().strip() == "run1"
    assert fake.inits[0]["id"] == "run1" and fake.inits[0]["resume"] == "allow"
    assert fake.logged[0] == (1, {"train/step": 1, "train/tau_draft_vocab": 1.5})   # None not sent
    resumed = MetricsLogger(tmp_path, "wandb", True, {"seed": 0})
    resumed.open(2, 10, progress=False)                        # resumed at step 2: the same W&B run
    assert fake.inits[1]["id"] == "run1"
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2]
    MetricsLogger(tmp_path, "wandb", True, {}).open(None, 10, progress=False)     # a fresh run: a new one
    assert fake.inits[2]["id"] == "run2" and (tmp_path / "metrics.jsonl").read_text() == ""


def test_logs_rank_filter(monkeypatch, capsys):
    from draftsmith.logs import get_logger

    log = get_logger("draftsmith.train.test")
    monkeypatch.setenv("RANK", "1")
    log.info("from rank one")
    log.info("every rank", extra={"all_ranks": True})
    monkeypatch.setenv("RANK", "0")
    log.info("from rank zero")
    err = capsys.readouterr().err
    assert "from rank one" not in err and "[rank 1] every rank" in err and "from rank zero" in err
    assert logging.getLogger("draftsmith").level == logging.INFO
