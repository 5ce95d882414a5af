"""The demo orchestrator: resumable stage state, the summary table, and (end to end) the
whole pipeline with `--quick` on a tiny random target."""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import replace
from pathlib import Path

import pytest

from draftsmith import demo
from draftsmith.errors import DraftsmithError


class Recorder:
    """Fake stages that write a file into the folder they own and log each call."""

    def __init__(self):
        self.calls: list[tuple[str, bool]] = []
        self.fail_once: set[str] = set()
        self.interrupt_once: set[str] = set()

    def stage(self, name: str, settings: tuple[str, ...], outputs: tuple[str, ...]) -> demo.Stage:
        def run(ctx: demo.StageContext) -> dict:
            self.calls.append((name, ctx.resuming))
            for rel in outputs:
                (ctx.run_dir / rel).mkdir(parents=True, exist_ok=True)
                marker = ctx.run_dir / rel / "part.txt"
                marker.write_text(marker.read_text() + "x" if marker.exists() else "x")
            if name in self.fail_once:
                self.fail_once.discard(name)
                raise demo.StageFailed(f"{name} broke")
            if name in self.interrupt_once:
                self.interrupt_once.discard(name)
                raise KeyboardInterrupt
            upstream = sorted(ctx.results)
            return {"name": name, "upstream": upstream}

        return demo.Stage(name, f"fake {name}", settings, outputs, run)

    def pipeline(self) -> tuple[demo.Stage, ...]:
        return (self.stage("a", ("num_samples",), ("a_out",)),
                self.stage("b", ("max_length",), ("b_out",)),
                self.stage("c", ("num_epochs",), ("c_out",)),
                self.stage("d", ("num_questions",), ("d_out",)))


def names(calls):
    return [name for name, _ in calls]


def test_failed_stage_resumes_without_rerunning_finished_ones(tmp_path):
    rec = Recorder()
    stages, cfg = rec.pipeline(), demo.QUICK
    rec.fail_once.add("c")
    with pytest.raises(demo.StageFailed, match="c broke"):
        demo.run_stages(cfg, tmp_path, stages)
    assert names(rec.calls) == ["a", "b", "c"]
    state = json.loads((tmp_path / demo.STATE_FILE).read_text())
    assert [state["stages"][n]["status"] for n in "abc"] == ["done", "done", "failed"]

    rec.calls.clear()
    state = demo.run_stages(cfg, tmp_path, stages)
    assert rec.calls == [("c", True), ("d", False)]  # a and b not rerun; c told it resumes
    assert (tmp_path / "c_out" / "part.txt").read_text() == "xx"  # c's partial output kept for its resume
    assert state["stages"]["c"]["attempts"] == 2
    assert state["stages"]["d"]["result"] == {"name": "d", "upstream": ["a", "b", "c"]}

    rec.calls.clear()
    demo.run_stages(cfg, tmp_path, stages)
    assert rec.calls == []  # everything finished: nothing reruns


def test_interrupt_is_recorded_and_resumed(tmp_path):
    rec = Recorder()
    stages = rec.pipeline()
    rec.interrupt_once.add("b")
    with pytest.raises(KeyboardInterrupt):
        demo.run_stages(demo.QUICK, tmp_path, stages)
    state = json.loads((tmp_path / demo.STATE_FILE).read_text())
    assert state["stages"]["b"]["status"] == "interrupted"
    assert state["stages"]["b"]["seconds"] >= 0
    rec.calls.clear()
    demo.run_stages(demo.QUICK, tmp_path, stages)
    assert rec.calls == [("b", True), ("c", False), ("d", False)]


def test_changed_setting_redoes_that_stage_and_everything_after(tmp_path):
    rec = Recorder()
    stages = rec.pipeline()
    demo.run_stages(demo.QUICK, tmp_path, stages)
    rec.calls.clear()
    demo.run_stages(replace(demo.QUICK, num_epochs=demo.QUICK.num_epochs + 1), tmp_path, stages)
    assert rec.calls == [("c", False), ("d", False)]
    assert (tmp_path / "c_out" / "part.txt").read_text() == "x"  # stale output removed, not appended to
    assert (tmp_path / "a_out" / "part.txt").read_text() == "x"

    rec.calls.clear()
    demo.run_stages(replace(demo.QUICK, max_length=128), tmp_path, stages)
    assert names(rec.calls) == ["b", "c", "d"]


def test_stage_whose_output_vanished_reruns(tmp_path):
    rec = Recorder()
    stages = rec.pipeline()
    demo.run_stages(demo.QUICK, tmp_path, stages)
    (tmp_path / "b_out" / "part.txt").unlink()
    (tmp_path / "b_out").rmdir()
    rec.calls.clear()
    demo.run_stages(demo.QUICK, tmp_path, stages)
    assert rec.calls == [("b", False)]  # same key downstream: c and d stay valid


def test_finished_stage_whose_result_is_no_longer_valid_reruns(tmp_path):
    rec = Recorder()
    a, b, c, d = rec.pipeline()
    cache = tmp_path / "model_cache"
    cache.mkdir()

    def model(ctx):
        rec.calls.append(("model", ctx.resuming))
        return {"model_path": str(cache)}

    stages = (demo.Stage("model", "fake model", (), (), model, lambda r: Path(r["model_path"]).exists()), a, b)
    demo.run_stages(demo.QUICK, tmp_path / "run", stages)
    cache.rmdir()
    rec.calls.clear()
    demo.run_stages(demo.QUICK, tmp_path / "run", stages)
    assert rec.calls == [("model", False)]


def test_device_is_not_part_of_the_keys():
    assert demo.stage_keys(demo.DEFAULT, demo.STAGES) == demo.stage_keys(replace(demo.DEFAULT, device="cuda"),
                                                                         demo.STAGES)
    keys, changed = (demo.stage_keys(demo.DEFAULT, demo.STAGES),
                     demo.stage_keys(replace(demo.DEFAULT, draft_depth=7), demo.STAGES))
    assert [n for n in keys if keys[n] != changed[n]] == ["eval"]


def test_corrupt_state_is_a_clear_error(tmp_path):
    (tmp_path / demo.STATE_FILE).write_text("{not json")
    with pytest.raises(DraftsmithError, match="demo_state.json.*delete it"):
        demo.run_stages(demo.QUICK, tmp_path, Recorder().pipeline())


def _parse(argv):
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    return parser.parse_args(argv)


def test_flags_override_the_profile():
    cfg = demo.config_from_args(_parse(["--quick", "--num-epochs", "4", "--device", "cpu"]))
    assert cfg == replace(demo.QUICK, num_epochs=4, device="cpu")
    assert demo.config_from_args(_parse([])) == replace(demo.DEFAULT, device=demo.resolve_device("auto"))
    with pytest.raises(DraftsmithError, match="--max-length must be at least 1"):
        demo.config_from_args(_parse(["--max-length", "0"]))


def test_quick_demo_end_to_end_on_a_tiny_target(tiny_llama_dir, tmp_path, capsys):
    """The whole pipeline through the real stage CLIs; a rerun finds every stage done."""
    from draftsmith.cli import run_command

    run_dir = tmp_path / "run"
    argv = ["--quick", "--target-model-path", str(tiny_llama_dir), "--output-dir", str(run_dir),
            "--num-samples", "12", "--num-questions", "1", "--max-new-tokens", "16",
            "--device", "cpu"]
    assert run_command("demo", argv) == 0
    out = capsys.readouterr().out

    state = json.loads((run_dir / demo.STATE_FILE).read_text())
    assert {n for n, r in state["stages"].items() if r["status"] == "done"} == {s.name for s in demo.STAGES}
    report = json.loads((run_dir / "report" / "demo_report.json").read_text())
    summary = report["summary"]
    # the figures in the report are the stages' own outputs
    eval_entry = json.loads((run_dir / "eval" / "report.json").read_text())["benchmarks"][0]
    assert summary["tau"] == eval_entry["tau"] and summary["tau"] >= 1.0
    assert summary["lossless"] is True and eval_entry["turns"] == summary["eval_turns"] == 2
    assert len(summary["accept_rate"]) == 5
    from draftsmith.features import FeatureStore

    manifest = FeatureStore.open(run_dir / "features").manifest
    assert summary["feature_bytes"] == manifest["bytes"] > 0 and summary["feature_tokens"] == manifest["num_tokens"]
    import datasets

    ds = datasets.load_from_disk(str(run_dir / "dataset"))
    assert summary["conversations"] == len(ds) == manifest["num_samples"]
    assert summary["supervised_tokens"] == sum(sum(m) for m in ds["loss_mask"]) > 0
    steps = [json.loads(line) for line in (run_dir / "train" / "metrics.jsonl").read_text().splitlines()]
    assert summary["train_steps"] == max(r["step"] for r in steps) == len(ds)  # 1 epoch, batch 1
    assert (run_dir / "draft" / "config.json").exists() and (run_dir / "draft" / "model.safetensors").exists()
    for name in ("demo_report.md", "acceptance_and_training.png", "stage_times.png"):
        assert (run_dir / "report" / name).stat().st_size > 0
    assert (run_dir / "report" / "acceptance_and_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert summary["curve"] == {}                      # the tau-per-budget fit is SmolLM2's, not this target's
    for line in ("acceptance length tau (K=5)", "features on disk", "time: total", "not measured for this target"):
        assert line in out
    times = [line.split(":")[1].split()[0] for line in out.splitlines() if line.startswith("time: ")]
    assert times == [s.name for s in demo.STAGES] + ["total"]  # in pipeline order
    assert f"report: {run_dir / 'report'}/" in out

    assert run_command("demo", argv) == 0  # everything finished: every stage is skipped
    again = capsys.readouterr().out
    assert again.count("done earlier") == len(demo.STAGES) and "$ draftsmith" not in again

    # --regenerate: the stages before it are kept, it and everything after it run again on the target's replies
    assert run_command("demo", argv + ["--regenerate"]) == 0
    third = capsys.readouterr().out
    assert third.count("done earlier") == 2 and "$ draftsmith regenerate-data" in third
    state = json.loads((run_dir / demo.STATE_FILE).read_text())
    replies = state["stages"]["regenerate-data"]["result"]
    assert replies["regenerated"] is True and replies["train_jsonl"] == str(run_dir / "replies" / "regenerated.jsonl")
    rows = [json.loads(line) for line in Path(replies["train_jsonl"]).read_text().splitlines()]
    assert len(rows) == replies["written"] > 0
    assert len(datasets.load_from_disk(str(run_dir / "dataset"))) == replies["written"]   # tokenized: those rows


def test_keys_of_a_run_folder_made_before_the_settings_were_renamed():
    """Stage keys hash the settings under their state-version-1 names (num_conversations, epochs,
    num_steps, eval_questions; aux_layers as "i,j,k"), so a run folder of an earlier release resumes.
    The keys below are what draftsmith/demo.py computed at 18ad676, before the renames; those runs trained
    with the peers' TTT recipe, which stays out of the key at its values of then."""
    peers = replace(demo.DEFAULT, ttt_weighting="decay", loss_decay=0.8, ttt_curriculum=0.0)
    assert demo.stage_keys(peers, demo.STAGES) == {
        "model": "4658b35ee467f3eb", "prepare-data": "8b9c1bbfcf818132", "regenerate-data": "8269a5a61e3d6a0b",
        "build-dataset": "4ca382a18b22f4db", "hidden-states": "f30da5b7d9b2b8b0", "train": "e28d8cec8129df5c",
        "export": "fe8ce9aa2385beba", "eval": "438a68136c10f8b9"}
    quick = replace(demo.QUICK, aux_layers=[1, 2, 3], regenerate=16, ttt_weighting="decay", loss_decay=0.8,
                    ttt_curriculum=0.0)
    assert demo.stage_keys(quick, demo.STAGES)["eval"] == "60008387a4aabf65"
    # today's default recipe is another draft: an old run folder keeps its data and features, retrains
    now = demo.stage_keys(demo.DEFAULT, demo.STAGES)
    assert [n for n in now if now[n] != demo.stage_keys(peers, demo.STAGES)[n]] == ["train", "export", "eval"]


def test_report_places_a_smollm2_sharegpt_run_on_the_budget_curve():
    """The report's curve line is the fit of docs/benchmarks.md 6.2 at this run's supervised tokens x
    epochs, with 2x and 4x; for another target, or the target's own replies, it says it has none."""
    from draftsmith.demo.budget import TAU_FIT
    from draftsmith.demo.report import budget_point

    c = budget_point("SmolLM2-135M-Instruct", False, 152_970, 2)
    assert c["trained_tokens"] == 305_940 and c["in_measured_range"]
    assert c["expected_tau"] == round(TAU_FIT.a + TAU_FIT.b * (math.log2(152_970) + TAU_FIT.gamma), 3)
    assert c["tau_at_2x"] - c["expected_tau"] == pytest.approx(TAU_FIT.b, abs=2e-3)
    assert c["tau_at_4x"] - c["expected_tau"] == pytest.approx(2 * TAU_FIT.b, abs=2e-3)
    assert not budget_point("SmolLM2-135M-Instruct", False, 4_000_000, 1)["in_measured_range"]
    assert budget_point("tiny-llama", False, 152_970, 2) == {}
    assert budget_point("SmolLM2-135M-Instruct", True, 152_970, 2) == {}


def test_the_demo_recipe_reaches_train_as_its_own_flags(monkeypatch, tmp_path):
    """The demo's TTT recipe settings are train's flags under the same names: the TrainConfig the
    train stage builds holds exactly the demo's values."""
    from draftsmith.demo import pipeline
    from draftsmith.train import cli as train_cli

    seen = []
    monkeypatch.setattr(pipeline, "call_stage", lambda name, argv: seen.append((name, argv)))
    cfg = replace(demo.DEFAULT, device="cpu", ttt_weighting="survival", loss_decay=0.9, ttt_curriculum=0.25)
    ctx = demo.StageContext(config=cfg, run_dir=tmp_path, results={
        "model": {"model_path": "m"}, "build-dataset": {"dataset": "d"}, "hidden-states": {"features": "f"}},
        resuming=False)
    pipeline.stage_train(ctx)
    [(name, argv)] = seen
    parser = argparse.ArgumentParser()
    train_cli.add_arguments(parser)
    train = train_cli.config_from_args(parser.parse_args(argv))
    assert name == "train"
    assert (train.ttt_weighting, train.loss_decay, train.ttt_curriculum) == ("survival", 0.9, 0.25)
    assert (train.ttt_length, train.learning_rate, train.seed) == (cfg.ttt_length, cfg.learning_rate, cfg.seed)


def test_a_recipe_setting_changes_the_draft_stages_only():
    keys = demo.stage_keys(demo.DEFAULT, demo.STAGES)
    for change in (dict(ttt_weighting="decay"), dict(loss_decay=0.5), dict(ttt_curriculum=0.1)):
        changed = demo.stage_keys(replace(demo.DEFAULT, **change), demo.STAGES)
        assert [n for n in keys if keys[n] != changed[n]] == ["train", "export", "eval"], change
