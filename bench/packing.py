"""Packing benchmark (results: bench/results/packing.json, docs/benchmarks.md "Packing").

Useful (non-pad) tokens per second of training steps on packed rows (`train --packing`,
train/packing.py) against the same conversations in right-padded batches, in the same run.

Data: the packaged ShareGPT (first --conversations usable conversations) tokenized by
build-dataset with SmolLM2-135M-Instruct's chat template (ChatML) at --max-length: the real
length distribution and loss masks (user turns unsupervised). Features are random (seeded).

1. Token accounting over all of them (exact, no timing): the share of computed positions that
   are real tokens, for padded batches of 1/2/4/8 conversations in the trainer's order
   (train/data.py DataOrder) and for packed rows (`PackedUnits`, best-fit decreasing), both
   per row of --max-length capacity and per computed position.
2. Timing: the conversations of the trainer's first --sample-batches padded batches of
   --batch-size (epoch 0, a sample of the distribution as training meets it), trained
   (forward, backward, AdamW) once as those padded batches and once packed (best-fit
   decreasing into rows of --max-length, --packed-batch rows a step); the two alternate
   --repeats times, the median of each is reported. The draft is bench/train.py's
   SmolLM2-sized one (H 576, 9/3 heads, intermediate 1536, draft vocab 16384) on the CPU, fp32,
   --attention (default blockwise, the CPU default).

    python bench/packing.py [--conversations 2000] [--max-length 2048] [--batch-size 2]
                            [--sample-batches 2] [--ttt 7] [--repeats 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
sys.path.insert(0, str(REPO))

from train import SHAPE, _turns   # noqa: E402 (bench/train.py: the SmolLM2-sized draft shape, ShareGPT turns)


def sharegpt_rows(n: int, max_length: int) -> list[dict]:
    """input_ids / loss_mask of the first n usable ShareGPT conversations (build-dataset, SmolLM2 ChatML)."""
    from datasets import load_from_disk

    from draftsmith import resources
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.data.formats import iter_records

    work = REPO / "cache" / "bench" / "packing"
    work.mkdir(parents=True, exist_ok=True)
    conv = work / f"sharegpt_{n}.jsonl"
    if not conv.exists():
        rows = []
        for rec in iter_records(str(resources.sharegpt_json())):
            turns = _turns(rec.value)
            if len(turns) >= 2 and all(t["content"] for t in turns) and any(t["role"] == "assistant" for t in turns):
                rows.append({"id": str(rec.value.get("id")), "conversations": turns})
            if len(rows) >= n:
                break
        conv.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    built = build_dataset(BuildConfig(data_path=str(conv), target_model_path=str(resources.smollm2_dir()),
                                      chat_template="hf", max_length=max_length))
    return [{"input_ids": r["input_ids"], "loss_mask": r["loss_mask"]} for r in load_from_disk(str(built.path))]


def accounting(lengths: list[int], capacity: int, seed: int) -> dict:
    from draftsmith.train.data import DataOrder
    from draftsmith.train.packing import PackedUnits

    useful = sum(lengths)
    out = {"conversations": len(lengths), "tokens": useful, "mean_length": useful / len(lengths),
           "median_length": statistics.median(lengths), "at_max_length": sum(n >= capacity for n in lengths),
           "padded": {}}
    for b in (1, 2, 4, 8):
        batches = [[u[0] for u in mb] for mb in DataOrder(len(lengths), seed, b).micro_batches(0)]
        computed = sum(len(mb) * max(lengths[i] for i in mb) for mb in batches)
        used = sum(lengths[i] for mb in batches for i in mb)
        out["padded"][str(b)] = {"batches": len(batches), "real_share_of_computed": used / computed}
    rows = PackedUnits(lengths, capacity, seed)(list(range(len(lengths))), 0)
    loads = [sum(lengths[i] for i in r) for r in rows]
    out["packed"] = {"rows": len(rows), "lower_bound_rows": -(-useful // capacity),
                     "real_share_of_capacity": useful / (len(rows) * capacity),
                     "conversations_per_row": len(lengths) / len(rows), "min_row_tokens": min(loads)}
    return out


def _draft(args):
    import torch
    from transformers import LlamaConfig

    from draftsmith.draft import Eagle3Config, Eagle3Draft

    s = SHAPE
    target = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=30,
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
                         vocab_size=s["vocab"], rope_theta=s["rope_theta"], rms_norm_eps=s["eps"],
                         max_position_embeddings=8192)
    torch.manual_seed(0)
    draft = Eagle3Draft(Eagle3Config.from_target_config(target, draft_vocab_size=s["draft_vocab"]))
    g = torch.Generator().manual_seed(1)
    draft.load_embeddings(torch.randn(s["vocab"], s["hidden"], generator=g) * 0.02)
    head = torch.randn(s["draft_vocab"], s["hidden"], generator=g) * 0.05      # d2t = 0: the first Vd ids
    return draft, head


def _items(rows: list[dict], indices: list[int]):
    import torch

    h = SHAPE["hidden"]
    out = {}
    for i in indices:
        g = torch.Generator().manual_seed(1000 + i)
        ids = torch.tensor(rows[i]["input_ids"], dtype=torch.long)
        n = ids.shape[0]
        out[i] = {"input_ids": ids, "loss_mask": torch.tensor(rows[i]["loss_mask"], dtype=torch.long),
                  "aux_hidden_states": torch.randn(n, 3 * h, generator=g),
                  "hidden_state": torch.randn(n, h, generator=g)}
    return out


def _train(draft, head, batches, args) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process) to train on `batches` (forward, backward,
    AdamW step each). On a shared machine the CPU seconds are the steadier measure: other jobs
    stretch the wall time, not the work done."""
    import torch

    from draftsmith.train.ttt import ttt_forward

    opt = torch.optim.AdamW(draft.parameters(), lr=1e-4)
    t0, c0 = time.perf_counter(), time.process_time()
    for batch in batches:
        r = ttt_forward(draft, batch, length=args.ttt, target_head=head, attention=args.attention)
        r.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    return time.perf_counter() - t0, time.process_time() - c0


def timing(rows: list[dict], lengths: list[int], args) -> dict:
    import torch

    from draftsmith.train.data import DataOrder
    from draftsmith.train.packing import plan_rows, pack_items
    from draftsmith.train.sources import pad_batch

    batches = [[u[0] for u in mb] for mb in DataOrder(len(lengths), args.seed, args.batch_size).micro_batches(0)]
    batches = batches[: args.sample_batches]
    sample = [i for mb in batches for i in mb]
    items = _items(rows, sample)
    padded = [pad_batch([items[i] for i in mb]) for mb in batches]
    packed_rows = plan_rows(lengths, args.max_length, sample)
    packed = []
    for a in range(0, len(packed_rows), args.packed_batch):
        group = packed_rows[a:a + args.packed_batch]
        packed.append(pack_items([items[i] for r in group for i in r], [len(r) for r in group]))
    useful = sum(lengths[i] for i in sample)
    assert useful == sum(int(b["attention_mask"].sum()) for b in padded) == sum(int(b["attention_mask"].sum())
                                                                                for b in packed)
    computed = {"padded": sum(b["input_ids"].numel() for b in padded),
                "packed": sum(b["input_ids"].numel() for b in packed)}
    supervised = {name: sum(int((b["loss_mask"] * b["attention_mask"]).sum()) for b in bs)
                  for name, bs in (("padded", padded), ("packed", packed))}
    draft, head = _draft(args)
    state = {k: v.clone() for k, v in draft.state_dict().items()}
    times: dict[str, list[float]] = {"padded": [], "packed": []}
    cpu: dict[str, list[float]] = {"padded": [], "packed": []}
    _train(draft, head, [{k: v[:, :256] for k, v in packed[0].items()}], args)   # warm-up (allocator, rope)
    for rep in range(args.repeats):
        for name in (("padded", "packed") if rep % 2 == 0 else ("packed", "padded")):
            draft.load_state_dict(state)
            wall, cpu_s = _train(draft, head, padded if name == "padded" else packed, args)
            times[name].append(wall)
            cpu[name].append(cpu_s)
            print(f"  repeat {rep}: {name} {wall:.1f} s wall, {cpu_s:.1f} s CPU", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {"conversations": len(sample), "lengths_padded": [[lengths[i] for i in mb] for mb in batches],
            "lengths_packed": [[lengths[i] for i in r] for r in packed_rows], "useful_tokens": useful, "computed_positions": computed,
            "supervised_tokens": supervised, "steps": {"padded": len(padded), "packed": len(packed)},
            "seconds": times, "median_seconds": med,
            "useful_tokens_per_s": {k: useful / v for k, v in med.items()},
            "speedup_packed_over_padded": med["padded"] / med["packed"],
            "speedup_per_repeat": [p / q for p, q in zip(times["padded"], times["packed"])],
            "cpu_seconds": cpu, "median_cpu_seconds": med_cpu,
            "useful_tokens_per_cpu_s": {k: useful / v for k, v in med_cpu.items()},
            "cpu_speedup_packed_over_padded": med_cpu["padded"] / med_cpu["packed"],
            "cpu_speedup_per_repeat": [p / q for p, q in zip(cpu["padded"], cpu["packed"])]}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--conversations", type=int, default=2000)
    p.add_argument("--max-length", type=int, default=2048)
    p.add_argument("--sample-batches", type=int, default=2, help="padded batches whose conversations are timed")
    p.add_argument("--packed-batch", type=int, default=1, help="packed rows per step")
    p.add_argument("--batch-size", type=int, default=2, help="conversations per padded batch")
    p.add_argument("--ttt", type=int, default=7)
    p.add_argument("--attention", default="blockwise", choices=["blockwise", "sdpa", "flex"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", default=str(RESULTS / "packing.json"))
    args = p.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    start = time.time()
    load_before = open("/proc/loadavg").read().split()[:3]
    rows = sharegpt_rows(args.conversations, args.max_length)
    lengths = [len(r["input_ids"]) for r in rows]
    result = {"what": "useful (non-pad) tokens per second: packed rows vs padded batches of the same ShareGPT "
                      "conversations, one training step each (forward, backward, AdamW), CPU fp32",
              "command": f"{'nice -n ' + str(os.nice(0)) + ' ' if os.nice(0) else ''}python " + " ".join(sys.argv), "shape": SHAPE, "max_length": args.max_length,
              "ttt": args.ttt, "attention": args.attention, "threads": args.threads,
              "padded_batch_size": args.batch_size, "packed_rows_per_step": args.packed_batch,
              "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
              "accounting": accounting(lengths, args.max_length, args.seed)}
    print(json.dumps(result["accounting"], indent=1), flush=True)
    result["timing"] = timing(rows, lengths, args)
    result["loadavg_before"] = load_before
    result["loadavg_after"] = open("/proc/loadavg").read().split()[:3]
    result["wall_s"] = time.time() - start
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({k: result["timing"][k] for k in ("useful_tokens", "median_seconds", "useful_tokens_per_s",
                                                       "speedup_packed_over_padded", "median_cpu_seconds",
                                                       "cpu_speedup_packed_over_padded")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
