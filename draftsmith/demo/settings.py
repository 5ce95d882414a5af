"""The demo's settings: `DemoConfig`, the one source of its flags, defaults and config-file keys.

Two profiles: the defaults (a ~25 minute CPU run, docs/benchmarks.md; the TTT recipe is the one that raised
real tau at an equal budget, not train's peers' defaults) and `--quick`, which
changes only the values in `QUICK_OVERRIDES`; a flag or a `--config` key given explicitly
wins over the profile (defaults < profile < config file < command line).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace
from pathlib import Path

from draftsmith import config
from draftsmith.config import option
from draftsmith.errors import DraftsmithError
from draftsmith.target.dtype import CHOICES
from draftsmith.train.config import TTTWeighting

# The eval's per-turn token budget, also what a bare `--regenerate` asks for.
MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; each stage's key hashes those that change its output (runner.stage_keys)."""

    quick: bool = option(False, group="run", help="CI-sized profile (fewer, shorter conversations, a smaller "
                                                  "draft vocabulary, 1 epoch, 2 eval questions): a few minutes")
    output_dir: Path | None = option(None, group="run", deprecated=("--output",),
                                     help="run folder (stage state, data, features, draft, report); default "
                                          "cache/demo/default, or cache/demo/quick with --quick")
    overwrite: bool = option(False, group="run", deprecated=("--restart",),
                             help="forget the stage state and redo every stage (the converted model stays cached)")
    budget: float | None = option(None, group="run", metavar="MINUTES",
                                  help="size the data (--num-samples) and --num-epochs so the whole run fits "
                                       "MINUTES on this machine, from its measured throughput; the report gives "
                                       "the tau expected at that size and at twice the budget (demo/budget.py)")
    target_model_path: str | None = option(None, group="run", help="HF model folder to train a draft for "
                                                                   "(default: the packaged SmolLM2-135M-Instruct)")
    device: str = option("auto", group="run", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    dtype: str | None = option(None, group="run", choices=CHOICES,
                               help="dtype of every model the stages run (default: each stage's auto, bf16 on CUDA "
                                    "and on CPUs with native bf16, else float32; eval keeps float32 for its "
                                    "lossless check)")
    num_samples: int = option(500, group="data", deprecated=("--num-conversations",),
                              help="ShareGPT conversations to train on")
    regenerate: int = option(0, group="data", nargs="?", const=MAX_NEW_TOKENS, metavar="TOKENS",
                             help="the target rewrites each first reply, in up to TOKENS tokens (bare flag: the "
                                  f"eval's budget, {MAX_NEW_TOKENS}), before training (regenerate-data; slow on a "
                                  "CPU: about 100-130 reply tokens/s on 2 cores); 0 keeps the dataset's replies")
    max_length: int = option(512, group="data", help="tokens per conversation")
    chat_template: str = option("hf", group="data", help="template name, or hf")
    codec: str | None = option(None, group="features", help="feature codec (default: the hidden-states stage's "
                                                            "compact one)")
    aux_layers: list[int] | None = option(None, group="features", sep=",",
                                          help="target layers whose inputs feed the draft, e.g. 1,2,3 "
                                               "(default: 2,L//2,L-3)")
    hidden_states_batch_size: int = option(4, group="features", help="samples per target forward")
    draft_vocab_size: int = option(4096, group="training", help="draft vocabulary size")
    ttt_length: int = option(3, group="training", help="training-time test steps")
    num_epochs: int = option(2, group="training", deprecated=("--epochs",), help="training epochs")
    batch_size: int = option(1, group="training", help="training batch size")
    learning_rate: float = option(1e-3, group="training", help="peak learning rate")
    seed: int = option(0, group="training", help="seed of the data sample, the draft's init and its data order")
    # The demo's recipe: the TTT-length curriculum with token-alignable weighting, +1.7 % and +1.3 % real tau over
    # the peers' (decay 0.8, train's defaults) at two seeds (docs/benchmarks.md 6.3).
    ttt_weighting: TTTWeighting = option("survival-hard", group="training",
                                         help="train --ttt-weighting: how TTT steps' losses are weighed")
    loss_decay: float = option(1.0, group="training", help="train --loss-decay: weight of TTT step k is decay**k")
    ttt_curriculum: float = option(0.5, group="training",
                                   help="train --ttt-curriculum: share of the run over which steps >= 1 ramp in")
    draft_depth: int = option(5, group="eval", deprecated=("--num-steps",), help="K, draft tokens per verify step")
    num_questions: int = option(10, group="eval", deprecated=("--eval-questions",),
                                help="MT-bench questions to decode, both turns")
    max_new_tokens: int = option(MAX_NEW_TOKENS, group="eval", help="new tokens per turn at eval")

    def __post_init__(self):
        for name in ("num_samples", "max_length", "num_epochs", "draft_vocab_size", "ttt_length", "batch_size",
                     "num_questions", "max_new_tokens", "hidden_states_batch_size"):
            if getattr(self, name) < 1:
                raise DraftsmithError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.budget is not None and self.budget <= 0:
            raise DraftsmithError(f"--budget must be a positive number of minutes, got {self.budget}")
        if self.draft_depth < 0:
            raise DraftsmithError(f"--draft-depth must be at least 0, got {self.draft_depth}")
        if self.regenerate < 0:
            raise DraftsmithError(f"--regenerate must be >= 0 tokens (0 keeps the dataset's replies), "
                                  f"got {self.regenerate}")


CONFIG = DemoConfig
DEFAULT = DemoConfig()
# A few minutes on SmolLM2, seconds on a tiny random target: the CI smoke test.
QUICK_OVERRIDES = dict(num_samples=24, max_length=256, draft_vocab_size=1024, ttt_length=3, num_epochs=1,
                       learning_rate=3e-3, num_questions=2, max_new_tokens=24, hidden_states_batch_size=4)
QUICK = replace(DEFAULT, quick=True, **QUICK_OVERRIDES)


def _given(args: argparse.Namespace) -> set[str]:
    """The settings given explicitly, on the command line or in the --config file."""
    given = {spec.path[-1] for spec in config.flags(DemoConfig) if spec.dest in vars(args)}
    if getattr(args, "config", None):
        given |= set(config.read_config_file(DemoConfig, Path(args.config)))
    return given


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    """Defaults (or the --quick profile) <- the --config file <- flags; `device` auto resolved."""
    cfg = config.from_args(DemoConfig, args)
    if cfg.quick:
        given = _given(args)
        cfg = replace(cfg, **{k: v for k, v in QUICK_OVERRIDES.items() if k not in given})
    return replace(cfg, device=resolve_device(cfg.device))


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DraftsmithError(f"--device {device}: CUDA is not available on this machine")
    return device
