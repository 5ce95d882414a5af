"""Does the data path keep up? An offline training step reading its batch from the feature store
through the trainer's DataLoader (train/data.py `TrainLoader`: workers decode and pad ahead)
against the same step on the same batches already decoded in memory (results:
bench/results/dataloader.json, docs/benchmarks.md). Goal (#14 §3): store / memory <= 1.05.

The store is the default codec (int4) of real SmolLM2-135M-Instruct hidden states over random
token rows of --seq tokens (the values do not change the cost of decoding or of the step); the
step is the trainer's own (the `Trainer` of the run: SmolLM2-sized draft, TTT 7, draft vocab
16384, batch 1, fp32, AdamW), the timed span being batch fetch + forward + backward + clip +
optimizer step. Both sides run in one process, in alternating blocks (memory, then the store
with each --workers setting), the first step of each block untimed; medians. The load average
is recorded before and after: the CPUs are shared. On a loaded machine the wall time of a step
varies far more than 5 %, so two figures beside the wall-time ratio resolve the data path's
own cost: `ratio_with_fetch_stall` (the memory step plus the median time the step waited for
its batch) and `ratio_process_cpu` (CPU seconds of the training process per step: 0 workers
decode in it, workers decode beside it).

    python bench/dataloader.py [--seq 1024] [--max-length 1024] [--samples 12] [--rounds 3] [--block 3]
                               [--workers 0 1] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"


def _tokenized(path: Path, n: int, seq: int, vocab: int) -> Path:
    import torch
    from datasets import Dataset

    if path.exists():
        return path
    g = torch.Generator().manual_seed(0)
    rows = [{"id": f"row-{i}", "input_ids": torch.randint(3, vocab, (seq,), generator=g).tolist(),
             "loss_mask": [0] * (seq // 10) + [1] * (seq - seq // 10)} for i in range(n)]
    Dataset.from_list(rows).save_to_disk(str(path))
    return path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seq", type=int, default=1024, help="tokens per stored sample")
    p.add_argument("--max-length", type=int, default=None,
                   help="train on the first N tokens of each sample (default --seq); the whole sample is still "
                        "read and decoded, so a shorter N overstates the data path's share")
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--rounds", type=int, default=3, help="alternations of memory / store blocks")
    p.add_argument("--block", type=int, default=3, help="timed steps per block (one more, untimed, first)")
    p.add_argument("--workers", type=int, nargs="+", default=[0, 1])
    p.add_argument("--prefetch-factor", type=int, default=2)
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of the training step")
    p.add_argument("--work-dir", default=str(REPO / "cache" / "bench" / "dataloader"))
    p.add_argument("--out", default=str(RESULTS / "dataloader.json"))
    args = p.parse_args()

    import torch

    from draftsmith import resources
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
    from draftsmith.train.data import TrainLoader
    from draftsmith.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(resources.smollm2_dir())
    data = _tokenized(work / f"tokens_{args.samples}x{args.seq}", args.samples, args.seq, 49152)
    store = work / f"store_{args.samples}x{args.seq}"
    if not (store / "manifest.json").exists():
        run_hidden_states(HiddenStatesConfig(target_model_path=model, data_path=str(data), output_dir=str(store),
                                             max_length=args.seq, batch_size=1, device="cpu", progress=False))
    trainer = Trainer(TrainConfig(mode="offline", target_model_path=model, train_hidden_states_path=str(store),
                                  output_dir=str(work / "run"), draft_vocab_size=16384, ttt_length=7,
                                  max_length=args.max_length or args.seq, batch_size=1, device="cpu", progress=False,
                                  autocast="off", seed=0))
    source, cpu = trainer.train_source, torch.device("cpu")
    codec = source.store.manifest["codec"]
    model_, opt = trainer.model, trainer.optimizer
    model_.train()

    def step(batch) -> None:
        r = model_(batch)
        r.loss.backward()
        torch.nn.utils.clip_grad_norm_(trainer.module.parameters(), 0.5)
        opt.step()
        opt.zero_grad(set_to_none=True)

    order = trainer.order
    ids = [u[0] for mb in order.micro_batches(0) for u in mb]
    memory = [source.batch([i], cpu) for i in ids]              # the same batches, decoded beforehand
    t0 = time.perf_counter()
    for i in ids:
        source.item(i)
    decode_s = (time.perf_counter() - t0) / len(ids)
    loaders = {w: TrainLoader(source, order, cpu, w, args.prefetch_factor) for w in args.workers}
    times: dict[str, list[float]] = {"memory": [], **{f"store_workers_{w}": [] for w in args.workers}}
    cursor = {"memory": 0}
    iters = {w: None for w in args.workers}

    def next_store(w: int):
        try:
            return next(iters[w])
        except (StopIteration, TypeError):
            iters[w] = loaders[w].epoch(0)
            return next(iters[w])

    fetch = {name: [] for name in times}         # seconds the step waited for its batch
    cpu = {name: [] for name in times}           # CPU seconds of the training process per step
    for _ in range(args.rounds):
        for name in times:
            for k in range(args.block + 1):
                t, c = time.perf_counter(), time.process_time()
                if name == "memory":
                    batch = memory[cursor["memory"] % len(memory)]
                    cursor["memory"] += 1
                else:
                    batch = next_store(int(name.rsplit("_", 1)[1]))
                got = time.perf_counter()
                step(batch)
                if k:
                    times[name].append(time.perf_counter() - t)
                    fetch[name].append(got - t)
                    cpu[name].append(time.process_time() - c)
            print(f"{name}: {[round(x, 3) for x in times[name]]} fetch {[round(x, 4) for x in fetch[name]]} "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    med_fetch = {k: statistics.median(v) for k, v in fetch.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    out = {
        "what": "offline training step (batch fetch + forward + backward + clip + AdamW), batch from the store "
                "through the DataLoader vs the same batches decoded in memory, same run, alternating blocks",
        "shape": {"seq_stored": args.seq, "seq_trained": args.max_length or args.seq, "hidden": 576, "draft_vocab": 16384, "vocab": 49152, "ttt": 7, "batch": 1,
                  "dtype": "fp32", "codec": codec},
        "threads": args.threads, "prefetch_factor": args.prefetch_factor, "rounds": args.rounds,
        "block": args.block, "decode_item_s": decode_s,
        "median_step_s": med, "ratio_store_over_memory": {k: med[k] / med["memory"] for k in med if k != "memory"},
        "median_fetch_s": med_fetch,
        "ratio_with_fetch_stall": {k: (med["memory"] + med_fetch[k] - med_fetch["memory"]) / med["memory"]
                                   for k in med if k != "memory"},
        "median_process_cpu_s": med_cpu,
        "ratio_process_cpu": {k: med_cpu[k] / med_cpu["memory"] for k in med if k != "memory"},
        "steps_s": times, "fetch_s": fetch, "process_cpu_s": cpu,
        "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "load_average_before": load_before,
                    "load_average_after": os.getloadavg()},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "command": "python bench/dataloader.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k not in ("work_dir", "out")),
    }
    Path(args.out).write_text(json.dumps(out, indent=2) + "\n")
    print(json.dumps({k: out[k] for k in ("median_step_s", "ratio_store_over_memory", "median_fetch_s",
                                          "ratio_with_fetch_stall", "ratio_process_cpu", "decode_item_s", "machine")},
                     indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
