"""What each training recipe of #15 §4 costs per step, against the peers' recipe (results:
bench/results/recipe_cost.json, docs/benchmarks.md §6.3).

The trainer of the demo's run (offline, its feature store, its settings: TTT 3, draft vocab 4096,
max length 512, fp32 on this CPU) builds the draft, its lm_head rows and the batches; then one
training step (forward + backward of `ttt_forward` with the recipe's arguments, clip, AdamW step)
runs on the same --samples conversations for every recipe, the recipes interleaved round by round,
the first round untimed. A step's weights are restored after it, so every recipe times the same
draft. Medians per recipe, and the ratio to `decay` within each round (the load changes between
rounds, not within one step's neighbours).

    python bench/recipe_cost.py [--store cache/demo/default] [--samples 8] [--rounds 5] [--threads 2]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

# ttt_forward keyword arguments of each recipe (the flags of bench/methods.py RECIPES)
RECIPES = {
    "decay": {},
    "survival": {"weighting": "survival", "decay": 1.0},
    "survival-hard": {"weighting": "survival-hard", "decay": 1.0},
    "feature": {"feature_weight": 1.0},
    "temperature": {"temperature": 2.0},
    "curriculum (early: steps >= 1 weigh 0)": {"deep_scale": 0.0},
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", type=Path, default=ROOT / "cache" / "demo" / "default")
    p.add_argument("--samples", type=int, default=8)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--output", type=Path, default=ROOT / "bench" / "results" / "recipe_cost.json")
    args = p.parse_args(argv)

    import torch

    from draftsmith import resources
    from draftsmith.train.trainer import TrainConfig, Trainer
    from draftsmith.train.ttt import ttt_forward

    torch.set_num_threads(args.threads)
    s = json.loads((args.store / "demo_state.json").read_text())["settings"]
    load_before = [round(x, 2) for x in os.getloadavg()]
    trainer = Trainer(TrainConfig(
        mode="offline", target_model_path=str(resources.smollm2_dir()), train_data_path=str(args.store / "dataset"),
        train_hidden_states_path=str(args.store / "features"), max_length=s["max_length"],
        draft_vocab_size=s["draft_vocab_size"], ttt_length=s["ttt_length"], batch_size=1,
        learning_rate=s["learning_rate"], output_dir=str(ROOT / "cache" / "bench" / "recipe_cost"),
        device="cpu", progress=False, report_to="none"))
    module, draft = trainer.module, trainer.draft
    batches = [trainer.train_source.batch([i], trainer.device) for i in range(args.samples)]
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    start = copy.deepcopy(draft.state_dict())
    opt_start = copy.deepcopy(trainer.optimizer.state_dict())

    def step(kwargs: dict) -> float:
        t0 = time.perf_counter()
        for batch in batches:
            r = ttt_forward(draft, batch, length=module.length, decay=kwargs.get("decay", module.decay),
                            target_head=module.target_head, full_head=module.full_head, attention=module.attention,
                            **{k: v for k, v in kwargs.items() if k != "decay"})
            r.loss.backward()
            torch.nn.utils.clip_grad_norm_(draft.parameters(), 0.5)
            trainer.optimizer.step()
            trainer.optimizer.zero_grad(set_to_none=True)
        seconds = time.perf_counter() - t0
        draft.load_state_dict(start)
        trainer.optimizer.load_state_dict(opt_start)
        return seconds / len(batches)

    times: dict[str, list[float]] = {name: [] for name in RECIPES}
    for rnd in range(args.rounds + 1):
        for name, kwargs in RECIPES.items():
            t = step(kwargs)
            if rnd:
                times[name].append(t)
        print(f"round {rnd}: " + ", ".join(f"{n.split()[0]} {times[n][-1]:.3f}s" for n in RECIPES if times[n]),
              flush=True)
    rows = {}
    for name in RECIPES:
        ratios = [a / b for a, b in zip(times[name], times["decay"])]
        rows[name] = {"ttt_forward_kwargs": RECIPES[name], "median_step_s": round(statistics.median(times[name]), 4),
                      "ratio_to_decay": round(statistics.median(ratios), 3),
                      "ratio_range": [round(min(ratios), 3), round(max(ratios), 3)],
                      "tokens_per_s": round(tokens / len(batches) / statistics.median(times[name]), 1)}
    out = {"command": "python bench/recipe_cost.py " + " ".join(argv if argv is not None else sys.argv[1:]),
           "store": str(args.store), "samples": args.samples, "tokens_per_sample": tokens / len(batches),
           "settings": {k: s[k] for k in ("max_length", "draft_vocab_size", "ttt_length")},
           "threads": args.threads, "rounds": args.rounds, "load_before": load_before,
           "load_after": [round(x, 2) for x in os.getloadavg()],
           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
                      f"CPU capability {torch.backends.cpu.get_cpu_capability()}",
           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "recipes": rows}
    args.output.write_text(json.dumps(out, indent=2) + "\n")
    for name, row in rows.items():
        print(f"{name:40s} {row['median_step_s']:.3f} s/step  x{row['ratio_to_decay']}  {row['ratio_range']}")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
