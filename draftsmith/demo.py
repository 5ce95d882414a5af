"""`draftsmith demo`: the whole pipeline, resumable, on the packaged SmolLM2 + ShareGPT.

The demo is an orchestrator: each stage calls another stage's CLI (`cli.run_command`)
and reads that stage's documented output files; nothing here re-implements a stage.
A stage-state JSON in the run folder records, per stage, a key (a hash of the demo
settings that change the stage's output, chained through the stages before it), its
status and time. A rerun skips every stage that finished with the same key, resumes
the one that was interrupted (the hidden-states and train stages continue from their
own last shard / checkpoint), and redoes a stage whose settings changed, together
with everything after it.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import signal
import sys
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Callable

from draftsmith import resources
from draftsmith.errors import DraftsmithError
from draftsmith.fsutil import atomic_path, cache_key, write_json_atomic, write_text_atomic
from draftsmith.target.dtype import CHOICES

STATE_FILE = "demo_state.json"
STATE_VERSION = 1
# Small shards so an interrupted hidden-states stage loses at most about a minute of work.
FEATURE_SHARD_MB = 16
# Training checkpoints (step_N/) every this many steps: a couple of minutes of CPU work at most.
TRAIN_SAVE_INTERVAL = 50


@dataclass(frozen=True)
class DemoConfig:
    """The demo's settings; each stage's key hashes those that change its output (not `device`)."""

    target_model_path: str | None = None  # None: the packaged SmolLM2-135M-Instruct
    num_conversations: int = 500
    regenerate: int = 0  # > 0: the target rewrites each first reply, up to this many tokens (regenerate-data)
    max_length: int = 512
    chat_template: str = "hf"
    codec: str | None = None  # None: the hidden-states stage's compact default
    aux_layers: str | None = None  # "i,j,k" HF hidden-state indices; None: the stage's default [2, L//2, L-3]
    draft_vocab_size: int = 4096
    ttt_length: int = 3
    epochs: int = 2
    batch_size: int = 1
    learning_rate: float = 1e-3
    num_steps: int = 5  # K, draft tokens per verify step at eval
    eval_questions: int = 10
    max_new_tokens: int = 128
    hidden_states_batch_size: int = 4
    seed: int = 0
    dtype: str | None = None  # None: each stage's auto (draftsmith.target.dtype); else passed as --dtype to all
    device: str = "cpu"


DEFAULT = DemoConfig()
# A few minutes on SmolLM2, seconds on a tiny random target: the CI smoke test.
QUICK = DemoConfig(num_conversations=24, max_length=256, draft_vocab_size=1024, ttt_length=3, epochs=1,
                   learning_rate=3e-3, eval_questions=2, max_new_tokens=24, hidden_states_batch_size=4)


@dataclass
class StageContext:
    """What a stage function sees: the settings, the run folder, earlier stages' results."""

    config: DemoConfig
    run_dir: Path
    results: dict[str, dict]
    resuming: bool  # this stage started before with the same key and did not finish


@dataclass(frozen=True)
class Stage:
    name: str
    title: str
    settings: tuple[str, ...]  # DemoConfig fields that change this stage's output
    outputs: tuple[str, ...]  # paths under the run folder this stage owns (removed when its key changes)
    run: Callable[[StageContext], dict]
    still_valid: Callable[[dict], bool] = lambda result: True  # is a finished stage's result still there?


class StageFailed(DraftsmithError):
    """A stage returned a non-zero exit code; its own message was printed above."""


def call_stage(name: str, argv: list[str]) -> None:
    """Run one pipeline stage through its CLI, exactly as a user would type it."""
    from draftsmith.cli import run_command

    print(f"  $ draftsmith {name} {' '.join(_quote(a) for a in argv)}", flush=True)
    try:
        rc = run_command(name, argv)
    except SystemExit as e:  # argparse rejected the flags: a wiring bug, not a user error
        raise StageFailed(f"`draftsmith {name}` rejected its arguments (exit {e.code})") from None
    if rc != 0:
        raise StageFailed(f"`draftsmith {name}` failed with exit code {rc}")


def _quote(arg: str) -> str:
    return arg if arg and all(c.isalnum() or c in "-_./=:," for c in arg) else json.dumps(arg)


# --------------------------------------------------------------------------- stages


def stage_model(ctx: StageContext) -> dict:
    name = ctx.config.target_model_path
    if name is None:
        print("  SmolLM2-135M-Instruct: converting the packaged GGUF once (cached in cache/models)", flush=True)
        return {"model_path": str(resources.smollm2_dir().resolve())}
    path = Path(name)
    if path.exists():
        if not (path / "config.json").exists():
            raise DraftsmithError(f"--target-model-path {path}: a folder without config.json")
        return {"model_path": str(path.resolve())}
    return {"model_path": name}  # a hub name: the stages load it from the hub


def _model_still_there(result: dict) -> bool:
    path = Path(result["model_path"])
    return not path.is_absolute() or (path / "config.json").exists()


def stage_prepare_data(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "data"
    call_stage("prepare-data", ["--dataset", "sharegpt", "--data-path", str(resources.sharegpt_json()),
                                "--output-path", str(out), "--sample-size", str(cfg.num_conversations),
                                "--seed", str(cfg.seed), "--overwrite"])
    summary = json.loads((out / "sharegpt" / "sharegpt_summary.json").read_text(encoding="utf-8"))
    return {"train_jsonl": str(out / "sharegpt" / "sharegpt_train.jsonl"), "summary": summary}


def _model_path(ctx: StageContext) -> str:
    return ctx.results["model"]["model_path"]


def stage_regenerate_data(ctx: StageContext) -> dict:
    """With --regenerate N the target answers each conversation's first user turn itself, in up to N
    tokens (the eval's per-turn budget by default); otherwise the dataset's replies pass through.

    One turn, not all: generation is the slow part on a CPU (one batched generate call per turn);
    `draftsmith regenerate-data` without --max-turns answers every turn."""
    cfg, source = ctx.config, ctx.results["prepare-data"]["train_jsonl"]
    if not cfg.regenerate:
        print("  kept the dataset's replies (--regenerate makes the target write them)", flush=True)
        return {"train_jsonl": source, "regenerated": False}
    out = ctx.run_dir / "replies"
    if not ctx.resuming:           # regenerate-data continues its own partial file only with the same settings
        shutil.rmtree(out, ignore_errors=True)
    call_stage("regenerate-data", ["--model-path", _model_path(ctx), "--data-path", source,
                                   "--output-path", str(out), "--max-new-tokens", str(cfg.regenerate),
                                   "--max-turns", "1", "--batch-size", "32",
                                   "--max-prompt-length", str(cfg.max_length), "--seed", str(cfg.seed),
                                   "--device", cfg.device, *_dtype_flag(cfg)])
    summary = json.loads((out / "regenerate_summary.json").read_text(encoding="utf-8"))
    return {"train_jsonl": summary["output"], "regenerated": True,
            **{k: summary[k] for k in ("written", "skipped", "replies", "reply_tokens")}}


def stage_build_dataset(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "dataset"
    call_stage("build-dataset", ["--data-path", ctx.results["regenerate-data"]["train_jsonl"],
                                 "--tokenizer", _model_path(ctx), "--chat-template", cfg.chat_template,
                                 "--max-length", str(cfg.max_length), "--output", str(out)])
    from draftsmith.data.build import read_manifest

    manifest = read_manifest(out)
    if manifest is None:
        raise StageFailed(f"build-dataset left no manifest in {out}")
    report = manifest["report"]
    return {"dataset": str(out), "rows": report["rows_out"], "skipped": report["skipped"],
            "tokens": report["tokens"], "supervised_tokens": report["supervised_tokens"]}


def stage_hidden_states(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "features"
    argv = ["--model-path", _model_path(ctx), "--enable-aux-hidden-states",
            "--data-path", ctx.results["build-dataset"]["dataset"], "--max-length", str(cfg.max_length),
            "--batch-size", str(cfg.hidden_states_batch_size), "--shard-mb", str(FEATURE_SHARD_MB),
            "--device", cfg.device, "--output-path", str(out), *_dtype_flag(cfg)]
    if cfg.codec:
        argv += ["--codec", cfg.codec]
    if cfg.aux_layers:
        argv += ["--aux-layers", cfg.aux_layers]
    call_stage("hidden-states", argv)
    from draftsmith.features import FeatureStore

    manifest = FeatureStore.open(out).manifest
    return {"features": str(out), "codec": manifest["codec"], "num_samples": manifest["num_samples"],
            "num_tokens": manifest["num_tokens"], "bytes": manifest["bytes"]}


def stage_train(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "train"
    argv = ["--mode", "offline", "--target-model-path", _model_path(ctx),
            "--train-data-path", ctx.results["build-dataset"]["dataset"],
            "--train-hidden-states-path", ctx.results["hidden-states"]["features"],
            "--max-length", str(cfg.max_length), "--draft-vocab-size", str(cfg.draft_vocab_size),
            "--ttt-length", str(cfg.ttt_length), "--num-epochs", str(cfg.epochs),
            "--batch-size", str(cfg.batch_size), "--learning-rate", repr(cfg.learning_rate),
            "--seed", str(cfg.seed), "--save-interval", str(TRAIN_SAVE_INTERVAL), "--report-to", "none",
            "--device", cfg.device, "--output-dir", str(out), *_dtype_flag(cfg)]
    if ctx.resuming:
        argv.append("--resume")  # the latest step_N/ checkpoint, or a fresh start when there is none
    call_stage("train", argv)
    metrics = _read_jsonl(out / "metrics.jsonl")
    return {"output_dir": str(out), "checkpoint": str(out / "final"), "metrics": str(out / "metrics.jsonl"),
            "last_metrics": metrics[-1] if metrics else {}}


def stage_export(ctx: StageContext) -> dict:
    out = ctx.run_dir / "draft"
    call_stage("export", [ctx.results["train"]["checkpoint"], "--output", str(out),
                          "--target-model-path", _model_path(ctx)])
    return {"draft": str(out)}


def stage_eval(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "eval"
    report = out / "report.json"
    call_stage("eval", ["--target-model-path", _model_path(ctx), "--draft-model-path", ctx.results["export"]["draft"],
                        "--benchmark", "mtbench", "--num-steps", str(cfg.num_steps),
                        "--max-new-tokens", str(cfg.max_new_tokens), "--limit", str(cfg.eval_questions),
                        "--metrics", ctx.results["train"]["metrics"], "--device", cfg.device,
                        "--output", str(report), *_dtype_flag(cfg)])
    return {"report": str(report)}


def _dtype_flag(cfg: DemoConfig) -> list[str]:
    """--dtype for every stage that runs a model; none = each stage's own auto choice (logged)."""
    return ["--dtype", cfg.dtype] if cfg.dtype else []


def _read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


_DATA = ("num_conversations", "seed")
_REPLIES = _DATA + ("target_model_path", "regenerate", "max_length", "dtype")
_TOKENS = _REPLIES + ("chat_template",)
_FEATURES = _TOKENS + ("codec", "aux_layers", "hidden_states_batch_size")
_DRAFT = _FEATURES + ("draft_vocab_size", "ttt_length", "epochs", "batch_size", "learning_rate")
_EVAL = _DRAFT + ("num_steps", "eval_questions", "max_new_tokens")

STAGES: tuple[Stage, ...] = (
    Stage("model", "target model", ("target_model_path",), (), stage_model, _model_still_there),
    Stage("prepare-data", "ShareGPT -> conversations JSONL", _DATA, ("data",), stage_prepare_data),
    Stage("regenerate-data", "the target's own replies (with --regenerate)", _REPLIES, (),
          stage_regenerate_data, lambda r: Path(r["train_jsonl"]).exists()),
    Stage("build-dataset", "chat template + loss masks -> tokenized dataset", _TOKENS, ("dataset",),
          stage_build_dataset),
    Stage("hidden-states", "target features -> compact feature store", _FEATURES, ("features",),
          stage_hidden_states),
    Stage("train", "EAGLE-3 draft, offline, training-time test", _DRAFT, ("train",), stage_train),
    Stage("export", "SGLang/vLLM checkpoint", _DRAFT, ("draft",), stage_export),
    Stage("eval", "real speculative decoding on MT-bench", _EVAL, ("eval",), stage_eval),
)


# --------------------------------------------------------------------------- state + runner


def stage_keys(config: DemoConfig, stages: tuple[Stage, ...]) -> dict[str, str]:
    """Each stage's key: its own settings chained with the key of the stage before it."""
    keys, previous, settings = {}, "", asdict(config)
    for stage in stages:
        previous = keys[stage.name] = cache_key([previous, stage.name, {k: settings[k] for k in stage.settings}],
                                                length=16)
    return keys


def load_state(run_dir: Path) -> dict:
    path = run_dir / STATE_FILE
    if not path.exists():
        return {"version": STATE_VERSION, "stages": {}}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DraftsmithError(f"{path}: not valid JSON ({e}); delete it to start the demo over") from None
    if state.get("version") != STATE_VERSION or not isinstance(state.get("stages"), dict):
        raise DraftsmithError(f"{path}: unknown demo state version; delete it to start the demo over")
    return state


def _remove_outputs(run_dir: Path, stage: Stage) -> None:
    for rel in stage.outputs:
        path = run_dir / rel
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def run_stages(config: DemoConfig, run_dir: Path, stages: tuple[Stage, ...] = STAGES) -> dict:
    """Run every stage not already finished with the same key; returns the final state."""
    run_dir.mkdir(parents=True, exist_ok=True)
    state = load_state(run_dir)
    state["settings"] = asdict(config)
    keys = stage_keys(config, stages)
    records: dict[str, dict] = state["stages"]
    results: dict[str, dict] = {}
    for number, stage in enumerate(stages, 1):
        head = f"[{number}/{len(stages)}] {stage.name}: {stage.title}"
        record = records.get(stage.name)
        if (record and record["key"] == keys[stage.name] and record["status"] == "done"
                and all((run_dir / rel).exists() for rel in stage.outputs) and stage.still_valid(record["result"])):
            print(f"{head} - done earlier ({_fmt_seconds(record['seconds'])}), skipped", flush=True)
            results[stage.name] = record["result"]
            continue
        resuming = bool(record and record["key"] == keys[stage.name] and record["status"] != "done")
        if not resuming:
            _remove_outputs(run_dir, stage)
            record = {"key": keys[stage.name], "seconds": 0.0, "attempts": 0}
        record.update(status="running", attempts=record["attempts"] + 1)
        records[stage.name] = record
        write_json_atomic(run_dir / STATE_FILE, state)
        print(f"{head}{' - resuming' if resuming else ''}", flush=True)
        started = time.perf_counter()
        try:
            result = stage.run(StageContext(config, run_dir, results, resuming))
        except BaseException as e:
            record["seconds"] += time.perf_counter() - started
            record["status"] = "interrupted" if isinstance(e, KeyboardInterrupt) else "failed"
            write_json_atomic(run_dir / STATE_FILE, state)
            raise
        record["seconds"] += time.perf_counter() - started
        record.update(status="done", result=result)
        results[stage.name] = result
        write_json_atomic(run_dir / STATE_FILE, state)
        print(f"{head} - done in {_fmt_seconds(record['seconds'])}", flush=True)
    return state


# --------------------------------------------------------------------------- summary + report


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


def summarize(state: dict) -> DemoSummary:
    result = {name: rec.get("result", {}) for name, rec in state["stages"].items()}
    settings = state["settings"]
    bench = mtbench_summary(json.loads(Path(result["eval"]["report"]).read_text(encoding="utf-8")),
                            settings["num_steps"])
    features = result["hidden-states"]
    steps, train_tau, train_acc, train_tau_dv = training_tail(_read_jsonl(Path(result["train"]["metrics"])))
    return DemoSummary(
        model=Path(result["model"]["model_path"]).name,
        conversations=int(result["build-dataset"]["rows"]),
        replies="the target's own" if result.get("regenerate-data", {}).get("regenerated") else "ShareGPT's",
        tokens=int(result["build-dataset"]["tokens"]),
        supervised_tokens=int(result["build-dataset"]["supervised_tokens"]),
        num_steps=int(settings["num_steps"]),
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
        stage_seconds={name: float(rec["seconds"]) for name, rec in sorted(state["stages"].items(), key=_pipeline_order)
                       if rec.get("status") == "done"},
    )


def _fmt_seconds(seconds: float) -> str:
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(round(seconds)), 60)
    return f"{minutes} min {sec:02d} s"


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
    rows += [(f"time: {name}", _fmt_seconds(sec)) for name, sec in s.stage_seconds.items()]
    rows.append(("time: total", _fmt_seconds(s.total_seconds)))
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

    summary = summarize(state)
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


# --------------------------------------------------------------------------- CLI


def default_run_dir(quick: bool) -> Path:
    return resources.cache_root() / "demo" / ("quick" if quick else "default")


def config_from_args(args: argparse.Namespace) -> DemoConfig:
    base = QUICK if args.quick else DEFAULT
    overrides = {f.name: getattr(args, f.name) for f in fields(DemoConfig)
                 if getattr(args, f.name, None) is not None}
    overrides["device"] = resolve_device(args.device)
    config = replace(base, **overrides)
    for name in ("num_conversations", "max_length", "epochs", "draft_vocab_size", "ttt_length", "batch_size",
                 "eval_questions", "max_new_tokens", "hidden_states_batch_size"):
        if getattr(config, name) < 1:
            raise DraftsmithError(f"--{name.replace('_', '-')} must be at least 1, got {getattr(config, name)}")
    if config.num_steps < 0:
        raise DraftsmithError(f"--num-steps must be at least 0, got {config.num_steps}")
    if config.regenerate < 0:
        raise DraftsmithError(f"--regenerate must be >= 0 tokens (0 keeps the dataset's replies), "
                              f"got {config.regenerate}")
    return config


def resolve_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise DraftsmithError(f"--device {device}: CUDA is not available on this machine")
    return device


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d, q = DEFAULT, QUICK
    parser.add_argument("--quick", action="store_true",
                        help=f"CI-sized smoke run ({q.num_conversations} conversations, max length {q.max_length}, "
                             f"{q.eval_questions} eval questions): a few minutes")
    parser.add_argument("--output", type=Path, default=None,
                        help="run folder (stage state, data, features, draft, report); default "
                             "cache/demo/default, or cache/demo/quick with --quick")
    parser.add_argument("--target-model-path", default=None,
                        help="HF model folder to train a draft for (default: the packaged SmolLM2-135M-Instruct)")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N or auto (CUDA when present)")
    parser.add_argument("--dtype", default=None, choices=CHOICES,
                        help="dtype of every model the stages run (default: each stage's auto, bf16 on CUDA and on "
                             "CPUs with native bf16, else float32; eval keeps float32 for its lossless check)")
    parser.add_argument("--num-conversations", type=int, default=None,
                        help=f"ShareGPT conversations to train on (default {d.num_conversations})")
    parser.add_argument("--regenerate", type=int, nargs="?", const=d.max_new_tokens, default=None, metavar="TOKENS",
                        help="the target rewrites each first reply, in up to TOKENS tokens (default: the eval's "
                             f"--max-new-tokens, {d.max_new_tokens}), before training (regenerate-data; slow on a "
                             "CPU: about 100–130 reply tokens/s on 2 cores)")
    parser.add_argument("--max-length", type=int, default=None, help=f"tokens per conversation (default {d.max_length})")
    parser.add_argument("--epochs", type=int, default=None, help=f"training epochs (default {d.epochs})")
    parser.add_argument("--chat-template", default=None, help=f"template name, or hf (default {d.chat_template})")
    parser.add_argument("--codec", default=None, help="feature codec (default: the hidden-states stage's compact one)")
    parser.add_argument("--aux-layers", default=None,
                        help="target layers whose inputs feed the draft, e.g. 1,2,3 (default: 2,L//2,L-3)")
    parser.add_argument("--draft-vocab-size", type=int, default=None, help=f"default {d.draft_vocab_size}")
    parser.add_argument("--ttt-length", type=int, default=None, help=f"training-time test steps (default {d.ttt_length})")
    parser.add_argument("--batch-size", type=int, default=None, help=f"training batch size (default {d.batch_size})")
    parser.add_argument("--learning-rate", type=float, default=None, help=f"default {d.learning_rate}")
    parser.add_argument("--num-steps", type=int, default=None, help=f"K, draft tokens per verify step (default {d.num_steps})")
    parser.add_argument("--eval-questions", type=int, default=None,
                        help=f"MT-bench questions to decode, both turns (default {d.eval_questions})")
    parser.add_argument("--max-new-tokens", type=int, default=None, help=f"per turn at eval (default {d.max_new_tokens})")
    parser.add_argument("--hidden-states-batch-size", type=int, default=None,
                        help=f"samples per target forward (default {d.hidden_states_batch_size})")
    parser.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
    parser.add_argument("--restart", action="store_true",
                        help="forget the stage state and redo every stage (the converted model stays cached)")


def _terminate(signum, frame) -> None:
    """`kill` (SIGTERM) stops the demo like Ctrl-C: the stage state records the interruption."""
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    config = config_from_args(args)
    run_dir = Path(args.output) if args.output else default_run_dir(args.quick)
    if args.restart:
        for stage in STAGES:
            _remove_outputs(run_dir, stage)
        (run_dir / STATE_FILE).unlink(missing_ok=True)
    print(f"draftsmith demo: run folder {run_dir} (rerun the same command to resume after an interruption)",
          flush=True)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        state = run_stages(config, run_dir)
    except KeyboardInterrupt:
        print(f"\ninterrupted: rerun the same command to continue from the unfinished stage "
              f"(state in {run_dir / STATE_FILE})", file=sys.stderr)
        return 130
    except StageFailed as e:
        raise StageFailed(f"{e}; fix the cause and rerun the same command to continue from this stage") from None
    finally:
        signal.signal(signal.SIGTERM, previous)
    summary, folder = write_report(state, run_dir)
    print()
    print(format_table(summary))
    print(f"\nreport: {folder}/ (demo_report.md, demo_report.json, plots)")
    print(f"draft for SGLang/vLLM: {state['stages']['export']['result']['draft']}")
    return 0
