"""The demo's report: its figures gathered from the stages' own output files, as a table and a folder.

`demo_summary(state)` reads the eval report, the feature store's figures and the training
metrics that the stages wrote (nothing is recomputed); `write_report` writes report/
(demo_report.json, demo_report.md and two plots) and `format_table` the terminal summary.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from draftsmith.demo.pipeline import STAGES, read_jsonl
from draftsmith.demo.runner import fmt_seconds
from draftsmith.errors import DraftsmithError
from draftsmith.fsutil import atomic_path, write_json_atomic, write_text_atomic


@dataclass
class DemoSummary:
    """The figures the demo reports, gathered from the stages' own output files."""

    model: str
    conversations: int
    replies: str             # whose replies the draft learned: "ShareGPT's" or "the target's own"
    tokens: int
    supervised_tokens: int
    num_steps: int
    eval_questions: int
    eval_turns: int
    tau: float | None
    accept_rate: list[float | None]
    spec_tokens_per_s: float | None
    plain_tokens_per_s: float | None
    speedup: float | None
    lossless: bool | None
    feature_bytes: int
    feature_codec: str
    feature_tokens: int
    train_steps: int
    train_tau: float | None  # simulated tau as served (full-vocab argmax), mean over the last tenth of the steps
    train_acc: list[float]   # per TTT step, the same window
    train_tau_draft_vocab: float | None = None  # the same within the draft vocab (what peers report)
    curve: dict = field(default_factory=dict)  # where this run sits on the measured τ-per-budget curve
    stage_seconds: dict[str, float] = field(default_factory=dict)

    @property
    def total_seconds(self) -> float:
        return sum(self.stage_seconds.values())


def training_tail(rows: list[dict]) -> tuple[int, float | None, list[float], float | None]:
    """Steps, and the simulated tau as served, its per-step accuracy and the draft-vocab tau,
    averaged over the last tenth of the run (tau None when the run could not know it)."""
    train = [r for r in rows if "split" not in r and "tau_draft_vocab" in r]
    if not train:
        return 0, None, [], None
    tail = train[-max(1, len(train) // 10):]
    tau_dv = sum(r["tau_draft_vocab"] for r in tail) / len(tail)
    if any(r["tau"] is None for r in tail):
        return int(train[-1]["step"]), None, [], tau_dv
    depth = min(len(r["acc_k"]) for r in tail)
    acc = [sum(r["acc_k"][k] for r in tail) / len(tail) for k in range(depth)]
    return int(train[-1]["step"]), sum(r["tau"] for r in tail) / len(tail), acc, tau_dv


def mtbench_summary(report: dict, num_steps: int) -> dict:
    """The MT-bench entry of an eval report.json for our K."""
    for entry in report.get("benchmarks", []):
        if entry.get("benchmark") == "mtbench" and entry.get("num_steps") == num_steps:
            return entry
    raise DraftsmithError(f"the eval report has no mtbench entry with K={num_steps}")


def _pipeline_order(item: tuple[str, dict]) -> int:
    names = [stage.name for stage in STAGES]
    return names.index(item[0]) if item[0] in names else len(names)


def demo_summary(state: dict) -> DemoSummary:
    result = {name: rec.get("result", {}) for name, rec in state["stages"].items()}
    settings = state["settings"]
    bench = mtbench_summary(json.loads(Path(result["eval"]["report"]).read_text(encoding="utf-8")),
                            settings["draft_depth"])
    features = result["hidden-states"]
    steps, train_tau, train_acc, train_tau_dv = training_tail(read_jsonl(Path(result["train"]["metrics"])))
    model = Path(result["model"]["model_path"]).name
    regenerated = bool(result.get("regenerate-data", {}).get("regenerated"))
    supervised = int(result["build-dataset"]["supervised_tokens"])
    epochs = int(settings.get("num_epochs", settings.get("epochs", 1)))
    return DemoSummary(
        model=model,
        conversations=int(result["build-dataset"]["rows"]),
        replies="the target's own" if regenerated else "ShareGPT's",
        tokens=int(result["build-dataset"]["tokens"]),
        supervised_tokens=supervised,
        num_steps=int(settings["draft_depth"]),
        eval_questions=int(bench["prompts"]),
        eval_turns=int(bench["turns"]),
        tau=bench["tau"],
        accept_rate=list(bench["accept_rate"]),
        spec_tokens_per_s=bench["spec_tokens_per_s"],
        plain_tokens_per_s=bench["plain_tokens_per_s"],
        speedup=bench["speedup"],
        lossless=bench["lossless"],
        feature_bytes=int(features["bytes"]),
        feature_codec=str(features["codec"]),
        feature_tokens=int(features["num_tokens"]),
        train_steps=steps,
        train_tau=train_tau,
        train_acc=train_acc,
        train_tau_draft_vocab=train_tau_dv,
        curve=budget_point(model, regenerated, supervised, epochs),
        stage_seconds={name: float(rec["seconds"]) for name, rec in sorted(state["stages"].items(), key=_pipeline_order)
                       if rec.get("status") == "done"},
    )


def budget_point(model: str, regenerated: bool, supervised_tokens: int, epochs: int) -> dict:
    """This run on the τ-per-budget curve (demo/budget.py TAU_FIT, docs/benchmarks.md §6.2): the τ the
    fit expects at its supervised tokens and epochs, and with 2× and 4× the conversations. Empty where
    the fit was not measured (another target, or the target's own replies; rerun bench/tau_curve.py)."""
    from draftsmith.demo.budget import TAU_FIT

    if not TAU_FIT.applies(model, regenerated):
        return {}
    return {"trained_tokens": supervised_tokens * epochs,
            "expected_tau": round(TAU_FIT.predict(supervised_tokens, epochs), 3),
            "tau_at_2x": round(TAU_FIT.predict(2 * supervised_tokens, epochs), 3),
            "tau_at_4x": round(TAU_FIT.predict(4 * supervised_tokens, epochs), 3),
            "per_doubling": TAU_FIT.b, "in_measured_range": TAU_FIT.measured(supervised_tokens, epochs),
            "measured_up_to": TAU_FIT.hi_tokens, "fit": TAU_FIT.source}


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _fmt(x: float | None, spec: str, suffix: str = "") -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:{spec}}{suffix}"


def summary_rows(s: DemoSummary) -> list[tuple[str, str]]:
    acc = "  ".join("n/a" if a is None else f"{a:.2f}" for a in s.accept_rate) or "n/a"
    per_token = s.feature_bytes / s.feature_tokens if s.feature_tokens else float("nan")
    rows = [
        (f"acceptance length tau (K={s.num_steps})", _fmt(s.tau, ".2f")),
        ("acceptance by draft position 1..K", acc),
        ("speedup over plain decoding", _fmt(s.speedup, ".2f", "x")
         + f"  ({_fmt(s.spec_tokens_per_s, '.1f')} vs {_fmt(s.plain_tokens_per_s, '.1f')} tokens/s)"),
        ("lossless (same tokens as greedy)", "n/a" if s.lossless is None else ("yes" if s.lossless else "NO")),
        ("features on disk", f"{_fmt_bytes(s.feature_bytes)}  ({s.feature_tokens:,} tokens, "
                             f"{per_token:.0f} B/token, codec {s.feature_codec})"),
        ("training", f"{s.train_steps} steps, simulated tau as served {_fmt(s.train_tau, '.2f')} "
                     f"(within the draft vocab {_fmt(s.train_tau_draft_vocab, '.2f')}), "
                     "acc by TTT step " + " ".join(f"{a:.2f}" for a in s.train_acc)),
    ]
    c = s.curve
    if c:
        rows.append(("on the tau-per-budget curve",
                     f"{c['trained_tokens']:,} supervised tokens x epochs: the fit expects tau {c['expected_tau']:.2f}"
                     f"{'' if c['in_measured_range'] else ' (extrapolated)'}; 2x the conversations -> "
                     f"{c['tau_at_2x']:.2f}, 4x -> {c['tau_at_4x']:.2f} (+{c['per_doubling']:.3f} per doubling, "
                     f"measured up to {c['measured_up_to']:,} tokens, beyond is the fit's extrapolation; "
                     "docs/benchmarks.md 6.2; `draftsmith demo --budget MINUTES` sizes a run)"))
    else:
        from draftsmith.demo.budget import TAU_FIT

        rows.append(("on the tau-per-budget curve", f"not measured for this target and data (the curve is "
                                                   f"{TAU_FIT.model}'s on ShareGPT replies; bench/tau_curve.py)"))
    rows += [(f"time: {name}", fmt_seconds(sec)) for name, sec in s.stage_seconds.items()]
    rows.append(("time: total", fmt_seconds(s.total_seconds)))
    return rows


def format_table(s: DemoSummary) -> str:
    title = (f"draftsmith demo: {s.model}, {s.conversations} ShareGPT prompts with {s.replies} replies "
             f"({s.supervised_tokens:,} supervised tokens), MT-bench {s.eval_questions} questions "
             f"({s.eval_turns} turns)")
    rows = summary_rows(s)
    width = max(len(k) for k, _ in rows)
    return "\n".join([title, "-" * len(title)] + [f"{k:<{width}}  {v}" for k, v in rows])


def format_markdown(s: DemoSummary, plots: list[Path], settings: dict) -> str:
    lines = ["# draftsmith demo report", "",
             f"Target `{s.model}`, {s.conversations} ShareGPT prompts with {s.replies} replies ({s.tokens:,} tokens, "
             f"{s.supervised_tokens:,} supervised), evaluated by real speculative decoding on "
             f"{s.eval_questions} MT-bench questions ({s.eval_turns} turns) with K = {s.num_steps}.", "",
             "| figure | value |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in summary_rows(s)]
    lines += ["", "Settings: " + ", ".join(f"`{k}={v}`" for k, v in sorted(settings.items())), ""]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    return "\n".join(lines) + "\n"


def write_report(state: dict, run_dir: Path) -> tuple[DemoSummary, Path]:
    """report/: demo_report.json, demo_report.md, acceptance_and_training.png, stage_times.png."""
    from draftsmith.eval import report as eval_report

    summary = demo_summary(state)
    folder = run_dir / "report"
    folder.mkdir(parents=True, exist_ok=True)
    result = {name: rec.get("result", {}) for name, rec in state["stages"].items()}
    eval_json = json.loads(Path(result["eval"]["report"]).read_text(encoding="utf-8"))
    plots = [folder / "acceptance_and_training.png", folder / "stage_times.png"]
    eval_report.plot([mtbench_summary(eval_json, summary.num_steps)], plots[0],
                     eval_report.read_metrics(result["train"]["metrics"]))
    plot_stage_times(summary.stage_seconds, plots[1])
    write_json_atomic(folder / "demo_report.json",
                      {"summary": asdict(summary), "settings": state["settings"],
                       "eval_report": result["eval"]["report"], "plots": [p.name for p in plots]})
    write_text_atomic(folder / "demo_report.md", format_markdown(summary, plots, state["settings"]))
    return summary, folder


def plot_stage_times(stage_seconds: dict[str, float], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(stage_seconds)[::-1]
    minutes = [stage_seconds[n] / 60 for n in names]
    fig, ax = plt.subplots(figsize=(6, 0.4 * len(names) + 1.2))
    ax.barh(names, minutes)
    for y, m in enumerate(minutes):
        ax.text(m, y, f" {m:.1f}", va="center", fontsize=8)
    ax.set_xlabel("minutes")
    ax.set_title(f"time per stage (total {sum(minutes):.1f} min)")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
