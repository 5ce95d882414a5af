"""Codecs and their error bounds; the store's contents against an HF reference; integrity."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from draftsmith.errors import DraftsmithError, InputError
from draftsmith.features import FeatureStore
from draftsmith.features.codecs import CODECS, DEFAULT_CODEC, bits_per_value
from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states
from draftsmith.features.plan import bytes_per_token
from draftsmith.target.hf import load_target

from _hidden_states_helpers import make_tokenized, one_torch_thread  # noqa: F401 (autouse fixture)


def _activations(n=64, d=576):
    x = torch.randn(n, d) * torch.logspace(-3, 2, n).unsqueeze(1)
    x[0] = 0.0
    x[1, 7] = 3000.0   # a massive activation
    x[2] = 1e-30       # subnormal range of every format
    return x


def test_codec_error_bounds():
    x = _activations()
    assert torch.equal(CODECS["bf16"].decode(CODECS["bf16"].encode(x.bfloat16()), 576), x.bfloat16().float())

    parts = CODECS["fp8"].encode(x)
    err = (CODECS["fp8"].decode(parts, 576) - x).abs()
    bound = x.abs() / 16 + parts["scale"] / 1024
    assert (err <= bound * (1 + 1e-6) + 1e-37).all()

    parts = CODECS["int4"].encode(x)
    err = (CODECS["int4"].decode(parts, 576) - x).abs()
    step = parts["scale"].float().repeat_interleave(64, dim=1)
    assert (err <= step / 2 * (1 + 1e-5) + 1e-37).all()
    lo, hi = x.view(64, 9, 64).amin(-1), x.view(64, 9, 64).amax(-1)
    # step ~ range/15: the bf16 minimum and step are rounded outwards by < 2^-6 relative
    assert (parts["scale"].float() <= (hi - lo + lo.abs() * 2 ** -6) / 15 * (1 + 2 ** -6)).all()


def test_codec_widths_not_multiple_of_group_and_sizes():
    x = torch.randn(5, 100)
    for name, codec in CODECS.items():
        parts = codec.encode(x)
        assert all(p.shape[0] == 5 for p in parts.values())
        assert sum(p[0].numel() * p.element_size() for p in parts.values()) == codec.row_bytes(100)
        assert codec.decode(parts, 100).shape == (5, 100)
    assert bits_per_value("int4", 4096) == 4.5 and bits_per_value("fp8", 4096) < 8.01


@pytest.mark.parametrize("hidden", [576, 4096])
def test_default_codec_meets_the_size_target(hidden):
    specforge = 8 * hidden + 16
    assert bytes_per_token(DEFAULT_CODEC, hidden, 3, None) <= 0.30 * specforge
    assert bytes_per_token(DEFAULT_CODEC, hidden, 3, 32, supervised_fraction=0.6) <= 0.30 * specforge


def _run(model_dir, data_dir, out, draft_to_target=None, **kw):
    cfg = HiddenStatesConfig(target_model_path=str(model_dir), data_path=str(data_dir), output_dir=str(out),
                             progress=False, **kw)
    return run_hidden_states(cfg, draft_to_target=draft_to_target)


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory):
    return make_tokenized(tmp_path_factory.mktemp("tok") / "data", 9, max_len=40)


@pytest.mark.parametrize("fixture", ["tiny_llama_dir", "tiny_qwen2_dir"])
def test_store_matches_hf_reference_per_codec(fixture, request, tokenized, tmp_path):
    model_dir = request.getfixturevalue(fixture)
    target = load_target(model_dir, dtype=torch.bfloat16)
    stores = {c: (_run(model_dir, tokenized, tmp_path / c, codec=c, batch_size=4, shard_mb=0.02, dtype="bfloat16"),
                  FeatureStore.open(tmp_path / c))[1] for c in CODECS}
    from datasets import load_from_disk

    rows = load_from_disk(str(tokenized))
    for store in stores.values():
        assert len(store) == len(rows) and store.manifest["num_tokens"] == sum(len(r) for r in rows["input_ids"])
        assert store.manifest["aux_layers"] == [2, 4, 5] and store.manifest["bytes"] == sum(
            p.stat().st_size for p in (store.root / "shards").glob("*.safetensors"))
    for i, row in enumerate(rows):
        ids = torch.tensor(row["input_ids"])[None]
        with torch.no_grad():
            hs = target.model(input_ids=ids, output_hidden_states=True).hidden_states
        aux = torch.cat([hs[k] for k in target.aux_layers], -1)[0].float()
        last = hs[-1][0].float()
        exact = stores["bf16"][i]
        assert exact["id"] == row["id"] and exact["input_ids"].tolist() == row["input_ids"]
        assert exact["loss_mask"].tolist() == row["loss_mask"]
        torch.testing.assert_close(exact["aux_hidden_states"], aux, rtol=0.02, atol=0.02)
        torch.testing.assert_close(exact["hidden_state"], last, rtol=0.02, atol=0.02)
        for name in ("fp8", "int4"):
            item, raw = stores[name][i], stores[name].raw(i)
            for key, ref, part in (("aux_hidden_states", exact["aux_hidden_states"], "aux"),
                                   ("hidden_state", exact["hidden_state"], "hidden")):
                err = (item[key] - ref).abs()
                if name == "fp8":
                    bound = ref.abs() / 16 + raw[f"{part}.scale"].float() / 1024
                else:
                    bound = raw[f"{part}.scale"].float().repeat_interleave(64, dim=1)[:, :ref.shape[1]] / 2
                assert (err <= bound * (1 + 1e-5) + 1e-30).all(), (name, key)


def test_bf16_store_is_bit_exact_with_backend_at_the_sample_width(tiny_llama_dir, tokenized, tmp_path):
    """The exact check: bf16 store == the backend's bf16 activations (HF forward, same padded width)."""
    _run(tiny_llama_dir, tokenized, tmp_path / "s", codec="bf16", batch_size=3, dtype="bfloat16")
    store = FeatureStore.open(tmp_path / "s")
    target = load_target(tiny_llama_dir, dtype=torch.bfloat16)
    for i in range(len(store)):
        item = store[i]
        n = len(item["input_ids"])
        width = -(-n // 32) * 32
        ids = torch.zeros(1, width, dtype=torch.long)
        mask = torch.zeros(1, width, dtype=torch.long)
        ids[0, :n], mask[0, :n] = item["input_ids"], 1
        feats = target.features(ids, mask)
        assert torch.equal(item["aux_hidden_states"], feats["aux_hidden_states"][0, :n].float())
        assert torch.equal(item["hidden_state"], feats["hidden_state"][0, :n].float())


def test_topk_signal_rows(tiny_llama_dir, tokenized, tmp_path):
    draft_to_target = torch.arange(0, 49152, 7)
    _run(tiny_llama_dir, tokenized, tmp_path / "t", codec="int4", target_signal="topk:5",
         draft_to_target=draft_to_target, dtype="float32")
    store = FeatureStore.open(tmp_path / "t")
    assert store.manifest["topk"] == 5 and store.manifest["target_signal"] == "topk:5"
    from safetensors.torch import load_file

    assert torch.equal(load_file(str(tmp_path / "t" / "vocab.safetensors"))["draft_to_target"], draft_to_target)
    target = load_target(tiny_llama_dir, dtype=torch.float32)
    outside = 0
    for i in range(len(store)):
        item = store[i]
        assert "hidden_state" not in item
        ids, mask = item["input_ids"], item["loss_mask"]
        every = target.model(input_ids=ids[None]).logits[0].detach()      # HF's own forward, full vocab
        full = every[:, draft_to_target]
        expect_logits, expect_ids = full.topk(5, dim=-1)
        for p in range(len(ids)):
            if p + 1 < len(ids) and mask[p + 1] == 1:
                assert item["target_argmax"][p] == every[p].argmax()      # what servers verify against
                outside += int(item["target_argmax"][p] % 7 != 0)         # not a draft-vocab id
                assert torch.equal(item["target_topk_ids"][p], expect_ids[p])
                torch.testing.assert_close(item["target_topk_logits"][p], expect_logits[p], rtol=1e-4, atol=1e-4)
            else:
                assert not item["target_topk_ids"][p].any() and torch.isinf(item["target_topk_logits"][p]).all()
                assert item["target_argmax"][p] == -1
    assert outside > 0   # the case the draft-vocab top-K alone cannot tell


def _small_store(model_dir, data_dir, out):
    _run(model_dir, data_dir, out, codec="fp8", shard_mb=0.005)
    return FeatureStore.open(out)


def test_corrupted_and_truncated_shards_are_named(tiny_llama_dir, tokenized, tmp_path):
    store = _small_store(tiny_llama_dir, tokenized, tmp_path / "s")
    shard = store.root / "shards" / store.manifest["shards"][store.samples[0]["shard"]]["file"]
    store.verify()
    data = bytearray(shard.read_bytes())
    data[-10] ^= 0xFF  # inside the tensor bytes of the shard's last sample
    shard.write_bytes(bytes(data))
    fresh = FeatureStore.open(store.root)
    last = max(i for i, s in enumerate(fresh.samples) if s["shard"] == fresh.samples[0]["shard"])
    with pytest.raises(InputError, match="checksum mismatch") as e:
        fresh[last]
    assert shard.name in str(e.value)
    with pytest.raises(InputError, match="sha256"):
        fresh.verify()
    shard.write_bytes(bytes(data[:-100]))
    with pytest.raises(InputError, match="truncated") as e:
        FeatureStore.open(store.root)
    assert shard.name in str(e.value)
    shard.write_bytes(b"\x00" * len(data))  # header destroyed, size kept
    with pytest.raises(InputError, match="corrupted shard") as e:
        FeatureStore.open(store.root)[0 if store.samples[0]["shard"] == 0 else last]
    assert shard.name in str(e.value)


def test_lock_settings_and_disk_checks(tiny_llama_dir, tokenized, tmp_path, monkeypatch):
    from draftsmith.features.writer import lock_output

    out = tmp_path / "s"
    lock = lock_output(out)      # another run's lock (a second FileLock object: flock conflicts per open file)
    with pytest.raises(DraftsmithError, match="another hidden-states run"):
        _run(tiny_llama_dir, tokenized, out)
    lock.release()
    monkeypatch.setattr(shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 10))
    with pytest.raises(DraftsmithError, match="not enough disk.*--force"):
        _run(tiny_llama_dir, tokenized, out)
    summary = _run(tiny_llama_dir, tokenized, out, force=True)
    assert summary["samples"] == 9 and summary["shards_written"] == summary["shards"]
    with pytest.raises(DraftsmithError, match="other settings.*codec"):
        _run(tiny_llama_dir, tokenized, out, codec="bf16", force=True)
    again = _run(tiny_llama_dir, tokenized, out, force=True)
    assert again["shards_written"] == 0 and again["samples"] == 9


def test_open_errors(tmp_path):
    with pytest.raises(InputError, match="not a finished feature store"):
        FeatureStore.open(tmp_path)
    (tmp_path / "plan.json").write_text("{}")
    with pytest.raises(InputError, match="resume"):
        FeatureStore.open(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(InputError, match="format"):
        FeatureStore.open(tmp_path)


def test_store_is_a_torch_dataset(tiny_llama_dir, tokenized, tmp_path):
    store = _small_store(tiny_llama_dir, tokenized, tmp_path / "s")
    assert isinstance(store, torch.utils.data.Dataset)
    assert store[-1]["id"] == store[len(store) - 1]["id"]
    with pytest.raises(IndexError):
        store[len(store)]
    loader = torch.utils.data.DataLoader(store, batch_size=None, shuffle=False)
    assert [item["id"] for item in loader] == store.ids
    assert Path(store.root).name == "s"
