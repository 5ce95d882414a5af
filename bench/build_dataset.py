"""Benchmark build-dataset: conversations/s and tokens/s on packaged ShareGPT with the SmolLM2 tokenizer.

Compares, in the same run and on the same rows:
  - ours (`build_dataset`, the whole stage: read, render, tokenize with offsets, mask, write),
    with the `qwen` registry template and with the tokenizer's own jinja (`hf`), --num-proc 1 and 2;
  - the tokenizer alone on the same rendered texts (the floor: no rendering, no mask, no writing);
  - SpecForge 0.2.0's `specforge.data.preprocessing.build_eagle3_dataset` (chat template `qwen`),
    run in a subprocess with the python of a scratch virtualenv (--specforge-python).

    python bench/build_dataset.py [--rows 5000] [--repeats 3] [--specforge-python /tmp/specforge-venv/bin/python]

Writes bench/results/build_dataset.json: wall and CPU seconds (medians over repeats, ours and
the tokenizer alone interleaved in each repeat), and the ratios per repeat. The machine is
shared, so compare the ratios measured in the same run.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SPECFORGE_HARNESS = r"""
import json, sys, time
from datasets import load_dataset
from transformers import AutoTokenizer
from specforge.data.preprocessing import build_eagle3_dataset

data, tokenizer_dir, max_length, num_proc = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
start = time.perf_counter()
dataset = load_dataset("json", data_files=data, split="train", keep_in_memory=True)
out = build_eagle3_dataset(dataset, tokenizer, chat_template="qwen", max_length=max_length, num_proc=num_proc)
seconds = time.perf_counter() - start
tokens = sum(int(x.numel()) for x in out["input_ids"])
print(json.dumps({"seconds": seconds, "rows": len(out), "tokens": tokens}))
"""


def sharegpt_rows(n: int) -> list[dict]:
    from draftsmith import resources
    from draftsmith.data.conversation import normalize_row
    from draftsmith.data.formats import iter_records

    rows = []
    for rec in iter_records(resources.sharegpt_json()):
        norm = normalize_row(rec.value) if rec.error is None else None
        if norm is not None and norm.row is not None:
            rows.append(norm.row)
            if len(rows) == n:
                break
    return rows


def measure(fn) -> tuple[float, float, object]:
    """(wall seconds, CPU seconds of this process and its finished children, result)."""
    def cpu() -> float:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime

    wall0, cpu0 = time.perf_counter(), cpu()
    result = fn()
    return time.perf_counter() - wall0, cpu() - cpu0, result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--specforge-repeats", type=int, default=1, help="SpecForge runs are slow: 1 by default")
    parser.add_argument("--specforge-python", default="/tmp/specforge-venv/bin/python")
    parser.add_argument("--output", default=str(ROOT / "bench" / "results" / "build_dataset.json"))
    args = parser.parse_args()

    from draftsmith import resources
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.data.loss_mask import backend_tokenizer
    from draftsmith.data.templates import get_template
    from draftsmith.fsutil import write_json_atomic
    from transformers import AutoTokenizer

    tokenizer_dir = str(resources.smollm2_dir())
    rows = sharegpt_rows(args.rows)
    work = Path(tempfile.mkdtemp(prefix="bench-build-"))
    data = work / "sharegpt.jsonl"
    with open(data, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    results: dict = {"rows": len(rows), "max_length": args.max_length, "repeats": args.repeats,
                     "specforge_repeats": args.specforge_repeats,
                     "machine": f"{os.cpu_count()}-core CPU shared with other jobs ({platform.processor() or platform.machine()})",
                     "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "runs": {}}

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    texts = [get_template("qwen").render(r["conversations"]).text for r in rows]
    backend = backend_tokenizer(tokenizer)
    configs = list(itertools.product(("qwen", "hf"), (1, 2)))
    samples: dict[str, list[tuple[float, float]]] = {}
    reports: dict[str, dict] = {}
    for _ in range(args.repeats):  # interleaved, so that each repeat sees the same machine load
        wall, cpu, encodings = measure(lambda: backend.encode_batch(texts, add_special_tokens=False))
        samples.setdefault("tokenizer_alone_encode_batch", []).append((wall, cpu))
        wall, cpu, _ = measure(lambda: tokenizer(texts, add_special_tokens=False))
        samples.setdefault("tokenizer_alone_hf_call", []).append((wall, cpu))
        for template, num_proc in configs:
            cfg = BuildConfig(data_path=str(data), target_model_path=tokenizer_dir, chat_template=template,
                              max_length=args.max_length, num_proc=num_proc,
                              output_dir=str(work / f"out-{template}-{num_proc}"), overwrite=True)
            wall, cpu, result = measure(lambda: build_dataset(cfg))
            name = f"ours_{template}_np{num_proc}"
            samples.setdefault(name, []).append((wall, cpu))
            reports[name] = result.report
            print(f"{name}: {wall:.2f}s wall, {cpu:.2f}s cpu", flush=True)
    full_tokens = sum(len(e.ids) for e in encodings)
    for name, values in samples.items():
        wall = statistics.median(w for w, _ in values)
        run = {"seconds": wall, "cpu_seconds": statistics.median(c for _, c in values),
               "seconds_all": [round(w, 3) for w, _ in values], "conversations_per_s": len(rows) / wall}
        if name in reports:
            run.update(rows_out=reports[name]["rows_out"], tokens=reports[name]["tokens"],
                       tokens_per_s=reports[name]["tokens"] / wall)
        else:
            run.update(tokens=full_tokens, tokens_per_s=full_tokens / wall)
        results["runs"][name] = run
    alone = samples["tokenizer_alone_encode_batch"]
    results["ratios_per_repeat"] = {
        f"{name}_over_tokenizer_alone": [round(o[0] / a[0], 3) for o, a in zip(samples[name], alone)]
        for name in (f"ours_{t}_np{n}" for t, n in configs)}

    if args.specforge_python and Path(args.specforge_python).exists():
        for num_proc in (1, 2):
            times, last = [], None
            for _ in range(args.specforge_repeats):
                proc = subprocess.run([args.specforge_python, "-c", SPECFORGE_HARNESS, str(data), tokenizer_dir,
                                       str(args.max_length), str(num_proc)],
                                      capture_output=True, text=True, cwd=work)
                if proc.returncode != 0:
                    raise SystemExit(f"SpecForge harness failed:\n{proc.stderr[-3000:]}")
                last = json.loads(proc.stdout.strip().splitlines()[-1])
                times.append(last["seconds"])
            seconds = statistics.median(times)
            results["runs"][f"specforge_qwen_np{num_proc}"] = {
                "seconds": seconds, "rows_out": last["rows"], "tokens": last["tokens"],
                "conversations_per_s": len(rows) / seconds, "tokens_per_s": last["tokens"] / seconds}
            print(f"specforge num_proc={num_proc}: {seconds:.2f}s", flush=True)

    runs = results["runs"]
    ratios = {name: statistics.median(values) for name, values in results["ratios_per_repeat"].items()}
    for n in (1, 2):
        if f"specforge_qwen_np{n}" in runs:
            ratios[f"speedup_vs_specforge_qwen_np{n}"] = runs[f"specforge_qwen_np{n}"]["seconds"] / runs[f"ours_qwen_np{n}"]["seconds"]
            ratios[f"speedup_vs_specforge_hf_np{n}"] = runs[f"specforge_qwen_np{n}"]["seconds"] / runs[f"ours_hf_np{n}"]["seconds"]
    results["ratios"] = ratios
    write_json_atomic(args.output, results)
    print(json.dumps(ratios, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
