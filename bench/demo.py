"""Benchmark the demo: `draftsmith demo` with the given flags, its figures kept with the machine's state.

    python bench/demo.py [--name demo] [DEMO FLAGS...]      e.g.  python bench/demo.py --quick

Runs the demo (resuming a run folder that is already there: pass --overwrite for fresh
stage times), then writes bench/results/<name>.json: the demo's summary (τ,
per-position acceptance, speedup, feature bytes, per-stage seconds), its settings, the
command, the date, CPU count and the load average before and after (the machine is
shared, so per-stage times depend on what else ran).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="demo", help="results file bench/results/<name>.json")
    args, demo_argv = parser.parse_known_args()

    from draftsmith import demo
    from draftsmith.cli import build_parser, run_command

    load_before = os.getloadavg()
    started = datetime.datetime.now(datetime.timezone.utc)
    rc = run_command("demo", demo_argv)
    if rc != 0:
        return rc
    cfg = demo.config_from_args(build_parser("demo")[0].parse_args(demo_argv))
    run_dir = Path(cfg.output_dir) if cfg.output_dir else demo.default_run_dir(cfg.quick)
    report = json.loads((run_dir / "report" / "demo_report.json").read_text(encoding="utf-8"))
    result = {
        "command": "python bench/demo.py " + " ".join(sys.argv[1:]),
        "date": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
                    "load_average_before": load_before, "load_average_after": os.getloadavg()},
        "run_dir": str(run_dir),
        **report,
    }
    out = ROOT / "bench" / "results" / f"{args.name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
