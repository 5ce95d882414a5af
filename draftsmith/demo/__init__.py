"""`draftsmith demo`: the whole pipeline, resumable, on the packaged SmolLM2 + ShareGPT.

The demo is an orchestrator: each stage calls another stage's CLI and reads that stage's
documented output files; nothing here re-implements a stage. Its parts:

- settings.py: `DemoConfig` (flags, defaults, the `--quick` profile);
- runner.py: stage keys, the stage-state file, resume after an interruption;
- pipeline.py: the stages, in order, and the flags each passes on;
- report.py: the summary table and the report folder.
"""

from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path

from draftsmith import config, resources
from draftsmith.demo.pipeline import (STAGES, _dtype_flag, stage_build_dataset, stage_eval, stage_export,  # noqa: F401
                                      stage_hidden_states, stage_model, stage_prepare_data, stage_regenerate_data,
                                      stage_train)
from draftsmith.demo.report import DemoSummary, format_table, demo_summary, write_report  # noqa: F401
from draftsmith.demo.runner import (STATE_FILE, Stage, StageContext, StageFailed, remove_outputs,  # noqa: F401
                                    run_stages, stage_keys)
from draftsmith.demo.settings import DEFAULT, QUICK, DemoConfig, config_from_args, resolve_device  # noqa: F401

CONFIG = DemoConfig
# what tests and bench/demo.py use of the parts, importable from draftsmith.demo
__all__ = ["CONFIG", "DEFAULT", "QUICK", "STAGES", "STATE_FILE", "DemoConfig", "DemoSummary", "Stage", "StageContext",
           "StageFailed", "add_arguments", "config_from_args", "default_run_dir", "format_table", "resolve_device",
           "run", "run_stages", "stage_build_dataset", "stage_eval", "stage_export", "stage_hidden_states",
           "stage_keys", "stage_model", "stage_prepare_data", "stage_regenerate_data", "stage_train", "demo_summary",
           "write_report", "_dtype_flag"]


def default_run_dir(quick: bool) -> Path:
    return resources.cache_root() / "demo" / ("quick" if quick else "default")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, DemoConfig)


def _terminate(signum, frame) -> None:
    """`kill` (SIGTERM) stops the demo like Ctrl-C: the stage state records the interruption."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    run_dir = Path(cfg.output_dir) if cfg.output_dir else default_run_dir(cfg.quick)
    if cfg.overwrite:
        for stage in STAGES:
            remove_outputs(run_dir, stage)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
    print(f"draftsmith demo: run folder {run_dir} (rerun the same command to resume after an interruption)",
          flush=True)
    plan_text = None
    if cfg.budget is not None:     # sizes num_samples / num_epochs to the time budget (demo/budget.py)
        from draftsmith.demo.budget import apply_budget
        from draftsmith.demo.settings import _given

        cfg, plan_text = apply_budget(cfg, run_dir, _given(args))
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        state = run_stages(cfg, run_dir, STAGES)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to continue from the unfinished stage "
              f"(state in {run_dir / STATE_FILE})", file=sys.stderr)
        return 130
    except StageFailed as e:
        raise StageFailed(f"{e}; fix the cause and rerun the same command to continue from this stage") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary, folder = write_report(state, run_dir)
    if plan_text:
        from draftsmith.demo.budget import add_to_report

        print(add_to_report(folder, run_dir, plan_text, summary.stage_seconds))
    print()
    print(format_table(summary))
    print(f"\nreport: {folder}/ (demo_report.md, demo_report.json, plots)")
    print(f"draft for SGLang/vLLM: {state['stages']['export']['result']['draft']}")
    return 0
