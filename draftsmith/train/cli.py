"""The `train` stage: flags (or a YAML / JSON file with the same keys) -> `TrainConfig` -> `train`.

The flags, their defaults and help are `TrainConfig`'s fields (train/config.py, through
draftsmith/config.py): `--config run.yaml` holds any of them by name (`learning-rate: 1e-4` or
`learning_rate: 1e-4`), flags given on the command line win over the file, and
`--print-config` prints the resolved config as YAML.
"""

from __future__ import annotations

import argparse
import json

from draftsmith import config
from draftsmith.logs import get_logger
from draftsmith.train.config import TrainConfig
from draftsmith.train.trainer import train

CONFIG = TrainConfig
log = get_logger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p, TrainConfig)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults <- the --config YAML <- flags given on the command line."""
    return config.from_args(TrainConfig, args)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = train(cfg)
    if result.get("eval") is not None:
        ev = result["eval"]
        served = "unknown" if ev["tau"] is None else f"{ev['tau']:.3f}, acc_k {[round(a, 3) for a in ev['acc_k']]}"
        log.info("eval: tau %s (full-vocab argmax, as served); within the draft vocab %.3f", served,
                 ev["tau_draft_vocab"])
    if result.get("best"):
        log.info("best: %s (step %d, %.3f)", result["best"], result["best_step"], result["best_value"])
    print(json.dumps({"final": result["final"], "global_step": result["global_step"]}))
    return 0
