"""Benchmark the hidden-states stage: bytes per token, and overhead over bare target forwards.

    .venv/bin/python bench/hidden_states.py [--num-samples 500] [--max-length 1024] [--repeats 1]

1. Bytes per token of every codec x target signal, computed at H = 576 (SmolLM2) and
   H = 4096, against SpecForge's per-sample format (8*H + 16 bytes per token), plus the
   bytes per token the real store of part 2 measured.
2. Overhead: the wall time of the stage's generation loop (forward, capture, encode,
   checksum, write) over the wall time of bare forwards of the base model on exactly the
   same batches (same plan, same padding), the bare pass run before and after the stage
   and averaged so slow drifts of machine load hit both alike; median over repeats.
   SmolLM2-135M-Instruct on packaged ShareGPT conversations (prepare-data ->
   build-dataset, ChatML). Model loading and batch assembly are excluded from the bare
   pass; the stage's loop includes reading its rows from the dataset.

Writes bench/results/hidden_states.json. `--tiny` swaps in a random 2-layer model and 12
conversations: a dry run of the whole script in seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from draftsmith import resources
from draftsmith.dist import pick_device
from draftsmith.features.codecs import CODECS, DEFAULT_CODEC
from draftsmith.features.generate import HiddenStatesConfig, load_tokenized, run_hidden_states
from draftsmith.features.plan import bytes_per_token, make_plan, plan_batches, row_lengths
from draftsmith.fsutil import write_json_atomic

RESULTS = Path(__file__).resolve().parent / "results" / "hidden_states.json"


def size_table(supervised_fraction: float) -> list[dict]:
    rows = []
    for hidden in (576, 4096):
        specforge = 8 * hidden + 16
        for codec in CODECS:
            for signal, topk in (("hidden", None), ("topk:32", 32)):
                bpt = bytes_per_token(codec, hidden, 3, topk, supervised_fraction, logit_bytes=2)
                rows.append({"H": hidden, "codec": codec, "target_signal": signal, "bytes_per_token": round(bpt, 1),
                             "specforge_bytes_per_token": specforge, "ratio": round(bpt / specforge, 3)})
    return rows


def tokenized_sharegpt(num_samples: int, max_length: int, model_dir: Path, work: Path) -> Path:
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.data.prepare import PrepareConfig, prepare_data

    prepare_data(PrepareConfig(dataset="sharegpt", data_path=[resources.sharegpt_json()], output_dir=work / "conv",
                               num_samples=num_samples, seed=0, overwrite=True, progress=False))
    jsonl = work / "conv" / "sharegpt" / "sharegpt_train.jsonl"
    return build_dataset(BuildConfig(data_path=str(jsonl), target_model_path=str(model_dir), chat_template="hf",
                                     max_length=max_length, output_dir=str(work / "tokenized"), overwrite=True)).path


def tiny_model(work: Path) -> Path:
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    out = work / "tiny"
    LlamaForCausalLM(LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=2)).save_pretrained(out)
    AutoTokenizer.from_pretrained(resources.smollm2_dir()).save_pretrained(out)
    return out


def bare_forwards(model_dir: Path, data_dir: Path, cfg: HiddenStatesConfig) -> tuple[float, int, float]:
    """Wall seconds, tokens and process CPU seconds of base-model forwards over the stage's own
    batches (no capture, encode or write)."""
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM

    from draftsmith.target.dtype import parse_dtype

    device = pick_device(cfg.device)
    ds = load_from_disk(str(data_dir))
    lengths = row_lengths(ds, data_dir)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=parse_dtype(cfg.dtype),
                                                 device_map={"": str(device)}).eval()
    plan = make_plan(lengths, cfg.num_samples, cfg.max_length, shard_tokens=1 << 62)
    batches = []
    for rows, width in plan_batches(plan[0], lengths, cfg.max_length, cfg.batch_size, cfg.pad_multiple):
        ids = torch.zeros(len(rows), width, dtype=torch.long)
        mask = torch.zeros(len(rows), width, dtype=torch.long)
        for b, seq in enumerate(ds[rows]["input_ids"]):
            seq = seq[:cfg.max_length]
            ids[b, :len(seq)], mask[b, :len(seq)] = torch.tensor(seq), 1
        batches.append((ids.to(device), mask.to(device)))
    with torch.no_grad():
        _sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        for ids, mask in batches:
            model.model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                        use_cache=False)
        _sync(device)
        seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    del model
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return seconds, sum(int(mask.sum()) for _, mask in batches), cpu


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-samples", type=int, default=500)
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--dtype", default="float32", help="float32 on CPU (no fast bf16 matmul on most CPUs)")
    parser.add_argument("--codec", default=DEFAULT_CODEC)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--tiny", action="store_true", help="random tiny model, 12 conversations: a dry run")
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.tiny:
        args.num_samples = 12

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench_hidden_states_") as tmp:
        work = Path(tmp)
        model_dir = tiny_model(work) if args.tiny else resources.smollm2_dir()
        data_dir = tokenized_sharegpt(args.num_samples, args.max_length, model_dir, work)
        runs = []
        for repeat in range(args.repeats):
            cfg = HiddenStatesConfig(target_model_path=str(model_dir), data_path=str(data_dir),
                                     output_dir=str(work / f"store{repeat}"), max_length=args.max_length,
                                     batch_size=args.batch_size, dtype=args.dtype, codec=args.codec, progress=False)
            bare_before, tokens, cpu_before = bare_forwards(model_dir, data_dir, cfg)
            cpu_start = time.process_time()
            summary = run_hidden_states(cfg)
            stage_cpu = time.process_time() - cpu_start  # includes loading the model (a few CPU-seconds)
            bare_after, _, cpu_after = bare_forwards(model_dir, data_dir, cfg)
            bare_s = (bare_before + bare_after) / 2  # bracketing the stage cancels slow drifts in machine load
            bare_cpu = (cpu_before + cpu_after) / 2
            run = {"repeat": repeat, "bare_forward_s_before": round(bare_before, 2),
                   "bare_forward_s_after": round(bare_after, 2), "stage_loop_s": round(summary["loop_s"], 2),
                   "bare_cpu_s": round(bare_cpu, 2), "stage_cpu_s": round(stage_cpu, 2),
                   "cpu_overhead_ratio": round(stage_cpu / bare_cpu, 3),
                   "stage_wall_s_with_load": round(summary["wall_s"], 2), "tokens": tokens,
                   "overhead_ratio": round(summary["loop_s"] / bare_s, 3),
                   "stage_tokens_per_s": round(summary["tokens_per_s"], 1),
                   "bare_tokens_per_s": round(tokens / bare_s, 1),
                   "store_bytes_per_token": round(summary["bytes_per_token"], 1),
                   "store_ratio_vs_specforge": round(summary["bytes_per_token"] / summary["specforge_bytes_per_token"], 3)}
            print(json.dumps(run), file=sys.stderr)
            runs.append(run)
        ds_tokens = summary["tokens"]
        _, tok_dir = load_tokenized(HiddenStatesConfig(target_model_path="", data_path=str(data_dir)))
        from datasets import load_from_disk

        masks = load_from_disk(str(tok_dir))["loss_mask"]
        next_supervised = sum(sum(m[1:args.max_length]) for m in masks)
        supervised_fraction = next_supervised / max(ds_tokens, 1)
        samples = summary["samples"]

    report = {
        "benchmark": "hidden-states: bytes/token vs SpecForge (8*H+16), overhead over bare target forwards",
        "command": "python bench/hidden_states.py " + " ".join(
            [f"--num-samples {args.num_samples}", f"--max-length {args.max_length}", f"--batch-size {args.batch_size}",
             f"--dtype {args.dtype}", f"--codec {args.codec}", f"--repeats {args.repeats}"]
            + (["--tiny"] if args.tiny else [])),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared with other jobs), torch {torch.__version__}, "
                   f"{torch.get_num_threads()} threads",
        "model": "random tiny Llama" if args.tiny else "SmolLM2-135M-Instruct (H=576, 30 layers)",
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "samples": samples, "tokens": ds_tokens,
        "topk_supervised_fraction": round(supervised_fraction, 3),
        "sizes": size_table(supervised_fraction),
        "overhead_ratio_median": statistics.median(r["overhead_ratio"] for r in runs),
        "runs": runs,
    }
    write_json_atomic(args.output, report)
    print(json.dumps({k: report[k] for k in ("samples", "tokens", "overhead_ratio_median", "runs")}, indent=2))


if __name__ == "__main__":
    main()
