"""Launched by tests/test_layouts.py under torchrun: run each stage of a JSON list in turn.

    torchrun --standalone --nproc_per_node 4 tests/_layout_worker.py STAGES.json
    torchrun --nnodes 2 --nproc_per_node 1 --node_rank I --master_addr 127.0.0.1 --master_port P \\
        tests/_layout_worker.py STAGES.json

STAGES.json is a list of [stage, flags] pairs: the documented flags of `draftsmith hidden-states`
or `draftsmith train`, parsed by the stage's own parser into its typed config and run by the
stage's library function. The stages share one process group, so one launch (the costly part:
interpreters, torch, the process group) serves several comparisons.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from draftsmith import cli, config, dist

RUNNERS = {"hidden-states": "run_hidden_states", "train": "train"}


def main(path: str) -> int:
    for stage, flags in json.loads(Path(path).read_text(encoding="utf-8")):
        parser, module = cli.build_parser(stage)
        cfg = config.from_args(module.CONFIG, parser.parse_args(flags))
        getattr(module, RUNNERS[stage])(cfg)
        dist.barrier()
    dist.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
