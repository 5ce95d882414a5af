"""What SGLang and vLLM do with an exported EAGLE-3 folder, one rule per check, and our export
checked against every rule for a full-vocabulary and a reduced-vocabulary draft.

Read in the newest wheels on PyPI on 2026-12-01 (`pip download --no-deps`):
  SGLang 0.5.23  sglang-0.5.23-cp311-cp311-manylinux_2_34_x86_64.whl   (paths below: sglang/srt/...)
  vLLM   0.33.0  vllm-0.33.0-cp38-abi3-manylinux_2_28_x86_64.whl       (paths below: vllm/...)
Each rule cites engine, version and file:line. Neither engine runs here (no GPU, no wheels
installed): the rules are the engines' code written out, never imported or copied.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors.torch import load_file

from _export_helpers import AUX, DRAFT_VOCAB, make_checkpoint, make_full_vocab_checkpoint
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
    # model_executor/layers/rotary_embedding/yarn_scaling_rope.py:50-71, common.py:34-70 (identical)
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
    # vLLM 0.33.0 model_executor/layers/rotary_embedding/yarn_scaling_rope.py:38-46: attention_factor
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


# ----- the loaders, config keys, aux ids, d2t, dtype: every rule against our export ------------------

@pytest.fixture(scope="module", params=["reduced-vocab", "full-vocab"])
def served(request, tiny_llama_dir, tmp_path_factory) -> dict:
    """A draft exported by `draftsmith export` against a target whose config says bfloat16."""
    from draftsmith.export import ExportConfig, export_checkpoint

    root = tmp_path_factory.mktemp(request.param)
    target = root / "target"
    target.mkdir()
    config = json.loads((tiny_llama_dir / "config.json").read_text())
    config["dtype"] = "bfloat16"
    (target / "config.json").write_text(json.dumps(config))
    make = make_checkpoint if request.param == "reduced-vocab" else make_full_vocab_checkpoint
    ckpt = make(tiny_llama_dir, root / "ckpt")
    export_checkpoint(ExportConfig(checkpoint=ckpt, output_dir=root / "served", target_model_path=target))
    return {"dir": root / "served", "config": json.loads((root / "served" / "config.json").read_text()),
            "tensors": load_file(str(root / "served" / "model.safetensors")), "target": config,
            "full_vocab": request.param == "full-vocab"}


def sglang_params(config: dict) -> set[str]:
    """Parameter names of SGLang 0.5.23 LlamaForCausalLMEagle3 (srt/models/llama_eagle3.py:122-323):
    model.embed_tokens, model.fc, model.layers.0 (qkv_proj, o_proj, gate_up_proj, down_proj,
    input_layernorm, hidden_norm, post_attention_layernorm), model.norm, lm_head (untied)."""
    layer = "model.layers.0."
    return {"model.embed_tokens.weight", "model.fc.weight", "model.norm.weight", "lm_head.weight",
            layer + "self_attn.qkv_proj.weight", layer + "self_attn.o_proj.weight", layer + "mlp.gate_up_proj.weight",
            layer + "mlp.down_proj.weight", layer + "input_layernorm.weight", layer + "hidden_norm.weight",
            layer + "post_attention_layernorm.weight"}


def sglang_load(config: dict, names: set[str]) -> tuple[set[str], set[str], bool]:
    """SGLang 0.5.23 load_weights (srt/models/llama_eagle3.py:325-378): 'midlayer' -> 'layers.0'
    (:338-348); d2t becomes hot_token_id (:350-353); t2d skipped (:355-356); q/k/v and gate/up
    stacked (:327-335, 358-369); any other name is tried as is, then with 'model.' (:371-372), and
    DROPPED SILENTLY when neither is a parameter (:373-378). Returns (loaded params, dropped names, d2t seen)."""
    params = sglang_params(config)
    loaded, dropped, d2t = set(), set(), False
    stacked = {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj",
               ".gate_proj": ".gate_up_proj", ".up_proj": ".gate_up_proj"}
    for name in names:
        name = name.replace("midlayer", "layers.0")
        if "d2t" in name:
            d2t = True
            continue
        if "t2d" in name:
            continue
        for short, merged in stacked.items():
            if short in name:
                name = name.replace(short, merged)
                break
        target = name if name in params else f"model.{name}"
        (loaded if target in params else dropped).add(target if target in params else name)
    return loaded, dropped, d2t


def vllm_load(config: dict, names: set[str], target_vocab: int) -> tuple[set[str], str | None]:
    """vLLM 0.33.0 Eagle3LlamaForCausalLM.load_weights (model_executor/models/llama_eagle3.py:420-470):
    t2d skipped (:426-427); d2t renamed draft_id_to_target_id (:428-430); names other than lm_head
    get 'model.' (:443-444); 'midlayer.' -> 'layers.0.' and q/k/v, gate/up stacked (:290-299);
    draft_id_to_target_id is a parameter only when draft_vocab_size != the target's vocab (:339-345);
    AutoWeightsLoader raises on a name with no parameter (model_executor/models/utils.py:441-448).
    Returns (loaded params, the loader's error or None)."""
    layer = "model.layers.0."
    params = {"model.fc.weight", "model.norm.weight", "lm_head.weight", "model.embed_tokens.weight",
              layer + "self_attn.qkv_proj.weight", layer + "self_attn.o_proj.weight", layer + "mlp.gate_up_proj.weight",
              layer + "mlp.down_proj.weight", layer + "input_layernorm.weight", layer + "hidden_norm.weight",
              layer + "post_attention_layernorm.weight"}
    if config.get("draft_vocab_size", config["vocab_size"]) != target_vocab:
        params.add("draft_id_to_target_id")
    stacked = {".q_proj": ".qkv_proj", ".k_proj": ".qkv_proj", ".v_proj": ".qkv_proj",
               ".gate_proj": ".gate_up_proj", ".up_proj": ".gate_up_proj"}
    loaded = set()
    for name in names:
        if "t2d" in name:
            continue
        if "d2t" in name:
            name = name.replace("d2t", "draft_id_to_target_id")
        elif "lm_head" not in name:
            name = "model." + name
        name = name.replace("midlayer.", "layers.0.")
        for short, merged in stacked.items():
            if short in name:
                name = name.replace(short, merged)
                break
        if name not in params:
            return loaded, f"There is no module or parameter named {name!r}"
        loaded.add(name)
    return loaded, None


def test_sglang_loader_fills_every_parameter_and_drops_nothing(served):
    loaded, dropped, _ = sglang_load(served["config"], set(served["tensors"]))
    assert dropped == set()
    # embed_tokens is the target's, shared at load (srt/speculative/eagle_worker_v2.py:336-364 set_embed)
    assert loaded == sglang_params(served["config"]) - {"model.embed_tokens.weight"}


def test_sglang_rule_catches_what_it_guards():
    """The simulation is not vacuous: a misspelt tensor is dropped and leaves a parameter unloaded."""
    names = {"fc.weight", "midlayer.self_attn.q_proj.weight", "norm.weights"}
    loaded, dropped, _ = sglang_load({}, names)
    assert dropped == {"norm.weights"} and "model.norm.weight" not in loaded


def test_vllm_loader_accepts_every_name_and_fills_every_parameter(served):
    target_vocab = served["target"]["vocab_size"]
    loaded, error = vllm_load(served["config"], set(served["tensors"]), target_vocab)
    assert error is None
    expected = {"model.fc.weight", "model.norm.weight", "lm_head.weight", "model.layers.0.self_attn.qkv_proj.weight",
                "model.layers.0.self_attn.o_proj.weight", "model.layers.0.mlp.gate_up_proj.weight",
                "model.layers.0.mlp.down_proj.weight", "model.layers.0.input_layernorm.weight",
                "model.layers.0.hidden_norm.weight", "model.layers.0.post_attention_layernorm.weight"}
    if not served["full_vocab"]:
        expected.add("draft_id_to_target_id")
    assert loaded == expected


def test_vllm_rule_refuses_a_full_vocab_d2t():
    """#16.1 as vLLM sees it: d2t shipped with a full vocabulary has nowhere to go."""
    config = {"vocab_size": 100, "draft_vocab_size": 100}
    _, error = vllm_load(config, {"fc.weight", "d2t"}, target_vocab=100)
    assert error and "draft_id_to_target_id" in error


def test_architecture_resolves_in_both_engines(served):
    # SGLang 0.5.23: the class named by architectures, EntryClass = [LlamaForCausalLMEagle3]
    # (srt/models/llama_eagle3.py:387). vLLM 0.33.0: EAGLEConfig keeps an architecture that ends
    # with "Eagle3" for method eagle3 (transformers_utils/configs/eagle.py:55-64) and the registry maps
    # "LlamaForCausalLMEagle3" to llama_eagle3.Eagle3LlamaForCausalLM (model_executor/models/registry.py:702).
    assert served["config"]["architectures"] == ["LlamaForCausalLMEagle3"]
    assert served["config"]["model_type"] == "llama" and served["config"]["num_hidden_layers"] == 1


def test_config_keys_both_engines_read(served):
    c, target = served["config"], served["target"]
    # both: the Llama layer shape (SGLang srt/models/llama.py:160-200, 320-370; vLLM model_executor/models/llama.py:120-310)
    for key in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
                "rms_norm_eps", "max_position_embeddings", "vocab_size"):
        assert isinstance(c[key], (int, float)) and not isinstance(c[key], bool), key
    # both raise on any activation but silu (SGLang srt/models/llama.py:116; vLLM model_executor/models/llama.py:112)
    assert c["hidden_act"] == "silu"
    # fc input = target_hidden_size x 3 (SGLang llama_eagle3.py:151-167; vLLM llama_eagle3.py:218-221)
    assert c["target_hidden_size"] == target["hidden_size"]
    # draft_vocab_size: SGLang takes lm_head from the target when it is None (llama_eagle3.py:306-308),
    # vLLM defaults it to vocab_size (llama_eagle3.py:314-316)
    assert c["draft_vocab_size"] == (c["vocab_size"] if served["full_vocab"] else DRAFT_VOCAB)
    assert c["vocab_size"] == target["vocab_size"]
    # SGLang: tie_word_embeddings makes lm_head the target embeddings (llama_eagle3.py:303-304); vLLM
    # keeps the draft's own lm_head when it ships one (v1/spec_decode/llm_base_proposer.py:1510-1530)
    assert c["tie_word_embeddings"] is False and "lm_head.weight" in served["tensors"]
    # no key either engine acts on that the draft does not implement (draftsmith.draft.engine_keys)
    from draftsmith.draft import engine_keys

    assert engine_keys.refused(c) == []


def test_aux_layer_ids_in_each_engines_convention(served):
    c = served["config"]
    # vLLM: top-level ids as is (v1/worker/gpu_model_runner.py:5207; v1/worker/gpu/spec_decode/eagle/
    # eagle3_utils.py:119); captured before layer id (model_executor/models/llama.py:428-441:
    # the state entering layer idx + 1 is recorded as idx + 1) = HF hidden_states[id]
    vllm_hf = list(c["eagle_aux_hidden_state_layer_ids"])
    # SGLang: eagle_config ids (srt/model_executor/model_runner_components/spec_aux_hidden_state.py:
    # 188-194), captured at val + 1 (srt/models/llama.py:939-941) = HF hidden_states[val + 1]
    sglang_hf = [i + 1 for i in c["eagle_config"]["eagle_aux_hidden_state_layer_ids"]]
    assert vllm_hf == sglang_hf == AUX == c["draftsmith"]["aux_layer_ids"]


def test_d2t_semantics_target_is_draft_plus_d2t(served):
    tensors, c = served["tensors"], served["config"]
    if served["full_vocab"]:
        # SGLang: no d2t -> hot_token_id None -> draft ids are target ids (srt/speculative/eagle_worker_v2.py:
        # 757-758); vLLM: draft_id_to_target_id None -> logits used as is (llama_eagle3.py:378-383)
        assert "d2t" not in tensors and "t2d" not in tensors
        return
    d2t = tensors["d2t"]
    assert d2t.dtype == torch.int64 and d2t.shape == (c["draft_vocab_size"],)
    # SGLang: hot_token_id = d2t + arange (llama_eagle3.py:352), then topk_index = hot_token_id[topk_index];
    # vLLM: targets = arange + draft_id_to_target_id (llama_eagle3.py:385-386)
    target_ids = d2t + torch.arange(d2t.numel())
    assert torch.equal(target_ids, torch.arange(DRAFT_VOCAB) * 3)      # the helper's mapping: every third id
    assert int(target_ids.max()) < c["vocab_size"] and target_ids.unique().numel() == d2t.numel()


def test_rope_keys_as_the_engines_get_them(served):
    """Both engines read `config.rope_parameters` as transformers 5 builds it from the file
    (SGLang srt/models/llama.py:322-328 and llama_eagle3.py:132-136; vLLM model_executor/models/llama.py:
    246); SGLang 0.5.23 pins transformers 5.19.0, vLLM 0.33.0 5.16.1-5.20. The top-level rope_theta /
    rope_scaling and rope_parameters must say the same."""
    from transformers import LlamaConfig

    c = served["config"]
    read = LlamaConfig.from_dict(dict(c)).rope_parameters
    target = served["target"]
    target_theta = target.get("rope_theta") or target["rope_parameters"]["rope_theta"]
    assert read["rope_theta"] == c["rope_theta"] == c["rope_parameters"]["rope_theta"] == target_theta
    assert read["rope_type"] == "default" and c["rope_scaling"] is None
    from draftsmith.draft import rope

    assert rope.config_problems(c) == []


def test_dtype_as_the_engines_read_it(served):
    """SGLang 0.5.23 serves the draft in the dtype its config declares under --dtype auto (`dtype`
    before `torch_dtype`, float32 -> float16: srt/configs/model_config.py:881, 2284-2320); vLLM
    0.33.0 builds the draft model config with the target's dtype (config/speculative.py:1418). So
    the export declares, and stores, the target's dtype."""
    c, tensors = served["config"], served["tensors"]
    assert c["dtype"] == c["torch_dtype"] == served["target"]["dtype"] == "bfloat16"
    assert {t.dtype for t in tensors.values() if t.is_floating_point()} == {torch.bfloat16}
