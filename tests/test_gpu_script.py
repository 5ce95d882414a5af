"""bench/gpu/run_all.sh --dry-run: every part of the prepared GPU run (hidden-states, the 8B-shape
training step, decoding the demo draft, the CUDA tests) runs end to end at tiny shapes on the CPU,
so the script is ready the first time a GPU is lent."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_run_all_dry_run_passes_every_part(tmp_path):
    env = dict(os.environ, PYTHON=sys.executable, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run(["bash", str(REPO / "bench" / "gpu" / "run_all.sh"), "--dry-run", "--results", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = json.loads((tmp_path / "gpu_run_all_dry.json").read_text())
    assert {k: v["status"] for k, v in summary["parts"].items()} == {"a": "ok", "b": "ok", "c": "ok", "d": "ok"}
    hs = json.loads((tmp_path / "hidden_states_gpu.json").read_text())
    assert hs["tokens"] > 0 and hs["overhead_ratio"] > 0
    train = json.loads((tmp_path / "train_gpu.json").read_text())
    assert train["dry_run"] and all(r["tokens_per_s"] > 0 for r in train["results"].values())
    for name in ("chain", "tree"):
        run = summary["parts"]["c"]["runs"][name]
        assert run["status"] == "ok" and run["tau"] >= 1.0 and run["speedup"] > 0, name
    assert summary["parts"]["c"]["runs"]["chain"]["lossless"] is True   # fp32: exact
    assert "skipped" in summary["parts"]["d"]["pytest"]                 # no CUDA in the dry run
