"""Benchmark the CPU dtype policy (draftsmith.target.dtype) on this machine.

    .venv/bin/python bench/cpu_dtype.py            # ~15 min on a quiet 2-core AVX2 CPU: docs/benchmarks.md
    .venv/bin/python bench/cpu_dtype.py --quick    # same three parts, smaller: checks the script

1. Bare forward: SmolLM2-135M-Instruct's base model (what the hidden-states stage runs),
   batch 4 x 512 real ShareGPT tokens, float32 vs bfloat16, interleaved (fp32, bf16, fp32, ...)
   so a change of machine load hits both; median tokens/s, ratio fp32/bf16.
2. The hidden-states stage with its default `--dtype auto` against bare forwards of the same
   batches in the dtype auto chose (bench/hidden_states.py's method: bare, stage, bare;
   the stage's loop time over the mean of the two bare passes). The issue's goal: <= 1.15.
3. Store equality across target dtypes: the same conversations stored from an fp32 and a bf16
   target, with the default codec and with the bf16 codec; relative RMS of
   (int4 store of the bf16 target - int4 store of the fp32 target) next to the int4 codec's
   own error (int4 store of the fp32 target - its near-exact bf16-codec store).

Every figure carries the 1-minute load average read before and after it (the machine may be
shared). Writes bench/results/cpu_dtype.json (--quick: cpu_dtype_quick.json).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from hidden_states import bare_forwards, tokenized_sharegpt  # noqa: E402  (bench/hidden_states.py)

from draftsmith import resources  # noqa: E402
from draftsmith.features import FeatureStore  # noqa: E402
from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states  # noqa: E402
from draftsmith.fsutil import write_json_atomic  # noqa: E402
from draftsmith.target import dtype as policy  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def load1() -> float:
    return round(os.getloadavg()[0], 2)


def forward_batch(data_dir: Path, batch: int, length: int) -> torch.Tensor:
    """`batch` rows of `length` real tokens: the tokenized conversations concatenated and cut."""
    from datasets import load_from_disk

    flat = [t for row in load_from_disk(str(data_dir))["input_ids"] for t in row]
    if len(flat) < batch * length:
        raise SystemExit(f"only {len(flat)} tokens in the sample; need {batch * length}")
    return torch.tensor(flat[:batch * length]).view(batch, length)


def bare_forward_dtypes(model_dir: Path, ids: torch.Tensor, repeats: int) -> dict:
    from transformers import AutoModelForCausalLM

    models = {name: AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=policy.parse_dtype(name)).eval()
              for name in ("float32", "bfloat16")}
    runs: dict[str, list[dict]] = {name: [] for name in models}
    with torch.no_grad():
        for name, model in models.items():  # warm-up: first-call allocations and kernel selection
            model.model(input_ids=ids, use_cache=False)
        for _ in range(repeats):
            for name, model in models.items():
                before = load1()
                start = time.perf_counter()
                model.model(input_ids=ids, use_cache=False)
                seconds = time.perf_counter() - start
                runs[name].append({"seconds": round(seconds, 3), "tokens_per_s": round(ids.numel() / seconds, 1),
                                   "load1_before": before, "load1_after": load1()})
    median = {name: statistics.median(r["tokens_per_s"] for r in rs) for name, rs in runs.items()}
    return {"batch": list(ids.shape), "repeats": repeats, "median_tokens_per_s": median,
            "fp32_over_bf16": round(median["float32"] / median["bfloat16"], 2), "runs": runs}


def stage_overhead(model_dir: Path, data_dir: Path, work: Path, max_length: int, repeats: int) -> dict:
    chosen = policy.choose_dtype("auto", "cpu")
    runs = []
    for repeat in range(repeats):
        cfg = HiddenStatesConfig(target_model_path=str(model_dir), data_path=str(data_dir),
                                 output_dir=str(work / f"overhead{repeat}"), max_length=max_length,
                                 batch_size=4, dtype="auto", device="cpu", progress=False)
        bare_cfg = HiddenStatesConfig(**{**cfg.__dict__, "dtype": chosen.name})
        load_before = load1()
        bare_before, tokens, _ = bare_forwards(model_dir, data_dir, bare_cfg)
        summary = run_hidden_states(cfg)
        bare_after, _, _ = bare_forwards(model_dir, data_dir, bare_cfg)
        bare = (bare_before + bare_after) / 2
        runs.append({"tokens": tokens, "bare_s_before": round(bare_before, 2), "bare_s_after": round(bare_after, 2),
                     "stage_loop_s": round(summary["loop_s"], 2),
                     "stage_tokens_per_s": round(summary["tokens_per_s"], 1),
                     "bare_tokens_per_s": round(tokens / bare, 1), "overhead_ratio": round(summary["loop_s"] / bare, 3),
                     "store_dtype": FeatureStore.open(cfg.output_dir).manifest["settings"]["dtype"],
                     "load1_before": load_before, "load1_after": load1()})
    return {"auto_dtype": chosen.name, "auto_reason": chosen.reason, "samples": summary["samples"],
            "max_length": max_length, "overhead_ratio_median": statistics.median(r["overhead_ratio"] for r in runs),
            "runs": runs}


def _rel_rms(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt())


def store_equality(model_dir: Path, data_dir: Path, work: Path, max_length: int) -> dict:
    stores = {}
    load_before = load1()
    for dtype in ("float32", "bfloat16"):
        for codec in ("int4", "bf16"):
            out = work / f"store-{dtype}-{codec}"
            run_hidden_states(HiddenStatesConfig(target_model_path=str(model_dir), data_path=str(data_dir),
                                                 output_dir=str(out), max_length=max_length, batch_size=4,
                                                 dtype=dtype, codec=codec, device="cpu", progress=False))
            stores[dtype, codec] = FeatureStore.open(out)

    def stacked(dtype: str, codec: str, key: str) -> torch.Tensor:
        s = stores[dtype, codec]
        return torch.cat([s[i][key].float() for i in range(len(s))])

    out: dict = {"samples": len(stores["float32", "int4"]), "default_codec": HiddenStatesConfig.codec}
    for key in ("aux_hidden_states", "hidden_state"):
        ref = stacked("float32", "bf16", key)  # fp32 target, bf16 codec: within 2^-9 relative of exact
        fp32_int4, bf16_int4 = stacked("float32", "int4", key), stacked("bfloat16", "int4", key)
        out[key] = {
            "int4_codec_error_rel_rms": round(_rel_rms(fp32_int4, ref), 5),
            "bf16_vs_fp32_target_exact_rel_rms": round(_rel_rms(stacked("bfloat16", "bf16", key), ref), 5),
            "bf16_vs_fp32_target_int4_store_rel_rms": round(_rel_rms(bf16_int4, fp32_int4), 5),
        }
    out["load1_before"], out["load1_after"] = load_before, load1()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="smaller sizes (a few minutes): checks the script and gives rough figures")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    size = dict(conversations=40, max_length=512, forward_repeats=3, stage_samples=8, stage_repeats=1,
                store_samples=3, store_max_length=128) if args.quick else \
        dict(conversations=200, max_length=512, forward_repeats=5, stage_samples=100, stage_repeats=2,
             store_samples=12, store_max_length=512)
    output = args.output or RESULTS / ("cpu_dtype_quick.json" if args.quick else "cpu_dtype.json")
    started = time.perf_counter()
    model_dir = resources.smollm2_dir()
    report: dict = {
        "benchmark": "CPU dtype policy: bare forward fp32 vs bf16; hidden-states (auto) vs bare forwards; "
                     "store equality across target dtypes",
        "command": "python bench/cpu_dtype.py" + (" --quick" if args.quick else ""),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": {"arch": platform.machine(), "cpus": os.cpu_count(), "torch": torch.__version__,
                    "torch_threads": torch.get_num_threads(),
                    "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": policy.cpu_native_bf16(), "processor": _cpu_model()},
        "model": "SmolLM2-135M-Instruct (H=576, 30 layers)", "sizes": size,
    }
    with tempfile.TemporaryDirectory(prefix="bench_cpu_dtype_") as tmp:
        work = Path(tmp)
        data_dir = tokenized_sharegpt(size["conversations"], size["max_length"], model_dir, work)
        ids = forward_batch(data_dir, 4, 512)
        report["bare_forward"] = bare_forward_dtypes(model_dir, ids, size["forward_repeats"])
        print(json.dumps({"bare_forward": report["bare_forward"]["median_tokens_per_s"]}), file=sys.stderr)
        stage_data = tokenized_sharegpt(size["stage_samples"], size["max_length"], model_dir, work / "stage")
        report["hidden_states_vs_bare"] = stage_overhead(model_dir, stage_data, work, size["max_length"],
                                                         size["stage_repeats"])
        store_data = tokenized_sharegpt(size["store_samples"], size["store_max_length"], model_dir, work / "store")
        report["store_equality"] = store_equality(model_dir, store_data, work, size["store_max_length"])
    report["wall_s"] = round(time.perf_counter() - started, 1)
    write_json_atomic(output, report)
    print(json.dumps({k: report[k] for k in ("bare_forward", "hidden_states_vs_bare", "store_equality")},
                     indent=1)[:6000])
    print(f"wrote {output}")


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


if __name__ == "__main__":
    main()
