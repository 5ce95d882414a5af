"""`draftsmith estimate-memory`: a traced step on fake tensors equals the same step on real ones,
its parts add up to independent counts, and it grows linearly in T with flex attention."""

from __future__ import annotations

import json

import pytest
import torch

from draftsmith.cli import run_command
from draftsmith.train import memory as M

TINY = {"model_type": "llama", "hidden_size": 64, "intermediate_size": 160, "num_attention_heads": 4,
        "num_key_value_heads": 2, "num_hidden_layers": 8, "vocab_size": 4096, "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0}


def _cfg(**kw) -> M.MemoryConfig:
    base = dict(max_length=96, draft_vocab_size=1024, autocast="off", device="cpu", dtype="float32", supervised=0.6)
    return M.MemoryConfig(**{**base, **kw})


def _trace(cfg: M.MemoryConfig, attention: str, fake: bool) -> dict[str, int]:
    inputs = M.integer_inputs(cfg, TINY["vocab_size"])
    torch.manual_seed(0)
    if fake:
        with M.symbolic(cuda=False):
            step, opt, head, batch = M.build_step(cfg, TINY, inputs, attention)
            return M.trace_steps(step, lambda m: m(batch).loss, M.adamw_step(opt),
                                 externals=(opt, head, batch["aux_hidden_states"], batch["hidden_state"]),
                                 autocast=False)
    step, opt, head, batch = M.build_step(cfg, TINY, inputs, attention)
    for t in (head, step.draft.embed_weight, batch["aux_hidden_states"], batch["hidden_state"]):
        t.normal_(0, 0.02)
    return M.trace_steps(step, lambda m: m(batch).loss, M.adamw_step(opt),
                         externals=(opt, head, batch["aux_hidden_states"], batch["hidden_state"]), autocast=False)


@pytest.mark.parametrize("attention", ["blockwise", "sdpa"])
def test_fake_step_has_the_real_steps_peak(attention):
    cfg = _cfg(attention=attention)
    fake, real = _trace(cfg, attention, True), _trace(cfg, attention, False)
    assert real["Total"] > 0
    assert abs(fake["Total"] - real["Total"]) <= 0.02 * real["Total"], (fake, real)
    # the second step holds AdamW's two moments of every trainable parameter
    assert fake["Optstate"] >= 2 * fake["Parameter"]


def _expected_params(h: int, inter: int, heads: int, kv: int, hd: int, vd: int) -> int:
    """Trainable parameters of the EAGLE-3 draft, counted from its layout (fp32 masters)."""
    attn = 2 * h * heads * hd + 2 * (2 * h * kv * hd) + heads * hd * h     # q, k, v on 2H; o
    mlp = 3 * h * inter
    norms = 4 * h                                                          # input, hidden, post-attn, final
    return 4 * (3 * h * h + attn + mlp + norms + vd * h)


def test_cli_json_parts_add_up(tmp_path, capsys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    code = run_command("estimate-memory", ["--target-config", str(path), "--max-length", "128",
                                           "--draft-vocab-size", "1024", "--device", "cpu", "--attention",
                                           "blockwise", "--json"])
    assert code == 0
    r = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("peak_bytes", "params_bytes", "optimizer_bytes", "activation_bytes"):
        assert isinstance(r[key], int) and r[key] > 0, key
    assert r["params_bytes"] == _expected_params(64, 160, 4, 2, 16, 1024)
    assert r["optimizer_bytes"] == 2 * r["params_bytes"]
    assert r["frozen_bytes"] >= 4096 * 64 * 2                   # the bf16 target embeddings
    assert r["peak_bytes"] >= r["params_bytes"] + r["optimizer_bytes"] + r["activation_bytes"]


def test_flex_grows_linearly_in_length():
    """No T×T tensor alive with flex: 4× the tokens at most 4× the activations (SDPA's explicit
    T × T·(k+1) mask, the reference, grows faster than that)."""
    def activations(t: int, attention: str) -> int:
        peak = _trace(_cfg(max_length=t, attention=attention, supervised=1.0), attention, True)
        return peak["Activation"] + peak["Temp"]

    flex = activations(1024, "flex") / activations(256, "flex")
    sdpa = activations(1024, "sdpa") / activations(256, "sdpa")
    assert 2.0 < flex <= 4.0, flex
    assert sdpa > 4.0, sdpa


def test_world_size_adjustments(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    base = dict(target_config=str(path), max_length=32, draft_vocab_size=1024, device="cpu", attention="blockwise",
                ttt_length=3)
    one = M.estimate_memory(M.MemoryConfig(**base))
    ddp = M.estimate_memory(M.MemoryConfig(**base, world_size=2, parallel="ddp"))
    fsdp = M.estimate_memory(M.MemoryConfig(**base, world_size=2, parallel="fsdp"))
    assert ddp["peak_bytes"] == one["peak_bytes"] + one["params_bytes"]
    assert fsdp["peak_bytes"] < one["peak_bytes"]


def test_online_adds_the_targets_weights(tmp_path):
    from transformers import AutoConfig, AutoModelForCausalLM

    path = tmp_path / "config.json"
    path.write_text(json.dumps(TINY))
    base = dict(target_config=str(path), max_length=32, draft_vocab_size=1024, device="cpu", attention="blockwise",
                ttt_length=3)
    online = M.estimate_memory(M.MemoryConfig(**base, mode="online"))
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**TINY))
    assert online["target_weights_bytes"] == 2 * sum(p.numel() for p in model.parameters())   # bf16
    offline = M.estimate_memory(M.MemoryConfig(**base))
    assert online["peak_bytes"] >= online["target_weights_bytes"] + online["target_forward_peak_bytes"]
    shared = 2 * (2 * TINY["vocab_size"] * TINY["hidden_size"])      # bf16 embeddings + lm_head, not twice
    assert online["peak_bytes"] >= offline["peak_bytes"] + online["target_weights_bytes"] - shared


def test_activation_checkpointing_halves_the_activations_per_token(tmp_path):
    """Per token (the growth from T to 2T, free of the fixed loss-chunk and vocab costs)."""
    path = tmp_path / "config.json"
    path.write_text(json.dumps({**TINY, "hidden_size": 128, "intermediate_size": 512}))

    def per_token(checkpointing: bool) -> float:
        act = [M.estimate_memory(M.MemoryConfig(target_config=str(path), max_length=t, draft_vocab_size=256,
                                                device="cpu", attention="flex", ttt_length=3,
                                                activation_checkpointing=checkpointing))["activation_bytes"]
               for t in (128, 256)]
        return (act[1] - act[0]) / 128

    plain, ckpt = per_token(False), per_token(True)
    assert 0 < ckpt < 0.6 * plain, (ckpt, plain)
