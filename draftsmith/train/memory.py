"""`estimate-memory`: the peak memory of one training step, predicted without running it.

Contract: `estimate_memory(MemoryConfig(...))` builds the draft the trainer would build for
the target (`Eagle3Config.from_target_config`), its AdamW optimizer and a batch of the
given shape, and runs **two real training steps** (TTT forward under the chosen autocast,
backward, gradient clipping, AdamW step, zero_grad — the second step holds the optimizer
state, as every step after the first does) on fake tensors
(`torch._subclasses.fake_tensor.FakeTensorMode`): every float tensor has its shape, dtype
and device but no storage, so a step at T = 32,768 with a Llama-3.1-8B-sized draft takes
seconds on a laptop CPU. Memory is counted by PyTorch's own tracker
(`torch.distributed._tools.mem_tracker.MemTracker`): the bytes of every tensor storage
alive after each op, rounded to 512 bytes as the CUDA caching allocator rounds, split
into parameters, buffers (the frozen target embeddings), gradients, optimizer state,
activations (+ temporaries of the backward) and inputs.

TTT's control flow depends on the data (which rows are supervised, which stay live per
step). That part runs for real: the integer inputs (`input_ids`, `loss_mask`) are real
tensors, and `_RealIndexMode` (a dispatch mode above the fake one) runs every op whose
tensor inputs are all real on real data. Only float values are fake; a scalar read from a
fake tensor (the metrics: argmax hits, loss sums) reads 0, which changes no shape.

The estimate is the live-tensor peak of the draft's step on one device, as the CUDA run
would hold it: the loss-chunk size is CUDA's (`ttt.LOGITS_CHUNK_ELEMENTS` × 16, see
ttt.py) and `--attention flex` is traced through flex attention's own fake kernel (output
and log-sum-exp only: what the fused CUDA kernel keeps). It does not count the CUDA
context (~0.5 GiB), cuBLAS / kernel workspaces, or the caching allocator's fragmentation
(reserved memory typically runs 5–15 % above the live peak). `--mode online` adds the
target's weights (less the embeddings and lm_head the draft shares) and the live peak of its
no-grad forward at the same shape (also traced).
`--world-size N` adjusts the single-device figures analytically (DDP keeps a gradient
bucket copy of the parameters' size; FSDP2 as the trainer applies it — one unit,
`reshard_after_forward=False` — holds 1/N of the optimizer state plus the unsharded
parameters during the step); the adjustment is reported beside the traced figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import torch

from draftsmith import config
from draftsmith.config import option
from draftsmith.errors import InputError

log = logging.getLogger("draftsmith.estimate_memory")

GIB = 2 ** 30


@dataclass
class MemoryConfig:
    """The `estimate-memory` stage's settings (draftsmith/config.py: its flags, defaults, config-file keys)."""

    target_model_path: str | None = option(None, group="target", help="HF folder or hub name of the target "
                                                                      "(only its config is read)")
    target_config: str | None = option(None, group="target", help="or the target's config.json (no weights needed)")
    mode: Literal["offline", "online"] = option("offline", group="step", help="offline: the draft's step; "
                                                "online: plus the target's weights and forward")
    max_length: int = option(2048, group="step", help="tokens per row (T)")
    ttt_length: int = option(7, group="step", help="training-time-test steps")
    draft_vocab_size: int = option(32000, group="step", help="draft vocabulary size")
    batch_size: int = option(1, group="step", help="rows per micro-batch")
    autocast: Literal["auto", "bf16", "off"] = option("bf16", group="step", help="bf16 autocast of the draft's "
                                                      "matmuls (auto = bf16, the trainer's CUDA default)")
    attention: Literal["auto", "flex", "blockwise", "sdpa"] = option(
        "flex", group="step", help="TTT attention (auto = flex, the trainer's CUDA default)")
    activation_checkpointing: bool = option(False, group="step", help="as train --activation-checkpointing: "
                                                                      "recompute each TTT step's layer in backward")
    dtype: str = option("bfloat16", group="step", help="the target's dtype (embeddings, features, lm_head rows)")
    supervised: float = option(1.0, group="step", help="share of supervised tokens (1.0 = every row live: the "
                                                       "worst case)")
    parallel: Literal["ddp", "fsdp"] = option("ddp", group="devices", help="how the draft is spread over devices")
    world_size: int = option(1, group="devices", help="devices (the single-device figures adjusted analytically)")
    device: Literal["cuda", "cpu"] = option("cuda", group="devices", help="the device the step is estimated for "
                                                                          "(sets the loss-chunk size)")
    json: bool = option(False, help="print one JSON object")


CONFIG = MemoryConfig


def _target_config(cfg: MemoryConfig):
    if cfg.target_config:
        path = Path(cfg.target_config)
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as e:
            raise InputError(f"cannot read the target config: {e}", path=path, field="--target-config") from None
    if cfg.target_model_path:
        from draftsmith.target.loading import load_config

        return load_config(cfg.target_model_path)
    raise InputError("give --target-model-path or --target-config", field="--target-config")


class _RealIndexMode(torch.utils._python_dispatch.TorchDispatchMode):
    """Above a FakeTensorMode: ops whose tensor inputs are all real run on real data (TTT's
    masks and row indices); scalars read from fake tensors read 0. Higher-order operators
    (flex attention) pass through to the modes below."""

    supports_higher_order_operators = True

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch._subclasses.fake_tensor import FakeTensor, unset_fake_temporarily
        from torch.utils._pytree import tree_leaves

        kwargs = kwargs or {}
        tensors = [a for a in tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        if tensors and not any(isinstance(t, FakeTensor) for t in tensors):
            with unset_fake_temporarily():
                return func(*args, **kwargs)
        if func is torch.ops.aten._local_scalar_dense.default:
            t = args[0]
            return False if t.dtype == torch.bool else (0.0 if t.is_floating_point() else 0)
        if func in (torch.ops.aten.index.Tensor, torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default):
            # a fake tensor indexed by a real boolean mask: the mask's positions, computed for real
            indices = []
            for i in args[1]:
                if isinstance(i, torch.Tensor) and i.dtype == torch.bool and not isinstance(i, FakeTensor):
                    with unset_fake_temporarily():
                        indices.extend(i.nonzero().unbind(1))
                else:
                    indices.append(i)
            args = (args[0], indices, *args[2:])
        return func(*args, **kwargs)


def _tracker():
    """PyTorch's MemTracker, also counting the outputs of higher-order operators (flex attention:
    its fake forward / backward return what the fused kernel allocates)."""
    from torch.distributed._tools.mem_tracker import MemTracker

    class _NoHook:
        def remove(self) -> None:
            pass

    class Tracker(MemTracker):
        supports_higher_order_operators = True

        def _track_module_params_and_buffers(self, module, install_grad_hooks=True):
            # frozen parameters (a peer's embeddings) take no gradient hook: mark them hooked
            for param in module.parameters():
                if not param.requires_grad:
                    self._param_to_grad_hook_handles.setdefault(param, (_NoHook(), _NoHook()))
            return super()._track_module_params_and_buffers(module, install_grad_hooks)

    return Tracker()


def _snapshot_bytes(snap: dict) -> dict[str, int]:
    """MemTracker's per-device snapshot -> {category: bytes} (one device here)."""
    out: dict[str, int] = {}
    for dev_snap in snap.values():
        for key, value in dev_snap.items():
            name = key.value if hasattr(key, "value") else str(key)
            out[name] = out.get(name, 0) + int(value)
    return out


def _validate(cfg: MemoryConfig) -> str:
    if bool(cfg.target_model_path) == bool(cfg.target_config):
        raise InputError("give one of --target-model-path or --target-config", field="--target-config")
    if cfg.mode not in ("offline", "online"):
        raise InputError("must be offline or online", field="--mode")
    if cfg.autocast not in ("auto", "bf16", "off"):
        raise InputError("must be auto, bf16 or off", field="--autocast")
    attention = "flex" if cfg.attention == "auto" else cfg.attention
    if attention not in ("flex", "blockwise", "sdpa"):
        raise InputError("must be auto, flex, blockwise or sdpa", field="--attention")
    if cfg.parallel not in ("ddp", "fsdp"):
        raise InputError("must be ddp or fsdp", field="--parallel")
    for name in ("max_length", "ttt_length", "batch_size", "world_size", "draft_vocab_size"):
        if getattr(cfg, name) < 1:
            raise InputError("must be >= 1", field="--" + name.replace("_", "-"))
    if not 0.0 < cfg.supervised <= 1.0:
        raise InputError("must be in (0, 1]", field="--supervised")
    if cfg.device not in ("cuda", "cpu"):
        raise InputError("must be cuda or cpu", field="--device")
    return attention


def _trace_target_forward(hf_config, cfg: MemoryConfig, dtype: torch.dtype) -> tuple[int, int]:
    """(weights bytes, live peak of a no-grad forward with hidden states) of the target, traced."""
    from transformers import AutoConfig, AutoModelForCausalLM

    config = hf_config if not isinstance(hf_config, dict) else AutoConfig.for_model(**hf_config)
    ids = torch.zeros(cfg.batch_size, cfg.max_length, dtype=torch.long)
    with symbolic(cuda=cfg.device == "cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype).eval()
        weights = sum(p.numel() * p.element_size() for p in model.parameters())
        tracker = _tracker()
        tracker.track_external(model)
        with tracker, torch.no_grad():
            model(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    peak = _snapshot_bytes(tracker.get_tracker_snapshot("peak")).get("Total", 0)
    return weights, peak


@contextlib.contextmanager
def symbolic(cuda: bool = True):
    """Fake tensors with TTT's integer control flow real (see the module docstring); `cuda`:
    ttt_forward's loss chunks as on CUDA. Flex attention runs its fake kernels directly."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.nn.attention import flex_attention

    from draftsmith.draft.model import rotary_tables
    from draftsmith.train import ttt

    # rotary_tables memoizes inv_freq per config: fake entries must not outlive the fake mode
    rope_cache = rotary_tables.__dict__.setdefault("cache", {})
    rope_saved = dict(rope_cache)
    saved = (ttt.LOGITS_CHUNK_ELEMENTS, flex_attention._validate_device,
             flex_attention._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG)
    ttt.LOGITS_CHUNK_ELEMENTS = saved[0] * (16 if cuda else 1)
    # flex refuses CPU tensors that need gradients (it has no CPU backward kernel), and outside
    # torch.compile it wraps its operator in an eager-backend compile that refuses dispatch
    # modes; fake tensors run no kernel, only the operator's fake forward and backward.
    flex_attention._validate_device = lambda *a, **k: None
    flex_attention._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG = True
    try:
        with FakeTensorMode(allow_non_fake_inputs=True) as mode:
            yield mode
    finally:
        (ttt.LOGITS_CHUNK_ELEMENTS, flex_attention._validate_device,
         flex_attention._FLEX_ATTENTION_DISABLE_COMPILE_DEBUG) = saved
        rope_cache.clear()
        rope_cache.update(rope_saved)


def trace_steps(step: torch.nn.Module, loss_fn, optimizer_step, externals=(), steps: int = 2,
                autocast: bool = True) -> dict[str, int]:
    """Run `steps` training steps — loss_fn(step) -> loss (under bf16 autocast if asked),
    backward, optimizer_step() (clip + step + zero_grad) — under the memory tracker and return
    the peak snapshot {category: bytes, "Total": bytes}. `externals`: optimizers and tensors
    made before tracing. Works on real tensors as well as inside `symbolic()`."""
    tracker = _tracker()
    tracker.track_external(step, *externals)
    cast = torch.autocast("cpu", dtype=torch.bfloat16) if autocast else contextlib.nullcontext()
    with tracker, _RealIndexMode():
        for _ in range(steps):
            with cast:
                loss = loss_fn(step)
            loss.backward()
            optimizer_step()
            tracker.reset_mod_stats()
    return _snapshot_bytes(tracker.get_tracker_snapshot("peak"))


def adamw_step(optimizer: torch.optim.Optimizer, max_grad_norm: float = 0.5):
    """The trainer's optimizer step: clip, AdamW, zero_grad(set_to_none)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]

    def run():
        torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


def build_step(cfg: MemoryConfig, hf_config, batch: dict[str, torch.Tensor], attention: str):
    """The trainer's objects at the config's shape: (TTT module, AdamW, lm_head rows, batch).
    Float tensors are made by the current mode (fake inside `symbolic()`)."""
    from draftsmith.draft.config import Eagle3Config
    from draftsmith.draft.model import Eagle3Draft
    from draftsmith.target.dtype import parse_dtype
    from draftsmith.target.hf import default_aux_layers
    from draftsmith.train.trainer import TTTModule

    get = hf_config.get if isinstance(hf_config, dict) else (lambda k, d=None: getattr(hf_config, k, d))
    vocab = int(get("vocab_size"))
    dcfg = Eagle3Config.from_target_config(hf_config, draft_vocab_size=min(cfg.draft_vocab_size, vocab),
                                           aux_layer_ids=default_aux_layers(int(get("num_hidden_layers"))))
    dtype = parse_dtype(cfg.dtype)
    draft = Eagle3Draft(dcfg)
    draft.load_embeddings(torch.empty(dcfg.vocab_size, dcfg.hidden_size, dtype=dtype))
    head = torch.empty(dcfg.draft_vocab_size, dcfg.target_hidden_size, dtype=dtype)
    # the whole lm_head gives the served (full-vocab) argmax when the draft vocab is smaller
    full_head = torch.empty(vocab, dcfg.target_hidden_size, dtype=dtype) if dcfg.draft_vocab_size < vocab else None
    optimizer = torch.optim.AdamW([p for p in draft.parameters() if p.requires_grad], lr=1e-4, betas=(0.9, 0.95))
    b, t, ht = cfg.batch_size, cfg.max_length, dcfg.target_hidden_size
    batch = dict(batch, aux_hidden_states=torch.empty(b, t, 3 * ht, dtype=dtype),
                 hidden_state=torch.empty(b, t, ht, dtype=dtype))
    step = TTTModule(draft, head, cfg.ttt_length, 0.8, attention, full_head,
                     checkpointing=cfg.activation_checkpointing)
    return step, optimizer, head, batch


def integer_inputs(cfg: MemoryConfig, vocab: int) -> dict[str, torch.Tensor]:
    """The real integer inputs: made outside the fake mode, they steer TTT's data-dependent rows."""
    g = torch.Generator().manual_seed(0)
    b, t = cfg.batch_size, cfg.max_length
    ids = torch.randint(0, vocab, (b, t), generator=g)
    mask = (torch.rand(b, t, generator=g) < cfg.supervised).long()
    return {"input_ids": ids, "loss_mask": mask, "attention_mask": torch.ones_like(ids)}


def estimate_memory(cfg: MemoryConfig) -> dict:
    """Trace two training steps on fake tensors; return the peak and its parts in bytes."""
    from draftsmith.target.dtype import parse_dtype

    attention = _validate(cfg)
    t0 = time.perf_counter()
    hf_config = _target_config(cfg)
    vocab = int(hf_config["vocab_size"] if isinstance(hf_config, dict) else hf_config.vocab_size)
    inputs = integer_inputs(cfg, vocab)
    with symbolic(cuda=cfg.device == "cuda"):
        step, optimizer, head, batch = build_step(cfg, hf_config, inputs, attention)
        features = (batch["aux_hidden_states"], batch["hidden_state"])
        heads = tuple(h for h in (step.target_head, step.full_head) if h is not None)
        peak = trace_steps(step, lambda m: m(batch).loss, adamw_step(optimizer),
                           externals=(optimizer, *heads, *features),
                           autocast=cfg.autocast in ("auto", "bf16"))
    nbytes = lambda ts: sum(t.numel() * t.element_size() for t in ts)  # noqa: E731
    param_bytes = nbytes(p for g in optimizer.param_groups for p in g["params"])
    optimizer_bytes = 2 * param_bytes                       # AdamW exp_avg + exp_avg_sq
    result: dict = {
        "config": asdict(cfg), "attention": attention,
        "draft": {k: getattr(step.draft.config, k) for k in (
            "hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
            "vocab_size", "draft_vocab_size")},
        "params_bytes": param_bytes,
        "optimizer_bytes": optimizer_bytes,
        "frozen_bytes": peak.get("Buffer", 0) + nbytes(heads),   # target embeddings, d2t/t2d, lm_head rows
                                                                # (+ the whole head for the served argmax)
        "activation_bytes": peak.get("Activation", 0) + peak.get("Temp", 0),
        "input_bytes": nbytes(features),                    # the batch's target features
        "gradient_bytes_at_peak": peak.get("Gradient", 0),
        "optimizer_bytes_at_peak": peak.get("Optstate", 0),
        "traced_peak_bytes": peak.get("Total", 0),
    }
    peak_bytes = peak.get("Total", 0)
    n = cfg.world_size
    if n > 1 and cfg.parallel == "ddp":
        peak_bytes += param_bytes                           # the reducer's gradient buckets
    elif n > 1 and cfg.parallel == "fsdp":
        peak_bytes += param_bytes // n - optimizer_bytes * (n - 1) // n
    if cfg.mode == "online":
        weights, forward_peak = _trace_target_forward(hf_config, cfg, parse_dtype(cfg.dtype))
        result["target_weights_bytes"] = weights
        result["target_forward_peak_bytes"] = forward_peak
        # the draft shares the target's embeddings and lm_head (traced above as frozen tensors)
        shared = nbytes([step.draft.embed_weight, *([step.full_head] if step.full_head is not None else [])])
        peak_bytes = max(peak_bytes + weights - shared, weights + forward_peak)   # its forward ends first
    result["peak_bytes"] = int(peak_bytes)
    result["peak_gib"] = round(peak_bytes / GIB, 3)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    return result


def add_arguments(p: argparse.ArgumentParser) -> None:
    config.add_arguments(p, MemoryConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(MemoryConfig, args)
    result = estimate_memory(cfg)
    if cfg.json:
        print(json.dumps(result))
        return 0
    gib = lambda b: f"{b / GIB:8.2f} GiB"  # noqa: E731
    print(f"estimated peak of one training step: {gib(result['peak_bytes'])}  "
          f"(T={cfg.max_length}, batch {cfg.batch_size}, TTT {cfg.ttt_length}, {result['attention']}, "
          f"autocast {cfg.autocast}, {cfg.parallel} x{cfg.world_size}, {cfg.mode})")
    for key in ("params_bytes", "optimizer_bytes", "frozen_bytes", "activation_bytes", "input_bytes",
                "target_weights_bytes", "target_forward_peak_bytes"):
        if key in result:
            print(f"  {key[:-6]:<26}{gib(result[key])}")
    print("  not counted: CUDA context (~0.5 GiB), kernel workspaces, allocator fragmentation (5-15 %)")
    return 0
