"""`draftsmith inspect DIR`: what a draft folder holds and whether SGLang and vLLM will load it.

Prints the config facts the engines act on (architecture, vocab sizes, rope, the aux
layer ids in each engine's convention), the tensors, the d2t coverage, every problem
`draftsmith.export` finds, and per engine (SGLang, vLLM) whether it loads the folder and
serves the draft as trained, or what stops it. Exit status 0 when every engine asked for
(`--engine sglang vllm`, default both) will, 1 when not. What exit 0 cannot know: docs/serving.md.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from draftsmith import config
from draftsmith.config import option
from draftsmith.export import ENGINE_NAMES, ENGINES, CheckReport, check_folder, expected_tensors, load_target_config


def format_report(report: CheckReport) -> str:
    cfg = report.config
    lines = [f"checkpoint: {report.path}"]

    def row(label: str, value: object) -> None:
        lines.append(f"  {label:<28} {value}")

    row("architectures", cfg.get("architectures"))
    row("hidden / intermediate", f"{cfg.get('hidden_size')} / {cfg.get('intermediate_size')}")
    row("heads / kv heads / head_dim",
        f"{cfg.get('num_attention_heads')} / {cfg.get('num_key_value_heads')} / {cfg.get('head_dim')}")
    row("target_hidden_size", cfg.get("target_hidden_size", cfg.get("hidden_size")))
    row("vocab (target) / draft", f"{cfg.get('vocab_size')} / {cfg.get('draft_vocab_size')}")
    row("tie_word_embeddings", cfg.get("tie_word_embeddings"))
    row("rope_theta / rope_scaling", f"{cfg.get('rope_theta')} / {cfg.get('rope_scaling')}")
    row("dtype", cfg.get("torch_dtype") or cfg.get("dtype"))
    top = cfg.get("eagle_aux_hidden_state_layer_ids")
    eagle = cfg.get("eagle_config") or {}
    row("aux layers, vLLM (as is)", top)
    row("aux layers, SGLang (id + 1)", eagle.get("eagle_aux_hidden_state_layer_ids"))
    if report.d2t_summary:
        s = report.d2t_summary
        mapping = "identity" if s["identity"] else f"target ids {s['target_id_min']}..{s['target_id_max']}"
        row("d2t", f"{s['draft_vocab_size']} draft tokens -> {mapping}, no duplicates")
    lines.append("tensors:")
    try:
        order = list(expected_tensors(cfg))
    except (KeyError, TypeError, ValueError):
        order = []
    names = [n for n in order if n in report.tensors] + sorted(n for n in report.tensors if n not in order)
    total = 0
    for name in names:
        shape, dtype = report.tensors[name]
        numel = 1
        for s in shape:
            numel *= s
        total += numel if name not in ("d2t", "t2d") else 0
        lines.append(f"  {name:<44} {str(list(shape)):<18} {dtype}")
    lines.append(f"  {'parameters':<44} {total:,}")
    for w in report.warnings:
        lines.append(f"warning: {w}")
    for e in report.errors:
        only = getattr(e, "engines", ENGINES)
        tag = "" if set(only) == set(ENGINES) else f"[{', '.join(ENGINE_NAMES[x] for x in only)} only] "
        lines.append(f"error: {tag}{e}")
    for engine, problems in report.engines.items():
        verdict = "loads, serves the draft as trained" if not problems else \
            f"REFUSES or serves another model ({len(problems)} problem(s) above)"
        lines.append(f"{ENGINE_NAMES[engine]}: {verdict}")
    verdict = "yes" if report.ok else "NO"
    lines.append(f"loads in SGLang (EAGLE3) and vLLM (eagle3): {verdict}")
    return "\n".join(lines)


@dataclass
class InspectConfig:
    """The `inspect` stage's settings (draftsmith/config.py)."""

    checkpoint: Path = option(positional=True, help="draft folder (config.json + model.safetensors)")
    target_model_path: Path | None = option(None, help="also check vocab, hidden size, rope and layer ids "
                                                       "against this target")
    engine: list[Literal["sglang", "vllm"]] | None = option(
        None, metavar="ENGINE", help="exit 0 when these engines will serve the folder (sglang, vllm; default: both)")
    json: bool = option(False, help="print the report as JSON")
    trust_remote_code: bool = option(False, help="allow custom code in the target config")


CONFIG = InspectConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, InspectConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(InspectConfig, args)
    target = load_target_config(cfg.target_model_path, cfg.trust_remote_code) if cfg.target_model_path else None
    report = check_folder(cfg.checkpoint, target)
    if cfg.json:
        print(json.dumps({"path": str(report.path), "ok": report.ok, "errors": report.errors,
                          "engines": {e: {"serves": not p, "problems": p} for e, p in report.engines.items()},
                          "warnings": report.warnings, "d2t": report.d2t_summary,
                          "tensors": {k: {"shape": list(s), "dtype": d} for k, (s, d) in report.tensors.items()},
                          "config": report.config}, indent=2))
    else:
        print(format_report(report))
    wanted = cfg.engine or list(ENGINES)
    return 0 if not any(report.engines[e] for e in wanted) else 1
