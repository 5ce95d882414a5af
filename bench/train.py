"""Training benchmarks (results: bench/results/train_*.json, docs/benchmarks.md §4).

step-cost: one EAGLE-3 training step (TTT 7, SmolLM2-sized draft: H 576, 9/3 heads, draft
    vocab 16384 of 49152, sequence 1024, batch 1, fp32, CPU) — draftsmith beside SpecForge
    0.2.0 in the same run. Each measurement is its own subprocess (peak RSS is per process),
    the two alternate, and medians are reported. SpecForge runs from its own virtualenv
    (`--specforge-python`, default /tmp/specforge-venv/bin/python, installed with
    `pip install --no-deps specforge==0.2.0` beside torch 2.13.0 / transformers 5.24.0); its
    Triton loss kernel is replaced by a PyTorch function with the same contract (saves the
    logits, writes the gradient into them in backward), and torch.compile is disabled for
    both sides (TORCHDYNAMO_DISABLE=1) so neither compiles on CPU.
    The loss mask is either all ones or the real mask of a tokenized ShareGPT conversation
    (SmolLM2 ChatML template; user turns unsupervised).

quality: real SmolLM2-135M-Instruct, offline from packaged ShareGPT: one bf16 feature store
    and one store per compact codec, the same training budget on each, held-out simulated τ.

large-step: a Llama-3-8B-sized draft (H 4096, draft vocab 32000) on random features at
    sequence 2048 and 8192 on a GPU (bench/gpu/train.sh); --dry-run runs it tiny on CPU.

    python bench/train.py step-cost [--repeats 3] [--mask both]
    python bench/train.py quality [--train-conversations 128 --eval-conversations 24 --max-length 512]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "bench" / "results"

SHAPE = dict(hidden=576, heads=9, kv_heads=3, head_dim=64, intermediate=1536, vocab=49152,
             draft_vocab=16384, rope_theta=100000.0, eps=1e-5)


# ----- step cost: workers (run in a fresh interpreter each) ---------------------------------------

def _inputs(seq: int, mask_file: str | None, seed: int = 0):
    import torch

    g = torch.Generator().manual_seed(seed)
    h, v = SHAPE["hidden"], SHAPE["vocab"]
    ids = torch.randint(0, v, (1, seq), generator=g)
    if mask_file:
        mask = torch.tensor(json.loads(Path(mask_file).read_text())[:seq], dtype=torch.long)[None]
    else:
        mask = torch.ones(1, seq, dtype=torch.long)
    aux = torch.randn(1, seq, 3 * h, generator=g)
    hidden = torch.randn(1, seq, h, generator=g)
    lm_head = torch.randn(v, h, generator=g) * 0.05
    embed = torch.randn(v, h, generator=g) * 0.02
    return ids, mask, aux, hidden, lm_head, embed


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB."""
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    with open("/proc/self/statm") as f:
        current = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20
    return current, peak


def worker_draftsmith(args) -> dict:
    import torch
    from transformers import LlamaConfig

    sys.path.insert(0, str(REPO))
    from draftsmith.draft import Eagle3Config, Eagle3Draft
    from draftsmith.train.ttt import ttt_forward

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    s = SHAPE
    target = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=30,
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
                         vocab_size=s["vocab"], rope_theta=s["rope_theta"], rms_norm_eps=s["eps"],
                         max_position_embeddings=8192)
    draft = Eagle3Draft(Eagle3Config.from_target_config(target, draft_vocab_size=s["draft_vocab"]))
    ids, mask, aux, hidden, lm_head, embed = _inputs(args.seq, args.mask_file)
    draft.load_embeddings(embed)
    head = lm_head[: s["draft_vocab"]].contiguous()          # d2t = 0: draft ids are the first Vd
    batch = {"input_ids": ids, "loss_mask": mask, "attention_mask": torch.ones_like(ids),
             "aux_hidden_states": aux, "hidden_state": hidden}
    opt = torch.optim.AdamW(draft.parameters(), lr=1e-4)
    before = _rss_mb()[0]
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        r = ttt_forward(draft, batch, length=args.ttt, target_head=head, attention=args.attention)
        r.loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"loss": r.loss.item(), "times": times[1:], "rss_before_mb": before, "peak_rss_mb": _rss_mb()[1]}


def _import_specforge():
    """Import SpecForge without Triton: a stub module exists only while its loss module loads
    (its kernels are never called: LogSoftmaxLoss is replaced below)."""
    import types

    import torch._dynamo  # noqa: F401  (torch probes for triton before the stub exists)

    triton = types.ModuleType("triton")
    triton.jit = lambda fn=None, **kw: fn if fn is not None else (lambda f: f)
    triton.cdiv = lambda a, b: (a + b - 1) // b
    triton.next_power_of_2 = lambda n: 1 << (n - 1).bit_length()
    language = types.ModuleType("triton.language")
    language.constexpr = type("constexpr", (), {})
    triton.language = language
    sys.modules["triton"], sys.modules["triton.language"] = triton, language
    try:
        import specforge.core.loss  # noqa: F401
    finally:
        del sys.modules["triton"], sys.modules["triton.language"]
    import specforge.algorithms.eagle3.model as eagle3
    from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3

    return eagle3, LlamaForCausalLMEagle3


def _cpu_log_softmax_loss():
    """SpecForge's LogSoftmaxLoss contract in PyTorch: loss = mean over B·T of
    -Σ_v mask·p·log_softmax(logits); forward saves the logits; backward writes
    (softmax - p)·mask/(B·T) into them in place, as the Triton kernel does."""
    import torch

    class LogSoftmaxLossCPU(torch.autograd.Function):
        @staticmethod
        def forward(ctx, logits, target, position_mask):
            b, t, v = logits.shape
            logp = torch.log_softmax(logits.float(), dim=-1)
            loss = -(position_mask * (target * logp)).sum(-1).mean()
            ctx.save_for_backward(logits.detach(), target, position_mask)
            return loss

        @staticmethod
        def backward(ctx, grad_output):
            logits, target, position_mask = ctx.saved_tensors
            b, t, v = logits.shape
            for i in range(b):                      # in place, one sequence at a time
                row = logits[i]
                row.copy_(torch.softmax(row, dim=-1)).sub_(target[i]).mul_(position_mask[i])
            logits.mul_(grad_output / (b * t))
            return logits, None, None

    return LogSoftmaxLossCPU


def worker_specforge(args) -> dict:
    import torch
    from transformers import LlamaConfig

    torch.set_num_threads(args.threads)
    eagle3, DraftModel = _import_specforge()
    eagle3.LogSoftmaxLoss = _cpu_log_softmax_loss()
    torch.manual_seed(0)
    s = SHAPE
    config = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=1,
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
                         vocab_size=s["vocab"], rope_theta=s["rope_theta"], rms_norm_eps=s["eps"],
                         max_position_embeddings=8192, pad_token_id=0, hidden_act="silu")
    config.draft_vocab_size = s["draft_vocab"]
    config.target_hidden_size = s["hidden"]
    draft = DraftModel(config, attention_backend="sdpa")
    ids, mask, aux, hidden, lm_head, embed = _inputs(args.seq, args.mask_file)
    with torch.no_grad():
        draft.embed_tokens.weight.copy_(embed)
        draft.t2d.zero_()
        draft.t2d[: s["draft_vocab"]] = True
    draft.embed_tokens.weight.requires_grad_(False)
    model = eagle3.OnlineEagle3Model(draft, length=args.ttt, attention_backend="sdpa")
    opt = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4)
    before = _rss_mb()[0]
    times = []
    for _ in range(args.steps + 1):
        t0 = time.perf_counter()
        plosses = model(input_ids=ids, attention_mask=torch.ones_like(ids), target=None,
                        loss_mask=mask[..., None], hidden_states=aux, target_hidden_for_compact=hidden,
                        target_head_weight=lm_head)[0]
        loss = sum(0.8 ** i * p for i, p in enumerate(plosses))
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    return {"loss": loss.item(), "times": times[1:], "rss_before_mb": before, "peak_rss_mb": _rss_mb()[1]}


# ----- step cost: driver ---------------------------------------------------------------------------

def _turns(value) -> list[dict]:
    """ShareGPT {"from", "value"} turns as conversation rows ✱ ({"role", "content"})."""
    if not isinstance(value, dict):
        return []
    roles = {"human": "user", "gpt": "assistant", "system": "system"}
    turns = [{"role": roles.get(t.get("from")), "content": t.get("value") or ""}
             for t in value.get("conversations", []) if isinstance(t, dict)]
    return turns if all(t["role"] for t in turns) else []


def real_mask(seq: int) -> tuple[list[int], float]:
    """The loss mask of the first packaged ShareGPT conversation with >= seq tokens (SmolLM2 ChatML)."""
    from datasets import load_from_disk

    from draftsmith import resources
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.data.formats import iter_records

    work = REPO / "cache" / "bench" / "train"
    work.mkdir(parents=True, exist_ok=True)
    conv = work / "sharegpt_long.jsonl"
    if not conv.exists():
        rows = []
        for rec in iter_records(str(resources.sharegpt_json())):
            turns = _turns(rec.value)
            if rec.value is None:
                continue
            if len(turns) >= 4 and sum(len(t["content"]) for t in turns) > 6 * seq \
                    and all(t["content"] for t in turns) and turns[0]["role"] == "user":
                rows.append({"id": str(rec.value.get("id")), "conversations": turns})
            if len(rows) >= 8:
                break
        conv.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    built = build_dataset(BuildConfig(data_path=str(conv), target_model_path=str(resources.smollm2_dir()),
                                      chat_template="hf", max_length=seq))
    for row in load_from_disk(str(built.path)):
        if len(row["loss_mask"]) >= seq:
            mask = row["loss_mask"][:seq]
            return mask, sum(mask) / seq
    raise RuntimeError("no conversation long enough")


def step_cost(args) -> dict:
    masks = {}
    if args.mask in ("ones", "both"):
        masks["ones"] = (None, 1.0)
    if args.mask in ("real", "both"):
        mask, frac = real_mask(args.seq)
        path = REPO / "cache" / "bench" / "train" / f"mask_{args.seq}.json"
        path.write_text(json.dumps(mask))
        masks["real"] = (str(path), frac)
    env = dict(os.environ, TORCHDYNAMO_DISABLE="1", OMP_NUM_THREADS=str(args.threads))
    pythons = {"draftsmith": sys.executable, "specforge": args.specforge_python}
    out = {"what": "one EAGLE-3 training step (forward, backward, AdamW), CPU fp32",
           "shape": SHAPE, "seq": args.seq, "batch": 1, "ttt": args.ttt, "threads": args.threads,
           "attention": args.attention, "repeats": args.repeats, "steps_per_run": args.steps,
           "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with other jobs",
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": {}}
    for name, (mask_file, frac) in masks.items():
        runs = {"draftsmith": [], "specforge": []}
        for _ in range(args.repeats):
            for impl in ("draftsmith", "specforge"):
                cmd = [pythons[impl], __file__, "_worker", impl, "--seq", str(args.seq), "--ttt", str(args.ttt),
                       "--steps", str(args.steps), "--threads", str(args.threads), "--attention", args.attention]
                if mask_file:
                    cmd += ["--mask-file", mask_file]
                proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
                if proc.returncode != 0:
                    raise RuntimeError(f"{impl} worker failed:\n{proc.stderr[-3000:]}")
                runs[impl].append(json.loads(proc.stdout.strip().splitlines()[-1]))
                print(f"[{name}] {impl}: {runs[impl][-1]}", file=sys.stderr)
        summary = {}
        for impl, rs in runs.items():
            step = statistics.median(t for r in rs for t in r["times"])
            summary[impl] = {"median_step_s": step, "tokens_per_s": args.seq / step,
                             "median_peak_rss_mb": statistics.median(r["peak_rss_mb"] for r in rs),
                             "median_step_rss_mb": statistics.median(r["peak_rss_mb"] - r["rss_before_mb"] for r in rs),
                             "runs": rs}
        d, s = summary["draftsmith"], summary["specforge"]
        summary["speedup"] = d["tokens_per_s"] / s["tokens_per_s"]
        summary["peak_rss_ratio"] = d["median_peak_rss_mb"] / s["median_peak_rss_mb"]
        summary["step_rss_ratio"] = d["median_step_rss_mb"] / s["median_step_rss_mb"]
        summary["supervised_fraction"] = frac
        out["results"][name] = summary
    return out


# ----- large draft on an accelerator (bench/gpu/train.sh) -------------------------------------------

LLAMA3_8B = dict(hidden=4096, heads=32, kv_heads=8, head_dim=128, intermediate=14336, vocab=128256,
                 draft_vocab=32000, rope_theta=500000.0, eps=1e-5)
DRY = dict(hidden=64, heads=4, kv_heads=2, head_dim=16, intermediate=128, vocab=1000, draft_vocab=256,
           rope_theta=500000.0, eps=1e-5)


def large_step(args) -> dict:
    """Training steps of a Llama-3-8B-sized draft on random features: tokens/s and peak memory
    per sequence length (bf16 autocast + flex attention on CUDA; --dry-run: tiny, on CPU)."""
    import torch
    from transformers import LlamaConfig

    from draftsmith.draft import Eagle3Config, Eagle3Draft
    from draftsmith.train.ttt import ttt_forward

    s = DRY if args.dry_run else LLAMA3_8B
    device = torch.device("cpu" if args.dry_run or not torch.cuda.is_available() else "cuda")
    attention = args.attention if args.attention != "auto" else ("flex" if device.type == "cuda" else "blockwise")
    target = LlamaConfig(hidden_size=s["hidden"], intermediate_size=s["intermediate"], num_hidden_layers=32,
                         num_attention_heads=s["heads"], num_key_value_heads=s["kv_heads"], head_dim=s["head_dim"],
                         vocab_size=s["vocab"], rope_theta=s["rope_theta"], rms_norm_eps=s["eps"],
                         max_position_embeddings=131072)
    torch.manual_seed(0)
    draft = Eagle3Draft(Eagle3Config.from_target_config(target, draft_vocab_size=s["draft_vocab"])).to(device)
    draft.load_embeddings(torch.randn(s["vocab"], s["hidden"], device=device, dtype=torch.bfloat16) * 0.02)
    head = torch.randn(s["draft_vocab"], s["hidden"], device=device, dtype=torch.bfloat16) * 0.02
    opt = torch.optim.AdamW(draft.parameters(), lr=1e-4)
    out = {"what": "draft training step on random features", "shape": s, "device": str(device),
           "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
           "ttt": args.ttt, "attention": attention, "dry_run": args.dry_run,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "results": {}}
    seqs = [64, 128] if args.dry_run else args.seq
    for seq in seqs:
        g = torch.Generator(device=device).manual_seed(seq)
        batch = {"input_ids": torch.randint(0, s["vocab"], (1, seq), device=device, generator=g),
                 "loss_mask": torch.ones(1, seq, dtype=torch.long, device=device),
                 "attention_mask": torch.ones(1, seq, dtype=torch.long, device=device),
                 "aux_hidden_states": torch.randn(1, seq, 3 * s["hidden"], device=device, generator=g,
                                                  dtype=torch.bfloat16),
                 "hidden_state": torch.randn(1, seq, s["hidden"], device=device, generator=g, dtype=torch.bfloat16)}
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats(device)
        times = []
        try:
            for _ in range(args.steps + 1):
                t0 = time.perf_counter()
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
                    r = ttt_forward(draft, batch, length=args.ttt, target_head=head, attention=attention)
                r.loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
        except torch.OutOfMemoryError as e:
            out["results"][str(seq)] = {"error": f"out of memory: {e}"}
            continue
        step = statistics.median(times[1:])
        out["results"][str(seq)] = {
            "median_step_s": step, "tokens_per_s": seq / step, "loss": r.loss.item(),
            "peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else None}
        print(f"seq {seq}: {out['results'][str(seq)]}", file=sys.stderr)
    return out


# ----- quality ---------------------------------------------------------------------------------------

class CodecRoundTrip:
    """A feature source whose aux/hidden features went through a store codec (encode, decode)."""

    def __init__(self, source, codec: str):
        from draftsmith.features.codecs import get_codec

        self.source, self.codec = source, get_codec(codec)
        self.signal = source.signal

    def __len__(self) -> int:
        return len(self.source)

    def batch(self, indices, device):
        return self.finish(self.collate([self.item(i) for i in indices]), device)

    def item(self, i):                       # the trainer's DataLoader steps (draftsmith/train/data.py)
        item = self.source.item(i)
        for name in ("aux_hidden_states", "hidden_state"):
            x = item[name]
            item[name] = self.codec.decode(self.codec.encode(x), x.shape[-1]).to(x.dtype)
        return item

    def collate(self, items, row_sizes=None):
        return self.source.collate(items, row_sizes)

    def finish(self, batch, device, row_sizes=None):
        return self.source.finish(batch, device, row_sizes)


def quality(args) -> dict:
    import torch

    from draftsmith import resources
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.data.formats import iter_records
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
    from draftsmith.features.plan import bytes_per_token
    from draftsmith.train.trainer import TrainConfig, Trainer

    torch.set_num_threads(args.threads)
    work = Path(args.work_dir)
    work.mkdir(parents=True, exist_ok=True)
    model = str(resources.smollm2_dir())
    rows = []
    for rec in iter_records(str(resources.sharegpt_json())):
        turns = _turns(rec.value)
        if rec.value is None:
            continue
        if len(turns) >= 2 and all(t["content"] for t in turns) and turns[0]["role"] == "user" \
                and turns[1]["role"] == "assistant":
            rows.append({"id": str(rec.value.get("id")), "conversations": turns})
        if len(rows) >= args.train_conversations + args.eval_conversations:
            break
    splits = {"train": rows[:args.train_conversations], "eval": rows[args.train_conversations:]}
    built = {}
    for split, part in splits.items():
        path = work / f"sharegpt_{split}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in part), encoding="utf-8")
        built[split] = build_dataset(BuildConfig(data_path=str(path), target_model_path=model, chat_template="hf",
                                                 max_length=args.max_length)).path
    out = {"what": "held-out simulated tau after the same offline training budget, per feature codec",
           "model": "SmolLM2-135M-Instruct", "train_conversations": len(splits["train"]),
           "eval_conversations": len(splits["eval"]), "max_length": args.max_length, "epochs": args.epochs,
           "draft_vocab_size": args.draft_vocab_size, "ttt_length": args.ttt, "lr": args.lr,
           "target_dtype": args.dtype, "threads": args.threads,
           "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "codecs": {}}
    # The target runs once: a bf16 store; other codecs are applied to its decoded features
    # (encode -> decode per row, as the store does), which is exactly what a store of that
    # codec holds for a bf16 target (for an fp32 target it differs only by the bf16 rounding).
    stores = {}
    t0 = time.perf_counter()
    for split in ("train", "eval"):
        stores[split] = work / f"store_bf16_{split}"
        run_hidden_states(HiddenStatesConfig(target_model_path=model, data_path=str(built[split]),
                                             output_dir=str(stores[split]), max_length=args.max_length,
                                             dtype=args.dtype, codec="bf16", batch_size=4, device="cpu",
                                             shard_mb=8.0, progress=False))
    out["features_s"] = time.perf_counter() - t0
    manifest = json.loads((stores["train"] / "manifest.json").read_text())
    out["train_tokens"] = manifest["num_tokens"]
    for codec in args.codecs:
        t0 = time.perf_counter()
        trainer = Trainer(TrainConfig(
            mode="offline", target_model_path=model, train_data_path=str(built["train"]),
            train_hidden_states_path=str(stores["train"]), eval_hidden_states_path=str(stores["eval"]),
            output_dir=str(work / f"run_{codec}"), draft_vocab_size=args.draft_vocab_size, ttt_length=args.ttt,
            num_epochs=args.epochs, batch_size=1, learning_rate=args.lr, warmup_ratio=0.02,
            max_length=args.max_length, save_interval=10 ** 9, eval_interval=10 ** 9, log_interval=10,
            dtype=args.dtype, device="cpu", progress=False, seed=0))
        if codec != "bf16":
            trainer.train_source = CodecRoundTrip(trainer.train_source, codec)
            trainer.eval_source = CodecRoundTrip(trainer.eval_source, codec)
        result = trainer.train()
        out["codecs"][codec] = {"eval": result["eval"], "train_s": time.perf_counter() - t0,
                                "steps": result["global_step"],
                                "bytes_per_token": bytes_per_token(codec, manifest["hidden_size"],
                                                                   len(manifest["aux_layers"]), None, 1.0, 2)}
        print(f"{codec}: tau {result['eval']['tau']:.3f}", file=sys.stderr)
    base = out["codecs"].get("bf16", {}).get("eval", {}).get("tau")
    if base:
        for codec, r in out["codecs"].items():
            r["tau_vs_bf16"] = r["eval"]["tau"] / base
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    sc = sub.add_parser("step-cost")
    sc.add_argument("--repeats", type=int, default=3)
    sc.add_argument("--steps", type=int, default=2, help="timed steps per run (after one warm-up step)")
    sc.add_argument("--seq", type=int, default=1024)
    sc.add_argument("--ttt", type=int, default=7)
    sc.add_argument("--threads", type=int, default=2)
    sc.add_argument("--attention", default="blockwise")
    sc.add_argument("--mask", choices=["ones", "real", "both"], default="both")
    sc.add_argument("--specforge-python", default="/tmp/specforge-venv/bin/python")
    sc.add_argument("--output", default=str(RESULTS / "train_step_cost.json"))
    q = sub.add_parser("quality")
    q.add_argument("--train-conversations", type=int, default=128)
    q.add_argument("--eval-conversations", type=int, default=24)
    q.add_argument("--max-length", type=int, default=512)
    q.add_argument("--epochs", type=int, default=1)
    q.add_argument("--draft-vocab-size", type=int, default=4096)
    q.add_argument("--ttt", type=int, default=7)
    q.add_argument("--lr", type=float, default=5e-4)
    q.add_argument("--codecs", nargs="+", default=["bf16", "int4"], help="int4 is the store's default codec")
    q.add_argument("--dtype", default="float32", help="target dtype (CPU bf16 matmuls are slow)")
    q.add_argument("--threads", type=int, default=1)
    q.add_argument("--work-dir", default=str(REPO / "cache" / "bench" / "train_quality"))
    q.add_argument("--output", default=str(RESULTS / "train_quality.json"))
    g = sub.add_parser("large-step")
    g.add_argument("--seq", type=int, nargs="+", default=[2048, 8192])
    g.add_argument("--ttt", type=int, default=7)
    g.add_argument("--steps", type=int, default=3)
    g.add_argument("--attention", default="auto")
    g.add_argument("--dry-run", action="store_true", help="tiny draft on CPU: checks the script runs")
    g.add_argument("--output", default=str(RESULTS / "train_gpu.json"))
    w = sub.add_parser("_worker")
    w.add_argument("impl", choices=["draftsmith", "specforge"])
    w.add_argument("--seq", type=int, default=1024)
    w.add_argument("--ttt", type=int, default=7)
    w.add_argument("--steps", type=int, default=2)
    w.add_argument("--threads", type=int, default=2)
    w.add_argument("--attention", default="blockwise")
    w.add_argument("--mask-file", default=None)
    args = p.parse_args(argv)
    if args.cmd == "_worker":
        result = worker_draftsmith(args) if args.impl == "draftsmith" else worker_specforge(args)
        print(json.dumps(result))
        return 0
    result = {"step-cost": step_cost, "quality": quality, "large-step": large_step}[args.cmd](args)
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k not in ("results", "codecs")}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
