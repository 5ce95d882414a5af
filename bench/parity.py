"""Parity with SpecForge 0.2.0 at an equal budget (issue #15 §1): results in bench/results/parity*.json.

One tokenized dataset (ShareGPT through `draftsmith prepare-data` / `build-dataset`, SmolLM2-135M-Instruct's
chat template, max length 512), one feature store (`draftsmith hidden-states`, bf16 codec), one draft vocab
(draftsmith's own selection, given to both), the same TTT length, loss decay, optimizer (AdamW, the same betas,
no weight decay, gradient clipping at 0.5), linear-warmup + cosine lr schedule, batch 1, sample order and
number of steps. Two drafts are trained from it:

- draftsmith: `draftsmith train --mode offline` on the store;
- SpecForge: its own code, run from its virtualenv (--specforge-python): `AutoDraftModel` from the
  draft config its `_generate_draft_config` derives from the target, `OnlineEagle3Model` (sdpa backend, TTT),
  `Eagle3TrainStrategy.forward_loss` (its `TargetHead` projection of the stored final hidden state, its
  `normalize_offline_sample` + `DataCollatorWithPadding` inputs, loss decay 0.8) and `BF16Optimizer`
  (AdamW on fp32 masters, clipping, `CosineAnnealingWarmupLR`). Its Triton loss kernel is replaced by
  bench/train.py's PyTorch function of the same contract and torch.compile is off (TORCHDYNAMO_DISABLE=1),
  as in bench/train.py. Exported with its own `save_pretrained` + `_serving_state` + `apply_legacy_rope_scaling`
  (specforge.export.to_sglang), in bf16 as SpecForge ships it.

Both run in fp32 on this CPU (SpecForge's default torch_dtype bf16 is a GPU setting; bf16 matmuls are ~6x
slower here, bench/results/cpu_dtype_quick.json). AdamW betas: draftsmith uses (0.9, 0.95); SpecForge's
BF16Optimizer builds torch's default (0.9, 0.999). `--specforge-betas matched` (default) gives SpecForge
draftsmith's betas so only draft + loss differ; `native` keeps SpecForge's.

Both exports pass `draftsmith inspect`, and are decoded by `draftsmith eval` (HF backend, fp32, lossless
check) on the same MT-bench questions, both turns, K = 5: chain (topk 1), then the tree setting (topk 4).
τ per question (emitted tokens / verify steps of its two turns) is resampled over questions (10,000
seeded bootstrap resamples) for a 95 % interval of the pooled τ.

Each stage records its result in <work-dir>/state.json and is skipped on a rerun when its outputs exist
(a crashed run restarts where it stopped). The draftsmith code that runs is a `git archive` snapshot of
HEAD (<work-dir>/src), so uncommitted edits in the shared tree cannot change a run half-way.

    python bench/parity.py [--conversations 1160 --max-length 512 --eval-questions 20 --max-new-tokens 128]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
IMPLS = ("draftsmith", "specforge")


# ----------------------------------------------------------------------------------- helpers

def _log(msg: str) -> None:
    print(f"[parity {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _env(src: Path, threads: int) -> dict:
    return dict(os.environ, PYTHONPATH=str(src), DRAFTSMITH_CACHE=str(REPO / "cache"), TORCHDYNAMO_DISABLE="1",
                OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")


def _cli(args, *argv: str) -> list[str]:
    """`draftsmith ARGV` from the snapshot, at low priority."""
    return ["nice", "-n", str(args.nice), sys.executable, "-c",
            "import sys; from draftsmith.cli import main; sys.exit(main())", *argv]


CHILDREN: list[subprocess.Popen] = []


def _stop_children(signum, frame) -> None:
    """SIGTERM / SIGINT: stop the stage commands too (they would go on writing the outputs a rerun resumes)."""
    for p in CHILDREN:
        if p.poll() is None:
            p.terminate()
    raise SystemExit(128 + signum)


def _start(args, cmd: list[str], log: Path, threads: int) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("w") as f:
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=_env(args.src, threads), cwd=REPO)
    CHILDREN.append(p)
    return p


def _run(args, cmd: list[str], log: Path, threads: int) -> float:
    """Run one command to completion (output to `log`), raise on failure; its wall seconds."""
    _log(f"$ {' '.join(cmd)}  (log {log})")
    t0 = time.perf_counter()
    rc = _start(args, cmd, log, threads).wait()
    if rc != 0:
        raise RuntimeError(f"command failed (exit {rc}), see {log}:\n{log.read_text()[-3000:]}")
    return time.perf_counter() - t0


def _run_parallel(args, jobs: dict[str, tuple[list[str], Path]], threads: int) -> dict[str, float]:
    """Run commands side by side (the same machine load for both); wall seconds of each."""
    procs, t0, secs = {}, time.perf_counter(), {}
    for name, (cmd, log) in jobs.items():
        _log(f"[{name}] $ {' '.join(cmd)}  (log {log})")
        procs[name] = (_start(args, cmd, log, threads), log)
    failed = []
    while procs:
        for name, (p, log) in list(procs.items()):
            if p.poll() is not None:
                secs[name] = time.perf_counter() - t0
                del procs[name]
                _log(f"[{name}] finished (exit {p.returncode}) after {secs[name]:.0f} s")
                if p.returncode != 0:
                    failed.append(f"{name} (exit {p.returncode}), see {log}:\n{log.read_text()[-3000:]}")
        time.sleep(2)
    if failed:
        raise RuntimeError("; ".join(failed))
    return secs


def _load_bench_train():
    """bench/train.py as a module (its SpecForge import without Triton and its PyTorch loss stand-in)."""
    spec = importlib.util.spec_from_file_location("bench_train", REPO / "bench" / "train.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# ----------------------------------------------------------------------------------- stages

def stage_snapshot(args, w: Path) -> dict:
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True,
                            check=True).stdout.strip()
    args.src.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "archive", commit, "draftsmith"], cwd=REPO, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(args.src)], input=archive.stdout, check=True)
    return {"commit": commit}


def stage_data(args, w: Path) -> dict:
    sys.path.insert(0, str(args.src))
    from draftsmith import resources

    model = str(resources.smollm2_dir().resolve())
    _run(args, _cli(args, "prepare-data", "--dataset", "sharegpt", "--data-path", str(resources.sharegpt_json()),
                    "--output-path", str(w / "data"), "--sample-size", str(args.conversations),
                    "--seed", str(args.seed), "--overwrite"), w / "logs" / "prepare-data.log", args.threads)
    _run(args, _cli(args, "build-dataset", "--data-path", str(w / "data" / "sharegpt" / "sharegpt_train.jsonl"),
                    "--tokenizer-path", model, "--chat-template", "hf", "--max-length", str(args.max_length),
                    "--output-dir", str(w / "dataset")), w / "logs" / "build-dataset.log", args.threads)
    from datasets import load_from_disk

    rows = load_from_disk(str(w / "dataset"))
    n, tokens = len(rows), sum(len(x) for x in rows["input_ids"])
    supervised = sum(sum(x) for x in rows["loss_mask"])
    if n < args.min_conversations:
        raise RuntimeError(f"only {n} tokenized conversations (< {args.min_conversations}): raise --conversations")
    return {"model": model, "conversations": n, "tokens": tokens, "supervised_tokens": supervised}


def stage_probe(args, w: Path, data: dict) -> dict:
    """hidden-states on the first rows with each target dtype: tokens/s, to pick the target dtype."""
    out = {}
    for dtype, rows in (("float32", args.probe_rows), ("bfloat16", args.probe_rows_bf16)):
        path = w / "probe" / dtype
        done = path / "probe.json"              # one dtype's figure, kept if the stage is interrupted
        if done.exists():
            out[dtype] = json.loads(done.read_text())
            continue
        shutil.rmtree(path, ignore_errors=True)  # a store left by an interrupted probe would be reused, not timed
        secs = _run(args, _cli(args, "hidden-states", "--model-path", data["model"], "--enable-aux-hidden-states",
                               "--data-path", str(w / "dataset"), "--max-length", str(args.max_length),
                               "--num-samples", str(rows), "--dtype", dtype, "--codec", "bf16",
                               "--batch-size", "4", "--device", "cpu", "--output-path", str(path)),
                    w / "logs" / f"probe-{dtype}.log", args.threads)
        tokens = json.loads((path / "manifest.json").read_text())["num_tokens"]
        out[dtype] = {"rows": rows, "tokens": tokens, "seconds": secs, "tokens_per_s": tokens / secs,
                      "loadavg_after": os.getloadavg()}
        done.write_text(json.dumps(out[dtype]))
    out["chosen"] = max(("float32", "bfloat16"), key=lambda d: out[d]["tokens_per_s"])
    return out


def stage_features(args, w: Path, data: dict, probe: dict) -> dict:
    dtype = args.target_dtype or probe["chosen"]
    secs = _run(args, _cli(args, "hidden-states", "--model-path", data["model"], "--enable-aux-hidden-states",
                           "--data-path", str(w / "dataset"), "--max-length", str(args.max_length),
                           "--dtype", dtype, "--codec", "bf16", "--batch-size", "4", "--shard-mb", "16",
                           "--device", "cpu", "--output-path", str(w / "features")),
                w / "logs" / "hidden-states.log", args.threads)
    manifest = json.loads((w / "features" / "manifest.json").read_text())
    return {"target_dtype": dtype, "codec": manifest["codec"], "seconds": secs, "num_samples": manifest["num_samples"],
            "num_tokens": manifest["num_tokens"], "bytes": manifest["bytes"], "aux_layers": manifest["aux_layers"]}


def stage_vocab(args, w: Path, data: dict) -> dict:
    """draftsmith's draft vocab of the dataset (the trainer's own function and cache), saved for SpecForge."""
    sys.path.insert(0, str(args.src))
    import torch

    from draftsmith.data.vocab import build_vocab_mapping, target_vocab_size_of

    vocab = target_vocab_size_of(data["model"])
    vm = build_vocab_mapping(str(w / "dataset"), target_vocab_size=vocab, draft_vocab_size=args.draft_vocab_size)
    path = w / "vocab_mapping.pt"
    torch.save({"d2t": vm.d2t.long(), "t2d": vm.t2d.bool()}, path)      # SpecForge's load_vocab_mapping format
    return {"path": str(path), "target_vocab_size": vocab, "draft_vocab_size": int(vm.d2t.numel())}


def stage_train(args, w: Path, data: dict, vocab: dict) -> dict:
    """Both drafts side by side (one thread each, the same machine load)."""
    common = ["--ttt-length", str(args.ttt), "--learning-rate", repr(args.lr), "--warmup-ratio", repr(args.warmup_ratio),
              "--max-grad-norm", repr(args.max_grad_norm), "--seed", str(args.seed)]
    ours = _cli(args, "train", "--mode", "offline", "--target-model-path", data["model"],
                "--train-data-path", str(w / "dataset"), "--train-hidden-states-path", str(w / "features"),
                "--max-length", str(args.max_length), "--draft-vocab-size", str(args.draft_vocab_size),
                "--num-epochs", "1", "--batch-size", "1", "--loss-decay", repr(args.loss_decay),
                "--weight-decay", "0", "--dtype", "float32", "--autocast", "off", "--attention", "blockwise",
                "--save-interval", "1000000", "--eval-interval", "1000000", "--log-interval", "50",
                "--report-to", "none", "--no-progress", "--output-dir", str(w / "train_draftsmith"), *common)
    theirs = ["nice", "-n", str(args.nice), args.specforge_python, __file__, "_specforge-train",
              "--work-dir", str(w), "--model", data["model"], "--vocab", vocab["path"], "--betas", args.specforge_betas,
              "--max-length", str(args.max_length), "--loss-decay", repr(args.loss_decay), *common]
    secs = _run_parallel(args, {"draftsmith": (ours, w / "logs" / "train-draftsmith.log"),
                                "specforge": (theirs, w / "logs" / "train-specforge.log")}, threads=1)
    ds_metrics = [json.loads(x) for x in (w / "train_draftsmith" / "metrics.jsonl").read_text().splitlines() if x]
    sf = json.loads((w / "train_specforge" / "result.json").read_text())
    return {"draftsmith": {"seconds": secs["draftsmith"], "steps": ds_metrics[-1]["step"], "last": ds_metrics[-1]},
            "specforge": {"seconds": secs["specforge"], **sf}}


def _inspect(args, folder: Path, model: str, log: Path) -> tuple[int, str]:
    """`draftsmith inspect` (SGLang's verdict); exit status and its report."""
    cmd = _cli(args, "inspect", str(folder), "--target-model-path", model, "--engine", "sglang")
    rc = _start(args, cmd, log, args.threads).wait()
    return rc, log.read_text()


def complete_specforge_config(folder: Path, aux_layers: list[int]) -> list[str]:
    """The keys SpecForge 0.2.0's export leaves out, with the values the engines assume without them: both
    SGLang (0.5.23 srt/models/llama.py:933-936) and vLLM capture HF hidden_states [2, L//2, L-3], the store's
    aux layers, when no ids are configured, and run plain rope when rope_scaling is absent. So these keys
    change nothing an engine would serve. (When this bench ran, `draftsmith inspect` / `eval` refused the
    folder without them; since 1ccd73b they warn and use the same default.) Returns the keys added."""
    path = folder / "config.json"
    config = json.loads(path.read_text())
    added = {}
    if "rope_scaling" not in config:
        added["rope_scaling"] = None
    if "eagle_config" not in config:
        added["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in aux_layers],
                                 "use_aux_hidden_state": True}
    if "eagle_aux_hidden_state_layer_ids" not in config:
        added["eagle_aux_hidden_state_layer_ids"] = list(aux_layers)
    path.write_text(json.dumps({**config, **added}, indent=2) + "\n")
    return sorted(added)


def stage_export(args, w: Path, data: dict, features: dict) -> dict:
    _run(args, _cli(args, "export", str(w / "train_draftsmith" / "final"), "--output-dir", str(w / "draft_draftsmith"),
                    "--target-model-path", data["model"]), w / "logs" / "export-draftsmith.log", args.threads)
    out = {}
    sf = w / "draft_specforge"
    rc, report = _inspect(args, sf, data["model"], w / "logs" / "inspect-specforge-as-exported.log")
    out["specforge_as_exported"] = {"inspect_exit": rc, "inspect": report[-2500:]}
    out["specforge_keys_added"] = complete_specforge_config(sf, features["aux_layers"])
    for impl in IMPLS:
        rc, report = _inspect(args, w / f"draft_{impl}", data["model"], w / "logs" / f"inspect-{impl}.log")
        out[impl] = {"draft": str(w / f"draft_{impl}"), "inspect_exit": rc, "inspect": report[-2500:]}
        if rc != 0:
            raise RuntimeError(f"draftsmith inspect refuses {w / f'draft_{impl}'}:\n{report[-2500:]}")
    # the same draft vocab went into both
    from safetensors import safe_open

    d2t = {}
    for impl in IMPLS:
        with safe_open(str(w / f"draft_{impl}" / "model.safetensors"), framework="pt") as f:
            d2t[impl] = f.get_tensor("d2t")
    out["same_draft_vocab"] = bool((d2t["draftsmith"] == d2t["specforge"]).all())
    if not out["same_draft_vocab"]:
        raise RuntimeError("the two exports carry different d2t")
    return out


def stage_eval(args, w: Path, data: dict, topk: int, limit: int, max_new: int) -> dict:
    jobs = {}
    for impl in IMPLS:
        report = w / f"eval_topk{topk}" / impl / "report.json"
        jobs[impl] = (_cli(args, "eval", "--target-model-path", data["model"], "--draft-model-path",
                           str(w / f"draft_{impl}"), "--benchmark", "mtbench", "--draft-depth", str(args.num_steps),
                           "--topk", str(topk), "--max-new-tokens", str(max_new), "--num-questions", str(limit),
                           "--device", "cpu", "--dtype", "float32", "--output-file", str(report)),
                      w / "logs" / f"eval-topk{topk}-{impl}.log")
    secs = _run_parallel(args, jobs, threads=1)
    return {impl: {"report": str(w / f"eval_topk{topk}" / impl / "report.json"), "seconds": secs[impl]}
            for impl in IMPLS}


# ----------------------------------------------------------------------------------- bootstrap

def per_question(summary: dict) -> dict[str, list[float]]:
    """question id -> [emitted tokens, verify steps, reach at depth 1..K] summed over its turns."""
    out: dict[str, list[float]] = {}
    for t in summary["turn_stats"]:
        row = out.setdefault(str(t["id"]), [0.0] * (2 + len(t["reach"])))
        for i, v in enumerate([t["emitted"], t["verify_steps"], *t["reach"]]):
            row[i] += v
    return out


def bootstrap(rows: list[list[float]], resamples: int, seed: int, level: float = 0.95,
              numerator: int = 0) -> tuple[float, float]:
    """Percentile interval of a pooled ratio over questions drawn with replacement: Σ row[numerator] /
    Σ verify steps (numerator 0: τ; 2 + i: acceptance at depth i + 1)."""
    rng = random.Random(seed)
    n, taus = len(rows), []
    for _ in range(resamples):
        pick = [rows[rng.randrange(n)] for _ in range(n)]
        taus.append(sum(r[numerator] for r in pick) / sum(r[1] for r in pick))
    taus.sort()
    lo = taus[int((1 - level) / 2 * resamples)]
    hi = taus[min(resamples - 1, int((1 + level) / 2 * resamples))]
    return lo, hi


def paired(base: dict[str, tuple[float, float]], other: dict[str, tuple[float, float]], resamples: int,
           seed: int, level: float = 0.95) -> dict:
    """`other` against `base` on the same questions ({question id: (emitted, verify steps)}): τ of
    `other`, and the ratio of the two τ, with percentile intervals where each resample draws the
    questions with replacement once for both drafts (paired); `wins`: questions where `other` is higher."""
    ids = sorted(set(base) & set(other))
    rng = random.Random(seed)

    def tau(rows: dict, pick: list[str]) -> float:
        return sum(rows[i][0] for i in pick) / sum(rows[i][1] for i in pick)

    taus, ratios = [], []
    for _ in range(resamples):
        pick = [ids[rng.randrange(len(ids))] for _ in ids]
        taus.append(tau(other, pick))
        ratios.append(taus[-1] / tau(base, pick))
    taus.sort()
    ratios.sort()
    lo, hi = int((1 - level) / 2 * resamples), min(resamples - 1, int((1 + level) / 2 * resamples))
    return {"questions": len(ids), "tau": round(tau(other, ids), 4), "tau_ci": [round(taus[lo], 4), round(taus[hi], 4)],
            "ratio": round(tau(other, ids) / tau(base, ids), 4), "ratio_ci": [round(ratios[lo], 4), round(ratios[hi], 4)],
            "wins": sum(other[i][0] / other[i][1] > base[i][0] / base[i][1] for i in ids)}


def emitted_and_steps(report_path: str) -> dict[str, tuple[float, float]]:
    """question id -> (emitted tokens, verify steps) of an eval report's first benchmark (or of one
    benchmark's summary, eval/report.py `benchmark_summary`)."""
    report = json.loads(Path(report_path).read_text())
    rows = per_question(report["benchmarks"][0] if "benchmarks" in report else report)
    return {q: (r[0], r[1]) for q, r in rows.items()}


def summarize_eval(report_path: str, resamples: int, seed: int) -> dict:
    report = json.loads(Path(report_path).read_text())
    s = report["benchmarks"][0]
    rows = list(per_question(s).values())
    lo, hi = bootstrap(rows, resamples, seed)
    depth_ci = [list(bootstrap(rows, resamples, seed, numerator=2 + i)) for i in range(len(s["accept_rate"]))]
    return {"tau": s["tau"], "ci_low": lo, "ci_high": hi, "accept_rate": s["accept_rate"], "accept_rate_ci": depth_ci,
            "accept_rate_conditional": s["accept_rate_conditional"], "questions": len(rows), "turns": s["turns"],
            "generated_tokens": s["generated_tokens"], "verify_steps": s["verify_steps"], "lossless": s["lossless"],
            "speedup": s["speedup"], "spec_tokens_per_s": s["spec_tokens_per_s"],
            "plain_tokens_per_s": s["plain_tokens_per_s"], "num_steps": s["num_steps"], "topk": s["topk"],
            "num_draft_tokens": s["num_draft_tokens"], "tau_per_question": [r[0] / r[1] for r in rows],
            "report": report_path}


def verdict(ours: dict, theirs: dict) -> str:
    if ours["tau"] >= theirs["tau"]:
        return "ours >= SpecForge's"
    if ours["ci_high"] >= theirs["ci_low"]:
        return "parity (intervals overlap), ours lower"
    return "ours lower beyond the intervals"


# ----------------------------------------------------------------------------------- SpecForge (its venv)

def specforge_train(args) -> dict:
    """SpecForge 0.2.0's offline EAGLE-3 step over the draftsmith store, in draftsmith's sample order."""
    import types

    import torch

    bench_train = _load_bench_train()
    eagle3, _ = bench_train._import_specforge()
    eagle3.LogSoftmaxLoss = bench_train._cpu_log_softmax_loss()
    from specforge.algorithms.eagle3.data import normalize_offline_sample
    from specforge.algorithms.eagle3.providers import algorithm_providers
    try:
        import datasets  # noqa: F401
    except ImportError:  # specforge.data.utils names datasets.Dataset in an annotation only
        sys.modules["datasets"] = types.SimpleNamespace(Dataset=object)
    try:
        from specforge.data.utils import DataCollatorWithPadding
    finally:
        if isinstance(sys.modules.get("datasets"), types.SimpleNamespace):
            del sys.modules["datasets"]
    from specforge.export.checkpoint_io import apply_legacy_rope_scaling
    from specforge.export.to_sglang import WEIGHT_MAPS, _serving_state
    from specforge.modeling.auto import AutoDraftModel
    from specforge.modeling.target.target_head import TargetHead
    from specforge.optimizer import BF16Optimizer
    from specforge.runtime.contracts import TrainBatch
    from specforge.training.model_loading import _generate_draft_config
    from specforge.training.strategies.base import Eagle3TrainStrategy

    from draftsmith.features import FeatureStore
    from draftsmith.train.trainer import epoch_batches

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    w = Path(args.work_dir)
    out_dir = w / "train_specforge"
    out_dir.mkdir(parents=True, exist_ok=True)
    vm = torch.load(args.vocab)
    # the draft config SpecForge generates from the target (training.model_loading), our draft vocab size
    cfg = types.SimpleNamespace(model=types.SimpleNamespace(target_model_path=args.model, cache_dir=None,
                                                            trust_remote_code=False),
                                training=types.SimpleNamespace(strategy="eagle3"))
    draft_config = _generate_draft_config(cfg, algorithm_providers().model.draft_config)
    draft_config.draft_vocab_size = int(vm["d2t"].numel())
    torch.manual_seed(args.seed)
    # algorithms.model_providers.build_eagle3_draft, minus warm start (none) and the bf16 cast
    draft = AutoDraftModel.from_config(draft_config, attention_backend="sdpa", torch_dtype=torch.float32)
    vocab_file = out_dir / "vocab_mapping.pt"
    torch.save(vm, vocab_file)
    draft.load_vocab_mapping(str(vocab_file))
    draft.load_embedding(args.model)
    draft.freeze_embedding()
    draft = draft.float()
    model = eagle3.OnlineEagle3Model(draft, length=args.ttt_length, attention_backend="sdpa").float()
    # TargetHead.from_pretrained reads lm_head.weight through an index file; SmolLM2 ties it to the embeddings
    head = TargetHead(args.model)
    with torch.no_grad():
        head.fc.weight.copy_(draft.embed_tokens.weight)
    head.freeze_weights()
    head = head.eval().float()
    strategy = Eagle3TrainStrategy(model, target_head=head, ploss_decay=args.loss_decay)

    store = FeatureStore.open(w / "features")
    order = [b[0] for b in epoch_batches(len(store), 1, 0, args.seed, 0, 1)]   # draftsmith's epoch-0 order
    opt = BF16Optimizer(draft, lr=args.learning_rate, max_grad_norm=args.max_grad_norm, total_steps=len(order),
                        warmup_ratio=args.warmup_ratio, lr_scheduler="cosine")
    if args.betas == "matched":
        for group in opt.optimizer.param_groups:
            group["betas"] = (0.9, 0.95)          # draftsmith's AdamW (train/trainer.py)
    collator = DataCollatorWithPadding()
    model.train()
    log = (out_dir / "metrics.jsonl").open("w")
    window, t0 = [], time.perf_counter()
    for step, idx in enumerate(order, 1):
        s = store[idx]
        raw = {"aux_hidden_state": s["aux_hidden_states"].float()[None], "hidden_state": s["hidden_state"].float()[None],
               "input_ids": s["input_ids"].long(), "loss_mask": s["loss_mask"].long()}
        batch = collator([normalize_offline_sample(raw, args.max_length)])
        out = strategy.forward_loss(TrainBatch(sample_ids=[str(s["id"])], strategy="eagle3", tensors=batch,
                                               metadata={"target_repr": "hidden_state"}))
        out.loss.backward()
        lr = opt.get_learning_rate()
        grad_norm = opt.step()
        window.append([float(out.loss)] + [float(a) for a in out.metrics["acces"]])
        if step % 50 == 0 or step == len(order):
            mean = [sum(c) / len(c) for c in zip(*window)]
            row = {"step": step, "lr": lr, "loss": mean[0], "acc": mean[1:], "grad_norm": float(grad_norm),
                   "seconds": time.perf_counter() - t0}
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(json.dumps(row), flush=True)
            window = []
    log.close()
    # specforge.export.to_sglang: the draft's own names, embeddings dropped, validated; bf16 as it ships
    export = w / "draft_specforge"
    draft = draft.to(torch.bfloat16)
    draft.config.torch_dtype = torch.bfloat16
    full = {k: v for k, v in draft.state_dict().items() if "embed" not in k.lower()}
    draft.save_pretrained(str(export), state_dict=_serving_state(full, WEIGHT_MAPS[type(draft).__name__]))
    apply_legacy_rope_scaling(str(export))
    result = {"steps": len(order), "last": row, "seconds": time.perf_counter() - t0, "export": str(export),
              "betas": list(opt.optimizer.param_groups[0]["betas"])}
    (out_dir / "result.json").write_text(json.dumps(result, indent=1))
    return result


# ----------------------------------------------------------------------------------- driver

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd")
    w = sub.add_parser("_specforge-train", help="internal: SpecForge's training, run in its virtualenv")
    w.add_argument("--work-dir", required=True)
    w.add_argument("--model", required=True)
    w.add_argument("--vocab", required=True)
    w.add_argument("--betas", choices=["matched", "native"], default="matched")
    w.add_argument("--max-length", type=int, default=512)
    w.add_argument("--ttt-length", type=int, default=3)
    w.add_argument("--loss-decay", type=float, default=0.8)
    w.add_argument("--learning-rate", type=float, default=1e-3)
    w.add_argument("--warmup-ratio", type=float, default=0.015)
    w.add_argument("--max-grad-norm", type=float, default=0.5)
    w.add_argument("--seed", type=int, default=0)
    p.add_argument("--conversations", type=int, default=1160, help="ShareGPT rows prepared (some drop at build)")
    p.add_argument("--min-conversations", type=int, default=1000, help="tokenized conversations required")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--probe-rows", type=int, default=20, help="rows of the float32 hidden-states probe")
    p.add_argument("--probe-rows-bf16", type=int, default=4,
                   help="rows of the bfloat16 probe (bf16 runs ~6x slower on AVX2-only CPUs)")
    p.add_argument("--target-dtype", default=None, help="hidden-states target dtype (default: the probe's faster)")
    p.add_argument("--draft-vocab-size", type=int, default=4096)
    p.add_argument("--ttt", type=int, default=3)
    p.add_argument("--loss-decay", type=float, default=0.8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup-ratio", type=float, default=0.015)
    p.add_argument("--max-grad-norm", type=float, default=0.5)
    p.add_argument("--specforge-betas", choices=["matched", "native"], default="matched")
    p.add_argument("--num-steps", type=int, default=5, help="K at eval")
    p.add_argument("--eval-questions", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--tree-topk", type=int, default=4, help="the tree setting (0: skip the tree decode)")
    p.add_argument("--tree-questions", type=int, default=10,
                   help="questions of the tree decode (a topk-4 verify step costs ~2x a chain one on a CPU)")
    p.add_argument("--tree-max-new-tokens", type=int, default=None, help="default: --max-new-tokens")
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="threads of the single-process stages")
    p.add_argument("--nice", type=int, default=10)
    p.add_argument("--stop-after", default=None, help="stop once this stage is done (e.g. features)")
    p.add_argument("--report-partial", action="store_true",
                   help="run nothing: write the stages done so far to bench/results/parity_partial.json")
    p.add_argument("--specforge-python", default="/tmp/specforge-venv/bin/python")
    p.add_argument("--work-dir", default=str(REPO / "cache" / "bench" / "parity"))
    p.add_argument("--output", default=str(RESULTS / "parity.json"))
    args = p.parse_args(argv)
    if args.cmd == "_specforge-train":
        sys.path.insert(0, str(Path(args.work_dir) / "src"))
        print(json.dumps(specforge_train(args)))
        return 0
    return drive(args, argv)


def drive(args, argv) -> int:
    signal.signal(signal.SIGTERM, _stop_children)
    signal.signal(signal.SIGINT, _stop_children)
    w = Path(args.work_dir)
    w.mkdir(parents=True, exist_ok=True)
    args.src = w / "src"
    state_path = w / "state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    settings = {k: v for k, v in vars(args).items() if k not in ("output", "threads", "nice", "src", "cmd", "stop_after")}
    settings["src"] = str(args.src)
    load = {"before": os.getloadavg()}
    if args.report_partial:
        return report_partial(args, argv, state, settings)

    def stage(name: str, fn, *a):
        if args.stop_after and args.stop_after in state:
            raise SystemExit(f"stopped after {args.stop_after} (--stop-after)")
        if name in state:
            _log(f"{name}: done before, reused")
            return state[name]
        t0 = time.perf_counter()
        result = fn(args, w, *a)
        result["stage_seconds"] = time.perf_counter() - t0
        result["loadavg_after"] = os.getloadavg()
        state[name] = result
        state_path.write_text(json.dumps(state, indent=1))
        _log(f"{name}: done in {result['stage_seconds']:.0f} s, load {os.getloadavg()}")
        return result

    stage("snapshot", stage_snapshot)
    data = stage("data", stage_data)
    probe = stage("probe", stage_probe, data)
    features = stage("features", stage_features, data, probe)
    vocab = stage("vocab", stage_vocab, data)
    train = stage("train", stage_train, data, vocab)
    export = stage("export", stage_export, data, features)
    chain = stage("eval_chain", stage_eval, data, 1, args.eval_questions, args.max_new_tokens)
    tree = None
    if args.tree_topk > 1:
        tree = stage(f"eval_tree{args.tree_topk}", stage_eval, data, args.tree_topk,
                     args.tree_questions, args.tree_max_new_tokens or args.max_new_tokens)
    load["after"] = os.getloadavg()

    result = {impl: summarize_eval(chain[impl]["report"], args.resamples, args.seed) for impl in IMPLS}
    result["verdict"] = verdict(result["draftsmith"], result["specforge"])
    result["draftsmith_vs_specforge"] = paired(*(emitted_and_steps(chain[i]["report"]) for i in ("specforge", "draftsmith")),
                                               args.resamples, args.seed)
    if tree:
        result["tree"] = {impl: summarize_eval(tree[impl]["report"], args.resamples, args.seed) for impl in IMPLS}
        result["tree"]["verdict"] = verdict(result["tree"]["draftsmith"], result["tree"]["specforge"])
        result["tree"]["draftsmith_vs_specforge"] = paired(
            *(emitted_and_steps(tree[i]["report"]) for i in ("specforge", "draftsmith")), args.resamples, args.seed)
    result.update({
        "command": "python bench/parity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": load},
        "settings": settings, "draftsmith_commit": state["snapshot"]["commit"],
        "data": data, "probe": probe, "features": features, "vocab": vocab,
        "train": train, "export": {k: v for k, v in export.items() if k != "stage_seconds"},
        "eval_seconds": {"chain": chain, "tree": tree},
    })
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n")
    for name, r in [("chain", result)] + ([("tree", result["tree"])] if tree else []):
        _log(f"{name}: " + "  ".join(f"{impl} tau {r[impl]['tau']:.3f} [{r[impl]['ci_low']:.3f}, "
                                     f"{r[impl]['ci_high']:.3f}]" for impl in IMPLS) + f"  -> {r['verdict']}")
    _log(f"wrote {args.output}")
    return 0


STAGES = ("snapshot", "data", "probe", "features", "vocab", "train", "export", "eval_chain", "eval_tree4")


def report_partial(args, argv, state: dict, settings: dict) -> int:
    """What a run that has not finished holds so far, labelled partial."""
    out = {"partial": True, "stages_done": [s for s in STAGES if s in state],
           "stages_not_done": [s for s in STAGES if s not in state], **{k: v for k, v in state.items()},
           "command": "python bench/parity.py " + " ".join(a for a in (argv or sys.argv[1:]) if a != "--report-partial"),
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
           "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "loadavg": os.getloadavg()},
           "settings": settings}
    features = args.work_dir and Path(args.work_dir) / "features" / "shards"
    if "features" not in state and features and features.is_dir():
        done = [json.loads(p.read_text()) for p in sorted(features.glob("*.json"))]
        out["features_in_progress"] = {"shards_done": len(done), "samples_done": sum(d["num_samples"] for d in done),
                                       "tokens_done": sum(d["num_tokens"] for d in done),
                                       "tokens_total": state["data"]["tokens"]}
    if "train" not in state:
        progress = {}
        for impl in IMPLS:
            metrics = Path(args.work_dir) / f"train_{impl}" / "metrics.jsonl"
            rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()] if metrics.exists() else []
            progress[impl] = rows[-1] if rows else None
        out["train_in_progress"] = progress
    path = RESULTS / "parity_partial.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    _log(f"wrote {path} (partial: {', '.join(out['stages_not_done'])} not done)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
