"""Benchmark stage 5: τ and wall-clock speedup of real speculative decoding on SmolLM2-135M-Instruct.

    python bench/eval.py --checkpoint TRAINED_DIR            # exports (validates) it first
    python bench/eval.py --draft-model-path EXPORTED_DIR
        [--mtbench 20 --gsm8k 50 --humaneval 50 --draft-depth 5 7 --max-new-tokens 128 --topk 1]

Each turn is decoded plainly once and speculatively for every K (interleaved, same process),
so the speedup is a ratio measured under the same machine load. Writes
bench/results/eval.json (+ .md, .png).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

from draftsmith import resources
from draftsmith.eval.cli import EvalConfig, config_record, evaluate, load_models
from draftsmith.eval.report import markdown_table, write_report
from draftsmith.export import ExportConfig, export_checkpoint


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", type=Path, help="trainer checkpoint folder, exported before the run")
    src.add_argument("--draft-model-path", type=Path, help="an already exported draft folder")
    p.add_argument("--target-model-path", type=Path, default=None, help="default: the packaged SmolLM2")
    p.add_argument("--mtbench", type=int, default=20, help="first N MT-bench questions (both turns); 0 skips")
    p.add_argument("--gsm8k", type=int, default=50)
    p.add_argument("--humaneval", type=int, default=50)
    p.add_argument("--draft-depth", "--num-steps", dest="draft_depth", type=int, nargs="+", default=[5, 7],
                   help="draft tokens per verify step, K (--num-steps: the old spelling)")
    p.add_argument("--topk", type=int, default=1)
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--metrics", type=Path, default=None, help="the draft's training metrics.jsonl, plotted too")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--output", type=Path, default=Path(__file__).parent / "results" / "eval.json")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    target = args.target_model_path or resources.smollm2_dir()
    draft_dir = args.draft_model_path
    if args.checkpoint is not None:
        draft_dir = Path(tempfile.mkdtemp(prefix="draftsmith-bench-draft-"))
        export_checkpoint(ExportConfig(checkpoint=args.checkpoint, output_dir=draft_dir, target_model_path=target))
    benchmarks = [(name, n) for name, n in (("mtbench", args.mtbench), ("gsm8k", args.gsm8k),
                                             ("humaneval", args.humaneval)) if n > 0]
    cfg = EvalConfig(target_model_path=target, draft_model_path=draft_dir, benchmarks=[],
                     draft_depth=args.draft_depth, topk=args.topk, max_new_tokens=args.max_new_tokens)
    tokenizer, model, draft = load_models(cfg)
    start = time.perf_counter()
    summaries = []
    for name, limit in benchmarks:
        cfg.benchmarks, cfg.num_questions = [name], limit
        summaries += evaluate(cfg, tokenizer, model, draft, log=lambda m: print(m, flush=True))["benchmarks"]
    record = config_record(cfg)
    record.pop("num_questions")
    record.update(benchmarks=[n for n, _ in benchmarks], limits=dict(benchmarks),
                  checkpoint=str(args.checkpoint) if args.checkpoint else None,
                  metrics=str(args.metrics) if args.metrics else None,
                  command="python bench/eval.py " + " ".join(sys.argv[1:] if argv is None else argv),
                  machine="2-core CPU shared with other jobs" if platform.system() == "Linux" else platform.platform(),
                  wall_seconds=time.perf_counter() - start)
    report = {"config": record, "benchmarks": summaries, "lossless": all(s["lossless"] for s in summaries)}
    paths = write_report(report, args.output, args.metrics)
    print(markdown_table(summaries), end="")
    print("wrote " + ", ".join(str(x) for x in paths.values()))
    return 0 if report["lossless"] else 1


if __name__ == "__main__":
    sys.exit(main())
