"""`Eagle3Draft`: the EAGLE-3 draft, one Llama decoder layer over [embedding, fused hidden].

Structure and parameter names follow SGLang's `LlamaForCausalLMEagle3`
(python/sglang/srt/models/llama_eagle3.py): `fc` fuses the three target layers
(3·Ht → H); the `midlayer` normalizes the token embedding with `input_layernorm`
and the incoming hidden with `hidden_norm`, concatenates them (2·H) into q/k/v,
keeps the incoming hidden as the residual, then post_attention_layernorm + MLP;
the final `norm` gives the logits input, while the *pre-norm* sum is what the next
draft step receives (SGLang's `hidden_states_to_aux`). The embeddings are the
target's, frozen and never saved; `d2t`/`t2d` map the reduced draft vocabulary.

`layer()` is one attention pass that returns its own post-rope keys/values so the
caller owns the cache: training-time test concatenates them across steps, the
eval's speculative decoder keeps a KV cache.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.checkpoint import checkpoint

from draftsmith.draft.config import Eagle3Config
from draftsmith.errors import InputError
from draftsmith.fsutil import atomic_path, read_json_object, write_json_atomic

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


class RMSNorm(nn.Module):
    def __init__(self, size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(size))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class Attention(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.num_heads, self.num_kv_heads, self.head_dim = (cfg.num_attention_heads, cfg.num_key_value_heads,
                                                             cfg.head_dim)
        self.q_proj = nn.Linear(2 * cfg.hidden_size, self.num_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(2 * cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.v_proj = nn.Linear(2 * cfg.hidden_size, self.num_kv_heads * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.num_heads * self.head_dim, cfg.hidden_size, bias=False)


class MLP(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        from transformers.activations import ACT2FN

        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)
        self.act = ACT2FN[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x))


class MidLayer(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hidden_norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = Attention(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MLP(cfg)


def rotary_tables(cfg: Eagle3Config, position_ids: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin [B, T, rotary_dim] for the target's rope (any transformers rope type, incl. scaling).

    rotary_dim = head_dim * rope_parameters["partial_rotary_factor"] (1 when absent): the share of
    each head both engines rotate, vLLM 0.33 `rotary_embedding/__init__.py:69` from
    rope_parameters, SGLang 0.5.23 `models/llama.py:199` from the top-level key (Phi-4-mini: 0.75)."""
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS
    from transformers import LlamaConfig

    key = (cfg.rope_theta, json.dumps(cfg.rope_scaling, sort_keys=True), cfg.head_dim,
           cfg.max_position_embeddings, str(position_ids.device))
    cache = rotary_tables.__dict__.setdefault("cache", {})
    if key not in cache:
        llama = LlamaConfig(hidden_size=cfg.head_dim * cfg.num_attention_heads, head_dim=cfg.head_dim,
                            num_attention_heads=cfg.num_attention_heads,
                            max_position_embeddings=cfg.max_position_embeddings,
                            rope_parameters=cfg.rope_parameters)
        rope_type = cfg.rope_parameters["rope_type"]
        if rope_type == "default":
            dim = int(cfg.head_dim * cfg.rope_parameters.get("partial_rotary_factor", 1.0))
            inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
            scale = 1.0
        else:
            inv_freq, scale = ROPE_INIT_FUNCTIONS[rope_type](llama, "cpu")
        cache[key] = (inv_freq.float().to(position_ids.device), float(scale))
    inv_freq, scale = cache[key]
    freqs = position_ids.float()[..., None] * inv_freq  # [B, T, hd/2]
    emb = torch.cat([freqs, freqs], dim=-1)
    return (emb.cos() * scale).to(dtype), (emb.sin() * scale).to(dtype)


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, heads, T, hd]; cos/sin [B, T, rotary_dim]: the first rotary_dim dims rotate (neox style)."""
    dim = cos.shape[-1]
    if dim < x.shape[-1]:
        return torch.cat([apply_rope(x[..., :dim], cos, sin), x[..., dim:]], dim=-1)
    return x * cos[:, None] + _rotate_half(x) * sin[:, None]


class Eagle3Draft(nn.Module):
    def __init__(self, cfg: Eagle3Config):
        super().__init__()
        self.config = cfg
        self.fc = nn.Linear(3 * cfg.target_hidden_size, cfg.hidden_size, bias=False)
        self.midlayer = MidLayer(cfg)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.draft_vocab_size, bias=False)
        self.register_buffer("d2t", torch.zeros(cfg.draft_vocab_size, dtype=torch.long))
        t2d = torch.zeros(cfg.vocab_size, dtype=torch.bool)
        t2d[: cfg.draft_vocab_size] = True
        self.register_buffer("t2d", t2d)
        # The target's embedding table: frozen, shared by reference, never saved.
        self.register_buffer("embed_weight", torch.empty(0), persistent=False)

    # ----- vocab and embeddings -------------------------------------------------------------
    def load_embeddings(self, weight: torch.Tensor) -> None:
        cfg = self.config
        if tuple(weight.shape) != (cfg.vocab_size, cfg.hidden_size):
            raise InputError(f"target embeddings have shape {tuple(weight.shape)}, the draft needs "
                             f"({cfg.vocab_size}, {cfg.hidden_size})", field="embed_tokens")
        self.embed_weight = weight.detach()

    def set_vocab_mapping(self, d2t: torch.Tensor, t2d: torch.Tensor) -> None:
        if d2t.shape != self.d2t.shape or t2d.shape != self.t2d.shape:
            raise InputError(f"vocab mapping shapes d2t {tuple(d2t.shape)} / t2d {tuple(t2d.shape)} do not "
                             f"match the draft ({self.config.draft_vocab_size} / {self.config.vocab_size})",
                             field="d2t")
        self.d2t.copy_(d2t.to(torch.long))
        self.t2d.copy_(t2d.to(torch.bool))

    @property
    def draft_to_target(self) -> torch.Tensor:
        """LongTensor [Vd]: the target id of each draft id."""
        return torch.arange(self.d2t.numel(), device=self.d2t.device) + self.d2t

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.embed_weight.numel() == 0:
            raise RuntimeError("Eagle3Draft.load_embeddings(target_embed_weight) must be called first")
        return F.embedding(input_ids, self.embed_weight)

    # ----- forward pieces ----------------------------------------------------------------------
    def project(self, aux_hidden_states: torch.Tensor) -> torch.Tensor:
        """fc: [B, T, 3·Ht] -> [B, T, H]."""
        return self.fc(aux_hidden_states.to(self.fc.weight.dtype))

    def layer(self, input_ids: torch.Tensor, hidden: torch.Tensor, position_ids: torch.Tensor,
              attn_mask: torch.Tensor | object | None = None,
              past_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
              ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """One midlayer pass.

        input_ids, position_ids [B, T]; hidden [B, T, H]. Keys attended = past_kv (each
        [B, kv_heads, P, hd], post-rope) followed by this call's keys. attn_mask: bool
        [B or 1, 1 or heads, T, P+T] (True = attend), a `StepPattern`, a flex-attention
        BlockMask, or None for causal attention over the past plus this call. Returns the pre-norm output
        hidden [B, T, H] and this call's post-rope (k, v).
        """
        m = self.midlayer
        attn = m.self_attn
        b, t, _ = hidden.shape
        embeds = self.embed(input_ids).to(hidden.dtype)
        residual = hidden
        x = torch.cat([m.input_layernorm(embeds), m.hidden_norm(hidden)], dim=-1)
        q = attn.q_proj(x).view(b, t, attn.num_heads, attn.head_dim).transpose(1, 2)
        k = attn.k_proj(x).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        v = attn.v_proj(x).view(b, t, attn.num_kv_heads, attn.head_dim).transpose(1, 2)
        cos, sin = rotary_tables(self.config, position_ids, q.dtype)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        keys, values = k, v
        if past_kv is not None:
            keys = torch.cat([past_kv[0], k], dim=2)
            values = torch.cat([past_kv[1], v], dim=2)
        out = attention(q, keys, values, attn_mask)
        out = attn.o_proj(out.transpose(1, 2).reshape(b, t, attn.num_heads * attn.head_dim))
        h = out + residual
        out = m.mlp(m.post_attention_layernorm(h)) + h
        return out, (k, v)

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """lm_head(norm(out)) over the draft vocabulary."""
        return self.lm_head(self.norm(out))

    # ----- checkpoint ✱ ------------------------------------------------------------------------
    def export_state_dict(self) -> dict[str, torch.Tensor]:
        """The tensors of model.safetensors ✱ (no embeddings), contiguous, on CPU."""
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        state["d2t"] = state["d2t"].to(torch.long)
        state["t2d"] = state["t2d"].to(torch.bool)
        return state

    @property
    def full_vocab(self) -> bool:
        """The draft predicts over the whole target vocabulary: no d2t/t2d in its checkpoint (vLLM
        refuses a d2t then; SGLang uses the identity without one — draftsmith.export)."""
        return self.config.draft_vocab_size == self.config.vocab_size

    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> Path:
        """config.json + model.safetensors; each file written atomically.

        `state_dict` lets a distributed trainer pass gathered full tensors."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = state_dict if state_dict is not None else self.export_state_dict()
        if self.full_vocab:
            state = {k: v for k, v in state.items() if k not in ("d2t", "t2d")}
        floats = {str(v.dtype).removeprefix("torch.") for v in state.values() if v.is_floating_point()}
        if len(floats) != 1:
            raise InputError(f"a draft checkpoint holds one float dtype, these weights hold {sorted(floats)}",
                             path=directory)
        with atomic_path(directory / WEIGHTS_NAME) as tmp:
            save_file(state, str(tmp), metadata={"format": "pt"})
        # config.json declares what the tensors are (the trainer's fp32 masters say float32;
        # `draftsmith export` casts to the target's dtype for serving).
        cfg = dataclasses.replace(self.config, dtype=floats.pop()).to_config_dict()
        write_json_atomic(directory / CONFIG_NAME, cfg)
        return directory

    @classmethod
    def from_pretrained(cls, directory: str | Path, embed_weight: torch.Tensor | None = None,
                        dtype: torch.dtype | None = None, target_layers: int | None = None) -> "Eagle3Draft":
        directory = Path(directory)
        config_path, weights_path = directory / CONFIG_NAME, directory / WEIGHTS_NAME
        for p in (config_path, weights_path):
            if not p.is_file():
                raise InputError("missing file of a draft checkpoint", path=p)
        cfg = Eagle3Config.from_config_dict(read_json_object(config_path), path=config_path,
                                            target_layers=target_layers)
        model = cls(cfg)
        state = load_file(str(weights_path))
        expected = model.state_dict()
        if model.full_vocab:   # identity mapping: the buffers keep their initial values
            state = {**{k: expected[k] for k in ("d2t", "t2d")}, **state}
        missing = sorted(set(expected) - set(state))
        unexpected = sorted(set(state) - set(expected))
        if missing or unexpected:
            raise InputError(f"tensor names differ from the EAGLE-3 layout: missing {missing}, "
                             f"unexpected {unexpected}", path=weights_path)
        for name, tensor in state.items():
            if tuple(tensor.shape) != tuple(expected[name].shape):
                raise InputError(f"shape {tuple(tensor.shape)} != expected {tuple(expected[name].shape)}",
                                 path=weights_path, field=name)
        model.load_state_dict(state)
        if dtype is not None:
            model.to(dtype)
            model.d2t.data = model.d2t.long()
            model.t2d.data = model.t2d.bool()
        if embed_weight is not None:
            model.load_embeddings(embed_weight)
        return model


@dataclass(frozen=True, eq=False)
class StepPattern:
    """The attention of training-time test step k, without a mask tensor. The keys are a
    first block of `block` rows (step 0 of the whole sequence) followed by one block per
    later step holding the same rows as the queries; query r (sequence row `rows[r]`,
    default r) sees first-block rows <= rows[r] and, in later blocks, only its own row.
    `doc_ids` [B or 1, block] (packed rows: the conversation of each first-block row): the
    first-block rows of other conversations are hidden too."""

    block: int
    rows: torch.Tensor | None = None
    doc_ids: torch.Tensor | None = None


@dataclass(frozen=True, eq=False)
class Segments:
    """Causal attention inside each span (batch row, start, end) and never across spans: the
    conversations of packed rows, computed one by one (no scores across conversations). The
    spans of a row cover it in order; no past keys."""

    spans: list[tuple[int, int, int]]


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn_mask) -> torch.Tensor:
    """q [B, H, T, d]; k, v [B, Hkv, S, d] with S >= T (the last T keys are the queries' own).

    attn_mask: None (causal over past + new), a bool tensor (SDPA), a `StepPattern`
    (blockwise: T×T causal scores plus per-row diagonal scores, recomputed in backward
    rather than stored), `Segments` or a flex-attention BlockMask."""
    if isinstance(attn_mask, Segments):
        rows: dict[int, list[torch.Tensor]] = {}
        for i, a, e in attn_mask.spans:
            rows.setdefault(i, []).append(F.scaled_dot_product_attention(
                q[i:i + 1, :, a:e], k[i:i + 1, :, a:e], v[i:i + 1, :, a:e], is_causal=True,
                enable_gqa=q.shape[1] != k.shape[1]))
        return torch.cat([torch.cat(rows[i], dim=2) for i in range(q.shape[0])], dim=0)
    if isinstance(attn_mask, StepPattern):
        args = (q, k, v, attn_mask.block, attn_mask.rows, attn_mask.doc_ids)
        if torch.is_grad_enabled():
            return checkpoint(_step_attention, *args, use_reentrant=False)
        return _step_attention(*args)
    if attn_mask is not None and not isinstance(attn_mask, torch.Tensor):
        return _flex_attention(q, k, v, attn_mask)
    gqa = q.shape[1] != k.shape[1]
    if attn_mask is None:
        t, s = q.shape[2], k.shape[2]
        if s == t:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        attn_mask = causal_mask_with_past(t, s - t, q.device)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, enable_gqa=gqa)


def causal_mask_with_past(t: int, past: int, device: torch.device) -> torch.Tensor:
    """bool [1, 1, t, past + t]: every query sees all past keys and its own causal prefix."""
    rows = torch.arange(t, device=device)[:, None]
    cols = torch.arange(past + t, device=device)[None, :]
    return (cols < past + rows + 1)[None, None]


def _flex_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, block_mask) -> torch.Tensor:
    """Flex attention with a BlockMask: never materializes the score matrix (compiled on CUDA)."""
    from torch.nn.attention.flex_attention import flex_attention

    fn = flex_attention
    if q.is_cuda:
        fn = _flex_attention.__dict__.setdefault("compiled", torch.compile(flex_attention))
    return fn(q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


def _step_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, t0: int,
                    rows: torch.Tensor | None, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """StepPattern attention with grouped heads: O(R·t0 + R·k) scores instead of O(R·t0·k)."""
    b, h, r, d = q.shape
    kvh = k.shape[1]
    n = (k.shape[2] - t0) // r
    qg = q.reshape(b, kvh, h // kvh, r, d)
    k0, v0 = k[:, :, :t0].unsqueeze(2), v[:, :, :t0].unsqueeze(2)
    kd, vd = k[:, :, t0:].reshape(b, kvh, n, r, d), v[:, :, t0:].reshape(b, kvh, n, r, d)
    if rows is None:
        rows = torch.arange(r, device=q.device)
    allowed = torch.arange(t0, device=q.device)[None, :] <= rows[:, None]
    if doc_ids is not None:                                  # [B, r, t0]: the query's conversation only
        allowed = (allowed & (doc_ids[:, rows, None] == doc_ids[:, None, :]))[:, None, None]
    scale = d ** -0.5
    s0 = (qg @ k0.transpose(-1, -2) * scale).masked_fill(~allowed, float("-inf"))
    sd = torch.einsum("bgrtd,bgntd->bgrtn", qg, kd) * scale
    p = torch.cat([s0, sd], dim=-1).softmax(dim=-1, dtype=torch.promote_types(q.dtype, torch.float32)).to(q.dtype)
    out = p[..., :t0] @ v0 + torch.einsum("bgrtn,bgntd->bgrtd", p[..., t0:], vd)
    return out.reshape(b, h, r, d)
