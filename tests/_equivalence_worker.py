"""Launched by tests/test_equivalence.py under torchrun: train every run of a JSON list in turn.

    torchrun --standalone --nproc_per_node 2 tests/_equivalence_worker.py RUNS.json

RUNS.json is a list of `TrainConfig` keyword dicts; the runs share one process group, so one
launch (the costly part: interpreter, torch, the process group) serves several comparisons.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from draftsmith import dist
from draftsmith.train.config import TrainConfig
from draftsmith.train.trainer import train


def main(path: str) -> int:
    for kwargs in json.loads(Path(path).read_text(encoding="utf-8")):
        train(TrainConfig(**kwargs))
        dist.barrier()
    dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
