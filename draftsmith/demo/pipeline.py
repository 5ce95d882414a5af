"""The demo's stages: each calls one pipeline stage's CLI and reads that stage's documented outputs.

Nothing here re-implements a stage: a stage function turns the demo's settings into the
flags a user would type (`runner.call_stage`), then reads the files the stage documents
(summaries, manifests, metrics) into the small result dict the runner records. `STAGES`
lists them in pipeline order with the settings that change each one's output.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from draftsmith import resources
from draftsmith.demo.runner import Stage, StageContext, StageFailed, call_stage
from draftsmith.demo.settings import DemoConfig
from draftsmith.errors import DraftsmithError

# Small shards so an interrupted hidden-states stage loses at most about a minute of work.
FEATURE_SHARD_MB = 16
# Training checkpoints (step_N/) every this many steps: a couple of minutes of CPU work at most.
TRAIN_SAVE_INTERVAL = 50


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


def _model_path(ctx: StageContext) -> str:
    return ctx.results["model"]["model_path"]


def _dtype_flag(cfg: DemoConfig) -> list[str]:
    """--dtype for every stage that runs a model; none = each stage's own auto choice (logged)."""
    return ["--dtype", cfg.dtype] if cfg.dtype else []


def read_jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def stage_prepare_data(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "data"
    call_stage("prepare-data", ["--dataset", "sharegpt", "--data-path", str(resources.sharegpt_json()),
                                "--output-dir", str(out), "--num-samples", str(cfg.num_samples),
                                "--seed", str(cfg.seed), "--overwrite"])
    summary = json.loads((out / "sharegpt" / "sharegpt_summary.json").read_text(encoding="utf-8"))
    return {"train_jsonl": str(out / "sharegpt" / "sharegpt_train.jsonl"), "summary": summary}


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
    call_stage("regenerate-data", ["--target-model-path", _model_path(ctx), "--data-path", source,
                                   "--output-dir", str(out), "--max-new-tokens", str(cfg.regenerate),
                                   "--max-turns", "1", "--batch-size", "32",
                                   "--max-prompt-length", str(cfg.max_length), "--seed", str(cfg.seed),
                                   "--device", cfg.device, *_dtype_flag(cfg)])
    summary = json.loads((out / "regenerate_summary.json").read_text(encoding="utf-8"))
    return {"train_jsonl": summary["output"], "regenerated": True,
            **{k: summary[k] for k in ("written", "skipped", "replies", "reply_tokens")}}


def stage_build_dataset(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "dataset"
    call_stage("build-dataset", ["--data-path", ctx.results["regenerate-data"]["train_jsonl"],
                                 "--target-model-path", _model_path(ctx), "--chat-template", cfg.chat_template,
                                 "--max-length", str(cfg.max_length), "--output-dir", str(out)])
    from draftsmith.data.build import read_manifest

    manifest = read_manifest(out)
    if manifest is None:
        raise StageFailed(f"build-dataset left no manifest in {out}")
    report = manifest["report"]
    return {"dataset": str(out), "rows": report["rows_out"], "skipped": report["skipped"],
            "tokens": report["tokens"], "supervised_tokens": report["supervised_tokens"]}


def stage_hidden_states(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "features"
    argv = ["--target-model-path", _model_path(ctx), "--data-path", ctx.results["build-dataset"]["dataset"],
            "--max-length", str(cfg.max_length), "--batch-size", str(cfg.hidden_states_batch_size),
            "--shard-mb", str(FEATURE_SHARD_MB), "--device", cfg.device, "--output-dir", str(out), *_dtype_flag(cfg)]
    if cfg.codec:
        argv += ["--codec", cfg.codec]
    if cfg.aux_layers:
        argv += ["--aux-layers", ",".join(map(str, cfg.aux_layers))]
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
            "--ttt-length", str(cfg.ttt_length), "--num-epochs", str(cfg.num_epochs),
            "--batch-size", str(cfg.batch_size), "--learning-rate", repr(cfg.learning_rate),
            "--seed", str(cfg.seed), "--ttt-weighting", cfg.ttt_weighting, "--loss-decay", repr(cfg.loss_decay),
            "--ttt-curriculum", repr(cfg.ttt_curriculum),
            "--save-interval", str(TRAIN_SAVE_INTERVAL), "--report-to", "none",
            "--device", cfg.device, "--output-dir", str(out), *_dtype_flag(cfg)]
    if ctx.resuming:
        argv.append("--resume")  # the latest step_N/ checkpoint, or a fresh start when there is none
    call_stage("train", argv)
    metrics = read_jsonl(out / "metrics.jsonl")
    return {"output_dir": str(out), "checkpoint": str(out / "final"), "metrics": str(out / "metrics.jsonl"),
            "last_metrics": metrics[-1] if metrics else {}}


def stage_export(ctx: StageContext) -> dict:
    out = ctx.run_dir / "draft"
    call_stage("export", [ctx.results["train"]["checkpoint"], "--output-dir", str(out),
                          "--target-model-path", _model_path(ctx)])
    return {"draft": str(out)}


def stage_eval(ctx: StageContext) -> dict:
    cfg, out = ctx.config, ctx.run_dir / "eval"
    report = out / "report.json"
    call_stage("eval", ["--target-model-path", _model_path(ctx), "--draft-model-path", ctx.results["export"]["draft"],
                        "--benchmark", "mtbench", "--draft-depth", str(cfg.draft_depth),
                        "--max-new-tokens", str(cfg.max_new_tokens), "--num-questions", str(cfg.num_questions),
                        "--metrics", ctx.results["train"]["metrics"], "--device", cfg.device,
                        "--output-file", str(report), *_dtype_flag(cfg)])
    return {"report": str(report)}


_DATA = ("num_samples", "seed")
_REPLIES = _DATA + ("target_model_path", "regenerate", "max_length", "dtype")
_TOKENS = _REPLIES + ("chat_template",)
_FEATURES = _TOKENS + ("codec", "aux_layers", "hidden_states_batch_size")
_DRAFT = _FEATURES + ("draft_vocab_size", "ttt_length", "num_epochs", "batch_size", "learning_rate",
                      "ttt_weighting", "loss_decay", "ttt_curriculum")
_EVAL = _DRAFT + ("draft_depth", "num_questions", "max_new_tokens")

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
