"""Equivalences that prove the parallel paths (gloo, CPU), through the trainer itself.

One torchrun launch (2 gloo ranks, tests/_equivalence_worker.py) trains DDP and FSDP2 with
batch 1 per rank, an FSDP2 run cut mid-warmup and resumed, and online training with the
target sharded over both ranks (`--tp-size 2`, batch 2); in this process the references
train with 1 rank × batch 2 and with batch 1 × 2 accumulation steps. The global sample
order (train/data.py `DataOrder`) gives every split of a global batch of 2 the same samples
at every step; the four samples differ in length and supervised count, so a loss that were
a per-rank or per-micro-batch mean (averaged by DDP / accumulation) would weight a short
sample's tokens more and fail the comparison (it did before the fix, by 3e-2 in the weights,
three orders of magnitude over the tolerance).

Tolerance: the trainer's loss is fp32 (FusedSoftCE takes the logits in fp32), so the runs
agree to fp32 summation order (gradient all-reduce, padded vs unpadded target forwards),
amplified by AdamW's normalized update over 6 steps; weights are compared at rtol 1e-4 /
atol 1e-5 (lr 5e-3: one normalized update moves a weight by up to ~5e-3, so a wrong
weighting of the samples shows at the 1e-3 level).

The flex-attention tests compare the TTT unroll (float64) and its gradients with SDPA's
explicit mask; CPU flex has no backward in this torch, so that check skips there, saying
why, and runs on CUDA.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from _train_helpers import online_config, run_two_ranks, small_draft
from draftsmith.train.trainer import TrainConfig, train

pytestmark = pytest.mark.usefixtures("one_torch_thread")

EPOCHS, STEPS, WARMUP, LR = 3, 6, 3, 5e-3   # 4 samples / global batch 2 = 2 steps per epoch; warmup_ratio 0.5
CUT = 2                                       # the FSDP2 run is cut after step 2, inside the warmup
# (length, supervised spans): 16, 30, 23 and 16 supervised tokens
ROWS = [(20, [(4, 20)]), (48, [(8, 20), (30, 48)]), (33, [(10, 33)]), (56, [(40, 56)])]


def _rows() -> list[dict]:
    g = torch.Generator().manual_seed(7)
    rows = []
    for i, (n, spans) in enumerate(ROWS):
        mask = [0] * n
        for a, b in spans:
            mask[a:b] = [1] * (b - a)
        rows.append({"id": f"row-{i}", "input_ids": torch.randint(3, 49152, (n,), generator=g).tolist(),
                     "loss_mask": mask})
    return rows


def _config(target: Path, data: Path, out: Path, **kw) -> dict:
    return online_config(target, data, out, **{**dict(ttt_length=3, num_epochs=EPOCHS, batch_size=2, learning_rate=LR,
                                                      warmup_ratio=WARMUP / STEPS, save_interval=1000, seed=5), **kw})


@pytest.fixture(scope="module")
def runs(tiny_llama_dir, tmp_path_factory) -> dict[str, Path]:
    from datasets import Dataset

    root = tmp_path_factory.mktemp("equivalence")
    data = root / "data"
    Dataset.from_list(_rows()).save_to_disk(str(data))
    cfg = lambda name, **kw: _config(tiny_llama_dir, data, root / name, **kw)  # noqa: E731
    two_ranks = [cfg("ddp", parallel="ddp", batch_size=1),
                 cfg("fsdp", parallel="fsdp", batch_size=1),
                 cfg("fsdp_cut", parallel="fsdp", batch_size=1, max_steps=CUT, save_interval=CUT),
                 cfg("fsdp_cut", parallel="fsdp", batch_size=1, save_interval=CUT, resume="latest"),
                 cfg("tp", tp_size=2, batch_size=2)]
    proc = run_two_ranks(two_ranks, root / "runs.json")
    ranks = "\n".join(line for line in proc.stderr.splitlines() if line.startswith("[rank"))
    assert proc.returncode == 0, (ranks or proc.stderr)[-6000:]
    train(TrainConfig(**cfg("ref")))                                        # 1 rank × batch 2
    train(TrainConfig(**cfg("accum", batch_size=1, gradient_accumulation_steps=2)))
    return {name: root / name for name in ("ref", "accum", "ddp", "fsdp", "fsdp_cut", "tp")}


def _weights(out: Path, name: str = "final") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(out / name / "model.safetensors"))


def _metrics(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r.get("split", "train") == "train"]


def _assert_same_run(out: Path, ref: Path) -> None:
    a, b = _metrics(out), _metrics(ref)
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, STEPS + 1))
    assert sum(r["tokens"] for r in a) == EPOCHS * sum(n for n, _ in ROWS)
    for ra, rb in zip(a, b):
        assert ra["tokens"] == rb["tokens"], ra["step"]      # the same global batch, counted once
        assert ra["loss_k"] == pytest.approx(rb["loss_k"], rel=1e-4), ra["step"]
        assert ra["acc_k_draft_vocab"] == rb["acc_k_draft_vocab"]
        # the norm clipped (max_grad_norm 0.5 < it) is the whole gradient's, FSDP2 shards included
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4), ra["step"]
    assert max(r["grad_norm"] for r in b) > 0.5
    wa, wb = _weights(out), _weights(ref)
    assert wa.keys() == wb.keys()
    earlier = _weights(ref.parent / "fsdp_cut", f"step_{CUT}")
    moved = max(float((wb[k] - earlier[k]).abs().max()) for k in wb if wb[k].is_floating_point())
    assert moved > 1e-3                     # steps CUT+1.. moved the weights far more than the tolerance
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=lambda m: f"{k}: {m}")


def test_the_samples_weigh_differently():
    """The precondition of the comparisons: unequal supervised counts (a per-rank mean differs)."""
    counts = [sum(r["loss_mask"]) for r in _rows()]
    assert len(set(counts)) > 2


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_ranks_batch_1_equal_one_rank_batch_2(runs, parallel):
    _assert_same_run(runs[parallel], runs["ref"])


def test_gradient_accumulation_2_equals_batch_2(runs):
    _assert_same_run(runs["accum"], runs["ref"])


def test_fsdp_resume_mid_warmup_equals_the_uninterrupted_run(runs):
    cut, full = runs["fsdp_cut"], runs["fsdp"]
    assert (cut / f"step_{CUT}").is_dir()
    assert [r["step"] for r in _metrics(cut)] == list(range(1, STEPS + 1))
    for ra, rb in zip(_metrics(cut), _metrics(full)):
        assert ra["loss_k"] == pytest.approx(rb["loss_k"], rel=1e-6, abs=1e-7), ra["step"]
        assert ra["lr"] == rb["lr"]
    wa, wb = _weights(cut), _weights(full)
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-6, atol=1e-7, msg=lambda m: f"{k}: {m}")


def test_tensor_parallel_ranks_count_tokens_once(runs):
    """Online --tp-size 2 over 2 ranks is one data-parallel replica: the same tokens, loss and
    weights as one process (the target's sharded matmuls sum in another order)."""
    _assert_same_run(runs["tp"], runs["ref"])


def _closed_form_lr(step: int) -> float:
    """Linear warmup over WARMUP steps to LR, then a half cosine to 0 at STEPS."""
    if step < WARMUP:
        return LR * (step + 1) / WARMUP
    return LR * 0.5 * (1 + math.cos(math.pi * (step - WARMUP) / (STEPS - WARMUP)))


def test_warmup_then_cosine_schedule(runs):
    """The lr of every optimizer step against the closed form, for every run (the resumed one
    restarted inside the warmup)."""
    expect = [_closed_form_lr(s) for s in range(STEPS)]
    assert expect[:WARMUP] == pytest.approx([LR / 3, 2 * LR / 3, LR]) and expect[-1] < LR / 2
    for name, out in runs.items():
        assert [r["lr"] for r in _metrics(out)] == pytest.approx(expect, rel=1e-12), name


# ----- flex attention against SDPA -------------------------------------------------------------

def _flex_backward_unsupported(device: str) -> str | None:
    """Why this torch cannot differentiate flex attention on `device` (None: it can)."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    q = torch.randn(1, 1, 8, 8, device=device, requires_grad=True)
    mask = create_block_mask(lambda b, h, i, j: j <= i, None, None, 8, 8, device=device)
    try:
        flex_attention(q, q, q, block_mask=mask).sum().backward()
    except NotImplementedError as e:
        return f"torch {torch.__version__}: {e}"
    return None


def _flex_batch(t: int, vocab: int, hidden: int, dtype: torch.dtype, device: str) -> dict:
    g = torch.Generator().manual_seed(3)
    loss_mask = torch.ones(2, t, dtype=torch.long)
    loss_mask[:, : t // 4] = 0
    attention_mask = torch.ones(2, t, dtype=torch.long)
    attention_mask[1, t - 5:] = 0                       # a right-padded row
    batch = {"input_ids": torch.randint(0, vocab, (2, t), generator=g), "loss_mask": loss_mask,
             "attention_mask": attention_mask,
             "aux_hidden_states": torch.randn(2, t, 3 * hidden, generator=g, dtype=dtype),
             "hidden_state": torch.randn(2, t, hidden, generator=g, dtype=dtype)}
    return {k: v.to(device) for k, v in batch.items()}


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flex_unroll_matches_sdpa_in_float64_on_cpu():
    """Every row of every TTT step, flex BlockMask vs SDPA's explicit mask, in float64."""
    from draftsmith.train.ttt import unroll

    draft = small_draft(dtype=torch.float64)
    batch = _flex_batch(16, 300, 64, torch.float64, "cpu")
    with torch.no_grad():
        out = {a: [o for _, o, _ in unroll(draft, batch["input_ids"], batch["aux_hidden_states"], 4, a)]
               for a in ("sdpa", "flex")}
    assert len(out["flex"]) == 4
    for k, (f, s) in enumerate(zip(out["flex"], out["sdpa"])):
        torch.testing.assert_close(f, s, rtol=1e-10, atol=1e-10, msg=lambda m: f"step {k}: {m}")


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs CUDA"))])
def test_flex_loss_and_gradients_match_sdpa(device):
    """ttt_forward's loss and every parameter gradient, flex vs SDPA (fp32: the loss is fp32;
    on CUDA the compiled flex kernel accumulates in another order)."""
    from draftsmith.train.ttt import ttt_forward

    why = _flex_backward_unsupported(device)
    if why:
        pytest.skip(f"flex attention has no backward on {device}: {why}")
    draft = small_draft().to(device)
    draft.embed_weight = draft.embed_weight.to(device)
    batch = _flex_batch(64, 300, 64, torch.float32, device)
    head = torch.randn(300, 64, generator=torch.Generator().manual_seed(4)).to(device)
    runs = {}
    for attention in ("sdpa", "flex"):
        draft.zero_grad()
        r = ttt_forward(draft, batch, length=4, target_head=head, attention=attention)
        r.loss.backward()
        runs[attention] = (r, {n: p.grad.clone() for n, p in draft.named_parameters() if p.grad is not None})
    (rs, gs), (rf, gf) = runs["sdpa"], runs["flex"]
    torch.testing.assert_close(rf.loss, rs.loss, rtol=1e-5, atol=1e-6)
    assert rf.count == rs.count and rf.correct_draft_vocab == rs.correct_draft_vocab
    assert gf.keys() == gs.keys() and gs
    for n in gs:
        torch.testing.assert_close(gf[n], gs[n], rtol=1e-3, atol=1e-5, msg=lambda m: f"{n}: {m}")
