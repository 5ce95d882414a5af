"""The `draftsmith` command: one subcommand per pipeline stage.

Each stage module exposes `CONFIG` (its typed config dataclass, draftsmith/config.py: the one
source of its flags, defaults, help and config files), `add_arguments(parser)` and
`run(args) -> int`; `--print-config` is answered here for every stage. The `scripts/*.py`
entry points of the documented interface call `run_command` with the same stage name, so
both paths run the same function.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from draftsmith import config
from draftsmith.errors import DraftsmithError

# subcommand -> (module, one-line help). Modules are imported only when used.
COMMANDS: dict[str, tuple[str, str]] = {
    "prepare-data": ("draftsmith.data.prepare", "normalize a preset or local dataset into conversations JSONL"),
    "validate-data": ("draftsmith.data.validate", "check conversation / pre-formatted JSONL files without writing"),
    "regenerate-data": ("draftsmith.data.regenerate", "replace the replies of conversations with the target's own"),
    "build-dataset": ("draftsmith.data.build", "tokenize + loss-mask conversations with a chat template"),
    "hidden-states": ("draftsmith.features.generate", "run the target and store EAGLE-3 features"),
    "train": ("draftsmith.train.cli", "train the EAGLE-3 draft (online or offline)"),
    "estimate-memory": ("draftsmith.train.memory", "predict the peak memory of a training step (fake tensors)"),
    "export": ("draftsmith.export", "export a checkpoint for SGLang / vLLM"),
    "inspect": ("draftsmith.inspect", "show what a checkpoint folder holds and whether it will load"),
    "eval": ("draftsmith.eval.cli", "acceptance length by real speculative decoding"),
    "demo": ("draftsmith.demo", "the whole pipeline on the packaged SmolLM2 + ShareGPT"),
}


def build_parser(name: str) -> tuple[argparse.ArgumentParser, object]:
    module_name, help_text = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"draftsmith {name}", description=help_text)
    module.add_arguments(parser)
    return parser, module


def run_command(name: str, argv: list[str], prog: str | None = None) -> int:
    parser, module = build_parser(name)
    if prog:
        parser.prog = prog
    args = parser.parse_args(argv)
    try:
        if getattr(args, "print_config", False):
            # a stage with a profile or resolved values (the demo's --quick) builds its config itself
            build = getattr(module, "config_from_args", None) or (lambda a: config.from_args(module.CONFIG, a))
            print(config.to_yaml(build(args)), end="")
            return 0
        return int(module.run(args) or 0)
    except DraftsmithError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        lines = ["usage: draftsmith COMMAND [options]", "", "commands:"]
        lines += [f"  {n:<15} {h}" for n, (_, h) in COMMANDS.items()]
        print("\n".join(lines))
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nerror: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    return run_command(argv[0], argv[1:])


if __name__ == "__main__":
    sys.exit(main())
