"""The trainer end to end on a tiny target, with the real build-dataset and feature store:
learning, online == offline, resume equivalence, torchrun (gloo, 2 processes), checkpoints."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from _train_helpers import sharp_target, write_conversations
from draftsmith.errors import InputError
from draftsmith.train.trainer import TrainConfig, Trainer, train


pytestmark = pytest.mark.usefixtures("one_torch_thread")


REPO = Path(__file__).resolve().parent.parent
AUX = [1, 2, 3]   # explicit ids (the trainer's --aux-layers path), not the default [2, L//2, L-3]


@pytest.fixture(scope="module")
def setup(tiny_llama_dir, tmp_path_factory):
    """A sharp tiny target, 16 tokenized conversations and a bf16 feature store of them."""
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states

    root = tmp_path_factory.mktemp("trainer")
    target = sharp_target(Path(tiny_llama_dir), root / "target")
    conv = write_conversations(root / "train.jsonl", 16)
    built = build_dataset(BuildConfig(data_path=str(conv), target_model_path=str(target), chat_template="hf",
                                      max_length=128, output_dir=str(root / "tokenized")))
    eval_conv = write_conversations(root / "eval.jsonl", 4, seed=1)
    store = root / "store"
    run_hidden_states(HiddenStatesConfig(target_model_path=str(target), data_path=str(built.path), output_dir=str(store),
                                         max_length=128, dtype="bfloat16", codec="bf16", batch_size=8,
                                         aux_layers=AUX, device="cpu", progress=False))
    eval_store = root / "eval_store"
    run_hidden_states(HiddenStatesConfig(target_model_path=str(target), data_path=str(eval_conv), output_dir=str(eval_store),
                                         chat_template="hf", max_length=128, dtype="bfloat16", codec="bf16",
                                         batch_size=8, aux_layers=AUX, device="cpu", progress=False))
    return {"root": root, "target": target, "data": Path(built.path), "store": store, "eval_store": eval_store}


def _offline(setup, out: Path, **kw) -> TrainConfig:
    base = dict(mode="offline", target_model_path=str(setup["target"]), train_data_path=str(setup["data"]),
                train_hidden_states_path=str(setup["store"]), output_dir=str(out), draft_vocab_size=512,
                ttt_length=3, batch_size=2, max_length=128, learning_rate=3e-3, warmup_ratio=0.0,
                save_interval=1000, eval_interval=1000, dtype="bfloat16", device="cpu", progress=False, seed=3)
    base.update(kw)
    return TrainConfig(**base)


def _metrics(out: Path, split: str = "train") -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split", "train") == split]


def test_loss_falls_and_acc0_rises(setup, tmp_path):
    out = tmp_path / "run"
    result = train(_offline(setup, out, num_epochs=3, learning_rate=1e-2,
                            eval_hidden_states_path=str(setup["eval_store"]), eval_interval=8))
    rows = _metrics(out)
    assert len(rows) == 24 and rows[-1]["step"] == result["global_step"] == 24
    first = sum(r["loss_k"][0] for r in rows[:4]) / 4
    last = sum(r["loss_k"][0] for r in rows[-4:]) / 4
    assert last < 0.7 * first
    # the tiny random target's full-vocab argmax is mostly outside the 512-token draft vocab, so
    # the draft learns what it can (the draft-vocab distribution) while the served figure stays low
    acc_dv = [r["acc_k_draft_vocab"][0] for r in rows]
    assert sum(acc_dv[-8:]) / 8 > sum(acc_dv[:4]) / 4 + 0.15
    evals = _metrics(out, "eval")
    assert [e["step"] for e in evals] == [8, 16, 24]
    assert evals[-1]["loss_k"][0] < evals[0]["loss_k"][0]
    assert evals[-1]["acc_k_draft_vocab"][0] > evals[0]["acc_k_draft_vocab"][0]
    for r in rows + evals:
        assert set(r) >= {"step", "epoch", "loss_k", "acc_k", "tau", "acc_k_draft_vocab", "tau_draft_vocab"}
        assert len(r["loss_k"]) == len(r["acc_k"]) == len(r["acc_k_draft_vocab"]) == 3
        assert all(a <= b for a, b in zip(r["acc_k"], r["acc_k_draft_vocab"]))
        assert 1.0 <= r["tau"] <= r["tau_draft_vocab"]
    for r in rows:
        assert set(r) >= {"lr", "tokens_per_s"}


def test_bf16_autocast_on_cpu_learns_like_fp32_and_keeps_fp32_weights(setup, tmp_path):
    from safetensors.torch import load_file

    train(_offline(setup, tmp_path / "fp32", num_epochs=2, learning_rate=1e-2, autocast="off"))
    train(_offline(setup, tmp_path / "bf16", num_epochs=2, learning_rate=1e-2, autocast="bf16"))
    fp32, bf16 = _metrics(tmp_path / "fp32"), _metrics(tmp_path / "bf16")
    assert bf16[0]["loss_k"][0] == pytest.approx(fp32[0]["loss_k"][0], rel=2e-2)   # same model, bf16 rounding
    assert sum(r["loss_k"][0] for r in bf16[-4:]) < 0.8 * sum(r["loss_k"][0] for r in bf16[:4])
    last_fp32 = sum(r["loss_k"][0] for r in fp32[-4:])
    assert sum(r["loss_k"][0] for r in bf16[-4:]) == pytest.approx(last_fp32, rel=0.15)
    weights = load_file(str(next((tmp_path / "bf16" / "final").glob("*.safetensors"))))
    assert {t.dtype for t in weights.values() if t.is_floating_point()} == {torch.float32}
    with pytest.raises(InputError, match="autocast"):
        _offline(setup, tmp_path / "x", autocast="fp8").validate()


def test_online_and_offline_give_the_same_first_step(setup, tmp_path):
    from datasets import load_from_disk

    from draftsmith.features import FeatureStore

    store = FeatureStore.open(setup["store"])
    assert store.ids == load_from_disk(str(setup["data"]))["id"]        # same samples, same order
    train(_offline(setup, tmp_path / "off", max_steps=1))
    online = _offline(setup, tmp_path / "on", max_steps=1, mode="online", train_hidden_states_path=None,
                      aux_layers=AUX)
    train(online)
    off, on = _metrics(tmp_path / "off")[0], _metrics(tmp_path / "on")[0]
    assert off["tokens"] == on["tokens"]
    # bf16 target features depend slightly on the batch they were computed in (store: 8 rows,
    # online: 2), so equality is to ~1e-6, far below any misalignment
    for a, b in zip(off["loss_k"], on["loss_k"]):
        assert a == pytest.approx(b, rel=1e-5)
    assert off["acc_k"] == on["acc_k"] and off["acc_k_draft_vocab"] == on["acc_k_draft_vocab"]


def test_resume_gives_the_same_loss_curve_and_checkpoints_reload(setup, tmp_path):
    from draftsmith.draft import Eagle3Draft
    from draftsmith.export import check_folder, load_target_config

    full = tmp_path / "full"
    train(_offline(setup, full, num_epochs=2, save_interval=3))
    cut = tmp_path / "cut"
    train(_offline(setup, cut, num_epochs=2, save_interval=3, max_steps=5))   # "killed" after step 5
    assert (cut / "step_3").is_dir() and (cut / "final").is_dir()
    trainer = Trainer(_offline(setup, cut, num_epochs=2, save_interval=3, resume="latest"))
    trainer.train()
    a, b = _metrics(full), _metrics(cut)
    assert [r["step"] for r in b] == list(range(1, 17)) == [r["step"] for r in a]
    for ra, rb in zip(a, b):
        assert ra["loss_k"] == pytest.approx(rb["loss_k"], rel=1e-6, abs=1e-7), ra["step"]
        assert ra["lr"] == pytest.approx(rb["lr"])

    # the final folder is SGLang-loadable as is and reloads to identical outputs
    final = cut / "final"
    report = check_folder(final, load_target_config(setup["target"]))
    assert report.ok, report
    again = Eagle3Draft.from_pretrained(final, embed_weight=trainer.draft.embed_weight)
    batch = trainer.train_source.batch([0], torch.device("cpu"))
    pos = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        for model in (trainer.draft, again):
            model.eval()
        x = trainer.draft.layer(batch["input_ids"], trainer.draft.project(batch["aux_hidden_states"]), pos)[0]
        y = again.layer(batch["input_ids"], again.project(batch["aux_hidden_states"]), pos)[0]
    assert torch.equal(trainer.draft.logits(x), again.logits(y))
    assert torch.equal(again.d2t, trainer.draft.d2t.cpu())


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_torchrun_two_processes_gloo(setup, tmp_path, parallel):
    out = tmp_path / parallel
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(REPO / "scripts" / "train_eagle3_offline.py"),
           "--target-model-path", str(setup["target"]), "--train-data-path", str(setup["data"]),
           "--train-hidden-states-path", str(setup["store"]), "--output-dir", str(out),
           "--draft-vocab-size", "512", "--ttt-length", "2", "--batch-size", "2", "--max-steps", "2",
           "--device", "cpu", "--parallel", parallel, "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _metrics(out)
    assert [r["step"] for r in rows] == [1, 2]
    store_tokens = sorted(json.loads((setup["store"] / "manifest.json").read_text())["samples"],
                          key=lambda s: s["index"])
    assert rows[0]["tokens"] > max(s["length"] for s in store_tokens) * 2   # 2 ranks x 2 samples counted
    state = json.loads((out / "final" / "training_state" / "trainer.json").read_text())
    assert state["world_size"] == 2 and state["global_step"] == 2
    from draftsmith.draft import Eagle3Draft

    Eagle3Draft.from_pretrained(out / "final")


def test_yaml_config_equals_flags(tmp_path):
    import argparse

    from draftsmith.train import cli

    yaml_path = tmp_path / "run.yaml"
    yaml_path.write_text("mode: offline\ntrain-hidden-states-path: /s\nlearning_rate: 0.0005\nttt-length: 5\n"
                         "batch-size: 3\n")
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    from_yaml = cli.config_from_args(parser.parse_args(["--config", str(yaml_path), "--batch-size", "4"]))
    from_flags = cli.config_from_args(parser.parse_args(
        ["--mode", "offline", "--train-hidden-states-path", "/s", "--learning-rate", "0.0005",
         "--ttt-length", "5", "--batch-size", "4"]))
    assert from_yaml == from_flags and from_yaml.batch_size == 4
    yaml_path.write_text("mode: offline\nlearning-rat: 1\n")
    with pytest.raises(InputError, match="learning-rat") as err:
        cli.config_from_args(parser.parse_args(["--config", str(yaml_path)]))
    assert err.value.line == 2


def test_yaml_config_values_are_typed_and_print_config_reads_back(tmp_path, capsys):
    """PyYAML reads `1e-4` as a string: the file's values become the fields' types; a value of the
    wrong type names its key and line; --print-config emits YAML that --config reads back."""
    import argparse

    import yaml

    from draftsmith.train import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    path = tmp_path / "run.yaml"
    path.write_text("mode: offline\ntrain_hidden_states_path: /s\nlearning_rate: 1e-4\nweight-decay: 1e-2\n"
                    "aux_layers: 1,2,3\nmax_steps: null\nearly_stop: 3\n")
    assert isinstance(yaml.safe_load(path.read_text())["learning_rate"], str)     # the PyYAML behaviour
    cfg = cli.config_from_args(parser.parse_args(["--config", str(path)]))
    assert cfg.learning_rate == 1e-4 and isinstance(cfg.learning_rate, float) and cfg.weight_decay == 0.01
    assert cfg.aux_layers == [1, 2, 3] and cfg.max_steps is None and cfg.early_stop == 3
    from draftsmith.cli import run_command

    assert run_command("train", ["--config", str(path), "--batch-size", "4", "--print-config"]) == 0
    printed = tmp_path / "printed.yaml"
    printed.write_text(capsys.readouterr().out)
    again = cli.config_from_args(parser.parse_args(["--config", str(printed)]))
    assert again == TrainConfig(**{**cfg.__dict__, "batch_size": 4})
    json_path = tmp_path / "run.json"
    json_path.write_text('{"mode": "offline", "train-hidden-states-path": "/s", "learning_rate": "3e-4"}')
    assert cli.config_from_args(parser.parse_args(["--config", str(json_path)])).learning_rate == 3e-4
    for bad, key, line in (("mode: offline\nbatch_size: two\n", "batch_size", 2),
                           ("ttt_length: 1.5\n", "ttt_length", 1), ("progress: 0\n", "progress", 1),
                           ("learning_rate: fast\n", "learning_rate", 1), ("mode: null\n", "mode", 1)):
        path.write_text(bad)
        with pytest.raises(InputError, match="expected") as err:
            cli.config_from_args(parser.parse_args(["--config", str(path)]))
        assert (err.value.field, err.value.line) == (key, line)


def test_best_keeps_the_planted_tau_peak_and_early_stops(setup, tmp_path, monkeypatch):
    """An evaluator with a planted peak (the 3rd evaluation): best/ holds that step's weights, the
    run stops PATIENCE evaluations later, and best/ resumes the run exactly where it was."""
    from safetensors.torch import load_file

    planted = [1.10, 1.30, 1.60, 1.40, 1.20, 1.25, 1.00, 1.00, 1.00]

    def planted_evaluate(self):
        value = planted[self.global_step // 2 - 1]
        return {"split": "eval", "step": self.global_step, "epoch": self.epoch, "tau": value,
                "tau_draft_vocab": value + 0.2}

    monkeypatch.setattr(Trainer, "evaluate", planted_evaluate)
    out = tmp_path / "run"
    cfg = dict(num_epochs=3, eval_interval=2, save_interval=2, early_stop=3,
               eval_hidden_states_path=str(setup["eval_store"]))
    result = train(_offline(setup, out, **cfg))
    # evaluations at 2, 4, 6 (peak), 8, 10, 12: three without improvement -> stop at 12, not 24
    assert result["global_step"] == 12 and result["best_step"] == 6 and result["best_value"] == 1.60
    evals = _metrics(out, "eval")
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10, 12]
    assert [e["best_step"] for e in evals] == [2, 4, 6, 6, 6, 6]
    assert len(_metrics(out)) == 12
    best = load_file(str(out / "best" / "model.safetensors"))
    peak = load_file(str(out / "step_6" / "model.safetensors"))
    assert best.keys() == peak.keys() and all(torch.equal(best[k], peak[k]) for k in best)
    later = load_file(str(out / "final" / "model.safetensors"))
    assert not torch.equal(later["fc.weight"], best["fc.weight"])
    assert sorted(p.name for p in (out / "best").iterdir()) == sorted(p.name for p in (out / "final").iterdir())
    state = json.loads((out / "best" / "training_state" / "trainer.json").read_text())
    assert state["global_step"] == 6 and state["best"]["step"] == 6

    # best/ resumes: the same steps 7..12 as the run that went on from step 6, and the same stop
    import shutil

    again = tmp_path / "again"
    shutil.copytree(out, again)
    resumed = train(_offline(setup, again, resume=str(again / "best"), **cfg))
    assert resumed["global_step"] == 12 and resumed["best_step"] == 6
    a, b = _metrics(out), _metrics(again)
    assert [r["step"] for r in b] == list(range(1, 13))
    for ra, rb in zip(a, b):
        assert ra["loss_k"] == pytest.approx(rb["loss_k"], rel=1e-6, abs=1e-7), ra["step"]
    # a run that stopped early stays stopped when resumed
    assert train(_offline(setup, again, resume="latest", **cfg))["global_step"] == 12


def test_held_out_split_with_real_decoding(setup, tmp_path):
    """--eval-holdout carves the eval split out of the training samples; --eval-decode adds real
    speculative decoding of held-out prompts, and best/ is chosen by it."""
    out = tmp_path / "run"
    result = train(_offline(setup, out, max_steps=4, eval_interval=2, eval_holdout=4, eval_decode=2,
                            eval_decode_tokens=8))
    evals = _metrics(out, "eval")
    assert [e["step"] for e in evals] == [2, 4]
    for e in evals:
        assert e["decode_tau"] >= 1.0 and e["best_metric"] == "decode_tau"
        assert 1.0 <= e["tau"] <= e["tau_draft_vocab"]
    assert result["best_step"] in (2, 4) and (out / "best" / "config.json").is_file()
    # the eval rows are exactly the held-out samples' supervised tokens t >= 2 (step-0 targets)
    from draftsmith.features import FeatureStore
    from draftsmith.train.evaluate import holdout_split

    store = FeatureStore.open(setup["store"])
    train_idx, held = holdout_split(len(store), 4, seed=3)
    assert len(held) == 4 and not set(held) & set(train_idx) and len(train_idx) == 12
    expect = sum(int(store[i]["loss_mask"][2:].sum()) for i in held)
    assert all(e["supervised_rows"] == expect for e in evals)
    # the report's training plot draws both figures for training and held-out rows
    from draftsmith.eval.report import _curves, read_metrics

    curves = _curves(read_metrics(out / "metrics.jsonl"), "tau")
    assert {"tau", "tau_draft_vocab", "eval/tau", "eval/tau_draft_vocab", "eval/decode_tau"} <= set(curves)
    assert curves["eval/decode_tau"][0] == [2, 4]
    with pytest.raises(InputError, match="held-out"):
        Trainer(_offline(setup, tmp_path / "x", early_stop=2))


def test_trainer_and_build_dataset_choose_the_same_draft_vocab_on_ties(tiny_llama_dir, tmp_path):
    """One owner of the draft-vocab selection (data/vocab.py): a hidden-state store trained on
    without its tokenized folder gives the vocabulary build-dataset gives for the same rows, ties
    included (equal supervised counts break by all-token count, then id; the fill past the
    supervised ids goes by all-token count)."""
    from datasets import Dataset

    from draftsmith.data.vocab import build_vocab_mapping
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states

    # supervised: 70 x3; 50, 60, 90 x1 each (a tie) — 60 also appears 3 times unsupervised;
    # unsupervised only: 80 x2, then 5 and 7 x1 (a tie: the lower id first)
    rows = [([5, 60, 60, 60, 7, 50, 60, 70, 70], [0, 0, 0, 0, 0, 1, 1, 1, 1]),
            ([5, 80, 80, 70, 90], [0, 0, 0, 1, 1])]
    data = tmp_path / "tokenized"
    Dataset.from_dict({"id": ["a", "b"], "input_ids": [r[0] for r in rows],
                       "loss_mask": [r[1] for r in rows]}).save_to_disk(str(data))
    store = tmp_path / "store"
    run_hidden_states(HiddenStatesConfig(target_model_path=str(tiny_llama_dir), data_path=str(data), output_dir=str(store),
                                         dtype="float32", codec="bf16", batch_size=2, aux_layers=AUX, device="cpu",
                                         progress=False))
    expected = {2: [60, 70], 6: [5, 50, 60, 70, 80, 90]}
    for vd, ids in expected.items():
        built = build_vocab_mapping(data, target_vocab_size=49152, draft_vocab_size=vd)
        assert built.draft_to_target.tolist() == ids
        trainer = Trainer(TrainConfig(mode="offline", target_model_path=str(tiny_llama_dir),
                                      train_hidden_states_path=str(store), output_dir=str(tmp_path / f"run{vd}"),
                                      draft_vocab_size=vd, batch_size=1, device="cpu", progress=False))
        assert trainer.setup.data_dir is None                      # the store's rows, not the folder
        assert trainer.draft.draft_to_target.tolist() == ids
        assert torch.equal(trainer.draft.t2d, built.t2d)


def test_lm_head_init_target_and_survival_weighting_train(setup, tmp_path):
    """--lm-head-init target starts the draft's lm_head as the target's rows of the draft vocab;
    --ttt-weighting survival runs the whole trainer (the weighting itself: tests/test_ttt.py)."""
    from draftsmith.train.sources import load_target_weights

    trainer = Trainer(_offline(setup, tmp_path / "init", lm_head_init="target"))
    head = load_target_weights(str(setup["target"]), torch.bfloat16).lm_head     # the run's --dtype
    torch.testing.assert_close(trainer.draft.lm_head.weight.detach(),
                               head.index_select(0, trainer.draft.draft_to_target).float(), rtol=0, atol=0)
    random_head = Trainer(_offline(setup, tmp_path / "random")).draft.lm_head.weight
    assert not torch.allclose(random_head, trainer.draft.lm_head.weight)
    out = tmp_path / "survival"
    train(_offline(setup, out, num_epochs=3, learning_rate=1e-2, ttt_weighting="survival", loss_decay=1.0))
    rows = _metrics(out)
    assert sum(r["loss_k"][0] for r in rows[-4:]) < 0.8 * sum(r["loss_k"][0] for r in rows[:4])


def test_ttt_curriculum_ramps_the_later_steps_per_optimizer_step(setup, tmp_path, monkeypatch):
    """--ttt-curriculum R: every micro-batch of optimizer step s weighs TTT steps >= 1 by min(1, s / (R·total));
    --distill-temperature reaches the loss (the loss itself: tests/test_ttt.py)."""
    from draftsmith.train.trainer import TTTModule, curriculum_scale

    seen = []
    forward = TTTModule.forward

    def spy(self, batch, step_norm=None):
        seen.append((self.deep_scale, self.temperature))
        return forward(self, batch, step_norm)

    monkeypatch.setattr(TTTModule, "forward", spy)
    summary = train(_offline(setup, tmp_path / "cur", num_epochs=2, gradient_accumulation_steps=2,
                             ttt_curriculum=0.5, distill_temperature=2.0))
    total = summary["global_step"]
    assert total >= 4 and len(seen) == 2 * total
    expected = [min(1.0, s / (0.5 * total)) for s in range(total) for _ in range(2)]
    assert [s for s, _ in seen] == pytest.approx(expected) and {t for _, t in seen} == {2.0}
    assert curriculum_scale(7, 10, 0.0) == 1.0 and curriculum_scale(0, 10, 1.0) == 0.0
    for bad in (dict(ttt_curriculum=1.5), dict(distill_temperature=0.0)):
        with pytest.raises(InputError):
            _offline(setup, tmp_path / "bad", **bad).validate()
