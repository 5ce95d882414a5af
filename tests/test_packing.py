"""Packing (train/packing.py, `train --packing`): the row plan, the collate, and training-time
test on packed rows against the same conversations unpacked (loss, gradients, metrics)."""

from __future__ import annotations

import pytest
import torch

from _train_helpers import small_draft
from draftsmith.train.data import DataOrder
from draftsmith.train.packing import PackedUnits, pack_items, plan_rows, split_padded
from draftsmith.train.sources import pad_batch
from draftsmith.train.ttt import step_counts, ttt_forward

pytestmark = pytest.mark.usefixtures("one_torch_thread")

VOCAB, HIDDEN, DRAFT_VOCAB = 300, 64, 8     # a small draft vocab: random drafts hit often enough to count


# ----- the row plan and the collate ---------------------------------------------------------------

def test_plan_rows_best_fit_decreasing():
    # 7 opens row 0; 5 row 1; 4 row 2; the first 3 fills row 1 (the fullest with room), the
    # second goes to row 2; 2 fits nowhere (rows 0 and 2 have 1 left): 4 rows, the optimum here
    assert plan_rows([7, 5, 4, 3, 3, 2], 8) == [[0], [1, 3], [2, 4], [5]]
    assert plan_rows([3, 3, 3], 8, order=[2, 0, 1]) == [[2, 0], [1]]     # ties keep the given order
    with pytest.raises(ValueError, match="more than a row"):
        plan_rows([9], 8)


def test_plan_rows_covers_every_sample_once_within_capacity():
    g = torch.Generator().manual_seed(0)
    lengths = (torch.rand(500, generator=g) ** 3 * 2047 + 1).long().tolist()     # long-tailed, like ShareGPT
    rows = plan_rows(lengths, 2048)
    assert sorted(i for r in rows for i in r) == list(range(500))
    loads = sorted(sum(lengths[i] for i in r) for r in rows)
    assert loads[-1] <= 2048
    # any-fit packing: a row is only opened when the item fits no earlier row, so no two rows fit
    # together (the two emptiest carry more than one row's capacity)
    assert loads[0] + loads[1] > 2048
    assert len(rows) >= -(-sum(lengths) // 2048)


def test_packed_order_is_seeded_and_independent_of_the_rank_count():
    lengths = [5, 9, 3, 12, 7, 7, 1, 4, 10, 6, 2, 8, 16, 3]

    def micro(epoch, batch=2, rank=0, ranks=1, seed=1):
        order = DataOrder(len(lengths), seed, batch, rank, ranks, units=PackedUnits(lengths, 16, seed))
        return order.micro_batches(epoch)

    one = micro(0)
    assert one == micro(0) and one != micro(1)
    rows = [r for mb in one for r in mb]
    steps = DataOrder(len(lengths), 1, 2, units=PackedUnits(lengths, 16, 1)).steps_in_epoch()
    assert len(one) == steps and all(len(mb) == 2 for mb in one)
    assert all(sum(lengths[i] for i in r) <= 16 for r in rows)
    everything = PackedUnits(lengths, 16, 1)(list(range(len(lengths))), 0)
    assert sorted(i for r in everything for i in r) == list(range(len(lengths)))
    # 2 ranks x 1 row == 1 rank x 2 rows: the same rows in each global batch
    two = [micro(0, batch=1, rank=k, ranks=2) for k in range(2)]
    assert [a + b for a, b in zip(*two)] == one


def _conversations(lengths, seed=0, first_supervised=True):
    """Samples as a feature store gives them: tokens, loss mask, aux hidden states, hidden state."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for n in lengths:
        mask = (torch.rand(n, generator=g) > 0.25).long()
        mask[0] = int(first_supervised)    # supervised first tokens: a boundary crossed would be trained
        items.append({"input_ids": torch.randint(1, VOCAB, (n,), generator=g), "loss_mask": mask,
                      "aux_hidden_states": torch.randn(n, 3 * HIDDEN, generator=g, dtype=torch.float64),
                      "hidden_state": torch.randn(n, HIDDEN, generator=g, dtype=torch.float64)})
    return items


def test_pack_items_restarts_positions_and_round_trips():
    items = _conversations([5, 3, 4])
    packed = pack_items(items, [2, 1])
    assert packed["input_ids"].shape == (2, 8)
    assert packed["position_ids"].tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 2, 3, 0, 0, 0, 0]]
    assert packed["doc_ids"].tolist() == [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 0, -1, -1, -1, -1]]
    assert packed["attention_mask"].tolist() == [[1] * 8, [1] * 4 + [0] * 4]
    torch.testing.assert_close(packed["aux_hidden_states"][0, 5:], items[1]["aux_hidden_states"])
    back = split_padded(pad_batch(items))
    for a, b in zip(back, items):
        assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in b)
    with pytest.raises(ValueError, match="row sizes"):
        pack_items(items, [2, 2])


# ----- training-time test: packed == unpacked -------------------------------------------------------

# 4 conversations of different lengths in 2 packed rows; row 0 (5 + 9 + 3 = 17 tokens) is the widest,
# so its last conversation ends in the row's last position; row 1 (11) is padded
LENGTHS, ROWS = [5, 9, 3, 11], [3, 1]


def _grads(draft):
    return torch.cat([p.grad.flatten() for p in draft.parameters() if p.grad is not None])


def _run(draft, batch, head, attention, length=4, **kw):
    draft.zero_grad()
    r = ttt_forward(draft, batch, length=length, target_head=head, attention=attention, **kw)
    if torch.is_grad_enabled():
        r.loss.backward()
        return r, _grads(draft)
    return r, None


def _draft64():
    draft = small_draft(vocab=VOCAB, hidden=HIDDEN, draft_vocab=DRAFT_VOCAB).double()
    draft.embed_weight = draft.embed_weight.double()
    draft.d2t.copy_(torch.arange(DRAFT_VOCAB))        # draft id i -> target id 2i
    return draft


def _heads():
    """(target lm_head rows of the draft vocab, the whole lm_head): the other ids' rows are small,
    so the full-vocab argmax is mostly a draft-vocab token and the served accuracy is not all 0."""
    g = torch.Generator().manual_seed(5)
    full = torch.randn(VOCAB, HIDDEN, generator=g, dtype=torch.float64) * 0.05
    head = torch.randn(DRAFT_VOCAB, HIDDEN, generator=g, dtype=torch.float64)
    full[2 * torch.arange(DRAFT_VOCAB)] = head
    return head, full


@pytest.mark.parametrize("attention", ["blockwise", "sdpa"])
def test_packed_batch_gives_the_loss_gradients_and_metrics_of_the_unpacked_one(attention):
    draft = _draft64()
    head, full_head = _heads()
    items = _conversations(LENGTHS)
    unpacked, packed = pad_batch(items), pack_items(items, ROWS)
    assert packed["attention_mask"][0].all() and not packed["attention_mask"][1].all()
    ref, ref_grad = _run(draft, unpacked, head, attention, full_head=full_head)
    got, got_grad = _run(draft, packed, head, attention, full_head=full_head)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert got.count == ref.count == step_counts(packed, 4) == step_counts(unpacked, 4)
    assert got.correct_draft_vocab == ref.correct_draft_vocab and got.correct_served == ref.correct_served
    assert got.loss_sum == pytest.approx(ref.loss_sum, rel=1e-12)
    assert ref.count[3] > 0 and sum(ref.correct_served) > 0 and sum(ref.correct_draft_vocab) > 0
    # the same rows run as one long conversation train across the boundaries: another loss, more rows
    naive = {k: v for k, v in packed.items() if k not in ("doc_ids", "position_ids")}
    crossed, _ = _run(draft, naive, head, attention, full_head=full_head)
    assert crossed.count[0] > ref.count[0] and abs(crossed.loss.item() - ref.loss.item()) > 1e-3


def test_packed_top_k_batch_and_the_dense_blockwise_path():
    """A top-K store's signal, and blockwise attention without the live-row pruning (every row
    at every step, one StepPattern over the batch) against the unpacked rows."""
    from draftsmith.train import ttt

    draft = _draft64()
    items = _conversations(LENGTHS, seed=1)
    g = torch.Generator().manual_seed(2)
    for it in items:
        n = it.pop("hidden_state").shape[0]
        it["target_topk_ids"] = torch.randint(0, DRAFT_VOCAB, (n, 6), generator=g)
        it["target_topk_logits"] = torch.randn(n, 6, generator=g, dtype=torch.float64) * 3
    unpacked, packed = pad_batch(items), pack_items(items, ROWS)
    ref, ref_grad = _run(draft, unpacked, None, "blockwise", length=3)
    got, got_grad = _run(draft, packed, None, "blockwise", length=3)
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-12)
    assert got.count == ref.count and got.correct_draft_vocab == ref.correct_draft_vocab
    assert sum(ref.correct_draft_vocab) > 0
    # later steps compute the same rows (live: a row still predicting a token of its conversation)
    live = [[int(x.sum()) for x in ttt.live_rows(ttt.target_rows(b["loss_mask"], b["attention_mask"],
                                                                  b.get("doc_ids")), 3, b.get("doc_ids"))]
            for b in (unpacked, packed)]
    assert live[0] == live[1]
    original = ttt.live_rows
    try:
        ttt.live_rows = lambda target, length, doc_ids=None: None     # unroll's dense blockwise path
        dense, dense_grad = _run(draft, packed, None, "blockwise", length=3)
    finally:
        ttt.live_rows = original
    torch.testing.assert_close(dense.loss, ref.loss, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(dense_grad, ref_grad, rtol=1e-10, atol=1e-12)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_packed_flex_attention_matches_unpacked():
    """Flex attention with the document mask_mod: forward (loss and metrics) on CPU, where this
    torch runs flex attention forward only; gradients on CUDA."""
    draft = small_draft(vocab=VOCAB, hidden=HIDDEN)
    head = torch.randn(VOCAB, HIDDEN)
    items = _conversations(LENGTHS, seed=3)
    for it in items:
        it["aux_hidden_states"], it["hidden_state"] = it["aux_hidden_states"].float(), it["hidden_state"].float()
    unpacked, packed = pad_batch(items), pack_items(items, ROWS)
    with torch.no_grad():
        ref, _ = _run(draft, unpacked, head, "sdpa")
        got, _ = _run(draft, packed, head, "flex")
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-5, atol=1e-5)
    assert got.count == ref.count and got.correct_draft_vocab == ref.correct_draft_vocab
    if not torch.cuda.is_available():
        pytest.skip("flex attention gradients: CUDA only (this torch has no flex attention backward on CPU)")
    draft = draft.cuda()
    draft.embed_weight = draft.embed_weight.cuda()
    ref, ref_grad = _run(draft, {k: v.cuda() for k, v in unpacked.items()}, head.cuda(), "sdpa")
    got, got_grad = _run(draft, {k: v.cuda() for k, v in packed.items()}, head.cuda(), "flex")
    torch.testing.assert_close(got.loss, ref.loss, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(got_grad, ref_grad, rtol=1e-3, atol=1e-4)


# ----- train --packing end to end ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def store(tiny_llama_dir, tmp_path_factory):
    """A sharp tiny target, 10 short tokenized conversations and a float32 feature store of them."""
    from pathlib import Path

    from _train_helpers import sharp_target, write_conversations
    from draftsmith.data.build import BuildConfig, build_dataset
    from draftsmith.features.generate import HiddenStatesConfig, run_hidden_states

    root = tmp_path_factory.mktemp("packing")
    target = sharp_target(Path(tiny_llama_dir), root / "target")
    conv = write_conversations(root / "train.jsonl", 10, answer_words=8)
    built = build_dataset(BuildConfig(data_path=str(conv), target_model_path=str(target), chat_template="hf",
                                      max_length=128, output_dir=str(root / "tokenized")))
    run_hidden_states(HiddenStatesConfig(target_model_path=str(target), data_path=str(built.path),
                                         output_dir=str(root / "store"), max_length=128, dtype="float32",
                                         codec="bf16", batch_size=10, aux_layers=[1, 2, 3], device="cpu",
                                         progress=False))
    return {"target": target, "data": built.path, "store": root / "store"}


def _train_args(store, out, *extra):
    return ["--mode", "offline", "--target-model-path", str(store["target"]), "--train-data-path",
            str(store["data"]), "--train-hidden-states-path", str(store["store"]), "--output-dir", str(out),
            "--draft-vocab-size", "512", "--ttt-length", "3", "--max-length", "128", "--learning-rate", "3e-3",
            "--warmup-ratio", "0", "--dtype", "float32", "--autocast", "off", "--device", "cpu", "--no-progress",
            "--seed", "3", "--num-workers", "0", *extra]


def _rows(out):
    import json

    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()
            if json.loads(line).get("split", "train") == "train"]


def test_train_packing_offline_equals_unpacked_when_a_step_sees_every_conversation(store, tmp_path):
    """`train --packing` end to end: with one step per epoch over all conversations, packed and
    unpacked runs have the same losses, accuracies and token counts and end with the same
    weights; with one packed row per step, an epoch still covers every token once."""
    from safetensors.torch import load_file

    from draftsmith.cli import run_command
    from draftsmith.features import FeatureStore

    lengths = FeatureStore.open(store["store"]).lengths
    rows = PackedUnits(lengths, 128, 3)(list(range(len(lengths))), 0)
    assert len(rows) < len(lengths)                                   # conversations do share rows
    runs = {"unpacked": ["--batch-size", str(len(lengths))],
            "packed": ["--packing", "--batch-size", str(len(rows))],
            "packed_1": ["--packing", "--batch-size", "1"]}
    for name, extra in runs.items():
        assert run_command("train", _train_args(store, tmp_path / name, "--num-epochs", "2", *extra)) == 0
    ref, got = _rows(tmp_path / "unpacked"), _rows(tmp_path / "packed")
    assert len(ref) == len(got) == 2
    for a, b in zip(ref, got):
        assert b["tokens"] == a["tokens"] == sum(lengths)
        assert b["loss_k"] == pytest.approx(a["loss_k"], rel=1e-5)
        assert b["acc_k"] == a["acc_k"] and b["acc_k_draft_vocab"] == a["acc_k_draft_vocab"]
    weights = [load_file(str(tmp_path / name / "final" / "model.safetensors")) for name in ("unpacked", "packed")]
    for key in weights[0]:
        torch.testing.assert_close(weights[1][key], weights[0][key], rtol=1e-4, atol=1e-6)
    one = _rows(tmp_path / "packed_1")
    assert len(one) == 2 * len(rows) and sum(r["tokens"] for r in one) == 2 * sum(lengths)


def test_train_packing_online_runs_the_target_per_conversation(store, tmp_path):
    """Online, the target runs on the conversations as a padded batch and its features are packed
    after: the first step over every conversation equals the unpacked one."""
    from draftsmith.cli import run_command
    from draftsmith.features import FeatureStore

    lengths = FeatureStore.open(store["store"]).lengths
    rows = PackedUnits(lengths, 128, 3)(list(range(len(lengths))), 0)
    online = ["--mode", "online", "--aux-layers", "1,2,3", "--max-steps", "1"]
    for name, extra in {"unpacked": ["--batch-size", str(len(lengths))],
                        "packed": ["--packing", "--batch-size", str(len(rows))]}.items():
        args = [a for a in _train_args(store, tmp_path / name, *extra) if a not in ("--mode", "offline")]
        i = args.index("--train-hidden-states-path")
        assert run_command("train", args[:i] + args[i + 2:] + online) == 0
    ref, got = _rows(tmp_path / "unpacked")[0], _rows(tmp_path / "packed")[0]
    assert got["tokens"] == ref["tokens"] == sum(lengths)
    assert got["loss_k"] == pytest.approx(ref["loss_k"], rel=1e-5)
    assert got["acc_k"] == ref["acc_k"] and got["acc_k_draft_vocab"] == ref["acc_k_draft_vocab"]


def test_resume_refuses_another_packing(store, tmp_path, capsys):
    """Packed rows are other units of the sample order: a packed run resumes packed only (and
    with the same row length); the refusal names --packing."""
    from draftsmith.cli import run_command

    out = tmp_path / "run"
    base = _train_args(store, out, "--packing", "--batch-size", "1", "--max-steps", "1", "--save-interval", "1")
    assert run_command("train", base) == 0
    unpacked = [a for a in base if a != "--packing"] + ["--resume"]
    assert run_command("train", unpacked) != 0
    assert "--packing" in capsys.readouterr().err
    i = base.index("--max-length")
    shorter = base[:i + 1] + ["100"] + base[i + 2:] + ["--resume"]
    assert run_command("train", shorter) != 0
    assert "rows of 128, this run has --packing into rows of 100" in capsys.readouterr().err
    j = base.index("--max-steps")
    longer = base[:j + 1] + ["2"] + base[j + 2:] + ["--resume"]
    assert run_command("train", longer) == 0
    assert [r["step"] for r in _rows(out)] == [1, 2]
