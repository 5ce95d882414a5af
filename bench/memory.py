"""Memory of one training step: `draftsmith estimate-memory` validated, and set beside SpecForge.

table: the Llama-3.1-8B draft shape (H 4096, 32/8 heads, intermediate 14,336, vocab 128,256,
    draft vocab 32,000), TTT 7, bf16, batch 1, T = 2K … 32K: the predicted peak of draftsmith's
    step (flex attention, the CUDA default; with and without --activation-checkpointing) and of SpecForge 0.2.0's (its `OnlineEagle3Model`
    with its default `flex_attention` backend, its bf16 draft + `BF16Optimizer` fp32 masters,
    its Triton loss replaced by the PyTorch stand-in of bench/train.py that keeps the logits
    as the kernel does), both traced by the same tracer (`draftsmith.train.memory.symbolic` +
    `trace_steps`). SpecForge runs from its own virtualenv (`--specforge-python`, see
    bench/train.py) with TORCHDYNAMO_DISABLE=1 (its torch.compile decorators run eagerly).
    → bench/results/memory_8b.json, bench/results/memory_8b.png

validate: shapes that run on this CPU (the SmolLM2 draft: H 576, vocab 49,152, draft vocab
    16,384; fp32, no autocast, device cpu, 60 % of tokens supervised): the predicted peak
    beside the measured one. Measured = the bytes alive before the first step (parameters,
    frozen embeddings, features: exact) + the growth of the process's peak RSS over the two
    real steps (ru_maxrss − RSS before), each shape in a fresh process with glibc's mmap threshold
    fixed at 64 KiB (MALLOC_MMAP_THRESHOLD_), so freed tensors leave the RSS as they leave a
    CUDA caching allocator's live count.
    → bench/results/memory_validate.json

    python bench/memory.py table [--lengths 2048,4096,8192,16384,32768] [--specforge-python P]
    python bench/memory.py validate [--lengths 512,1024,2048]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"
GIB = 2 ** 30
CONFIGS = Path(tempfile.gettempdir()) / "draftsmith_bench_memory"   # the shapes' config.json, for the workers

LLAMA_8B = {"model_type": "llama", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
            "num_key_value_heads": 8, "head_dim": 128, "num_hidden_layers": 32, "vocab_size": 128256,
            "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
            "torch_dtype": "bfloat16"}
SMOLLM2 = {"model_type": "llama", "hidden_size": 576, "intermediate_size": 1536, "num_attention_heads": 9,
           "num_key_value_heads": 3, "head_dim": 64, "num_hidden_layers": 30, "vocab_size": 49152,
           "max_position_embeddings": 8192, "rms_norm_eps": 1e-5, "rope_theta": 100000.0}


def _worker(argv: list[str], python: str = sys.executable, env: dict | None = None) -> dict:
    out = subprocess.run([python, __file__, *argv], capture_output=True, text=True,
                         env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})})
    if out.returncode:
        raise RuntimeError(f"worker {argv} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ----- workers (a fresh interpreter each) ----------------------------------------------------------

def worker_ours(args) -> dict:
    sys.path.insert(0, str(REPO))
    from draftsmith.train.memory import MemoryConfig, estimate_memory

    path = CONFIGS / "llama8b_config.json"
    return estimate_memory(MemoryConfig(target_config=str(path), max_length=args.seq, draft_vocab_size=32000,
                                        attention=args.attention, autocast="bf16",
                                        activation_checkpointing=args.checkpointing))


def worker_specforge(args) -> dict:
    import torch
    from torch._subclasses.fake_tensor import unset_fake_temporarily
    from transformers import LlamaConfig

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "bench"))
    from train import _cpu_log_softmax_loss, _import_specforge

    from draftsmith.train.memory import MemoryConfig, integer_inputs, symbolic, trace_steps

    eagle3, DraftModel = _import_specforge()
    eagle3.LogSoftmaxLoss = _cpu_log_softmax_loss()
    from specforge.optimizer import BF16Optimizer

    s = LLAMA_8B
    config = LlamaConfig(hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"], num_hidden_layers=1,
                         num_attention_heads=s["num_attention_heads"], num_key_value_heads=s["num_key_value_heads"],
                         head_dim=s["head_dim"], vocab_size=s["vocab_size"], rope_theta=s["rope_theta"],
                         rope_scaling=s["rope_scaling"], rms_norm_eps=s["rms_norm_eps"],
                         max_position_embeddings=s["max_position_embeddings"], pad_token_id=0, hidden_act="silu")
    config.draft_vocab_size = 32000
    config.target_hidden_size = s["hidden_size"]
    inputs = integer_inputs(MemoryConfig(max_length=args.seq), s["vocab_size"])
    ids = inputs["input_ids"]
    with symbolic(cuda=True):
        torch.set_default_dtype(torch.bfloat16)           # SpecForge trains a bf16 draft
        draft = DraftModel(config, attention_backend=args.attention)
        torch.set_default_dtype(torch.float32)
        draft.embed_tokens.weight.requires_grad_(False)
        with unset_fake_temporarily():                    # real: SpecForge indexes rows by it
            t2d = torch.zeros(s["vocab_size"], dtype=torch.bool)
            t2d[:32000] = True
        draft.t2d = t2d
        model = eagle3.OnlineEagle3Model(draft, length=7, attention_backend=args.attention)
        optimizer = BF16Optimizer(draft, lr=1e-4, total_steps=100)
        h = s["hidden_size"]
        aux = torch.empty(1, args.seq, 3 * h, dtype=torch.bfloat16)
        hidden = torch.empty(1, args.seq, h, dtype=torch.bfloat16)
        head = torch.empty(s["vocab_size"], h, dtype=torch.bfloat16)

        def loss_fn(m):
            plosses = m(input_ids=ids, attention_mask=inputs["attention_mask"], target=None,
                        loss_mask=inputs["loss_mask"][..., None], hidden_states=aux,
                        target_hidden_for_compact=hidden, target_head_weight=head)[0]
            return sum(0.8 ** i * p for i, p in enumerate(plosses))

        peak = trace_steps(model, loss_fn, optimizer.step,
                           externals=(optimizer.optimizer, *optimizer.fp32_params, aux, hidden, head),
                           autocast=False)
    return {"peak_bytes": peak["Total"], "parts": peak}


def worker_measure(args) -> dict:
    """Two real steps at a CPU shape; this process only measures, so its peak RSS is the steps'."""
    import resource

    import torch

    sys.path.insert(0, str(REPO))
    from draftsmith.train.memory import MemoryConfig, adamw_step, build_step, integer_inputs

    torch.set_num_threads(1)
    cfg = MemoryConfig(max_length=args.seq, draft_vocab_size=16384, autocast="off", attention=args.attention,
                       device="cpu", dtype="float32", supervised=0.6)
    inputs = integer_inputs(cfg, SMOLLM2["vocab_size"])
    step, optimizer, head, batch = build_step(cfg, SMOLLM2, inputs, args.attention)
    g = torch.Generator().manual_seed(0)
    frozen = [head, step.draft.embed_weight, batch["aux_hidden_states"], batch["hidden_state"]]
    if step.full_head is not None:                      # the whole lm_head (served argmax)
        frozen.append(step.full_head)
    for t in frozen:                                    # written, so their pages count before the step
        t.copy_(torch.randn(t.shape, generator=g) * 0.02)
    tensors = {id(t): t for t in [*step.draft.parameters(), *step.draft.buffers(), *frozen, *inputs.values()]}
    alive = sum(t.numel() * t.element_size() for t in tensors.values())
    with open("/proc/self/statm") as f:
        rss_before = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    run = adamw_step(optimizer)
    for _ in range(2):
        step(batch).loss.backward()
        run()
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"alive_before_bytes": alive, "rss_growth_bytes": peak_rss - rss_before,
            "measured_peak_bytes": alive + peak_rss - rss_before}


def worker_predict(args) -> dict:
    sys.path.insert(0, str(REPO))
    from draftsmith.train.memory import MemoryConfig, estimate_memory

    path = CONFIGS / "smollm2_config.json"
    return estimate_memory(MemoryConfig(target_config=str(path), max_length=args.seq, draft_vocab_size=16384,
                                        autocast="off", attention=args.attention, device="cpu",
                                        dtype="float32", supervised=0.6))


# ----- drivers -------------------------------------------------------------------------------------

def _machine() -> dict:
    flags = ""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags"))
    except (OSError, StopIteration):
        pass
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "avx512_bf16": "avx512_bf16" in flags, "load_avg": os.getloadavg()}


def _prepare() -> None:
    """The results folder, and the shapes' config.json files the workers read."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    CONFIGS.mkdir(parents=True, exist_ok=True)
    (CONFIGS / "llama8b_config.json").write_text(json.dumps(LLAMA_8B))
    (CONFIGS / "smollm2_config.json").write_text(json.dumps(SMOLLM2))


def table(args) -> dict:
    _prepare()
    rows = []
    for seq in args.lengths:
        ours = _worker(["_ours", "--seq", str(seq), "--attention", "flex"])
        ckpt = _worker(["_ours", "--seq", str(seq), "--attention", "flex", "--checkpointing"])
        row = {"T": seq, "draftsmith_peak_gib": round(ours["peak_bytes"] / GIB, 2),
               "draftsmith_activation_gib": round(ours["activation_bytes"] / GIB, 2),
               "draftsmith_ckpt_peak_gib": round(ckpt["peak_bytes"] / GIB, 2),
               "draftsmith_seconds": ours["seconds"]}
        if args.specforge_python and Path(args.specforge_python).exists():
            sf = _worker(["_specforge", "--seq", str(seq), "--attention", "flex_attention"],
                         python=args.specforge_python, env={"TORCHDYNAMO_DISABLE": "1"})
            row["specforge_peak_gib"] = round(sf["peak_bytes"] / GIB, 2)
            row["ratio"] = round(ours["peak_bytes"] / sf["peak_bytes"], 3)
            row["ratio_ckpt"] = round(ckpt["peak_bytes"] / sf["peak_bytes"], 3)
        rows.append(row)
        print(json.dumps(row), file=sys.stderr)
    result = {"shape": "Llama-3.1-8B draft (H 4096, 32/8 heads, inter 14336, vocab 128256, draft vocab 32000), "
                       "TTT 7, bf16, batch 1, every token supervised",
              "rows": rows, "machine": _machine(),
              "command": "python bench/memory.py table --lengths " + ",".join(map(str, args.lengths))}
    (RESULTS / "memory_8b.json").write_text(json.dumps(result, indent=1))
    _plot(rows)
    return result


def _plot(rows) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    t = [r["T"] for r in rows]
    ax.plot(t, [r["draftsmith_peak_gib"] for r in rows], "o-", label="draftsmith (flex)")
    ax.plot(t, [r["draftsmith_ckpt_peak_gib"] for r in rows], "^-", label="draftsmith (flex, --activation-checkpointing)")
    if all("specforge_peak_gib" in r for r in rows):
        ax.plot(t, [r["specforge_peak_gib"] for r in rows], "s-", label="SpecForge 0.2.0 (flex_attention)")
    ax.axhline(80 * 1e9 / GIB, color="grey", ls="--", label="80 GB card")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length T")
    ax.set_ylabel("predicted peak (GiB)")
    ax.set_title("one training step, Llama-3.1-8B draft shape, TTT 7, bf16")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "memory_8b.png", dpi=100)


def validate(args) -> dict:
    _prepare()
    rows = []
    for attention in args.attention:
        for seq in args.lengths:
            pred = _worker(["_predict", "--seq", str(seq), "--attention", attention])
            # a fixed mmap threshold: glibc returns every freed tensor of >= 64 KiB to the OS, so the
            # peak RSS counts live tensors, not the heap its dynamic threshold would keep (up to 32 MiB
            # chunks stay in the heap by default, and the peak RSS then runs 10-25 % above the live peak)
            meas = _worker(["_measure", "--seq", str(seq), "--attention", attention],
                           env={"MALLOC_MMAP_THRESHOLD_": "65536"})
            row = {"T": seq, "attention": attention, "predicted_gib": round(pred["peak_bytes"] / GIB, 3),
                   "measured_gib": round(meas["measured_peak_bytes"] / GIB, 3),
                   "ratio": round(pred["peak_bytes"] / meas["measured_peak_bytes"], 3)}
            rows.append(row)
            print(json.dumps(row), file=sys.stderr)
    result = {"shape": "SmolLM2 draft (H 576, vocab 49152, draft vocab 16384), fp32, CPU, 60 % supervised",
              "rows": rows, "machine": _machine(),
              "command": "python bench/memory.py validate --lengths " + ",".join(map(str, args.lengths))}
    (RESULTS / "memory_validate.json").write_text(json.dumps(result, indent=1))
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    ints = lambda s: [int(x) for x in s.split(",")]  # noqa: E731
    t = sub.add_parser("table")
    t.add_argument("--lengths", type=ints, default=[2048, 4096, 8192, 16384, 32768])
    t.add_argument("--specforge-python", default="/tmp/specforge-venv/bin/python")
    v = sub.add_parser("validate")
    v.add_argument("--lengths", type=ints, default=[512, 1024, 2048])
    v.add_argument("--attention", type=lambda s: s.split(","), default=["blockwise", "sdpa"])
    for name in ("_ours", "_specforge", "_measure", "_predict"):
        w = sub.add_parser(name)
        w.add_argument("--seq", type=int, required=True)
        w.add_argument("--attention", required=True)
        w.add_argument("--checkpointing", action="store_true")
    args = p.parse_args(argv)
    workers = {"_ours": worker_ours, "_specforge": worker_specforge, "_measure": worker_measure,
               "_predict": worker_predict}
    if args.cmd in workers:
        print(json.dumps(workers[args.cmd](args)))
        return 0
    print(json.dumps((table if args.cmd == "table" else validate)(args), indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
