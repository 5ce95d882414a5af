"""CUDA-only checks (skipped without a GPU; bench/gpu/run_all.sh runs them as part d):
flex attention's gradients against the SDPA reference, bf16 autocast against fp32, and one
training run under torchrun with one nccl rank."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from draftsmith.train.ttt import ttt_forward

from _hidden_states_helpers import make_tokenized
from _train_helpers import small_draft

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bench/gpu/run_all.sh, part d)")
REPO = Path(__file__).resolve().parent.parent


def _batch(t: int, vocab: int, hidden: int, device: str) -> dict:
    g = torch.Generator().manual_seed(0)
    mask = torch.ones(1, t, dtype=torch.long)
    mask[0, : t // 4] = 0
    return {k: v.to(device) for k, v in {
        "input_ids": torch.randint(0, vocab, (1, t), generator=g), "loss_mask": mask,
        "attention_mask": torch.ones(1, t, dtype=torch.long),
        "aux_hidden_states": torch.randn(1, t, 3 * hidden, generator=g),
        "hidden_state": torch.randn(1, t, hidden, generator=g)}.items()}


def _cuda_draft():
    draft = small_draft().cuda()
    draft.embed_weight = draft.embed_weight.cuda()   # the frozen target embeddings are not a parameter
    return draft


def _grads(draft, batch, head, attention: str, autocast: bool) -> tuple[float, torch.Tensor]:
    draft.zero_grad()
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        r = ttt_forward(draft, batch, length=4, target_head=head, attention=attention)
    r.loss.backward()
    return r.loss.item(), torch.cat([p.grad.flatten() for p in draft.parameters() if p.grad is not None])


def test_flex_gradients_match_sdpa_on_cuda():
    draft = _cuda_draft()
    batch = _batch(200, draft.config.vocab_size, draft.config.hidden_size, "cuda")
    head = torch.randn(draft.config.draft_vocab_size, draft.config.hidden_size, device="cuda")
    loss_s, grad_s = _grads(draft, batch, head, "sdpa", autocast=False)
    loss_f, grad_f = _grads(draft, batch, head, "flex", autocast=False)
    assert loss_f == pytest.approx(loss_s, rel=1e-4)
    torch.testing.assert_close(grad_f, grad_s, rtol=1e-3, atol=1e-4)


def test_bf16_autocast_step_tracks_fp32_on_cuda():
    draft = _cuda_draft()
    batch = _batch(128, draft.config.vocab_size, draft.config.hidden_size, "cuda")
    head = torch.randn(draft.config.draft_vocab_size, draft.config.hidden_size, device="cuda")
    loss32, grad32 = _grads(draft, batch, head, "flex", autocast=False)
    loss16, grad16 = _grads(draft, batch, head, "flex", autocast=True)
    assert loss16 == pytest.approx(loss32, rel=2e-2)
    cos = torch.nn.functional.cosine_similarity(grad16.float(), grad32, dim=0)
    assert cos > 0.99, f"bf16 autocast gradient direction differs from fp32 (cosine {cos:.4f})"


def test_torchrun_one_nccl_rank_trains(tiny_llama_dir, tmp_path):
    data = make_tokenized(tmp_path / "data", 8, max_len=40)
    out = tmp_path / "run"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
                           str(REPO / "scripts" / "train_eagle3_online.py"), "--target-model-path", str(tiny_llama_dir),
                           "--train-data-path", str(data), "--max-length", "64", "--draft-vocab-size", "256",
                           "--num-epochs", "1", "--batch-size", "2", "--output-dir", str(out), "--device", "cuda",
                           "--report-to", "none", "--no-progress"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if r.get("split", "train") == "train" and "loss" in r]
    assert losses and all(torch.isfinite(torch.tensor(losses)))
    assert (out / "final" / "model.safetensors").exists()
