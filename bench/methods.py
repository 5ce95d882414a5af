"""Training methods beyond the peers' recipe, at equal budget (#15 §4).

    python bench/methods.py run [--recipes decay survival survival-hard] [--questions 20] [--real]
    python bench/methods.py report [--questions 20]
    python bench/methods.py run --train-seed 1 --work cache/bench/methods_seed1 --recipes decay X --real
    python bench/methods.py report --train-seed 1 --work cache/bench/methods_seed1   # -> methods_seed1.json

Every recipe trains one draft on the same feature store (default: the demo's,
cache/demo/default, read-only) with the demo's settings (TTT 3, draft vocab 4096, lr 1e-3,
batch 1, 2 epochs, seed 0, max length 512): the same data, data order, steps and optimizer.
Only the recipe's own flags differ:

- `decay`: the peers' recipe, step k of the TTT unroll weighs 0.8**k (SpecForge 0.2.0
  `OnlineEagle3Model`'s `ploss_weight = [0.8**i ...]`; speculators and ModelOpt the same).
- `survival`: `--ttt-weighting survival --loss-decay 1.0` (train/ttt.py `chain_survival`): a
  step-k row weighs the detached chance, under the draft as it is now, that a served chain
  started at that row is still alive at step k.
- `survival-hard`: the same with 0/1 (the draft's argmax is the target's), token-alignable
  training.
- `feature`: `--feature-loss 1.0`, EAGLE-1's regression of the draft's normed output on the
  target's last hidden state added to EAGLE-3's loss: a dense target per row for a data-starved draft.
- `temperature`: `--distill-temperature 2.0`, distillation from the target's distribution at a
  temperature (Hinton's T² scaling).
- `curriculum`: `--ttt-curriculum 0.5`, a TTT-length curriculum: the weight of steps >= 1 ramps
  from 0 to full over the first half of the run.
- `curriculum+survival-hard`: the two that raised real τ (≈ +1.3 % each), together.

Each draft is exported, scored by bench/tau_proxy.py (teacher-forced K = 5 on the target's
own MT-bench replies; `proxy_tau_chain`, the served chain's mean accepted length, is the figure
that keeps the correlation between steps a chain-survival weighting acts on) and, with `--real`, decoded for real: both turns of the first
`--questions` MT-bench questions, K = 5 chain, counted as `draftsmith eval` counts
(bench/tau_curve.py `real_tau`, without the plain baseline). `report` writes
bench/results/methods.json: per recipe the proxy τ, real τ with a bootstrap interval over
questions, and against `decay` the paired ratio (questions resampled jointly) with its interval.

A recipe whose <work>/<name>/draft exists is not trained again; its figures are recomputed only
when missing, so a stopped run restarts where it was.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

RECIPES: dict[str, tuple[list[str], str]] = {
    "decay": ([], "the peers' recipe: step k weighs 0.8**k"),
    "survival": (["--ttt-weighting", "survival", "--loss-decay", "1.0"],
                 "step k weighs the draft's detached chance that a served chain reaches it"),
    "survival-hard": (["--ttt-weighting", "survival-hard", "--loss-decay", "1.0"],
                      "only rows a served chain reaches (token-alignable)"),
    "survival-decay": (["--ttt-weighting", "survival"], "survival x 0.8**k"),
    "feature": (["--feature-loss", "1.0"], "EAGLE-1's feature regression (SmoothL1 on the target's last hidden "
                                           "state) beside EAGLE-3's distribution loss"),
    "temperature": (["--distill-temperature", "2.0"], "distillation at temperature 2 (soft CE of the tempered "
                                                      "distributions x T^2): more of the target's dark knowledge"),
    "curriculum": (["--ttt-curriculum", "0.5"], "TTT-length curriculum: steps >= 1 weigh 0 at the start, "
                                                "ramping to full over the first half of the run"),
    "curriculum+survival-hard": (["--ttt-curriculum", "0.5", "--ttt-weighting", "survival-hard", "--loss-decay", "1.0"],
                                 "the two that raised real tau, together (both move accuracy to step 0)"),
    "head-init": (["--lm-head-init", "target"], "the draft's lm_head starts as the target's rows (speculators "
                                                "does this; not a method of its own for #15 §4)"),
}


def loadavg() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def cli(*argv: str, log: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    with open(log, "a") as f:
        subprocess.run([sys.executable, "-c", "import sys; from draftsmith.cli import main; sys.exit(main())",
                        *argv], check=True, env=env, stdout=f, stderr=subprocess.STDOUT)


def train_seed(args, settings: dict) -> int:
    """The draft's init and data order: the store's demo seed unless --train-seed replicates on another."""
    return settings["seed"] if args.train_seed is None else args.train_seed


def train(args, name: str, out: Path) -> None:
    s = json.loads((args.store / "demo_state.json").read_text())["settings"]  # epochs: older run folders' name
    out.mkdir(parents=True, exist_ok=True)
    cli("train", "--mode", "offline", "--target-model-path", args.target_model_path,
        "--train-data-path", str(args.store / "dataset"), "--train-hidden-states-path", str(args.store / "features"),
        "--max-length", str(s["max_length"]), "--draft-vocab-size", str(s["draft_vocab_size"]),
        "--ttt-length", str(s["ttt_length"]), "--num-epochs", str(s.get("num_epochs", s.get("epochs"))),
        "--batch-size", str(s["batch_size"]),
        "--learning-rate", repr(s["learning_rate"]), "--seed", str(train_seed(args, s)), "--save-interval", "200",
        "--report-to", "none", "--device", "cpu", "--no-progress", "--output-dir", str(out / "train"),
        *RECIPES[name][0], log=out / "train.log")
    cli("export", str(out / "train" / "final"), "--output-dir", str(out / "draft"),
        "--target-model-path", args.target_model_path, log=out / "train.log")


def run(args) -> None:
    from tau_curve import proxy_tau, real_tau

    args.proxy_steps, args.draft_depth, args.max_new_tokens = 5, 5, 128
    for name in args.recipes:
        out = args.work / name
        path = out / "result.json"
        row = json.loads(path.read_text()) if path.exists() else {"recipe": name, "flags": RECIPES[name][0]}
        if not (out / "draft" / "config.json").exists():
            t0, row["train_load_before"] = time.perf_counter(), loadavg()
            train(args, name, out)
            row.update(train_seconds=round(time.perf_counter() - t0, 1), train_load_after=loadavg())
        if "proxy_tau" not in row:
            args.questions = args.proxy_questions
            row.update(proxy_tau(args, out / "draft"))
            print(f"{name}: proxy tau {row['proxy_tau']}", flush=True)
        path.write_text(json.dumps(row, indent=2) + "\n")
        if args.real and row.get("real_questions") != args.real_questions:
            args.questions = args.real_questions
            t0, load = time.perf_counter(), loadavg()
            row.update(real_tau(args, out / "draft", plain=False), real_questions=args.real_questions,
                       real_seconds=round(time.perf_counter() - t0, 1), real_load=[load, loadavg()])
            path.write_text(json.dumps(row, indent=2) + "\n")
            print(f"{name}: real tau {row['real_tau']}", flush=True)


def report(args) -> None:
    from parity import emitted_and_steps, paired

    rows = {}
    for name in RECIPES:
        path = args.work / name / "result.json"
        if path.exists():
            rows[name] = json.loads(path.read_text())
    real = {}
    for name in rows:
        f = args.work / name / "real_eval.json"
        if f.exists() and rows[name].get("real_questions"):
            real[name] = emitted_and_steps(str(f))
    for name, row in rows.items():
        if "decay" in real and name in real:
            row["real_vs_decay"] = paired(real["decay"], real[name], args.resamples, args.seed)
        if "decay" in rows and "proxy_tau" in row:
            row["proxy_ratio_vs_decay"] = round(row["proxy_tau"] / rows["decay"]["proxy_tau"], 4)
        row["what"] = RECIPES[name][1]
    seed = "" if args.train_seed is None else f" --train-seed {args.train_seed} --work {args.work}"
    out = ROOT / "bench" / "results" / ("methods.json" if args.train_seed is None
                                        else f"methods_seed{args.train_seed}.json")
    out.write_text(json.dumps({
        "command": f"python bench/methods.py run{seed} --real && python bench/methods.py report{seed}",
        "train_seed": args.train_seed,
        "store": str(args.store), "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "goal": "real_vs_decay.ratio >= 1.10",
        "recipes": rows}, indent=2) + "\n")
    for name, row in rows.items():
        r = row.get("real_vs_decay", {})
        print(f"{name:15s} proxy {row.get('proxy_tau')} ({row.get('proxy_ratio_vs_decay')})  "
              f"real {row.get('real_tau')}  ratio {r.get('ratio')} {r.get('ratio_ci')}")
    print(f"wrote {out}")


def main(argv: list[str] | None = None) -> int:
    from draftsmith import resources

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("command", choices=["run", "report"])
    p.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["decay", "survival", "survival-hard"])
    p.add_argument("--store", type=Path, default=ROOT / "cache" / "demo" / "default",
                   help="a demo run folder: its dataset/, features/ and demo_state.json settings")
    p.add_argument("--work", type=Path, default=ROOT / "cache" / "bench" / "methods")
    p.add_argument("--target-model-path", default=None, help="default: the packaged SmolLM2")
    p.add_argument("--proxy-questions", type=int, default=10)
    p.add_argument("--real", action="store_true", help="also decode for real")
    p.add_argument("--real-questions", type=int, default=20)
    p.add_argument("--with-plain", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--resamples", type=int, default=10000)
    p.add_argument("--seed", type=int, default=0, help="seed of the bootstrap resamples")
    p.add_argument("--train-seed", type=int, default=None,
                   help="train every recipe with this seed (init and data order) instead of the store's demo "
                        "seed: a replicate; report writes bench/results/methods_seed<N>.json")
    args = p.parse_args(argv)
    args.target_model_path = args.target_model_path or str(resources.smollm2_dir())
    run(args) if args.command == "run" else report(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
