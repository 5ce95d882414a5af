"""τ per training budget: acceptance length against supervised training tokens × epochs (#15 §2).

(One file over ~400 lines: the runs, the fit and the figure of one benchmark, like bench/'s other scripts.)

    python bench/tau_curve.py run --name sharegpt --features cache/demo/default/features \
        --dataset cache/demo/default/dataset --holdout 32 \
        --points 12x1 25x1 50x1 100x1 200x1 [--real 12x1 ...] [--with-plain]
    python bench/tau_curve.py report --name sharegpt [--name own ...]

`run` trains one draft per budget point `NxE` (the first N conversations of a fixed seeded
order of the training pool, E epochs) from an existing feature store, read-only, with the
demo's hyper-parameters (TTT 3, draft vocab 4096 counted on the N conversations alone,
lr 1e-3, batch 1, seed 0, max length 512). The subsets are nested: each one holds the smaller
ones. `--holdout` conversations (train/evaluate.py's seeded `holdout_split`) are in no subset.
Each point records:

- `heldout_tau`: the simulated τ on the held-out conversations (the trainer's evaluation,
  full-vocab argmax as a server verifies, TTT 3 steps so at most 4);
- `proxy_tau`: bench/tau_proxy.py's measure, teacher-forced K = 5 steps on the target's own
  greedy replies to the first turn of the MT-bench questions;
- at the `--real` points, `real_tau` / `real_tau_sglang`: real speculative decoding of both turns
  of the same MT-bench questions (K = 5 chain, `--max-new-tokens`), counted as `draftsmith eval`
  counts; `--with-plain` runs `draftsmith eval` itself (plus the plain baseline: speed-up and the
  lossless check, which do not enter τ), the default skips the baseline (real_tau's docstring).

A point's result is cache/bench/tau_curve/<name>/<N>x<E>/result.json; a point whose result
exists is skipped, so a stopped run restarts where it was. The draft is trained in this
process (the nested subset is set on the trainer's sources and the draft vocab counted on it,
by swapping train/sources' `build_sources` and train/draft_setup's `vocab_mapping` for the run;
the rest is `draftsmith train`'s own code path); export runs as a `draftsmith` subprocess. The
published curve ran on commit 0b97d85 (the vocab then came from Trainer._vocab_mapping).

`report` also lists `EARLIER` drafts of the same recipe whose proxy and real τ are on file (the
demo runs of docs/benchmarks.md §6), for the proxy-vs-real correlation and as out-of-sample
checks of the fit. It gathers the points into bench/results/tau_curve_<name>.json and one figure
bench/results/tau_curve.png: each τ against log2(supervised tokens × epochs), the least-squares
fit τ = a + b·log2(tokens) (b = what doubling the supervised tokens buys) with its residuals, and
the proxy against real decoding where both were measured (their Pearson correlation).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

POOL_SEED = 20_251_201            # the order of the training pool the nested subsets are cut from


def parse_point(text: str) -> tuple[int, int]:
    n, _, e = text.partition("x")
    return int(n), int(e or 1)


def point_name(n: int, e: int) -> str:
    return f"{n:05d}x{e}"


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def pools(num_samples: int, holdout: int, seed: int) -> tuple[list[int], list[int]]:
    """(training pool in its fixed seeded order, held-out indices): the nested subsets are its prefixes."""
    from draftsmith.train.evaluate import holdout_split

    train_idx, eval_idx = holdout_split(num_samples, holdout, seed)
    g = torch.Generator().manual_seed(POOL_SEED)
    order = torch.randperm(len(train_idx), generator=g).tolist()
    return [train_idx[i] for i in order], eval_idx


def subset_counts(store, indices: list[int], vocab_size: int, max_length: int) -> tuple[np.ndarray, np.ndarray, int]:
    """(supervised, all-token) counts per target id over some rows of a store, and their supervised tokens."""
    supervised = np.zeros(vocab_size, dtype=np.int64)
    every = np.zeros(vocab_size, dtype=np.int64)
    for i in indices:
        raw = store.raw(i)
        ids = raw["input_ids"].long().numpy()[:max_length]
        mask = raw["loss_mask"].bool().numpy()[:max_length]
        every += np.bincount(ids, minlength=vocab_size)
        supervised += np.bincount(ids[mask], minlength=vocab_size)
    return supervised, every, int(supervised.sum())


def train_point(args, n: int, epochs: int, out: Path) -> dict:
    """Train on the first n conversations of the pool for `epochs` epochs; the trainer's result."""
    from draftsmith.data.vocab import mapping_from_counts
    from draftsmith.train import trainer as trainer_mod
    from draftsmith.train.config import TrainConfig
    from draftsmith.train.evaluate import SubsetSource

    cfg = TrainConfig(mode="offline", target_model_path=args.target_model_path, train_data_path=str(args.dataset),
                      train_hidden_states_path=str(args.features), max_length=args.max_length,
                      draft_vocab_size=args.draft_vocab_size, ttt_length=args.ttt_length, num_epochs=epochs,
                      batch_size=1, learning_rate=args.learning_rate, seed=0, output_dir=str(out / "train"),
                      save_interval=10**9, eval_interval=10**9, eval_holdout=args.holdout, report_to="none",
                      device="cpu", progress=False, log_interval=10)
    info: dict = {}
    original = trainer_mod.build_sources

    def nested_sources(cfg_, dist_info, dtype):
        setup = original(cfg_, dist_info, dtype)
        pool, heldout = pools(len(setup.store), args.holdout, cfg_.seed)
        if sorted(setup.eval.indices) != heldout:
            raise RuntimeError("the trainer's held-out split differs from this script's")
        if n > len(pool):
            raise ValueError(f"{n} conversations asked, the pool has {len(pool)}")
        chosen = sorted(pool[:n])
        setup.train = SubsetSource(setup.train.source, chosen)
        sup, every, tokens = subset_counts(setup.store, chosen, setup.vocab_size, args.max_length)
        info.update(indices=chosen, supervised_tokens=tokens, heldout=len(heldout),
                    vocab=mapping_from_counts(sup, every, setup.vocab_size, min(args.draft_vocab_size,
                                                                                setup.vocab_size)))
        return setup

    from draftsmith.train import draft_setup

    def subset_vocab(setup, vd, dist_info):      # the draft vocab of the n conversations alone
        return info["vocab"].d2t.long(), info["vocab"].t2d.bool()

    original_vocab = draft_setup.vocab_mapping
    trainer_mod.build_sources, draft_setup.vocab_mapping = nested_sources, subset_vocab
    try:
        tr = trainer_mod.Trainer(cfg)
        try:
            result = tr.train()
        finally:
            tr.close()
    finally:
        trainer_mod.build_sources, draft_setup.vocab_mapping = original, original_vocab
    return {**result, "supervised_tokens": info["supervised_tokens"], "heldout": info["heldout"],
            "vocab_coverage": info["vocab"].coverage, "steps": tr.global_step}


def proxy_tau(args, draft_dir: Path) -> dict:
    """bench/tau_proxy.py's figure for one exported draft (K = args.proxy_steps)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tau_proxy import score

    target_path = args.target_model_path
    tokenizer = AutoTokenizer.from_pretrained(target_path)
    model = AutoModelForCausalLM.from_pretrained(target_path, dtype=torch.float32).eval()
    s, tokens = score(model, tokenizer, draft_dir, target_path, args.questions, args.max_new_tokens, args.proxy_steps)
    return {"proxy_tau": round(s["tau"], 4), "proxy_tau_chain": round(s["tau_chain"], 4),
            "proxy_acc_k": [round(a, 4) for a in s["acc_k"]],
            "proxy_tokens": tokens}


def real_tau(args, draft_dir: Path, plain: bool) -> dict:
    """τ by real speculative decoding of both turns of the first --questions MT-bench questions.

    With `plain`, `draftsmith eval` itself (plain greedy decoding of every turn too: speed-up and
    lossless check). Without, the same loop minus the plain baseline, which does not enter τ
    (eval/cli.py's prompts, rendering, K = --draft-depth chain and eval/report.py's counting; the
    second turn follows the first speculative reply, token-identical to the plain one as
    speculative decoding is lossless): about 40 % less CPU per point."""
    if plain:
        report = draft_dir.parent / "eval" / "report.json"
        cli("eval", "--target-model-path", args.target_model_path, "--draft-model-path", str(draft_dir),
            "--benchmark", "mtbench", "--draft-depth", str(args.draft_depth), "--max-new-tokens",
            str(args.max_new_tokens), "--num-questions", str(args.questions), "--output-file", str(report))
        b = json.loads(report.read_text())["benchmarks"][0]
    else:
        from draftsmith.eval import benchmarks as bench
        from draftsmith.eval.cli import EvalConfig, load_models
        from draftsmith.eval.report import BenchmarkResult, TurnResult, benchmark_summary
        from draftsmith.eval.spec_decode import SpecConfig, speculative_generate
        from draftsmith.target.prompting import encode_prompt, eos_ids, render_prompt

        cfg = EvalConfig(target_model_path=Path(args.target_model_path), draft_model_path=draft_dir,
                         benchmarks=["mtbench"], draft_depth=[args.draft_depth], max_new_tokens=args.max_new_tokens,
                         num_questions=args.questions)
        tokenizer, model, draft = load_models(cfg)
        aux_layers = list(draft.config.aux_layer_ids)
        spec_cfg = SpecConfig(num_steps=args.draft_depth, max_new_tokens=args.max_new_tokens,
                              eos_token_ids=eos_ids(tokenizer, model))
        result = BenchmarkResult("mtbench", spec_cfg.num_steps, spec_cfg.topk, spec_cfg.tree_size + 1)
        with torch.inference_mode():
            for prompt in bench.load("mtbench", args.questions):
                messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
                for turn, text in enumerate(prompt.turns):
                    messages.append({"role": "user", "content": text})
                    ids = encode_prompt(tokenizer, render_prompt(tokenizer, messages))
                    spec = speculative_generate(model, draft, ids, spec_cfg, aux_layers)
                    result.turns.append(TurnResult(prompt.id, turn, len(ids), spec))
                    messages.append({"role": "assistant",
                                     "content": tokenizer.decode(spec.tokens, skip_special_tokens=True)})
        b = benchmark_summary(result)
        (draft_dir.parent / "real_eval.json").write_text(json.dumps(b, indent=2) + "\n")
    return {"real_tau": round(b["tau"], 4), "real_tau_sglang": round(b["tau_sglang"], 4),
            "real_accept_rate": [round(a, 4) for a in b["accept_rate"]], "real_lossless": b["lossless"],
            "real_turns": b["turns"], "real_with_plain": plain}


def cli(*argv: str) -> None:
    """`draftsmith ARGV` from this checkout's package (the same code as the in-process training)."""
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    subprocess.run([sys.executable, "-c", "import sys; from draftsmith.cli import main; sys.exit(main())", *argv],
                   check=True, env=env)


def run_point(args, n: int, epochs: int, real: bool) -> dict:
    out = args.work / args.name / point_name(n, epochs)
    result_path = out / "result.json"
    if result_path.exists():
        row = json.loads(result_path.read_text())
        if not real or row.get("real_tau") is not None:
            print(f"{point_name(n, epochs)}: done before, skipped", flush=True)
            return row
    else:
        row = {"conversations": n, "epochs": epochs, "load_before": loadavg(),
               "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")}
        t0 = time.perf_counter()
        r = train_point(args, n, epochs, out)
        ev = r["eval"] or {}
        row.update(train_seconds=round(time.perf_counter() - t0, 1), steps=r["steps"],
                   supervised_tokens=r["supervised_tokens"], trained_tokens=r["supervised_tokens"] * epochs,
                   heldout_conversations=r["heldout"], vocab_coverage=round(r["vocab_coverage"], 4),
                   heldout_tau=ev.get("tau"), heldout_tau_draft_vocab=ev.get("tau_draft_vocab"),
                   heldout_acc_k=ev.get("acc_k"))
        cli("export", str(out / "train" / "final"), "--output-dir", str(out / "draft"),
            "--target-model-path", args.target_model_path)
        t0 = time.perf_counter()
        row.update(proxy_tau(args, out / "draft"), proxy_seconds=round(time.perf_counter() - t0, 1))
        row["load_after_train"] = loadavg()
        result_path.write_text(json.dumps(row, indent=2) + "\n")
        print(f"{point_name(n, epochs)}: {row['trained_tokens']} tokens, held-out tau {row['heldout_tau']}, "
              f"proxy tau {row['proxy_tau']}", flush=True)
    if real:
        t0 = time.perf_counter()
        load = loadavg()
        row.update(real_tau(args, out / "draft", args.with_plain), real_seconds=round(time.perf_counter() - t0, 1),
                   real_load_before=load, real_load_after=loadavg())
        result_path.write_text(json.dumps(row, indent=2) + "\n")
        print(f"{point_name(n, epochs)}: real tau {row['real_tau']} (sglang count {row['real_tau_sglang']})",
              flush=True)
    return row


# ----- fit, table, figure ------------------------------------------------------------------------

def fit_log2(tokens: list[float], tau: list[float]) -> dict:
    """Least squares τ = a + b·log2(tokens): a, b, residuals, R²."""
    x = np.log2(np.asarray(tokens, dtype=float))
    y = np.asarray(tau, dtype=float)
    b, a = np.polyfit(x, y, 1)
    pred = a + b * x
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a": float(a), "b": float(b), "residuals": [float(v) for v in y - pred],
            "r2": 1 - ss_res / ss_tot if ss_tot > 0 else None, "points": len(y),
            "lo_tokens": int(min(tokens)), "hi_tokens": int(max(tokens))}


def fit_epochs(rows: list[dict], key: str) -> dict | None:
    """Least squares τ = a + b·log2(supervised tokens) + c·log2(epochs) over rows with 1 and more epochs:
    gamma = c / b is what a repeated epoch is worth against as many fresh tokens (1: as much, 0: nothing),
    with its standard error (OLS covariance, delta method). None with fewer than two points past 1 epoch."""
    pts = [(r["trained_tokens"] / r["epochs"], r["epochs"], r[key]) for r in rows if r.get(key) is not None]
    if sum(e > 1 for _, e, _ in pts) < 2 or len(pts) < 5:      # γ needs more than one repeated-epoch point
        return None
    x = np.array([[1.0, math.log2(sup), math.log2(e)] for sup, e, _ in pts])
    y = np.array([t for _, _, t in pts])
    coef, *_ = np.linalg.lstsq(x, y, rcond=None)
    resid = y - x @ coef
    dof = len(y) - 3
    cov = float(resid @ resid) / dof * np.linalg.inv(x.T @ x) if dof > 0 else np.full((3, 3), np.nan)
    a, b, c = (float(v) for v in coef)
    grad = np.array([0.0, -c / b ** 2, 1.0 / b])          # d gamma / d (a, b, c)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    return {"a": a, "b": b, "c": c, "gamma": c / b, "gamma_se": float(math.sqrt(max(grad @ cov @ grad, 0.0))),
            "b_se": float(math.sqrt(max(cov[1, 1], 0.0))), "residuals": [float(v) for v in resid],
            "r2": 1 - float(resid @ resid) / ss_tot if ss_tot > 0 else None, "points": len(y),
            "epochs": sorted({e for _, e, _ in pts}), "lo_tokens": int(min(sup * e for sup, e, _ in pts)),
            "hi_tokens": int(max(sup * e for sup, e, _ in pts))}


def predict(fit: dict, tokens: float) -> float:
    return fit["a"] + fit["b"] * math.log2(tokens)


def pearson(a: list[float], b: list[float]) -> float | None:
    if len(a) < 3:
        return None
    return float(np.corrcoef(np.asarray(a), np.asarray(b))[0, 1])


def gather(args, name: str) -> dict:
    folder = args.work / name
    rows = sorted((json.loads(p.read_text()) for p in folder.glob("*/result.json")),
                  key=lambda r: (r["trained_tokens"], r["epochs"]))
    if not rows:
        raise SystemExit(f"no points in {folder}")
    tokens = [r["trained_tokens"] for r in rows]
    fits = {}
    for key in ("proxy_tau", "heldout_tau", "real_tau"):     # the nested one-epoch points
        pts = [(r["trained_tokens"], r[key]) for r in rows if r.get(key) is not None and r["epochs"] == 1]
        if len(pts) >= 3:
            fits[key] = fit_log2(*zip(*pts))
    real = [r for r in rows if r.get("real_tau") is not None]
    earlier = earlier_points()
    pairs = [(r["proxy_tau"], r["real_tau"]) for r in real] + \
            [(r["proxy_tau"], r["real_tau"]) for r in earlier if r["real_tau"] is not None]
    if "proxy_tau" in fits:        # the fit's prediction at the earlier budgets (outside its points)
        for r in earlier:
            r["proxy_fit_residual"] = round(r["proxy_tau"] - predict(fits["proxy_tau"], r["trained_tokens"]), 4)
    same = [r for r in earlier if r["replies"] == name]
    if len(same) and len(rows) >= 3:
        pts = [(r["trained_tokens"], r["proxy_tau"]) for r in rows] + [(r["trained_tokens"], r["proxy_tau"])
                                                                      for r in same]
        fits["proxy_tau_with_earlier"] = fit_log2(*zip(*pts))
        pts = [(r["trained_tokens"], r["real_tau"]) for r in rows + same if r.get("real_tau") is not None]
        if len(pts) >= 3 and max(p[0] for p in pts) >= 4 * min(p[0] for p in pts):   # a span to fit a slope on
            fits["real_tau_with_earlier"] = fit_log2(*zip(*pts))
        for key in ("proxy_tau", "real_tau"):
            joint = fit_epochs(rows + same, key)
            if joint is not None:
                fits[f"{key}_epochs"] = joint
    summary = {"name": name, "points": rows, "fits": fits, "earlier": earlier,
               "pearson_proxy_real_all": pearson(*zip(*pairs)) if len(pairs) >= 3 else None,
               "proxy_real_pairs": len(pairs),
               "span": max(tokens) / min(tokens),
               "proxy_vs_real": {"points": [{"trained_tokens": r["trained_tokens"], "proxy_tau": r["proxy_tau"],
                                             "real_tau": r["real_tau"], "real_tau_sglang": r["real_tau_sglang"]}
                                            for r in real],
                                 "pearson_proxy_real": pearson([r["proxy_tau"] for r in real],
                                                               [r["real_tau"] for r in real]),
                                 "pearson_heldout_real": pearson([r["heldout_tau"] for r in real],
                                                                 [r["real_tau"] for r in real])}}
    return summary


# Earlier drafts of the same recipe (demo hyper-parameters, ShareGPT or regenerated replies, all the conversations
# of their run: the held-out split above is not excluded) whose proxy τ and real τ were both measured:
# (label, replies, proxy file + draft, demo summary file (or that summary inline), epochs when the draft's own run
# did not decode it: then it has no real τ).
EARLIER = [
    ("default demo, 2026-12-01", "sharegpt", ("bench/results/tau_curve_demo_default_proxy.json", None),
     "cache/demo/default/report/demo_report.json", None),
    ("quiet default demo, 2026-11-26", "sharegpt", ("bench/results/tau_proxy_recipes.json",
                                                    "cache/demo/quiet_default/draft"),
     "bench/results/demo_quiet_default.json", None),
    ("the same, 1 epoch (no real eval)", "sharegpt", ("bench/results/tau_proxy_recipes.json", "/tmp/sw/base/draft"),
     "bench/results/demo_quiet_default.json", 1),
    ("1,000 conversations, 2026-11-26", "sharegpt", ("bench/results/tau_proxy_recipes.json",
                                                     "cache/demo/c1000e1/draft"),
     "bench/results/demo_1000conv_1epoch.json", None),
    ("1,000 conversations x 2 epochs, 2026-12-01 (eval stopped)", "sharegpt",
     ("bench/results/tau_proxy_demo_1000conv_2epochs.json", None),
     {"summary": {"conversations": 871, "supervised_tokens": 305_126}, "settings": {"num_epochs": 2}}, 2),
    ("--budget 40 (the first planner), 2026-12-02", "sharegpt", ("bench/results/tau_proxy_demo_budget40.json", None),
     "bench/results/demo_budget40.json", None),
    ("--regenerate 128, 2026-11-26", "own", ("bench/results/tau_proxy_recipes.json", "cache/demo/regen500/draft"),
     "bench/results/demo_regenerate.json", None),
]


def against(other: dict, sharegpt: dict) -> dict:
    """Another curve's points against the ShareGPT proxy fit at the same trained tokens: τ above that fit,
    and the same in doublings of ShareGPT data (what a token of the other data is worth)."""
    fit = sharegpt["fits"]["proxy_tau"]
    rows = [r for r in other["points"] if r["epochs"] == 1]
    above = [r["proxy_tau"] - predict(fit, r["trained_tokens"]) for r in rows]
    real = sharegpt["fits"].get("real_tau")
    above_real = [r["real_tau"] - predict(real, r["trained_tokens"]) for r in rows
                  if real is not None and r.get("real_tau") is not None]
    return {"fit": "sharegpt proxy_tau (nested, 1 epoch)", "points": [r["trained_tokens"] for r in rows],
            "proxy_above": [round(v, 4) for v in above], "mean_proxy_above": float(np.mean(above)) if above else None,
            "doublings": float(np.mean(above)) / fit["b"] if above else None,
            "real_above_real_fit": [round(v, 4) for v in above_real]}


def earlier_points() -> list[dict]:
    """The EARLIER drafts' (trained tokens, proxy τ, real τ) from their result files; missing files skipped."""
    rows = []
    for label, replies, (proxy_file, draft), demo_file, epochs in EARLIER:
        try:
            proxy = json.loads((ROOT / proxy_file).read_text())
            demo = demo_file if isinstance(demo_file, dict) else json.loads((ROOT / demo_file).read_text())
        except (OSError, json.JSONDecodeError):
            continue
        proxy_tau = next(r["tau"] for r in proxy["results"] if draft is None or r["draft"] == draft)
        summary = demo["summary"]
        e = epochs or demo["settings"].get("num_epochs", demo["settings"].get("epochs"))
        rows.append({"label": label, "replies": replies, "conversations": summary["conversations"], "epochs": e,
                     "trained_tokens": summary["supervised_tokens"] * e, "proxy_tau": proxy_tau,
                     "real_tau": None if epochs else round(summary["tau"], 4),
                     "real_questions": summary.get("eval_questions"),
                     "source": [proxy_file, demo_file if isinstance(demo_file, str) else "docs/benchmarks.md §6"]})
    return rows


def table(summary: dict) -> str:
    lines = ["| conversations × epochs | supervised tokens × epochs | held-out τ (K=3) | proxy τ (K=5) | "
             "real τ (K=5) | train time | load |", "|---|---|---|---|---|---|---|"]
    for r in summary["points"]:
        real = f"{r['real_tau']:.3f}" if r.get("real_tau") is not None else "–"
        lines.append(f"| {r['conversations']} × {r['epochs']} | {r['trained_tokens']:,} | {r['heldout_tau']:.3f} | "
                     f"{r['proxy_tau']:.3f} | {real} | {r['train_seconds'] / 60:.1f} min | "
                     f"{' '.join(r['load_before'].split()[:3])} |")
    return "\n".join(lines)


def plot(summaries: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    styles = {"proxy_tau": ("o", "proxy τ (MT-bench own replies, K=5)"),
              "heldout_tau": ("s", "held-out simulated τ (K=3)"), "real_tau": ("*", "real decoding τ (K=5)")}
    colors = {"proxy_tau": "C0", "heldout_tau": "C1", "real_tau": "C3"}
    for s, shade in zip(summaries, (1.0, 0.55, 0.3)):
        for key, (marker, label) in styles.items():
            color = colors[key]
            pts = [(r["trained_tokens"], r[key]) for r in s["points"] if r.get(key) is not None]
            if not pts:
                continue
            x, y = zip(*pts)
            ax.scatter(x, y, marker=marker, color=color, alpha=shade, s=90 if marker == "*" else 30,
                       label=f"{s['name']}: {label}")
            if key in s["fits"]:
                f = s["fits"][key]
                xs = np.geomspace(min(x), max(x), 50)
                ax.plot(xs, f["a"] + f["b"] * np.log2(xs), color=color, lw=0.8,
                        ls={"proxy_tau": "-", "heldout_tau": "--", "real_tau": ":"}[key])
        same = [r for r in s.get("earlier", []) if r["replies"] == s["name"]]
        if same:
            ax.scatter([r["trained_tokens"] for r in same], [r["proxy_tau"] for r in same], marker="o",
                       facecolors="none", edgecolors=colors["proxy_tau"], s=40,
                       label=f"{s['name']}: proxy τ, earlier demo drafts")
            real = [r for r in same if r["real_tau"] is not None]
            ax.scatter([r["trained_tokens"] for r in real], [r["real_tau"] for r in real], marker="*",
                       facecolors="none", edgecolors=colors["real_tau"], s=90,
                       label=f"{s['name']}: real τ, earlier demo drafts")
        if "proxy_tau_with_earlier" in s["fits"]:
            f = s["fits"]["proxy_tau_with_earlier"]
            xs = np.geomspace(min(r["trained_tokens"] for r in s["points"]),
                              max(r["trained_tokens"] for r in s["points"] + same), 50)
            ax.plot(xs, f["a"] + f["b"] * np.log2(xs), color=colors["proxy_tau"], lw=0.8, ls="-.",
                    label=f"{s['name']}: proxy fit with the earlier drafts (b = {f['b']:.3f})")
        if "real_tau_with_earlier" in s["fits"]:
            f = s["fits"]["real_tau_with_earlier"]
            xs = np.geomspace(f["lo_tokens"], f["hi_tokens"], 50)
            ax.plot(xs, f["a"] + f["b"] * np.log2(xs), color=colors["real_tau"], lw=0.8, ls=":",
                    label=f"{s['name']}: real-decoding fit (b = {f['b']:.3f})")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("supervised training tokens × epochs")
    ax.set_ylabel("acceptance length τ")
    ax.set_title("τ per training budget (SmolLM2-135M-Instruct, lines: τ = a + b·log2 tokens)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--name", action="append", required=True, help="curve name (report: several)")
    p.add_argument("--features", type=Path, help="feature store (read only)")
    p.add_argument("--dataset", type=Path, help="its tokenized dataset folder")
    p.add_argument("--target-model-path", default=None, help="default: the packaged SmolLM2")
    p.add_argument("--holdout", type=int, default=40, help="conversations in no training subset")
    p.add_argument("--points", nargs="*", default=[], help="budget points NxE (conversations x epochs)")
    p.add_argument("--real", nargs="*", default=[], help="points also measured by real decoding")
    p.add_argument("--questions", type=int, default=10)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--draft-depth", type=int, default=5, help="real decoding K (draft tokens per verify step)")
    p.add_argument("--with-plain", action="store_true",
                   help="real decoding through `draftsmith eval` (plain baseline too: speed-up, lossless check)")
    p.add_argument("--proxy-steps", type=int, default=5, help="proxy K")
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--draft-vocab-size", type=int, default=4096)
    p.add_argument("--ttt-length", type=int, default=3)
    p.add_argument("--learning-rate", type=float, default=1e-3)
    p.add_argument("--work", type=Path, default=None, help="default: <cache>/bench/tau_curve")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    from draftsmith import resources

    args.work = args.work or resources.cache_root() / "bench" / "tau_curve"
    args.target_model_path = str(args.target_model_path or resources.smollm2_dir())
    if args.action == "run":
        if len(args.name) != 1 or args.features is None or args.dataset is None:
            p.error("run takes one --name, --features and --dataset")
        args.name = args.name[0]
        real = {parse_point(t) for t in args.real}
        for text in args.points:
            n, e = parse_point(text)
            run_point(args, n, e, (n, e) in real)
        return 0
    summaries = [gather(args, name) for name in args.name]
    by_name = {s["name"]: s for s in summaries}
    if "sharegpt" in by_name:
        for s in summaries:
            if s["name"] != "sharegpt":
                s["against_sharegpt"] = against(s, by_name["sharegpt"])
    for s in summaries:
        name = s["name"]
        s.update(command="python bench/tau_curve.py " + " ".join(argv or sys.argv[1:]),
                 machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
                 date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
        out = ROOT / "bench" / "results" / f"tau_curve_{name}.json"
        out.write_text(json.dumps(s, indent=2) + "\n")
        print(f"## {name}\n\n{table(s)}\n")
        for key, f in s["fits"].items():
            form = "log2(tokens)" if "c" not in f else f"(log2(supervised) + {f['gamma']:.2f} log2(epochs))"
            print(f"{key}: tau = {f['a']:.3f} + {f['b']:.4f} * {form}  (R2 {f['r2']}, residuals "
                  f"{' '.join(f'{v:+.3f}' for v in f['residuals'])})"
                  + (f", gamma {f['gamma']:.2f} +- {f['gamma_se']:.2f}" if "c" in f else ""))
        if "against_sharegpt" in s:
            print(f"against sharegpt: {s['against_sharegpt']}")
        print(f"proxy vs real: {s['proxy_vs_real']}\nwrote {out}")
    plot(summaries, ROOT / "bench" / "results" / "tau_curve.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
