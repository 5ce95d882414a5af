"""The HF target backend against HF's own forward pass (output_hidden_states=True)."""

from __future__ import annotations

import pytest
import torch

from draftsmith.errors import DraftsmithError
from draftsmith.target.hf import default_aux_layers, load_target

from _hidden_states_helpers import one_torch_thread  # noqa: F401 (autouse fixture)


def _reference(model, input_ids, layers):
    with torch.no_grad():
        out = model(input_ids=input_ids, output_hidden_states=True)
    hs = out.hidden_states
    return torch.cat([hs[i] for i in layers], dim=-1), hs[-1], out.logits


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_features_equal_hf_hidden_states_exactly_in_bf16(fixture, request):
    target = load_target(request.getfixturevalue(fixture), dtype=torch.bfloat16)
    assert target.aux_layers == default_aux_layers(8) == [2, 4, 5]
    assert (target.hidden_size, target.vocab_size) == (64, 49152)
    ids = torch.randint(3, 49152, (2, 29))
    feats = target.features(ids, torch.ones_like(ids))
    aux, last, logits = _reference(target.model, ids, target.aux_layers)
    assert feats["aux_hidden_states"].dtype == torch.bfloat16
    assert feats["aux_hidden_states"].shape == (2, 29, 3 * 64)
    assert torch.equal(feats["aux_hidden_states"], aux)
    assert torch.equal(feats["hidden_state"], last)
    # the stored final state is the one whose LM head gives the target's logits
    assert torch.equal(feats["hidden_state"] @ target.lm_head_weight.T, logits)


def test_default_aux_layers_refuse_targets_too_shallow_for_three_distinct_layers():
    assert default_aux_layers(7) == [2, 3, 4]
    assert default_aux_layers(32) == [2, 16, 29]
    for num_layers in (4, 5, 6):
        with pytest.raises(DraftsmithError, match="--aux-layers"):
            default_aux_layers(num_layers)


def test_aux_layer_override_and_range_check(tiny_llama_dir):
    target = load_target(tiny_llama_dir, dtype=torch.float32, aux_layers=[0, 3])
    ids = torch.randint(3, 49152, (1, 17))
    aux, _, _ = _reference(target.model, ids, [0, 3])
    assert torch.equal(target.features(ids)["aux_hidden_states"], aux)
    assert torch.equal(target.features(ids)["aux_hidden_states"][..., :64], target.embed_tokens(ids))
    with pytest.raises(DraftsmithError, match="aux layer 8"):
        load_target(tiny_llama_dir, aux_layers=[1, 8])


def _pad(seqs, side, width):
    ids = torch.full((len(seqs), width), 2, dtype=torch.long)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    slices = []
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[b, sl], mask[b, sl] = s, 1
        slices.append(sl)
    return ids, mask, slices


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_features_do_not_depend_on_batch_or_padding_side(fixture, request):
    """At a given padded width a row's features are exact whatever its neighbours and padding side;
    across widths SDPA may round differently (the stage fixes each sample's width, see generate.py)."""
    target = load_target(request.getfixturevalue(fixture), dtype=torch.bfloat16)
    seqs = [torch.randint(3, 49152, (n,)) for n in (41, 7, 23, 41, 1)]
    width = 48
    alone = [target.features(*_pad([s], "right", width)[:2]) for s in seqs]
    unpadded = [target.features(s[None]) for s in seqs]
    for side in ("right", "left"):
        ids, mask, slices = _pad(seqs, side, width)
        feats = target.features(ids, mask)
        for b, sl in enumerate(slices):
            n = len(seqs[b])
            for key in ("aux_hidden_states", "hidden_state"):
                assert torch.equal(feats[key][b, sl], alone[b][key][0, :n]), (side, b, key)
                torch.testing.assert_close(feats[key][b, sl], unpadded[b][key][0], rtol=0.02, atol=0.02)
            pad = torch.ones(width, dtype=torch.bool)
            pad[sl] = False
            assert not feats["hidden_state"][b, pad].any()


def test_topk_over_draft_vocab_matches_full_logits(tiny_llama_dir):
    target = load_target(tiny_llama_dir, dtype=torch.float32)
    ids = torch.randint(3, 49152, (1, 12))
    hidden = target.features(ids)["hidden_state"][0]
    draft_to_target = torch.randperm(49152)[:500].sort().values
    top_ids, top_logits = target.topk(hidden, draft_to_target, 8)
    full = target.model(input_ids=ids).logits[0].detach()
    expect_logits, expect_ids = full[:, draft_to_target].topk(8, dim=-1)
    assert torch.equal(top_ids, expect_ids)
    torch.testing.assert_close(top_logits, expect_logits, rtol=1e-5, atol=1e-5)
    with pytest.raises(DraftsmithError, match="exceeds"):
        target.topk(hidden, draft_to_target[:4], 8)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_aux_capture_equals_output_hidden_states_through_a_kv_cache(fixture, request):
    """What eval's speculative decoding reads (AuxCapture on the causal LM, a prefill, a one-token
    step and a verify chunk through the KV cache) equals HF's own output_hidden_states there."""
    from transformers import AutoModelForCausalLM, DynamicCache

    from draftsmith.eval.spec_decode import _with_cache
    from draftsmith.target.hf import AuxCapture

    model = AutoModelForCausalLM.from_pretrained(request.getfixturevalue(fixture), dtype=torch.float32).eval()
    layers = [1, 4, 6]
    ids = torch.randint(3, 49152, (1, 17))
    capture = AuxCapture.for_model(model, layers)
    caches = DynamicCache(config=model.config), DynamicCache(config=model.config)
    with torch.inference_mode():
        for start, end in ((0, 12), (12, 13), (13, 17)):
            chunk, pos = ids[:, start:end], torch.arange(start, end)[None]
            got = model(input_ids=chunk, position_ids=pos, **_with_cache(model, caches[0]), use_cache=True)
            aux = capture.take()
            ref = model(input_ids=chunk, position_ids=pos, **_with_cache(model, caches[1]), use_cache=True,
                        output_hidden_states=True)
            assert aux.shape == (1, end - start, 3 * 64)
            assert torch.equal(aux, torch.cat([ref.hidden_states[i] for i in layers], dim=-1))
            assert torch.equal(got.logits, ref.logits)
        capture.close()
        model(input_ids=ids[:, :3])
    assert capture._captured == {} and capture._hooks == []      # closed: nothing captured, hooks gone
