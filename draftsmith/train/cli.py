"""The `train` stage: flags (or a YAML / JSON file with the same keys) -> `TrainConfig` -> `train`.

`--config run.yaml` holds any of the flags by name (`learning-rate: 1e-4` or
`learning_rate: 1e-4`, converted to the field's type by train/config.py); flags given on
the command line win over the file. `--print-config` prints the resolved config as YAML.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from draftsmith.logs import get_logger
from draftsmith.target.dtype import DTYPE_HELP
from draftsmith.train.config import TrainConfig, read_config_file, to_yaml
from draftsmith.train.trainer import train

_DEFAULTS = TrainConfig()
log = get_logger(__name__)


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Only flags given on the command line land in the namespace, so they can override the
    # YAML file, which overrides TrainConfig's defaults.
    p.argument_default = argparse.SUPPRESS
    p.epilog = "defaults: " + ", ".join(f"--{f.name.replace('_', '-')}={getattr(_DEFAULTS, f.name)}"
                                        for f in dataclasses.fields(TrainConfig))
    p.add_argument("--config", help="YAML or JSON file with any of these flags as keys (values checked against "
                                    "their types; flags given here win)")
    p.add_argument("--print-config", action="store_true",
                   help="print the resolved config as YAML (readable by --config) and exit")
    p.add_argument("--mode", choices=["online", "offline"],
                   help="online: the target runs in the loop; offline: read a feature store")
    g = p.add_argument_group("data")
    g.add_argument("--target-model-path",
                   help="HF folder or hub name of the target (offline: for its embeddings / lm_head; "
                        "default: the store's model)")
    g.add_argument("--train-data-path",
                   help="conversations JSONL, pre-formatted JSONL (--is-preformatted) or a tokenized folder")
    g.add_argument("--eval-data-path")
    g.add_argument("--train-hidden-states-path", help="offline: feature store")
    g.add_argument("--eval-hidden-states-path")
    g.add_argument("--is-preformatted", action="store_true")
    g.add_argument("--chat-template", help="template name, or 'hf' (the tokenizer's)")
    g.add_argument("--max-length", type=int)
    m = p.add_argument_group("draft")
    m.add_argument("--draft-vocab-size", type=int)
    m.add_argument("--aux-layers", type=_int_list,
                   help="target layers to fuse, HF hidden_states indices 'i,j,k' (default 2,L//2,L-3; "
                        "offline: the store's)")
    m.add_argument("--draft-model-config",
                   help="JSON file overriding fields of the draft config derived from the target")
    m.add_argument("--ttt-length", type=int)
    m.add_argument("--loss-decay", type=float, help="weight of step k is decay**k")
    m.add_argument("--autocast", choices=["auto", "bf16", "off"],
                   help="bf16 autocast of the draft's matmuls: auto = on CUDA and on CPUs with native bf16 "
                        "(AVX512-BF16/AMX), off elsewhere (weights and optimizer state stay fp32)")
    m.add_argument("--attention", choices=["auto", "blockwise", "sdpa", "flex"],
                   help="TTT attention: flex (CUDA kernel, block-sparse), blockwise (causal + diagonal "
                        "scores), sdpa (explicit mask, reference); auto = flex on CUDA, else blockwise")
    m.add_argument("--activation-checkpointing", action="store_true",
                   help="recompute each TTT step's layer in backward: ~2x less activation memory for one "
                        "more layer forward (see `draftsmith estimate-memory`)")
    o = p.add_argument_group("optimization")
    o.add_argument("--num-epochs", type=int)
    o.add_argument("--max-steps", type=int,
                   help="stop after this many optimizer steps (the lr schedule still spans --num-epochs)")
    o.add_argument("--batch-size", type=int, help="per data-parallel rank")
    o.add_argument("--gradient-accumulation-steps", type=int)
    o.add_argument("--learning-rate", type=float)
    o.add_argument("--warmup-ratio", type=float)
    o.add_argument("--max-grad-norm", type=float)
    o.add_argument("--weight-decay", type=float)
    o.add_argument("--seed", type=int)
    r = p.add_argument_group("run")
    r.add_argument("--output-dir")
    r.add_argument("--save-interval", type=int)
    r.add_argument("--eval-interval", type=int,
                   help="evaluate on the held-out split every N steps (and keep best/ by it)")
    r.add_argument("--eval-holdout", type=int,
                   help="hold out N training samples as the eval split (instead of --eval-*-path)")
    r.add_argument("--eval-decode", type=int,
                   help="also decode N held-out prompts with real speculative decoding; best/ is then chosen "
                        "by the decoded tau")
    r.add_argument("--eval-decode-tokens", type=int, help="new tokens per decoded prompt")
    r.add_argument("--early-stop", type=int, metavar="PATIENCE",
                   help="stop after PATIENCE evaluations without a better held-out tau")
    r.add_argument("--log-interval", type=int)
    r.add_argument("--resume", nargs="?", const="latest",
                   help="continue from the latest checkpoint in --output-dir (or the given folder)")
    r.add_argument("--tp-size", type=int, help="online: tensor-parallel size of the target")
    r.add_argument("--parallel", choices=["ddp", "fsdp"],
                   help="how the draft is replicated under torchrun (fsdp = FSDP2 fully_shard)")
    r.add_argument("--dtype", help="target (online) / target embeddings dtype: " + DTYPE_HELP)
    r.add_argument("--device", help="default: this rank's CUDA device, else cpu")
    r.add_argument("--report-to", choices=["none", "tensorboard", "wandb"])
    r.add_argument("--trust-remote-code", action="store_true",
                   help="allow the target's own modeling code (opt-in)")
    r.add_argument("--no-progress", dest="progress", action="store_false")


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """TrainConfig defaults <- the --config YAML <- flags given on the command line."""
    given = vars(args).copy()
    values = read_config_file(Path(given.pop("config"))) if given.get("config") else {}
    given.pop("config", None)
    given.pop("print_config", None)
    values.update(given)
    return TrainConfig(**values)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    if getattr(args, "print_config", False):
        print(to_yaml(cfg), end="")
        return 0
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
