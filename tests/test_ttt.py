"""Training-time test: alignment with SGLang's serving loop, masks, losses and metrics."""

from __future__ import annotations

import math

import pytest
import torch

from _train_helpers import small_draft, write_conversations
from draftsmith.train.ttt import (live_rows, step_inputs, step_rows, step_metrics, target_rows, ttt_forward,
                                  ttt_mask, unroll)


pytestmark = pytest.mark.usefixtures("one_torch_thread")



def _batch(b=2, t=12, vocab=300, hidden=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(0, vocab, (b, t), generator=g),
        "loss_mask": (torch.rand(b, t, generator=g) > 0.3).long(),
        "attention_mask": torch.ones(b, t, dtype=torch.long),
        "aux_hidden_states": torch.randn(b, t, 3 * hidden, generator=g),
        "hidden_state": torch.randn(b, t, hidden, generator=g),
    }


def test_step_inputs_are_tokens_p_plus_1_plus_k_at_positions_p_plus_k():
    ids = torch.arange(10, 20)[None]
    for k in range(4):
        tokens, positions = step_inputs(ids, k)
        for p in range(10):
            assert positions[0, p] == p + k
            assert tokens[0, p] == (ids[0, p + 1 + k] if p + 1 + k < 10 else 0)


def test_unroll_equals_sglang_draft_extend_then_decode():
    """Replays SGLang's serving loop with a KV cache (draft extend over a prefix: tokens shifted
    left by one at positions 0..L-1; then draft decode: own output hidden fed back, the next
    token, positions.add_(1), attending to every cached key) and checks that TTT step k at row
    p = L-1 computes exactly what the server computes at decode step k."""
    draft = small_draft().double()
    draft.embed_weight = draft.embed_weight.double()
    t, length = 10, 4
    b = _batch(b=1, t=t)
    ids, aux = b["input_ids"], b["aux_hidden_states"].double()
    with torch.no_grad():
        ttt_out = [out[index] for _, out, index in unroll(draft, ids, aux, length)]
        for prefix in range(1, t - length):
            hidden = draft.project(aux[:, :prefix])
            out, (k, v) = draft.layer(ids[:, 1:prefix + 1], hidden, torch.arange(prefix)[None])
            cache = (k, v)
            served = [out[:, -1]]
            h, pos = out[:, -1:], prefix - 1
            for step in range(1, length):
                pos += 1                                              # positions.add_(1)
                token = ids[:, prefix + step: prefix + step + 1]       # the (accepted) next token
                h, (k, v) = draft.layer(token, h, torch.tensor([[pos]]), past_kv=cache)
                cache = (torch.cat([cache[0], k], 2), torch.cat([cache[1], v], 2))
                served.append(h[:, 0])
            for step in range(length):
                torch.testing.assert_close(ttt_out[step][:, prefix - 1], served[step], rtol=1e-9, atol=1e-9)


def test_ttt_mask_pattern():
    m = ttt_mask(3, 2, torch.device("cpu"))[0, 0].int().tolist()
    assert m == [[1, 0, 0, 1, 0, 0, 1, 0, 0],
                 [1, 1, 0, 0, 1, 0, 0, 1, 0],
                 [1, 1, 1, 0, 0, 1, 0, 0, 1]]


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_blockwise_and_flex_attention_match_sdpa():
    """The memory-saving paths (blockwise StepPattern; flex BlockMask) against SDPA with the
    explicit T × T·(k+1) mask. CPU flex attention has no backward, so flex gradients are
    compared on CUDA only."""
    draft = small_draft()
    batch = _batch(t=20)
    head = torch.randn(300, 64)
    runs = {}
    for attention in ("sdpa", "blockwise"):
        draft.zero_grad()
        r = ttt_forward(draft, batch, length=4, target_head=head, attention=attention)
        r.loss.backward()
        runs[attention] = (r, torch.cat([p.grad.flatten() for p in draft.parameters()]))
    torch.testing.assert_close(runs["blockwise"][0].loss, runs["sdpa"][0].loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(runs["blockwise"][1], runs["sdpa"][1], rtol=1e-4, atol=1e-5)
    with torch.no_grad():
        f = ttt_forward(draft, batch, length=4, target_head=head, attention="flex")
    torch.testing.assert_close(f.loss, runs["sdpa"][0].loss, rtol=1e-5, atol=1e-5)
    assert f.correct_draft_vocab == runs["sdpa"][0].correct_draft_vocab and f.count == runs["sdpa"][0].count
    if not torch.cuda.is_available():
        return
    draft = draft.cuda()
    draft.embed_weight = draft.embed_weight.cuda()
    batch = {k: v.cuda() for k, v in batch.items()}
    grads = []
    for attention in ("sdpa", "flex"):
        draft.zero_grad()
        ttt_forward(draft, batch, length=4, target_head=head.cuda(), attention=attention).loss.backward()
        grads.append(torch.cat([p.grad.flatten() for p in draft.parameters()]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-3, atol=1e-4)


@pytest.mark.parametrize("attention", ["sdpa", "blockwise"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(attention):
    """--activation-checkpointing recomputes each step's layer in backward: same numbers."""
    draft = small_draft()
    batch = _batch(t=16)
    head = torch.randn(300, 64)
    runs = []
    for checkpointing in (False, True):
        draft.zero_grad()
        r = ttt_forward(draft, batch, length=4, target_head=head, attention=attention, checkpointing=checkpointing)
        r.loss.backward()
        runs.append((r.loss.detach(), torch.cat([p.grad.flatten() for p in draft.parameters()])))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=0, atol=0)
    torch.testing.assert_close(runs[1][1], runs[0][1], rtol=1e-6, atol=1e-7)


def test_every_supervised_token_is_a_step0_target(tiny_llama_dir, tmp_path):
    """On a real tokenized dataset (ChatML, multi-turn): the tokens predicted at step 0 are
    exactly the supervised tokens t >= 2, including each reply's first token; at step k the
    supervised tokens t >= 2 + k."""
    from datasets import load_from_disk

    from draftsmith.data.build import BuildConfig, build_dataset

    data = write_conversations(tmp_path / "c.jsonl", 6)
    result = build_dataset(BuildConfig(data_path=str(data), target_model_path=str(tiny_llama_dir),
                                       chat_template="hf", max_length=256, output_dir=str(tmp_path / "ds")))
    ds = load_from_disk(str(result.path))
    first_tokens = 0
    for row in ds:
        mask = torch.tensor(row["loss_mask"])[None]
        qb, qq = target_rows(mask, torch.ones_like(mask)).nonzero(as_tuple=True)
        supervised = set(torch.nonzero(mask[0]).flatten().tolist())
        for k in range(3):
            keep, rows_p = step_rows(qb, qq, k)
            predicted = set((rows_p + 2 + k).tolist())                 # row p predicts token p+2+k
            assert predicted == {t for t in supervised if t >= 2 + k}
        starts = [t for t in supervised if t - 1 not in supervised]
        first_tokens += len(starts)
        keep, rows_p = step_rows(qb, qq, 0)
        assert set(starts) <= set((rows_p + 2).tolist())
    assert first_tokens >= len(ds)   # every row has at least one reply start, all covered


def test_topk_signal_with_full_k_equals_hidden_signal():
    """The two target signals are independent code paths; with K = the draft vocab they must agree."""
    draft = small_draft(draft_vocab=50)
    batch = _batch()
    head = torch.randn(50, 64) * 3
    ref = ttt_forward(draft, batch, length=3, target_head=head)
    logits = batch["hidden_state"] @ head.T
    values, ids = logits.topk(50, dim=-1)
    topk = {k: v for k, v in batch.items() if k != "hidden_state"}
    topk["target_topk_ids"], topk["target_topk_logits"] = ids, values
    got = ttt_forward(draft, topk, length=3)
    torch.testing.assert_close(got.loss, ref.loss)
    assert got.correct_draft_vocab == ref.correct_draft_vocab and got.count == ref.count


def test_loss_is_weighted_mean_over_supervised_rows_and_ignores_padding():
    draft = small_draft()
    head = torch.randn(300, 64)
    batch = _batch(b=1, t=12)
    r = ttt_forward(draft, batch, length=3, target_head=head)
    s = step_metrics(r.loss_sum, r.correct_draft_vocab, r.count)
    expected = sum(0.8 ** k * s["loss_k"][k] for k in range(3))
    assert math.isclose(r.loss.item(), expected, rel_tol=1e-5)
    # hand count: step k supervises tokens t >= 2 + k with loss_mask[t] = 1
    mask = batch["loss_mask"][0].tolist()
    assert r.count == [sum(mask[t] for t in range(2 + k, 12)) for k in range(3)]
    # a second, unsupervised sample and right padding change nothing
    padded = {k: torch.cat([v, torch.zeros_like(v)], 0) for k, v in batch.items()}
    padded = {k: torch.cat([v, torch.zeros_like(v[:, :5])], 1) for k, v in padded.items()}
    padded["aux_hidden_states"][1] = torch.randn_like(padded["aux_hidden_states"][1])
    r2 = ttt_forward(draft, padded, length=3, target_head=head)
    torch.testing.assert_close(r2.loss, r.loss, rtol=1e-5, atol=1e-6)
    assert r2.count == r.count


@pytest.mark.parametrize("signal", ["hidden", "topk"])
def test_fused_loss_matches_plain_autograd(signal, monkeypatch):
    """The chunked loss with its gradient taken in the forward pass: same loss, metrics and
    gradients as ordinary autograd over the full logits (chunks of 7 rows force many chunks)."""
    import draftsmith.train.ttt as ttt

    monkeypatch.setattr(ttt, "LOGITS_CHUNK_ELEMENTS", 7 * 300)
    draft = small_draft()
    batch = _batch()
    head = torch.randn(300, 64) * 2
    if signal == "topk":
        values, ids = (batch.pop("hidden_state") @ head.T).topk(5, dim=-1)
        batch["target_topk_ids"], batch["target_topk_logits"] = ids, values
    results, grads = [], []
    for fused in (True, False):
        draft.zero_grad()
        r = ttt_forward(draft, batch, length=3, target_head=head, fused_loss=fused)
        r.loss.backward()
        results.append(r)
        grads.append(torch.cat([p.grad.flatten() for p in draft.parameters()]))
    torch.testing.assert_close(results[0].loss, results[1].loss)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-6)
    assert results[0].correct_draft_vocab == results[1].correct_draft_vocab and results[0].count == results[1].count
    assert results[0].loss_sum == pytest.approx(results[1].loss_sum, rel=1e-5)


def test_summarize_tau_by_hand():
    s = step_metrics([2.0, 3.0, 4.0], [8, 4, 1], [10, 8, 4], correct_served=[5, 4, 0])
    assert s["acc_k_draft_vocab"] == [0.8, 0.5, 0.25]
    assert s["loss_k"] == [0.2, 0.375, 1.0]
    assert math.isclose(s["tau_draft_vocab"], 1 + 0.8 + 0.8 * 0.5 + 0.8 * 0.5 * 0.25)
    assert s["acc_k"] == [0.5, 0.5, 0.0] and math.isclose(s["tau"], 1 + 0.5 + 0.25)
    unknown = step_metrics([2.0], [8], [10])
    assert unknown["tau"] is None and unknown["acc_k"] is None and unknown["tau_draft_vocab"] == 1.8


def _served_case(seed: int = 0):
    """A draft whose vocab is 40 of 300 target ids, and a target whose hidden rows are the draft's
    own step-0 outputs (so within the draft vocab it agrees often), with out-of-vocab lm_head rows
    that win at some positions: the draft-vocab count says right where a server says wrong."""
    g = torch.Generator().manual_seed(seed)
    draft = small_draft(vocab=300, draft_vocab=40, seed=seed)
    chosen = torch.randperm(300, generator=g)[:40].sort().values
    t2d = torch.zeros(300, dtype=torch.bool)
    t2d[chosen] = True
    draft.set_vocab_mapping(chosen - torch.arange(40), t2d)
    batch = _batch(b=2, t=16, seed=seed)
    with torch.no_grad():
        out0 = draft.norm(next(iter(unroll(draft, batch["input_ids"], batch["aux_hidden_states"], 1)))[1])
    hs = torch.zeros_like(batch["hidden_state"])
    hs[:, 1:] = out0.view(2, 16, -1)[:, :-1]        # target row q = the draft's step-0 row q-1
    batch["hidden_state"] = hs
    full_head = torch.randn(300, 64, generator=g) * 0.07
    full_head[chosen] = draft.lm_head.weight.detach()
    return draft, batch, full_head, chosen


def _hand_served(draft, batch, full_head, chosen, length):
    """Per position, by loops: step k predicts target row q from draft row p = q-1-k; a server
    accepts iff the draft's token (as a target id) is the full-vocab argmax of the target."""
    outs = {}
    with torch.no_grad():
        for k, out, index in unroll(draft, batch["input_ids"], batch["aux_hidden_states"], length):
            outs[k] = (out, index)
        served, in_vocab, count = [0] * length, [0] * length, [0] * length
        b, t = batch["input_ids"].shape
        for i in range(b):
            for q in range(t - 1):
                if not batch["loss_mask"][i, q + 1]:
                    continue
                h = batch["hidden_state"][i, q]
                full_argmax = int((full_head @ h).argmax())
                dv_argmax = int((full_head[chosen] @ h).argmax())
                for k in range(length):
                    p = q - 1 - k
                    if p < 0:
                        continue
                    out, index = outs[k]
                    pred = int(draft.logits(out[index[i, p]]).argmax())
                    count[k] += 1
                    served[k] += int(chosen[pred]) == full_argmax
                    in_vocab[k] += pred == dv_argmax
    return served, in_vocab, count


def test_served_tau_counts_the_target_full_vocab_argmax():
    """Defect 16.7: SGLang / vLLM verify a draft token against the target's argmax over its full
    vocabulary. Where that argmax is a token outside the draft vocab, the draft-vocab figure counts
    a hit and the server a miss: served tau < draft-vocab tau, each equal to a loop by hand."""
    draft, batch, full_head, chosen = _served_case()
    length = 3
    r = ttt_forward(draft, batch, length=length, target_head=full_head[chosen], full_head=full_head)
    served, in_vocab, count = _hand_served(draft, batch, full_head, chosen, length)
    assert r.count == count and r.correct_served == served and r.correct_draft_vocab == in_vocab
    assert 0 < served[0] < in_vocab[0]        # the case exists in this data, both ways
    s = step_metrics(r.loss_sum, r.correct_draft_vocab, r.count, r.correct_served)
    tau_hand = 1 + sum(math.prod(a / c for a, c in zip(served[:k + 1], count[:k + 1])) for k in range(length))
    tau_dv_hand = 1 + sum(math.prod(a / c for a, c in zip(in_vocab[:k + 1], count[:k + 1])) for k in range(length))
    assert math.isclose(s["tau"], tau_hand) and math.isclose(s["tau_draft_vocab"], tau_dv_hand)
    assert s["tau"] < s["tau_draft_vocab"]
    # a top-K store's rows (draft-vocab top-K + the stored full-vocab argmax) count the same
    topk = {k: v for k, v in batch.items() if k != "hidden_state"}
    values, ids = (batch["hidden_state"] @ full_head[chosen].T).topk(8, dim=-1)
    topk["target_topk_ids"], topk["target_topk_logits"] = ids, values
    topk["target_argmax"] = (batch["hidden_state"] @ full_head.T).argmax(-1)
    got = ttt_forward(draft, topk, length=length)
    assert got.correct_served == served and got.correct_draft_vocab == in_vocab
    # without the full-vocab argmax the served figure is unknown, never the draft-vocab one
    del topk["target_argmax"]
    assert ttt_forward(draft, topk, length=length).correct_served is None
    assert ttt_forward(draft, batch, length=length, target_head=full_head[chosen]).correct_served is None


def test_full_vocab_draft_served_equals_draft_vocab_figure():
    draft = small_draft()
    batch = _batch()
    head = torch.randn(300, 64)
    r = ttt_forward(draft, batch, length=3, target_head=head)
    assert r.correct_served == r.correct_draft_vocab
    assert r.correct_served == ttt_forward(draft, batch, length=3, target_head=head, full_head=head).correct_served



def test_later_steps_compute_only_live_rows():
    """Rows whose chain predicts no supervised token are skipped from step 1 on (user turns,
    padding); the loss and gradients equal the dense reference."""
    draft = small_draft()
    head = torch.randn(300, 64)
    batch = _batch(b=2, t=24)
    batch["loss_mask"].zero_()
    batch["loss_mask"][0, 15:20] = 1
    batch["loss_mask"][1, 3:5] = 1
    live = live_rows(target_rows(batch["loss_mask"], batch["attention_mask"]), 4)
    sizes = [int(out.shape[0]) for _, out, _ in unroll(draft, batch["input_ids"], batch["aux_hidden_states"], 4,
                                                        live=live)]
    # step k keeps rows p with a supervised token among p+2+k .. p+5: p in [10, 17-k] of sample 0
    # and p in [0, 2-k] of sample 1
    assert sizes == [48, (8 - 1) + 2, (8 - 2) + 1, (8 - 3) + 0]
    runs = []
    for attention in ("blockwise", "sdpa"):
        draft.zero_grad()
        r = ttt_forward(draft, batch, length=4, target_head=head, attention=attention)
        r.loss.backward()
        runs.append((r, torch.cat([p.grad.flatten() for p in draft.parameters()])))
    torch.testing.assert_close(runs[0][0].loss, runs[1][0].loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(runs[0][1], runs[1][1], rtol=1e-4, atol=1e-6)
    assert runs[0][0].count == runs[1][0].count == [5 + 2, 5 + 2, 5 + 1, 5 + 0]


@pytest.mark.parametrize("hard", [False, True])
def test_survival_weighting_equals_a_loop_by_hand(hard):
    """--ttt-weighting survival[-hard]: a step-k row weighs decay**k / n_k times Π_{j<k} a_j, where
    a_j is the draft's probability (hard: indicator of its argmax) of the target's full-vocab argmax
    at step j of the same chain, times 1 if the data token there equals that argmax. By loops."""
    draft, batch, full_head, chosen = _served_case(seed=1)
    argmax = (batch["hidden_state"] @ full_head.T).argmax(-1)
    g = torch.Generator().manual_seed(3)
    follow = torch.rand(argmax.shape, generator=g) < 0.6       # most data tokens are the target's argmax
    batch["input_ids"][:, 1:] = torch.where(follow[:, :-1], argmax[:, :-1], batch["input_ids"][:, 1:])
    length, decay = 3, 0.9
    r = ttt_forward(draft, batch, length=length, decay=decay, target_head=full_head[chosen], full_head=full_head,
                    weighting="survival-hard" if hard else "survival")
    d2t_index = {int(t): d for d, t in enumerate(chosen)}
    with torch.no_grad():
        outs = {k: (out, index) for k, out, index in unroll(draft, batch["input_ids"], batch["aux_hidden_states"],
                                                              length)}
        target_logp = torch.log_softmax(batch["hidden_state"] @ full_head[chosen].T, dim=-1)
        b, t = batch["input_ids"].shape
        sup = [[bool(batch["loss_mask"][i, q + 1]) if q + 1 < t else False for q in range(t)] for i in range(b)]

        def logp(i, p, k):
            out, index = outs[k]
            return torch.log_softmax(draft.logits(out[index[i, p]]), dim=-1)

        def accept(i, p, j):
            q = p + 1 + j
            if not sup[i][q]:
                return 1.0
            lp, tgt = logp(i, p, j), int(argmax[i, q])
            if tgt not in d2t_index:
                a = 0.0
            elif hard:
                a = float(int(lp.argmax()) == d2t_index[tgt])
            else:
                a = float(lp[d2t_index[tgt]].exp())
            return a * float(int(batch["input_ids"][i, q + 1]) == tgt)

        terms = [[] for _ in range(length)]
        for i in range(b):
            for q in range(t - 1):
                if not sup[i][q]:
                    continue
                for k in range(length):
                    p = q - 1 - k
                    if p < 0:
                        continue
                    ce = float(-(target_logp[i, q].exp() * logp(i, p, k)).sum())
                    terms[k].append(math.prod(accept(i, p, j) for j in range(k)) * ce)
    expected = sum(decay ** k * sum(v) / len(v) for k, v in enumerate(terms))
    assert r.count == [len(v) for v in terms]
    assert math.isclose(r.loss.item(), expected, rel_tol=1e-4)
    plain = ttt_forward(draft, batch, length=length, decay=decay, target_head=full_head[chosen], full_head=full_head)
    assert r.loss.item() < plain.loss.item()                   # later steps lose weight where chains die
    assert r.loss_sum == pytest.approx(plain.loss_sum)         # the reported per-step CE is unweighted


def test_survival_weighting_needs_the_full_vocab_argmax():
    draft, batch, full_head, chosen = _served_case()
    with pytest.raises(ValueError, match="full-vocab argmax"):
        ttt_forward(draft, batch, length=2, target_head=full_head[chosen], weighting="survival")


def test_served_chain_rows_add_up_to_the_per_step_counts():
    """return_chains: row p's step k is True iff a server accepts it; summed over rows it is
    correct_served, and a (row, step) that supervises nothing is False."""
    draft, batch, full_head, chosen = _served_case()
    r = ttt_forward(draft, batch, length=3, target_head=full_head[chosen], full_head=full_head, return_chains=True)
    chain = r.served_chain
    assert chain.shape == (*batch["input_ids"].shape, 3)
    assert chain.sum(dim=(0, 1)).tolist() == r.correct_served
    t = batch["input_ids"].shape[1]
    for k in range(3):       # step k at row p supervises target row p+1+k, i.e. loss_mask[p+2+k]
        supervised = torch.zeros_like(chain[..., k])
        supervised[:, : t - 2 - k] = batch["loss_mask"][:, 2 + k:].bool()
        assert not (chain[..., k] & ~supervised).any()


def _rows_by_hand(draft, batch, length, decay, term) -> float:
    """Σ_k decay^k × the mean over step k's supervised rows of term(step-k output at row p, batch row i,
    target position q), by loops: step k at row p predicts the target at q = p+1+k, supervised iff
    loss_mask[q+1] (and attention_mask[q+1])."""
    with torch.no_grad():
        b, t = batch["input_ids"].shape
        total = 0.0
        for k, out, index in unroll(draft, batch["input_ids"], batch["aux_hidden_states"], length):
            terms = []
            for i in range(b):
                for p in range(t):
                    q = p + 1 + k
                    if q + 1 >= t or not batch["loss_mask"][i, q + 1] or not batch["attention_mask"][i, q + 1]:
                        continue
                    terms.append(term(out[index[i, p]], i, q))
            if terms:
                total += decay ** k * sum(terms) / len(terms)
    return total


def test_feature_loss_adds_the_row_weighted_smooth_l1_by_hand():
    """--feature-loss W: loss + W Σ_k decay^k / n_k Σ_rows mean_h SmoothL1(norm(step-k output at row p),
    hidden_state[p+1+k]), over the rows the distribution loss supervises; its gradient reaches the draft."""
    draft, batch, full_head, chosen = _served_case(seed=2)
    length, decay, w = 3, 0.8, 0.5
    base = ttt_forward(draft, batch, length=length, decay=decay, target_head=full_head[chosen])
    with_f = ttt_forward(draft, batch, length=length, decay=decay, target_head=full_head[chosen], feature_weight=w)
    by_hand = _rows_by_hand(draft, batch, length, decay, lambda out, i, q: torch.nn.functional.smooth_l1_loss(
        draft.norm(out), batch["hidden_state"][i, q]).item())
    assert with_f.count == base.count
    assert float(with_f.loss.detach() - base.loss.detach()) == pytest.approx(w * by_hand, abs=2e-6)  # fp32 losses ~5
    draft.zero_grad()
    (with_f.loss - base.loss.detach()).backward()
    assert draft.fc.weight.grad.abs().sum() > 0
    b, t = batch["input_ids"].shape
    with pytest.raises(ValueError, match="hidden_state"):
        topk = {k: v for k, v in batch.items() if k != "hidden_state"}
        ttt_forward(draft, {**topk, "target_topk_ids": torch.zeros(b, t, 2, dtype=torch.long),
                            "target_topk_logits": torch.zeros(b, t, 2)}, length=1, feature_weight=w)


@pytest.mark.parametrize("signal", ["hidden", "topk"])
def test_distill_temperature_is_the_tempered_soft_ce_by_hand(signal):
    """--distill-temperature T: T² Σ_k decay^k / n_k Σ_rows CE(softmax(target logits / T), log_softmax(draft
    logits / T)) over the rows of every step; the fused loss's gradient equals plain autograd's, and the
    argmax figures do not change with T."""
    draft, batch, full_head, chosen = _served_case(seed=3)
    head = full_head[chosen]
    if signal == "topk":                 # a full-K top-K store over the draft vocab: the same distribution
        logits = batch.pop("hidden_state") @ head.T
        batch["target_topk_logits"] = logits
        batch["target_topk_ids"] = torch.arange(40).expand(*logits.shape[:2], 40).contiguous()
    length, decay, temp = 3, 0.8, 2.5
    got = ttt_forward(draft, batch, length=length, decay=decay, target_head=head, temperature=temp)
    base = ttt_forward(draft, batch, length=length, decay=decay, target_head=head)

    def tempered_ce(out, i, q):
        z = (batch["hidden_state"][i, q] @ head.T) if signal == "hidden" else batch["target_topk_logits"][i, q]
        return float(-(torch.softmax(z / temp, -1) * torch.log_softmax(draft.logits(out) / temp, -1)).sum())

    by_hand = _rows_by_hand(draft, batch, length, decay, tempered_ce)
    assert float(got.loss.detach()) == pytest.approx(temp ** 2 * by_hand, rel=1e-5)
    assert got.correct_draft_vocab == base.correct_draft_vocab and got.count == base.count
    grads = []
    for fused in (True, False):
        draft.zero_grad()
        ttt_forward(draft, batch, length=length, decay=decay, target_head=head, temperature=temp,
                    fused_loss=fused).loss.backward()
        grads.append([p.grad.clone() for p in (draft.lm_head.weight, draft.fc.weight)])
    for a, c in zip(*grads):
        torch.testing.assert_close(a, c, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="temperature"):
        ttt_forward(draft, batch, length=1, target_head=head, temperature=0.0)
    if signal == "hidden":           # the feature loss beside it is not T²-scaled
        with torch.no_grad():
            both = ttt_forward(draft, batch, length=length, decay=decay, target_head=head, temperature=temp,
                               feature_weight=1.0)
            feat = ttt_forward(draft, batch, length=length, decay=decay, target_head=head, feature_weight=1.0)
        assert float(both.loss - got.loss.detach()) == pytest.approx(float(feat.loss - base.loss.detach()), abs=1e-5)


def test_deep_scale_weighs_only_the_steps_after_the_first():
    """deep_scale s (the TTT-length curriculum's ramp): loss = step 0's + s × the later steps'. At s = 0 it
    is the loss of a 1-step unroll; the per-step figures do not change."""
    draft, batch, full_head, chosen = _served_case(seed=4)
    head = full_head[chosen]
    with torch.no_grad():
        full = ttt_forward(draft, batch, length=3, target_head=head)
        one = ttt_forward(draft, batch, length=1, target_head=head)
        zero = ttt_forward(draft, batch, length=3, target_head=head, deep_scale=0.0)
        half = ttt_forward(draft, batch, length=3, target_head=head, deep_scale=0.5)
    assert float(zero.loss) == pytest.approx(float(one.loss), rel=1e-6)
    assert float(half.loss) == pytest.approx(float(one.loss) + 0.5 * float(full.loss - one.loss), rel=1e-6)
    assert half.loss_sum == pytest.approx(full.loss_sum) and half.correct_draft_vocab == full.correct_draft_vocab
