"""Training-time test (TTT): unroll the draft `length` steps exactly as a server drafts.

Alignment, per batch row p (a target position) and step k, matching SGLang at serving
time:
- draft extend (`EagleDraftInput.prepare_for_extend`, python/sglang/srt/speculative/
  eagle_info.py) shifts input_ids left by one and keeps the positions: row p gets the
  target's fused hidden at p, the embedding of token p+1 and rope position p;
- draft decode (`EAGLEWorker.draft_forward`, python/sglang/srt/speculative/
  eagle_worker.py) feeds the draft's own pre-norm output back as the hidden, the next
  token as input and does `forward_batch.positions.add_(1)` per step, attending to the
  extend keys and to its own earlier steps.
So step k at row p: hidden = fc(aux[p]) (k = 0) or the step k-1 output at p; token
p+1+k; rope position p+k; keys = step-0 keys of rows 0..p plus steps 1..k of row p.
It predicts token p+2+k, whose target distribution is the target's output at position
q = p+1+k, and the mask is loss_mask[p+2+k] — the mask of the token being predicted.
Every supervised token t >= 2 is thus a step-0 target (row t-2); tokens 0 and 1 have no
draft context (token 1 is the target's own first prediction at serving time).

The target rows needed are the same at every step: positions q with loss_mask[q+1] = 1
(the feature store's top-K rows). Their distribution is computed once per batch, over the
draft vocabulary only (the loss is a soft CE over the draft vocab).

Packed rows (train/packing.py, `--packing`) hold several conversations: the batch then
carries `position_ids` (restarting at 0 in each conversation) and `doc_ids` (the
conversation of each position, -1 on padding). Every rule above then holds per
conversation: rope position position_ids[p]+k, the token fed at step k is 0 once p+1+k
leaves p's conversation (as past the end of an unpacked row), a target row needs q and q+1
in one conversation, step k supervises q only if position_ids[q] >= k+1 (its row p = q-1-k
is in q's conversation), and attention (step 0 and the first key block of later steps)
never crosses a conversation. The loss (per-step mean over the batch's supervised rows)
and the metrics are therefore those of the same conversations in unpacked rows.

Accuracy is counted the way servers verify. SGLang (0.5.x, `eagle_worker.py` verify ->
`eagle_info.py` `EagleVerifyInput.verify`, greedy path: `target_predict =
torch.argmax(logits_output.next_token_logits, dim=-1)`) and vLLM (0.33,
`v1/sample/rejection_sampler.py`, greedy: `target_argmax = target_probs.argmax(dim=-1)`)
both take the argmax over the target's *full* vocabulary and accept a draft token
(mapped to a target id through d2t) only if it equals it. So `correct_served` counts
`draft_to_target[draft argmax] == full-vocab target argmax`, and `correct_draft_vocab`
keeps the older, optimistic figure (the draft's argmax equals the target's argmax within
the draft vocab), which counts a hit even where the target's choice is a token the
draft cannot emit. The full-vocab argmax comes from `hidden_state @ lm_head.T` (hidden
signal, `full_head`), from a top-K store's `target_argmax` rows, or, for a full-vocab
draft, is the draft-vocab argmax itself. The draft's logits are computed for supervised rows only, after the
unroll, by one fused loss over all steps' rows in chunks whose gradient is taken in the
forward pass: logits never exist for more than one chunk of rows.

(Over 400 lines: the alignment rules above, their packed-row form, the unroll and the fused
loss are one contract, read and tested together.)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator

import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from draftsmith.draft.model import Eagle3Draft, Segments, StepPattern

LOGITS_CHUNK_ELEMENTS = 1 << 22   # rows per loss chunk = this / draft vocab (16 MiB of fp32 logits; ×16 on CUDA)


@dataclass
class TTTResult:
    loss: torch.Tensor                    # Σ_k decay^k loss_k, differentiable
    loss_sum: list[float] = field(default_factory=list)  # per step Σ CE over supervised rows
    correct_draft_vocab: list[int] = field(default_factory=list)  # per step: argmax matches within the draft vocab
    count: list[int] = field(default_factory=list)       # per step supervised rows
    correct_served: list[int] | None = None              # per step: d2t(draft argmax) == full-vocab target argmax;
    #                                                      None when the full-vocab argmax is unknown
    served_chain: torch.Tensor | None = None             # return_chains: bool [B, T, length], row p's step k served-
    #                                                      right (False where step k supervises nothing)


def _same_doc(doc_ids: torch.Tensor, shift: int) -> torch.Tensor:
    """bool [B, T-shift]: positions p and p+shift belong to one conversation (conversations are
    contiguous, so every position between them does too)."""
    return doc_ids[:, shift:] == doc_ids[:, : doc_ids.shape[1] - shift]


def packed_layout(batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(position_ids, doc_ids) of a packed batch, (None, None) for unpacked rows."""
    doc_ids = batch.get("doc_ids")
    if doc_ids is None:
        return None, None
    if "position_ids" not in batch:
        raise ValueError("a packed batch (doc_ids) needs position_ids")
    return batch["position_ids"], doc_ids


def target_rows(loss_mask: torch.Tensor, attention_mask: torch.Tensor,
                doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """bool [B, T]: positions q whose next token q+1 is supervised (where the target's
    distribution is needed) and, in a packed row, in q's conversation. Row T-1 never qualifies."""
    sup = (loss_mask.bool() & attention_mask.bool())
    rows = torch.zeros_like(sup)
    rows[:, :-1] = sup[:, 1:]
    if doc_ids is not None:
        rows[:, :-1] &= _same_doc(doc_ids, 1)
    return rows


def step_inputs(input_ids: torch.Tensor, k: int, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(token ids, rope positions) fed at step k: token p+1+k (0 past the end of the row or of
    p's conversation), position p+k (position_ids[p]+k in a packed row)."""
    b, t = input_ids.shape
    tokens = torch.zeros_like(input_ids)
    if 1 + k < t:
        tokens[:, : t - 1 - k] = input_ids[:, 1 + k:]
        if doc_ids is not None:
            tokens[:, : t - 1 - k] *= _same_doc(doc_ids, 1 + k)
    if position_ids is not None:
        return tokens, position_ids + k
    positions = torch.arange(k, t + k, device=input_ids.device).expand(b, t)
    return tokens, positions


def ttt_mask(t: int, k: int, device: torch.device, doc_ids: torch.Tensor | None = None) -> torch.Tensor:
    """bool [1, 1, t, t·(k+1)] for step k: keys are [step 0 | step 1 | ... | step k] blocks of
    t rows each; row p sees step-0 rows <= p and, in later blocks, only its own row. With
    `doc_ids` [B, t] (packed rows): [B, 1, t, t·(k+1)], step-0 rows of p's conversation only
    (k = 0 is then the document-causal mask of step 0)."""
    rows = torch.arange(t, device=device)[:, None]
    cols = torch.arange(t * (k + 1), device=device)[None, :]
    block, col = cols // t, cols % t
    mask = (((block == 0) & (col <= rows)) | ((block > 0) & (col == rows)))[None, None]
    if doc_ids is None:
        return mask
    same = (doc_ids[:, :, None] == doc_ids[:, None, :]).repeat(1, 1, k + 1)   # key column c: row c % t
    return mask & same[:, None]


def ttt_block_mask(t: int, k: int, device: torch.device, doc_ids: torch.Tensor | None = None):
    """The same pattern as a flex-attention BlockMask (sparse: no t × t·(k+1) tensor); with
    `doc_ids` [B, t] one BlockMask row per batch row (blocks across conversations are skipped)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def mask_mod(b, h, q_idx, kv_idx):
        block, col = kv_idx // t, kv_idx % t
        return ((block == 0) & (col <= q_idx)) | ((block > 0) & (col == q_idx))

    def doc_mask_mod(b, h, q_idx, kv_idx):
        return mask_mod(b, h, q_idx, kv_idx) & (doc_ids[b, q_idx] == doc_ids[b, kv_idx % t])

    if doc_ids is None:
        return create_block_mask(mask_mod, None, None, t, t * (k + 1), device=device)
    return create_block_mask(doc_mask_mod, doc_ids.shape[0], None, t, t * (k + 1), device=device)


class FusedSoftCE(torch.autograd.Function):
    """Σ_rows w_row · softCE(x_row @ Wᵀ, target of the row), with the gradient computed in the
    forward pass chunk by chunk: logits exist for one chunk of rows at a time and nothing of
    them is kept for backward (only grad_x [N, H] and grad_W [Vd, H]). Row i's target is row
    `target_row[i]` of `target_logp` [Nq, Vd] (or of the sparse `topk_ids`/`topk_logp`
    [Nq, K]), so targets shared by several TTT steps are stored once. Returns (loss,
    per-row CE, per-row argmax); the last two carry no gradient."""

    @staticmethod
    def forward(ctx, x, weight, row_weight, target_row, target_logp, topk_ids, topk_logp, chunk: int):
        n = x.shape[0]
        w = weight.to(x.dtype)
        grad_x = torch.empty_like(x)
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device)
        ce_all = torch.empty(n, dtype=torch.float32, device=x.device)
        pred = torch.empty(n, dtype=torch.long, device=x.device)
        for a in range(0, n, chunk):
            xc, rows = x[a:a + chunk], target_row[a:a + chunk]
            logits = (xc @ w.T).float()
            pred[a:a + chunk] = logits.argmax(-1)
            grad = F.log_softmax(logits, dim=-1)
            del logits
            if target_logp is not None:
                tp = target_logp[rows].exp_()
                ce_all[a:a + chunk] = -torch.linalg.vecdot(tp, grad)
                grad.exp_().sub_(tp)                        # softmax - p  (Σp = 1)
            else:
                ids, tp = topk_ids[rows], topk_logp[rows].exp_()
                ce_all[a:a + chunk] = -torch.linalg.vecdot(tp, grad.gather(-1, ids))
                grad.exp_().scatter_add_(-1, ids, -tp)
            del tp
            grad.mul_(row_weight[a:a + chunk, None])
            g = grad.to(x.dtype)
            grad_x[a:a + chunk] = g @ w
            if g.dtype == torch.float32:
                grad_w.addmm_(g.T, xc)
            else:
                grad_w += (g.T @ xc).float()
        ctx.save_for_backward(grad_x, grad_w)
        ctx.weight_dtype = weight.dtype
        ctx.mark_non_differentiable(ce_all, pred)
        return (ce_all * row_weight).sum(), ce_all, pred

    @staticmethod
    def backward(ctx, g_loss, g_ce, g_pred):
        grad_x, grad_w = ctx.saved_tensors
        return (grad_x * g_loss.to(grad_x.dtype), (grad_w * g_loss).to(ctx.weight_dtype),
                None, None, None, None, None, None)


def _plain_soft_ce(x, weight, row_weight, target_row, target_logp, topk_ids, topk_logp, chunk):
    """The same as FusedSoftCE with ordinary autograd (reference for tests)."""
    logp = F.log_softmax((x @ weight.to(x.dtype).T).float(), dim=-1)
    if target_logp is not None:
        ce = -(target_logp[target_row].exp() * logp).sum(-1)
    else:
        ce = -(topk_logp[target_row].exp() * logp.gather(-1, topk_ids[target_row])).sum(-1)
    return (ce * row_weight).sum(), ce.detach(), logp.detach().argmax(-1)


def step_rows(rows_b: torch.Tensor, rows_q: torch.Tensor, k: int,
              rows_pos: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Which target rows step k supervises and from which draft row: target position q is
    predicted at step k by row p = q-1-k (so only q >= k+1; in a packed row, only where q's
    position in its conversation `rows_pos` >= k+1). Returns (keep mask, p)."""
    keep = (rows_q if rows_pos is None else rows_pos) >= k + 1
    return keep, rows_q[keep] - 1 - k


def step_counts(batch: dict[str, torch.Tensor], length: int) -> list[int]:
    """Supervised rows per TTT step of a batch (`TTTResult.count`, known before the forward):
    what the trainer sums over micro-batches and data-parallel ranks to normalize the loss."""
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(batch["input_ids"])
    position_ids, doc_ids = packed_layout(batch)
    qb, qq = target_rows(batch["loss_mask"], attention_mask, doc_ids).nonzero(as_tuple=True)
    qpos = None if position_ids is None else position_ids[qb, qq]
    return [int(step_rows(qq, qq, k, qpos)[0].sum()) for k in range(length)]


def live_rows(target: torch.Tensor, length: int, doc_ids: torch.Tensor | None = None) -> list[torch.Tensor]:
    """live[k] bool [B, T]: row p still predicts a supervised token at some step k' >= k
    (target row p+1+k' is set, in p's conversation). Rows of later steps only feed their own
    chain, so a row that is not live needs no computation from step k on."""
    b, t = target.shape
    live, acc = [], torch.zeros_like(target, dtype=torch.bool)
    for k in reversed(range(length)):
        shifted = torch.zeros_like(acc)
        if 1 + k < t:
            shifted[:, : t - 1 - k] = target[:, 1 + k:]
            if doc_ids is not None:
                shifted[:, : t - 1 - k] &= _same_doc(doc_ids, 1 + k)
        acc = acc | shifted
        live.append(acc)
    return live[::-1]


def layer_fn(draft: Eagle3Draft, checkpointing: bool):
    """`draft.layer`, or (activation checkpointing) the same call keeping only its inputs and
    outputs for backward and recomputing the layer's activations there: per TTT step the saved
    tensors drop from the whole layer's (~70 bytes × H per token) to its inputs and outputs,
    for one more forward of the layer in backward."""
    if not checkpointing:
        return draft.layer

    def run(*args, **kwargs):
        if not torch.is_grad_enabled():
            return draft.layer(*args, **kwargs)
        return checkpoint(draft.layer, *args, use_reentrant=False, **kwargs)
    return run


def unroll(draft: Eagle3Draft, input_ids: torch.Tensor, aux_hidden_states: torch.Tensor, length: int,
           attention: str = "blockwise", live: list[torch.Tensor] | None = None,
           checkpointing: bool = False, position_ids: torch.Tensor | None = None,
           doc_ids: torch.Tensor | None = None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (k, outputs [N, H], index [B, T]) for steps 0..length-1: the pre-norm outputs of
    the rows computed at step k, and for each (b, p) its row in `outputs` (-1: not computed).
    Step 0 computes every row; with `live` (blockwise attention) later steps compute only the
    live rows, one batch element at a time. `checkpointing`: see `layer_fn`. `position_ids`,
    `doc_ids` [B, T]: packed rows (module docstring); attention stays within a conversation
    (step 0: the document-causal mask, a bool tensor for SDPA, a BlockMask for flex, each
    conversation's own causal attention for blockwise)."""
    b, t = input_ids.shape
    layer = layer_fn(draft, checkpointing)
    tokens, positions = step_inputs(input_ids, 0, position_ids, doc_ids)
    mask0 = None                                                                   # causal
    if doc_ids is not None:
        if attention == "blockwise":
            mask0 = Segments(segments(doc_ids, b, t))
        else:
            mask0 = (ttt_block_mask if attention == "flex" else ttt_mask)(t, 0, input_ids.device, doc_ids)
    out, (k0, v0) = layer(tokens, draft.project(aux_hidden_states), positions, attn_mask=mask0)
    dense = torch.arange(b * t, device=input_ids.device).view(b, t)
    yield 0, out.reshape(b * t, -1), dense
    if live is not None and attention == "blockwise":
        yield from _live_steps(layer, input_ids, out, k0, v0, length, live, doc_ids)
        return
    past_k, past_v, hidden = k0, v0, out
    for k in range(1, length):
        tokens, positions = step_inputs(input_ids, k, position_ids, doc_ids)
        if attention == "flex":
            mask = ttt_block_mask(t, k, input_ids.device, doc_ids)
        elif attention == "sdpa":
            mask = ttt_mask(t, k, input_ids.device, doc_ids)
        elif attention == "blockwise":
            mask = StepPattern(t, doc_ids=doc_ids)
        else:
            raise ValueError(f"unknown TTT attention {attention!r} (blockwise, sdpa, flex)")
        hidden, (key, value) = layer(tokens, hidden, positions, attn_mask=mask, past_kv=(past_k, past_v))
        past_k, past_v = torch.cat([past_k, key], dim=2), torch.cat([past_v, value], dim=2)
        yield k, hidden.reshape(b * t, -1), dense


def segments(doc_ids: torch.Tensor | None, b: int, t: int) -> list[tuple[int, int, int]]:
    """(batch row, start, end) of each conversation: one per row unpacked, one per conversation
    (and one for the padding) of a packed row."""
    if doc_ids is None:
        return [(i, 0, t) for i in range(b)]
    out = []
    for i, row in enumerate(doc_ids.tolist()):
        cuts = [0] + [p for p in range(1, t) if row[p] != row[p - 1]] + [t]
        out += [(i, a, e) for a, e in zip(cuts, cuts[1:])]
    return out


def _live_steps(layer, input_ids, out0, k0, v0, length, live, doc_ids=None):
    """Steps >= 1 of the live rows, one conversation at a time (each unpacked row, or each
    conversation of a packed row, sliced out with its own step-0 keys: the computation of the
    conversation alone, so packing costs no attention across conversations here)."""
    b, t = input_ids.shape
    device = input_ids.device
    state = [{"seg": (i, a, e), "rows": torch.arange(e - a, device=device), "hidden": out0[i, a:e], "diag": []}
             for i, a, e in segments(doc_ids, b, t)]
    for k in range(1, length):
        outs, offset = [], 0
        index = torch.full((b, t), -1, dtype=torch.long, device=device)
        for st in state:
            i, a, e = st["seg"]
            rows = live[k][i, a:e].nonzero().flatten()           # rows of the conversation, from its start
            sel = torch.searchsorted(st["rows"], rows)            # live rows shrink step by step
            diag = [(key[:, :, sel], value[:, :, sel]) for key, value in st["diag"]]
            st["rows"] = rows
            if rows.numel() == 0:
                st["diag"] = []
                continue
            n = e - a
            nxt = rows + 1 + k
            tokens = torch.where(nxt < n, input_ids[i, a + nxt.clamp(max=n - 1)], torch.zeros_like(nxt))
            past = (torch.cat([k0[i:i + 1, :, a:e]] + [d[0] for d in diag], dim=2),
                    torch.cat([v0[i:i + 1, :, a:e]] + [d[1] for d in diag], dim=2))
            o, (key, value) = layer(tokens[None], st["hidden"][sel][None], (rows + k)[None],
                                    attn_mask=StepPattern(n, rows), past_kv=past)
            st["hidden"], st["diag"] = o[0], diag + [(key, value)]
            outs.append(o[0])
            index[i, a + rows] = torch.arange(offset, offset + rows.numel(), device=device)
            offset += rows.numel()
        yield k, (torch.cat(outs) if outs else out0.new_zeros(0, out0.shape[-1])), index


def full_vocab_argmax(hidden: torch.Tensor, lm_head: torch.Tensor) -> torch.Tensor:
    """argmax over the target's whole vocabulary of `hidden @ lm_head.T` ([N, H] x [V, H] -> [N]
    target ids), in the head's dtype like the target's own lm_head, chunked so that at most
    LOGITS_CHUNK_ELEMENTS logits exist at once."""
    out = torch.empty(hidden.shape[0], dtype=torch.long, device=hidden.device)
    chunk = max(1, LOGITS_CHUNK_ELEMENTS * (16 if hidden.is_cuda else 1) // lm_head.shape[0])
    for a in range(0, hidden.shape[0], chunk):
        out[a:a + chunk] = (hidden[a:a + chunk].to(lm_head.dtype) @ lm_head.T).float().argmax(-1)
    return out


WEIGHTINGS = ("decay", "survival", "survival-hard")


@torch.no_grad()
def chain_survival(x: torch.Tensor, weight: torch.Tensor, target_row: torch.Tensor, rows_b: torch.Tensor,
                   rows_p: torch.Tensor, steps: torch.Tensor, served_draft: torch.Tensor, aligned: torch.Tensor,
                   shape: tuple[int, int, int], hard: bool, chunk: int) -> torch.Tensor:
    """Per row (batch row b, draft row p, step k): the probability that a served chain started
    at p is still alive at step k, Π_{j<k} a_j(p), detached, from the draft as it is now.

    a_j(p) is the chance that step j is accepted *and* that the token training feeds at step
    j+1 is the one a server would feed: the draft's probability of the target's full-vocab
    argmax (`hard`: 1 if the draft's argmax is it, the token-alignable form), times 1 if the
    data token at that position equals the target's argmax (`aligned`; otherwise the server's
    chain would continue on the argmax, not on the data token, so training's later steps are
    off the served path). A target outside the draft vocab cannot be accepted (a_j = 0). A
    step with no supervised row (a loss-mask gap) counts as a_j = 1. `shape` = (B, T, length).
    """
    a = torch.empty(x.shape[0], dtype=torch.float32, device=x.device)
    w = weight.to(x.dtype)
    for s in range(0, x.shape[0], chunk):
        logits = (x[s:s + chunk] @ w.T).float()
        tid = served_draft[target_row[s:s + chunk]]
        inside = tid >= 0
        if hard:
            a[s:s + chunk] = (logits.argmax(-1) == tid).float()
        else:
            a[s:s + chunk] = logits.softmax(-1).gather(-1, tid.clamp(min=0)[:, None]).squeeze(-1) * inside
    a = a * aligned[target_row].float()
    b, t, length = shape
    per_step = torch.ones(b, t, length, dtype=torch.float32, device=x.device)
    per_step[rows_b, rows_p, steps] = a
    alive = torch.cat([torch.ones_like(per_step[..., :1]), per_step[..., :-1].cumprod(-1)], dim=-1)
    return alive[rows_b, rows_p, steps]


def ttt_forward(draft: Eagle3Draft, batch: dict[str, torch.Tensor], *, length: int = 7, decay: float = 0.8,
                target_head: torch.Tensor | None = None, full_head: torch.Tensor | None = None,
                attention: str = "blockwise", fused_loss: bool = True,
                checkpointing: bool = False, step_norm: list[float] | None = None,
                weighting: str = "decay", return_chains: bool = False, feature_weight: float = 0.0,
                temperature: float = 1.0, deep_scale: float = 1.0) -> TTTResult:
    """Unroll `length` draft steps on a right-padded batch and return the weighted loss + metrics.

    batch: input_ids, loss_mask, attention_mask [B, T]; aux_hidden_states [B, T, 3·Ht]; and
    either hidden_state [B, T, Ht] (with `target_head` = the target lm_head rows of the draft
    vocab, [Vd, Ht]) or target_topk_ids / target_topk_logits [B, T, K] (draft-vocab ids), and
    optionally target_argmax [B, T] (full-vocab target ids, a top-K store's). `full_head` (the
    target's whole lm_head [V, Ht]) gives the full-vocab argmax of a hidden_state batch; the
    served accuracy (`correct_served`) is None when neither gives it and the draft vocab is
    not the full vocab.
    attention: "blockwise" (StepPattern: causal T×T + diagonal scores, recomputed in
    backward), "sdpa" (explicit T × T·(k+1) bool mask; the reference) or "flex" (BlockMask;
    the memory-efficient kernel on CUDA). fused_loss=False uses plain autograd for the loss
    (reference for tests; keeps every step's logits). checkpointing: recompute each step's
    layer activations in backward (`layer_fn`; same loss and gradients, less memory).
    weighting: "decay" weighs a step-k row decay**k (the peers' recipe); "survival" also by the
    detached chance that the served chain reaches it (`chain_survival`), "survival-hard" by
    whether it does (token-alignable training); both need the full-vocab target argmax.
    feature_weight: add feature_weight × the same row-weighted mean of SmoothL1(the draft's normed output,
    the target's last hidden state at the row's target position), EAGLE-1's feature regression on top
    of EAGLE-3's distribution loss (a hidden_state batch with target and draft hidden sizes equal).
    temperature: distill at temperature T (Hinton et al.): the soft CE is between softmax(target logits / T)
    and softmax(draft logits / T), scaled by T² so that the gradient's size does not depend on T; the
    argmax (accuracy, served figures) is unchanged. A top-K store's logits are divided the same way.
    `loss_sum` is then the tempered CE.
    deep_scale: multiplies the weight of every step k >= 1 (a TTT-length curriculum: the trainer ramps it
    from 0 to 1, so early training fits step 0 before the draft learns from its own outputs).
    return_chains: also return `served_chain`, per draft row and step whether a server accepts it
    (the chain acceptance of a draft started at that row, when the data is the target's own greedy text).
    step_norm: the divisor of step k's CE sum (default: this batch's count, a per-step mean);
    the trainer passes the count over its whole global batch (`step_counts` summed over
    micro-batches and ranks), so that any split of that batch gives the same gradient.
    A packed batch (train/packing.py) adds position_ids and doc_ids [B, T]: the loss and
    metrics are those of its conversations in unpacked rows (module docstring).
    """
    input_ids = batch["input_ids"]
    attention_mask = batch.get("attention_mask")
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    position_ids, doc_ids = packed_layout(batch)
    target = target_rows(batch["loss_mask"], attention_mask, doc_ids)
    qb, qq = target.nonzero(as_tuple=True)
    qpos = None if position_ids is None else position_ids[qb, qq]

    with torch.no_grad():
        target_logp = topk_ids = topk_logp = None
        if "target_topk_ids" in batch:
            topk_ids = batch["target_topk_ids"][qb, qq].long()
            topk_logp = F.log_softmax(batch["target_topk_logits"][qb, qq].float() / temperature, dim=-1)
            target_argmax = topk_ids.gather(-1, topk_logp.argmax(-1, keepdim=True)).squeeze(-1)
        else:
            if target_head is None:
                raise ValueError("a hidden_state batch needs target_head (target lm_head rows of the draft vocab)")
            hs = batch["hidden_state"][qb, qq]
            target_logp = F.log_softmax((hs.to(target_head.dtype) @ target_head.T).float() / temperature, dim=-1)
            target_argmax = target_logp.argmax(-1)
        draft_to_target = draft.draft_to_target
        if "target_argmax" in batch:
            served_argmax = batch["target_argmax"][qb, qq].long()
        elif "hidden_state" in batch and full_head is not None:
            served_argmax = full_vocab_argmax(batch["hidden_state"][qb, qq], full_head)
        elif draft.config.draft_vocab_size == draft.config.vocab_size:
            served_argmax = draft_to_target[target_argmax]
        else:
            served_argmax = None

    if temperature <= 0:
        raise ValueError(f"the distillation temperature must be > 0, got {temperature}")
    if weighting not in WEIGHTINGS:
        raise ValueError(f"unknown TTT weighting {weighting!r} ({', '.join(WEIGHTINGS)})")
    if weighting != "decay" and served_argmax is None:
        raise ValueError(f"--ttt-weighting {weighting} needs the target's full-vocab argmax: a hidden-state store "
                         "with the target's lm_head, a top-K store with target_argmax, or a full-vocab draft")
    rows_x, row_w, step_of_row, counts, rows_bp = [], [], [], [], []
    # every parameter stays in the graph even when a batch supervises nothing (DDP)
    pad = 0.0 * (draft.lm_head.weight.sum() + draft.norm.weight.sum())
    live = live_rows(target, length, doc_ids)
    for k, out, index in unroll(draft, input_ids, batch["aux_hidden_states"], length, attention, live,
                                 checkpointing, position_ids, doc_ids):
        keep, rows_p = step_rows(qb, qq, k, qpos)
        n = int(keep.sum())
        counts.append(n)
        pad = pad + 0.0 * out.sum()
        if n:
            rows_x.append(draft.norm(out[index[qb[keep], rows_p]]))
            scale = deep_scale if k else 1.0
            row_w.append(torch.full((n,), scale * decay ** k / (n if step_norm is None else step_norm[k]),
                                    device=out.device))
            step_of_row.append(torch.full((n,), k, device=out.device, dtype=torch.long))
            rows_bp.append((qb[keep], rows_p))
    result = TTTResult(loss=pad, count=counts)
    if not rows_x:
        result.loss_sum, result.correct_draft_vocab = [0.0] * length, [0] * length
        result.correct_served = None if served_argmax is None else [0] * length
        return result
    keep_all = torch.cat([step_rows(qb, qq, k, qpos)[0].nonzero().flatten() for k in range(length)])
    x, row_w, steps = torch.cat(rows_x), torch.cat(row_w), torch.cat(step_of_row)
    if weighting != "decay" or return_chains:   # each row's (batch row, draft row), for per-chain figures
        all_b, all_p = torch.cat([b for b, _ in rows_bp]), torch.cat([p for _, p in rows_bp])
    chunk = max(1, LOGITS_CHUNK_ELEMENTS * (16 if x.is_cuda else 1) // draft.config.draft_vocab_size)
    if weighting != "decay":
        served_draft = torch.full((draft.config.vocab_size,), -1, dtype=torch.long, device=x.device)
        served_draft[draft_to_target] = torch.arange(draft.config.draft_vocab_size, device=x.device)
        aligned = input_ids[qb, qq + 1] == served_argmax
        row_w = row_w * chain_survival(
            x.detach(), draft.lm_head.weight, keep_all, all_b, all_p, steps, served_draft[served_argmax], aligned,
            (input_ids.shape[0], input_ids.shape[1], length), weighting == "survival-hard", chunk)
    head, ce_w = draft.lm_head.weight, row_w
    if temperature != 1.0:          # the tempered CE, T²-scaled (the feature loss keeps row_w)
        head, ce_w = head / temperature, row_w * temperature ** 2
    args = (x, head, ce_w, keep_all, target_logp, topk_ids, topk_logp, chunk)
    loss, ce, pred = FusedSoftCE.apply(*args) if fused_loss else _plain_soft_ce(*args)
    if feature_weight:
        if "hidden_state" not in batch or batch["hidden_state"].shape[-1] != x.shape[-1]:
            raise ValueError("a feature loss needs the target's hidden_state rows with the draft's hidden size")
        hs = batch["hidden_state"][qb, qq][keep_all].to(x.dtype)
        loss = loss + feature_weight * (row_w * F.smooth_l1_loss(x, hs, reduction="none").mean(-1)).sum()
    result.loss = loss + pad
    result.loss_sum = torch.zeros(length, dtype=torch.float64).index_add_(0, steps.cpu(), ce.double().cpu()).tolist()

    def per_step(hit: torch.Tensor) -> list[int]:
        return torch.zeros(length, dtype=torch.long).index_add_(0, steps.cpu(), hit.long().cpu()).tolist()

    result.correct_draft_vocab = per_step(pred == target_argmax[keep_all])
    if served_argmax is not None:
        hit = draft_to_target[pred] == served_argmax[keep_all]
        result.correct_served = per_step(hit)
        if return_chains:
            chain = torch.zeros(*input_ids.shape, length, dtype=torch.bool, device=hit.device)
            chain[all_b, all_p, steps] = hit
            result.served_chain = chain
    return result


def _tau(acc_k: list[float]) -> float:
    tau, run = 1.0, 1.0
    for a in acc_k:
        run *= a
        tau += run
    return tau


def step_metrics(loss_sum: list[float], correct_draft_vocab: list[int], count: list[int],
              correct_served: list[int] | None = None) -> dict[str, object]:
    """Per-step mean loss and accuracy, and the simulated acceptance length
    τ = 1 + Σ_k Π_{i<=k} acc_i (a chain of drafts accepted while each step is right).

    `acc_k` / `tau` are the served figures (full-vocab target argmax; None when unknown),
    `acc_k_draft_vocab` / `tau_draft_vocab` the within-draft-vocab ones (>= the served ones)."""
    loss_k = [s / c if c else 0.0 for s, c in zip(loss_sum, count)]
    acc_dv = [r / c if c else 0.0 for r, c in zip(correct_draft_vocab, count)]
    acc = None if correct_served is None else [r / c if c else 0.0 for r, c in zip(correct_served, count)]
    return {"loss_k": loss_k, "acc_k": acc, "tau": None if acc is None else _tau(acc),
            "acc_k_draft_vocab": acc_dv, "tau_draft_vocab": _tau(acc_dv)}
