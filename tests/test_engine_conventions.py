"""What SGLang and vLLM do with an exported EAGLE-3 folder, one rule per check, and our export
checked against every rule for a full-vocabulary and a reduced-vocabulary draft.

Read in the newest wheels on PyPI on 2026-12-01 (`pip download --no-deps`):
  SGLang 0.5.23  sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl   (paths below: sglang/srt/...)
  vLLM   0.33.0  vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl       (paths below: vllm/...)
Each rule cites engine, version and file:line. Neither engine runs here (no GPU, no wheels
installed): the rules are the engines' code written out, never imported or copied.
"""

from __future__ import annotations

import math

import pytest
import torch

from draftsmith.draft.config import Eagle3Config
from draftsmith.draft.model import rotary_tables
from draftsmith.errors import InputError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

POSITIONS = torch.tensor([[0, 1, 7, 100, 1023, 3000, 8191]])


# ----- rope: each engine's formula, written out from its code --------------------------------------

def _inv_freq(base: float, rotary_dim: int) -> torch.Tensor:
    # SGLang 0.5.23 srt/layers/rotary_embedding/base.py:233-251; vLLM 0.33.0
    # model_executor/layers/rotary_embedding/base.py:80-92 (identical)
    return 1.0 / (base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim))


def _llama3_inv_freq(base, rotary_dim, factor, low, high, orig):
    # SGLang 0.5.23 srt/layers/rotary_embedding/rope_variant.py:579-600; vLLM 0.33.0
    # model_executor/layers/rotary_embedding/llama3_rope.py:33-54 (identical)
    inv = _inv_freq(base, rotary_dim)
    low_wl, high_wl = orig / low, orig / high
    wave_len = 2 * math.pi / inv
    smooth = (orig / wave_len - low) / (high - low) if low != high else 0
    return torch.where(wave_len < high_wl, inv,
                       torch.where(wave_len > low_wl, inv / factor, (1 - smooth) * inv / factor + smooth * inv))


def _yarn_inv_freq(base, rotary_dim, factor, orig, beta_fast=32, beta_slow=1, truncate=True):
    # SGLang 0.5.23 srt/layers/rotary_embedding/yarn.py:137-169 (+ helpers :16-51), built with
    # max_position = original_max_position_embeddings (factory.py:311-370); vLLM 0.33.0
    # model_executor/layers/rotary_embedding/yarn_scaling_rope.py:_compute_inv_freq, common.py:34-70 (identical)
    pos_freqs = base ** (torch.arange(0, rotary_dim, 2, dtype=torch.float) / rotary_dim)

    def corr(rot):
        return (rotary_dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    lo, hi = corr(beta_fast), corr(beta_slow)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, rotary_dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = torch.clamp((torch.arange(rotary_dim // 2, dtype=torch.float) - lo) / (hi - lo), 0, 1)
    mask = 1 - ramp
    return (1.0 / (factor * pos_freqs)) * (1 - mask) + (1.0 / pos_freqs) * mask


def _yarn_mscale_sglang(factor, mscale=None, mscale_all_dim=None, attn_factor=1.0):
    # SGLang 0.5.23 srt/layers/rotary_embedding/yarn.py:122-131: both set -> ratio, else 0.1 ln f + 1
    def get(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    if mscale is not None and mscale_all_dim is not None:
        return get(factor, mscale) / get(factor, mscale_all_dim) * attn_factor
    return get(factor) * attn_factor


def _yarn_mscale_vllm(factor, mscale=None, mscale_all_dim=None, attention_factor=None):
    # vLLM 0.33.0 model_executor/layers/rotary_embedding/yarn_scaling_rope.py (__init__): attention_factor
    # wins, then the ratio when both are truthy, else yarn_get_mscale(factor) (common.py:73-76)
    def get(scale, m=1.0):
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0
    if attention_factor is not None:
        return float(attention_factor)
    if mscale and mscale_all_dim:
        return get(factor, mscale) / get(factor, mscale_all_dim)
    return get(factor)


def engine_cos_sin(engine: str, theta: float, scaling: dict | None, head_dim: int,
                   positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin [..., rotary_dim / 2] the engine's cos_sin_cache holds for these positions."""
    scaling = dict(scaling or {"rope_type": "default"})
    rotary_dim = int(head_dim * scaling.get("partial_rotary_factor", 1.0))
    kind = scaling["rope_type"]
    t = positions.float()
    scale = 1.0
    if kind == "default":
        inv = _inv_freq(theta, rotary_dim)
    elif kind == "linear":
        # SGLang 0.5.23 base.py:649-667, vLLM 0.33.0 linear_scaling_rope.py:79-94: positions / factor
        inv, t = _inv_freq(theta, rotary_dim), t / scaling["factor"]
    elif kind == "llama3":
        inv = _llama3_inv_freq(theta, rotary_dim, scaling["factor"], scaling["low_freq_factor"],
                               scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
    elif kind == "yarn":
        inv = _yarn_inv_freq(theta, rotary_dim, scaling["factor"], scaling["original_max_position_embeddings"],
                             scaling.get("beta_fast", 32), scaling.get("beta_slow", 1), scaling.get("truncate", True))
        if engine == "sglang":
            scale = _yarn_mscale_sglang(scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim"),
                                        scaling.get("attn_factor", 1.0))
        else:
            scale = _yarn_mscale_vllm(scaling["factor"], scaling.get("mscale"), scaling.get("mscale_all_dim"),
                                      scaling.get("attention_factor"))
    else:
        raise AssertionError(kind)
    freqs = torch.einsum("...i,j->...ij", t, inv)
    return freqs.cos() * scale, freqs.sin() * scale


LLAMA3 = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
          "original_max_position_embeddings": 1024}
SERVED_ROPES = {
    "default": (10000.0, None),
    "default, partial rotary 0.5": (10000.0, {"rope_type": "default", "partial_rotary_factor": 0.5}),
    "linear": (1000000.0, {"rope_type": "linear", "factor": 8.0}),
    "llama3": (500000.0, LLAMA3),
    "yarn": (150000.0, {"rope_type": "yarn", "factor": 32.0, "original_max_position_embeddings": 4096}),
    "yarn, gpt-oss (no truncation)": (150000.0, {"rope_type": "yarn", "factor": 32.0, "beta_fast": 32.0,
                                                 "beta_slow": 1.0, "truncate": False,
                                                 "original_max_position_embeddings": 4096}),
    "yarn, mscale ratio, partial 0.75": (10000.0, {"rope_type": "yarn", "factor": 4.0, "mscale": 0.707,
                                                   "mscale_all_dim": 0.707, "partial_rotary_factor": 0.75,
                                                   "original_max_position_embeddings": 2048}),
}


def _draft_config(theta: float, scaling: dict | None, head_dim: int = 16) -> Eagle3Config:
    return Eagle3Config(hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                        head_dim=head_dim, vocab_size=1000, draft_vocab_size=100, target_hidden_size=64,
                        aux_layer_ids=[2, 4, 5], target_num_hidden_layers=8, rope_theta=theta,
                        rope_scaling=scaling, max_position_embeddings=8192)


@pytest.mark.parametrize("engine", ["sglang", "vllm"])
@pytest.mark.parametrize("name", list(SERVED_ROPES))
def test_each_accepted_rope_is_what_the_engine_computes(name, engine):
    """#16.6: for every rope type the export accepts, the draft's training rope (transformers'
    functions, draftsmith.draft.model.rotary_tables) equals the engine's table at near and far
    positions."""
    theta, scaling = SERVED_ROPES[name]
    cfg = _draft_config(theta, scaling)
    cos, sin = rotary_tables(cfg, POSITIONS, torch.float32)
    want_cos, want_sin = engine_cos_sin(engine, theta, scaling, cfg.head_dim, POSITIONS)
    half = want_cos.shape[-1]
    assert cos.shape[-1] == 2 * half                              # neox layout: [freqs, freqs]
    for got, want in ((cos, want_cos), (sin, want_sin)):
        torch.testing.assert_close(got[..., :half], want, rtol=0, atol=2e-4)
        torch.testing.assert_close(got[..., half:], want, rtol=0, atol=2e-4)


def test_the_formulas_tell_the_rope_types_apart():
    """The comparison above can fail: each scaled rope differs from the plain one somewhere."""
    plain = engine_cos_sin("vllm", 150000.0, None, 16, POSITIONS)[0]
    for name in ("linear", "llama3", "yarn"):
        theta, scaling = SERVED_ROPES[name]
        other = engine_cos_sin("vllm", 150000.0, scaling, 16, POSITIONS)[0]
        assert (other - plain).abs().max() > 0.05, name


@pytest.mark.parametrize("rope_type, scaling, engines", [
    ("dynamic", {"rope_type": "dynamic", "factor": 2.0}, "SGLang"),
    ("longrope", {"rope_type": "longrope", "short_factor": [1.0] * 8, "long_factor": [4.0] * 8,
                  "original_max_position_embeddings": 4096}, "vLLM"),
    ("mrope", {"rope_type": "default", "mrope_section": [4, 2, 2]}, "SGLang"),
    ("yarn attention_factor", {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1.2,
                               "original_max_position_embeddings": 2048}, "SGLang"),
    ("deepseek_yarn", {"rope_type": "deepseek_yarn", "factor": 4.0}, "SGLang and vLLM"),
])
def test_ropes_an_engine_would_serve_differently_are_refused(rope_type, scaling, engines):
    """dynamic: SGLang 0.5.23 rope_variant.py:880-887 scales the base at every position, vLLM
    0.33.0 dynamic_ntk_scaling_rope.py:58-66 and transformers do not below max positions.
    longrope: vLLM phi3_long_rope_scaled_rope.py:49-55 uses the long factors everywhere once
    max_model_len > original max, SGLang rope_variant.py:140-147 per batch. yarn
    attention_factor: vLLM reads it (rotary_embedding/__init__.py:255), SGLang reads attn_factor
    (factory.py:325)."""
    with pytest.raises(InputError, match="rope") as info:
        _draft_config(10000.0, scaling)
    for engine in engines.split(" and "):
        assert engine in str(info.value), str(info.value)


@pytest.mark.parametrize("target_rope", [
    {"rope_type": "dynamic", "factor": 4.0, "rope_theta": 10000.0},
    {"rope_type": "longrope", "rope_theta": 10000.0, "partial_rotary_factor": 0.75,
     "short_factor": [1.0] * 6, "long_factor": [4.0] * 6, "original_max_position_embeddings": 4096},
])
def test_a_target_rope_no_engine_serves_as_trained_gives_the_draft_the_plain_rope(target_rope):
    """The engines build the draft's rope from the draft's config.json, so for a dynamic or
    longrope target the draft takes the plain rope at the target's theta (and partial rotary),
    which both serve identically at every position."""
    from transformers import LlamaConfig, Phi3Config

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=8, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=300, max_position_embeddings=16384)
    make = Phi3Config if target_rope["rope_type"] == "longrope" else LlamaConfig
    cfg = Eagle3Config.from_target_config(make(rope_parameters=dict(target_rope), **common))
    assert cfg.rope_theta == 10000.0
    partial = target_rope.get("partial_rotary_factor")
    assert cfg.rope_scaling == ({"rope_type": "default", "partial_rotary_factor": partial} if partial else None)
    cos, _ = rotary_tables(cfg, POSITIONS, torch.float32)
    want, _ = engine_cos_sin("sglang", 10000.0, cfg.rope_scaling, cfg.head_dim, POSITIONS)
    torch.testing.assert_close(cos[..., :want.shape[-1]], want, rtol=0, atol=2e-4)
