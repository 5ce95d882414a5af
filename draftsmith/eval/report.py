"""Acceptance statistics of speculative decoding, written as JSON, a Markdown table and a PNG.

τ (acceptance length) = tokens emitted by target verify steps / number of verify steps,
the first token of each reply (from the prefill) excluded: with K = 0 every verify step
emits exactly one token and τ == 1. SGLang's `completion_tokens / spec_verify_ct`
counts that first token too; `tau_sglang` reports the same ratio for comparison.
Per-position acceptance: `accept_rate[i]` = share of verify steps whose draft token at
depth i + 1 was accepted; `accept_rate_conditional[i]` = the same given depth i was.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from draftsmith.errors import InputError
from draftsmith.eval.spec_decode import Generation
from draftsmith.fsutil import atomic_path, write_json_atomic, write_text_atomic


@dataclass
class TurnResult:
    id: str
    turn: int
    prompt_tokens: int
    spec: Generation
    plain: Generation | None = None

    @property
    def lossless(self) -> bool | None:
        return None if self.plain is None else self.spec.tokens == self.plain.tokens

    def first_mismatch(self) -> int | None:
        if self.plain is None or self.lossless:
            return None
        a, b = self.spec.tokens, self.plain.tokens
        return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@dataclass
class BenchmarkResult:
    benchmark: str
    num_steps: int
    topk: int
    num_draft_tokens: int
    turns: list[TurnResult] = field(default_factory=list)


def benchmark_summary(result: BenchmarkResult) -> dict[str, Any]:
    turns = result.turns
    emitted = [e for t in turns for e in t.spec.emitted]
    accepted = [a for t in turns for a in t.spec.accepted]
    generated = sum(len(t.spec.tokens) for t in turns)
    steps = len(emitted)
    depth = result.num_steps
    reach = [sum(1 for a in accepted if a >= i) for i in range(depth + 1)]   # reach[0] == steps
    spec_s = sum(t.spec.seconds for t in turns)
    out: dict[str, Any] = {
        "benchmark": result.benchmark,
        "num_steps": depth,
        "topk": result.topk,
        "num_draft_tokens": result.num_draft_tokens,
        "prompts": len({t.id for t in turns}),
        "turns": len(turns),
        "generated_tokens": generated,
        "verify_steps": steps,
        "tau": sum(emitted) / steps if steps else None,
        "tau_sglang": generated / steps if steps else None,
        "accept_rate": [reach[i] / steps if steps else None for i in range(1, depth + 1)],
        "accept_rate_conditional": [reach[i] / reach[i - 1] if reach[i - 1] else None for i in range(1, depth + 1)],
        # per turn, so intervals can be drawn over prompts (bench/parity.py): tokens emitted by verify
        # steps, verify steps, and how many of them reached depth 1..K
        "turn_stats": [{"id": t.id, "turn": t.turn, "emitted": sum(t.spec.emitted), "verify_steps": len(t.spec.emitted),
                        "reach": [sum(1 for a in t.spec.accepted if a >= i) for i in range(1, depth + 1)]}
                       for t in turns],
        "spec_seconds": spec_s,
        "spec_tokens_per_s": generated / spec_s if spec_s else None,
    }
    with_plain = [t for t in turns if t.plain is not None]
    if with_plain:
        plain_s = sum(t.plain.seconds for t in with_plain)
        plain_tokens = sum(len(t.plain.tokens) for t in with_plain)
        spec_tokens = sum(len(t.spec.tokens) for t in with_plain)
        spec_secs = sum(t.spec.seconds for t in with_plain)
        out["plain_seconds"] = plain_s
        out["plain_tokens_per_s"] = plain_tokens / plain_s if plain_s else None
        out["speedup"] = (spec_tokens / spec_secs) / (plain_tokens / plain_s) if spec_secs and plain_s else None
        out["lossless"] = all(t.lossless for t in with_plain)
        out["mismatches"] = [{"id": t.id, "turn": t.turn, "first_mismatch": t.first_mismatch()}
                             for t in with_plain if not t.lossless]
    else:
        out.update(plain_seconds=None, plain_tokens_per_s=None, speedup=None, lossless=None, mismatches=[])
    return out


def _fmt(value: Any, digits: int = 2) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "**NO**"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def markdown_table(summaries: list[dict[str, Any]]) -> str:
    head = ("| benchmark | K | topk | turns | tokens | τ | τ (SGLang) | accept rate by depth | "
            "spec tok/s | plain tok/s | speedup | lossless |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for s in summaries:
        rates = " ".join(_fmt(r) for r in s["accept_rate"]) or "–"
        lines.append(f"| {s['benchmark']} | {s['num_steps']} | {s['topk']} | {s['turns']} | {s['generated_tokens']} "
                     f"| {_fmt(s['tau'])} | {_fmt(s['tau_sglang'])} | {rates} | {_fmt(s['spec_tokens_per_s'], 1)} "
                     f"| {_fmt(s['plain_tokens_per_s'], 1)} | {_fmt(s['speedup'])} | {_fmt(s['lossless'])} |")
    return "\n".join(lines) + "\n"


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """Training metrics JSONL: one JSON object per line with a `step` and numeric fields."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such metrics file", path=path)
    rows = []
    for line_no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"invalid JSON: {e.msg}", path=path, line=line_no) from None
        if isinstance(row, dict) and isinstance(row.get("step"), (int, float)):
            rows.append(row)
    return rows


def _curves(rows: list[dict[str, Any]], word: str) -> dict[str, tuple[list[float], list[float]]]:
    """Series whose key contains `word`; a list value (per-position `acc_k`) gives one series per entry.
    Rows of a split other than training (held-out evaluations) get their own series, `eval/tau`."""
    curves: dict[str, tuple[list[float], list[float]]] = {}

    def add(key: str, step: float, value: Any) -> None:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            xs, ys = curves.setdefault(key, ([], []))
            xs.append(step)
            ys.append(value)

    for row in rows:
        prefix = f"{row['split']}/" if isinstance(row.get("split"), str) and row["split"] != "train" else ""
        for key, value in row.items():
            if word not in key:
                continue
            key = prefix + key
            if isinstance(value, list):
                for i, v in enumerate(value[:8]):
                    add(f"{key}[{i}]", row["step"], v)
            else:
                add(key, row["step"], value)
    return curves


def plot(summaries: list[dict[str, Any]], path: str | Path, metrics: list[dict[str, Any]] | None = None) -> None:
    """Per-position acceptance of each run, and the training loss / accuracy / τ curves when given."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("acceptance", None)]
    if metrics:
        for word in ("loss", "acc", "tau"):
            curves = _curves(metrics, word)
            if curves:
                panels.append((word, curves))
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False)
    ax = axes[0][0]
    for s in summaries:
        rates = [r if r is not None else float("nan") for r in s["accept_rate"]]
        if rates:
            ax.plot(range(1, len(rates) + 1), rates, marker="o",
                    label=f"{s['benchmark']} K={s['num_steps']} topk={s['topk']} τ={_fmt(s['tau'])}")
    depth = max((len(s["accept_rate"]) for s in summaries), default=0)
    if depth:
        ax.set_xticks(range(1, depth + 1))
    ax.set_xlabel("draft position (depth)")
    ax.set_ylabel("share of verify steps accepted")
    ax.set_ylim(0, 1.05)
    ax.set_title("per-position acceptance")
    ax.grid(alpha=0.3)
    if summaries:
        ax.legend(fontsize=7)
    for (word, curves), ax in zip(panels[1:], axes[0][1:]):
        for key, (xs, ys) in sorted(curves.items()):
            ax.plot(xs, ys, label=key)
        ax.set_xlabel("step")
        ax.set_title(f"training {word}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def write_report(report: dict[str, Any], output: str | Path, metrics_path: str | Path | None = None) -> dict[str, Path]:
    """report.json, report.md and report.png side by side."""
    output = Path(output)
    summaries = report["benchmarks"]
    paths = {"json": output, "markdown": output.with_suffix(".md"), "png": output.with_suffix(".png")}
    write_json_atomic(paths["json"], report)
    cfg = report.get("config", {})
    head = [f"# Speculative decoding: {cfg.get('draft_model_path', '')}", "",
            f"target `{cfg.get('target_model_path', '')}`, device {cfg.get('device', '')}, dtype {cfg.get('dtype', '')}, "
            f"max {cfg.get('max_new_tokens', '')} new tokens, greedy. {cfg.get('date', '')}", "", ""]
    write_text_atomic(paths["markdown"], "\n".join(head) + markdown_table(summaries))
    metrics = read_metrics(metrics_path) if metrics_path else None
    plot(summaries, paths["png"], metrics)
    return paths
