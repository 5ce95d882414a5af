"""The EAGLE-3 draft: config.json ✱ round trip (rope!), checkpoint names, and the midlayer
checked against an independent reference built from transformers' own rope and plain math."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoConfig, LlamaConfig, Qwen2Config
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding, apply_rotary_pos_emb

from draftsmith.draft import Eagle3Config, Eagle3Draft
from draftsmith.errors import InputError


pytestmark = pytest.mark.usefixtures("one_torch_thread")


CHECKPOINT_NAMES = {
    "fc.weight", "midlayer.input_layernorm.weight", "midlayer.hidden_norm.weight",
    "midlayer.self_attn.q_proj.weight", "midlayer.self_attn.k_proj.weight",
    "midlayer.self_attn.v_proj.weight", "midlayer.self_attn.o_proj.weight",
    "midlayer.post_attention_layernorm.weight", "midlayer.mlp.gate_proj.weight",
    "midlayer.mlp.up_proj.weight", "midlayer.mlp.down_proj.weight", "norm.weight", "lm_head.weight",
    "d2t", "t2d",
}

LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 8192}


def _target(**kw) -> LlamaConfig:
    base = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, rope_theta=250000.0, max_position_embeddings=4096)
    base.update(kw)
    return LlamaConfig(**base)


def _draft(cfg: Eagle3Config, seed: int = 0) -> Eagle3Draft:
    torch.manual_seed(seed)
    draft = Eagle3Draft(cfg)
    for p in draft.parameters():
        torch.nn.init.normal_(p, std=0.2)
    draft.load_embeddings(torch.randn(cfg.vocab_size, cfg.hidden_size))
    return draft


def test_config_from_target_defaults_and_overrides():
    cfg = Eagle3Config.from_target_config(_target(), draft_vocab_size=100)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (64, 4, 2, 16)
    assert cfg.aux_layer_ids == [2, 4, 5] and cfg.vocab_size == 300 and cfg.draft_vocab_size == 100
    assert cfg.rope_theta == 250000.0 and cfg.rope_scaling is None and cfg.max_position_embeddings == 4096
    over = Eagle3Config.from_target_config(_target(), overrides={"intermediate_size": 32, "rms_norm_eps": 1e-5})
    assert over.intermediate_size == 32 and over.rms_norm_eps == 1e-5 and over.draft_vocab_size == 300
    with pytest.raises(InputError, match="hidden_sizee"):
        Eagle3Config.from_target_config(_target(), overrides={"hidden_sizee": 1})
    with pytest.raises(InputError, match="draft_vocab_size"):
        Eagle3Config.from_target_config(_target(), draft_vocab_size=301)


@pytest.mark.parametrize("target", [
    _target(),
    _target(rope_scaling=dict(LLAMA3_SCALING), rope_theta=500000.0, max_position_embeddings=131072),
    Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4,
                num_key_value_heads=2, vocab_size=300, rope_theta=1000000.0),
])
def test_rope_settings_round_trip_into_config_json(tmp_path, target):
    """The peer bug: rope theta silently left at 10000. Theta and scaling must reach config.json
    in both forms, and what SGLang/vLLM (rope_theta/rope_scaling) and transformers 5
    (rope_parameters) read back must be the target's."""
    expected_theta = target.rope_parameters["rope_theta"]
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=64)
    _draft(cfg).save_pretrained(tmp_path)
    written = json.loads((tmp_path / "config.json").read_text())
    assert written["rope_theta"] == expected_theta
    assert written["rope_parameters"]["rope_theta"] == expected_theta
    if target.rope_parameters.get("rope_type", "default") == "default":
        assert written["rope_scaling"] is None
    else:
        for key, value in LLAMA3_SCALING.items():
            assert written["rope_scaling"][key] == value and written["rope_parameters"][key] == value
    # transformers reads the same rope back from the file
    hf = AutoConfig.from_pretrained(tmp_path)
    assert hf.rope_parameters["rope_theta"] == expected_theta
    # the declared dtype is the saved tensors' (fp32 here), everything else round-trips
    assert written["dtype"] == written["torch_dtype"] == "float32"
    assert Eagle3Config.from_config_dict(written) == dataclasses.replace(cfg, dtype="float32")


def test_config_json_contract(tmp_path):
    cfg = Eagle3Config.from_target_config(_target(), draft_vocab_size=100)
    _draft(cfg).save_pretrained(tmp_path)
    d = json.loads((tmp_path / "config.json").read_text())
    assert d["architectures"] == ["LlamaForCausalLMEagle3"] and d["model_type"] == "llama"
    assert d["num_hidden_layers"] == 1 and d["tie_word_embeddings"] is False
    assert (d["draft_vocab_size"], d["vocab_size"], d["target_hidden_size"]) == (100, 300, 64)
    assert d["eagle_aux_hidden_state_layer_ids"] == [2, 4, 5]                   # vLLM: as is
    assert d["eagle_config"]["eagle_aux_hidden_state_layer_ids"] == [1, 3, 4]   # SGLang captures id + 1


def test_checkpoint_names_and_reload_gives_identical_outputs(tmp_path):
    cfg = Eagle3Config.from_target_config(_target(), draft_vocab_size=100)
    draft = _draft(cfg)
    d2t = torch.randint(0, 200, (100,))
    t2d = torch.zeros(300, dtype=torch.bool)
    t2d[torch.arange(100) + d2t] = True
    draft.set_vocab_mapping(d2t, t2d)
    draft.save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert set(tensors) == CHECKPOINT_NAMES                       # no embeddings saved
    assert tensors["d2t"].dtype == torch.int64 and tensors["t2d"].dtype == torch.bool
    assert tensors["fc.weight"].shape == (64, 3 * 64)
    assert tensors["midlayer.self_attn.q_proj.weight"].shape == (64, 2 * 64)

    again = Eagle3Draft.from_pretrained(tmp_path, embed_weight=draft.embed_weight)
    aux = torch.randn(2, 7, 3 * 64)
    ids = torch.randint(0, 300, (2, 7))
    pos = torch.arange(7).expand(2, 7)
    for model in (draft, again):
        model.eval()
    out_a, kv_a = draft.layer(ids, draft.project(aux), pos)
    out_b, kv_b = again.layer(ids, again.project(aux), pos)
    assert torch.equal(out_a, out_b) and torch.equal(kv_a[0], kv_b[0])
    assert torch.equal(draft.logits(out_a), again.logits(out_b))
    assert torch.equal(again.draft_to_target, torch.arange(100) + d2t)


def test_from_pretrained_names_the_bad_tensor(tmp_path):
    from safetensors.torch import save_file

    cfg = Eagle3Config.from_target_config(_target(), draft_vocab_size=100)
    _draft(cfg).save_pretrained(tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["midlayer.mlp.gate_proj.weight"] = tensors["midlayer.mlp.gate_proj.weight"][:, :10].contiguous()
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(InputError, match="gate_proj"):
        Eagle3Draft.from_pretrained(tmp_path)
    del tensors["norm.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(InputError, match="norm.weight"):
        Eagle3Draft.from_pretrained(tmp_path)


def _reference_layer(draft: Eagle3Draft, target: LlamaConfig, ids, hidden, pos):
    """The SGLang midlayer written out with transformers' rope and explicit softmax attention."""
    sd = {k: v.double() for k, v in draft.state_dict().items() if v.is_floating_point()}
    eps = draft.config.rms_norm_eps

    def rms(x, w):
        return w * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)

    b, t, _ = hidden.shape
    hidden = hidden.double()
    emb = draft.embed_weight.double()[ids]
    x = torch.cat([rms(emb, sd["midlayer.input_layernorm.weight"]),
                   rms(hidden, sd["midlayer.hidden_norm.weight"])], -1)
    q = (x @ sd["midlayer.self_attn.q_proj.weight"].T).view(b, t, 4, 16).transpose(1, 2)
    k = (x @ sd["midlayer.self_attn.k_proj.weight"].T).view(b, t, 2, 16).transpose(1, 2)
    v = (x @ sd["midlayer.self_attn.v_proj.weight"].T).view(b, t, 2, 16).transpose(1, 2)
    cos, sin = LlamaRotaryEmbedding(config=target)(v.float(), pos)
    q, k = apply_rotary_pos_emb(q, k, cos.double(), sin.double())
    k, v = k.repeat_interleave(2, dim=1), v.repeat_interleave(2, dim=1)
    scores = q @ k.transpose(-1, -2) / 4.0
    scores = scores.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
    att = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, t, 64) @ sd["midlayer.self_attn.o_proj.weight"].T
    h = att + hidden
    y = rms(h, sd["midlayer.post_attention_layernorm.weight"])
    mlp = (torch.nn.functional.silu(y @ sd["midlayer.mlp.gate_proj.weight"].T) * (y @ sd["midlayer.mlp.up_proj.weight"].T)) \
        @ sd["midlayer.mlp.down_proj.weight"].T
    out = mlp + h
    return out, rms(out, sd["norm.weight"]) @ sd["lm_head.weight"].T


@pytest.mark.parametrize("scaling", [None, LLAMA3_SCALING])
def test_midlayer_matches_reference_with_target_rope(scaling):
    target = _target(rope_scaling=dict(scaling), max_position_embeddings=131072) if scaling else _target()
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=50)
    draft = _draft(cfg).double()
    draft.embed_weight = draft.embed_weight.double()
    ids = torch.randint(0, 300, (2, 9))
    pos = torch.arange(9).expand(2, 9) + torch.tensor([[0], [5000]])   # far positions exercise scaling
    hidden = draft.project(torch.randn(2, 9, 192, dtype=torch.float64))
    out, _ = draft.layer(ids, hidden, pos)
    ref_out, ref_logits = _reference_layer(draft, target, ids, hidden.detach(), pos)
    torch.testing.assert_close(out, ref_out, rtol=1e-4, atol=1e-5)  # rope tables are fp32 in both
    torch.testing.assert_close(draft.logits(out), ref_logits, rtol=1e-4, atol=1e-5)


def test_past_kv_decode_equals_full_causal_pass():
    """The eval's KV-cache use: feeding tokens one by one with the returned keys/values as
    past_kv gives the same outputs as one causal pass."""
    cfg = Eagle3Config.from_target_config(_target(), draft_vocab_size=50)
    draft = _draft(cfg).double()
    draft.embed_weight = draft.embed_weight.double()
    ids = torch.randint(0, 300, (1, 6))
    pos = torch.arange(6)[None]
    hidden = torch.randn(1, 6, 64, dtype=torch.float64)
    full, _ = draft.layer(ids, hidden, pos)
    past = None
    for t in range(6):
        out, (k, v) = draft.layer(ids[:, t:t + 1], hidden[:, t:t + 1], pos[:, t:t + 1], past_kv=past)
        past = (k, v) if past is None else (torch.cat([past[0], k], 2), torch.cat([past[1], v], 2))
        torch.testing.assert_close(out[:, 0], full[:, t], rtol=1e-10, atol=1e-10)


def _non_silu_targets():
    """Real transformers configs of families whose MLP is not SiLU (#16.3)."""
    from transformers import Gemma2Config, Gemma3TextConfig, GemmaConfig, GPTNeoXConfig, PhiConfig, Starcoder2Config

    small = dict(hidden_size=64, intermediate_size=96, num_hidden_layers=8, num_attention_heads=4, vocab_size=300,
                 bos_token_id=1, eos_token_id=2, pad_token_id=0)
    return {
        "gemma (gelu_pytorch_tanh)": GemmaConfig(head_dim=16, num_key_value_heads=2, **small),
        "phi-2 (gelu_new)": PhiConfig(**small),
        "gpt-neox (gelu)": GPTNeoXConfig(**small),
        "starcoder2 (gelu_pytorch_tanh)": Starcoder2Config(num_key_value_heads=2, **small),
        "gemma2 (hidden_activation)": Gemma2Config(head_dim=16, num_key_value_heads=2, **small),
        "gemma3 (hidden_activation)": Gemma3TextConfig(head_dim=16, num_key_value_heads=2, **small),
    }


@pytest.mark.parametrize("name", list(_non_silu_targets()))
def test_the_draft_is_a_silu_llama_layer_whatever_the_target(name, tmp_path):
    """#16.3: both engines build the EAGLE-3 layer's MLP as a Llama SiLU MLP and raise on any
    other activation (SGLang 0.5.23 srt/models/llama.py:116, vLLM 0.33.0
    model_executor/models/llama.py:112), so the draft of a GELU target must be SiLU and export."""
    from draftsmith.export import check_folder

    target = _non_silu_targets()[name]
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=100)
    assert cfg.hidden_act == "silu"
    assert (cfg.hidden_size, cfg.vocab_size, cfg.target_num_hidden_layers) == (64, 300, 8)
    draft = _draft(cfg)
    draft.save_pretrained(tmp_path)
    report = check_folder(tmp_path, target)
    assert report.ok, report.errors
    assert json.loads((tmp_path / "config.json").read_text())["hidden_act"] == "silu"
    with pytest.raises(InputError, match="hidden_act"):
        Eagle3Config.from_target_config(target, overrides={"hidden_act": "gelu"})


@pytest.mark.parametrize("name", ["llama", "phi-2 (gelu_new)"])
def test_config_keys_written_are_the_ones_readers_know(name):
    """#16.5: readers drop (with a warning) every key outside CONFIG_KEYS, so the writer must never
    write one; a written config reads back without warnings."""
    from draftsmith.draft.config import CONFIG_KEYS, EAGLE_CONFIG_KEYS, inert_keys

    target = _target() if name == "llama" else _non_silu_targets()[name]
    written = Eagle3Config.from_target_config(target, draft_vocab_size=100).to_config_dict()
    assert set(written) <= CONFIG_KEYS and set(written["eagle_config"]) <= EAGLE_CONFIG_KEYS
    assert inert_keys(written) == []
