"""The demo's runner: stages with keys, a state file, resume after an interruption.

A stage-state JSON in the run folder records, per stage, a key (a hash of the demo settings
that change the stage's output, chained through the stages before it), its status and time.
`run_stages` skips every stage that finished with the same key, resumes the one that was
interrupted (the hidden-states and train stages continue from their own last shard /
checkpoint), and redoes a stage whose settings changed, together with everything after it.
A stage calls another stage's CLI (`call_stage`) exactly as a user would type it.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from draftsmith.demo.settings import DemoConfig
from draftsmith.errors import DraftsmithError
from draftsmith.fsutil import cache_key, write_json_atomic

STATE_FILE = "demo_state.json"
STATE_VERSION = 1
# Keys hash each setting under its name of state version 1, so a run folder made before the
# settings took their canonical names (docs/flags.md) still resumes.
_KEY_NAMES = {"num_samples": "num_conversations", "num_epochs": "epochs", "draft_depth": "num_steps",
              "num_questions": "eval_questions"}
# Settings added after state version 1, with the value every run before them had: at that value a
# setting stays out of the key, so a run folder made before it existed resumes instead of redoing stages.
_ADDED_LATER = {"ttt_weighting": "decay", "loss_decay": 0.8, "ttt_curriculum": 0.0}


@dataclass
class StageContext:
    """What a stage function sees: the settings, the run folder, earlier stages' results."""

    config: DemoConfig
    run_dir: Path
    results: dict[str, dict]
    resuming: bool  # this stage started before with the same key and did not finish


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    settings: tuple[str, ...]  # DemoConfig fields that change this stage's output
    outputs: tuple[str, ...]  # paths under the run folder this stage owns (removed when its key changes)
    run: Callable[[StageContext], dict]
    still_valid: Callable[[dict], bool] = lambda result: True  # is a finished stage's result still there?


class StageFailed(DraftsmithError):
    """A stage returned a non-zero exit code; its own message was printed above."""


def call_stage(name: str, argv: list[str]) -> None:
    """Run one pipeline stage through its CLI, exactly as a user would type it."""
    from draftsmith.cli import run_command

    print(f"  $ draftsmith {name} {' '.join(_quote(a) for a in argv)}", flush=True)
    try:
        rc = run_command(name, argv)
    except SystemExit as e:  # argparse rejected the flags: a wiring bug, not a user error
        raise StageFailed(f"`draftsmith {name}` rejected its arguments (exit {e.code})") from None
    if rc != 0:
        raise StageFailed(f"`draftsmith {name}` failed with exit code {rc}")


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:," for c in arg) else json.dumps(arg)


def _key_value(name: str, value):
    return ",".join(map(str, value)) if name == "aux_layers" and value is not None else value


def stage_keys(config: DemoConfig, stages: tuple[Stage, ...]) -> dict[str, str]:
    """Each stage's key: its own settings chained with the key of the stage before it."""
    keys, previous, settings = {}, "", asdict(config)
    for stage in stages:
        own = {_KEY_NAMES.get(k, k): _key_value(k, settings[k]) for k in stage.settings
               if k not in _ADDED_LATER or settings[k] != _ADDED_LATER[k]}
        previous = keys[stage.name] = cache_key([previous, stage.name, own], length=16)
    return keys


def load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    if not path.exists():
        return {"version": STATE_VERSION, "stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DraftsmithError(f"{path}: not valid JSON ({e}); delete it to start the demo over") from None
    if state.get("version") != STATE_VERSION or not isinstance(state.get("stages"), dict):
        raise DraftsmithError(f"{path}: unknown demo state version; delete it to start the demo over")
    return state


def remove_outputs(run_dir: Path, stage: Stage) -> None:
    for rel in stage.outputs:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def fmt_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"


def run_stages(config: DemoConfig, run_dir: Path, stages: tuple[Stage, ...]) -> dict:
    """Run every stage not already finished with the same key; returns the final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    state["settings"] = {k: str(v) if isinstance(v, Path) else v for k, v in asdict(config).items()}
    keys = stage_keys(config, stages)
    records: dict[str, dict] = state["stages"]
    results: dict[str, dict] = {}
    for number, stage in enumerate(stages, 1):
        head = f"[{number}/{len(stages)}] {stage.name}: {stage.title}"
        record = records.get(stage.name)
        if (record and record["key"] == keys[stage.name] and record["status"] == "done"
                and all((run_dir / rel).exists() for rel in stage.outputs) and stage.still_valid(record["result"])):
            print(f"{head} - done earlier ({fmt_seconds(record['seconds'])}), skipped", flush=True)
            results[stage.name] = record["result"]
            continue
        resuming = bool(record and record["key"] == keys[stage.name] and record["status"] != "done")
        if not resuming:
            remove_outputs(run_dir, stage)
            record = {"key": keys[stage.name], "seconds": 0.0, "attempts": 0}
        record.update(status="running", attempts=record["attempts"] + 1)
        records[stage.name] = record
        write_json_atomic(run_dir / STATE_FILE, state)
        print(f"{head}{' - resuming' if resuming else ''}", flush=True)
        started = time.perf_counter()
        try:
            result = stage.run(StageContext(config, run_dir, results, resuming))
        except BaseException as e:
            record["seconds"] += time.perf_counter() - started
            record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            write_json_atomic(run_dir / STATE_FILE, state)
            raise
        record["seconds"] += time.perf_counter() - started
        record.update(status="done", result=result)
        results[stage.name] = result
        write_json_atomic(run_dir / STATE_FILE, state)
        print(f"{head} - done in {fmt_seconds(record['seconds'])}", flush=True)
    return state
