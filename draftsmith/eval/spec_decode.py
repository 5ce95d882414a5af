"""Greedy speculative decoding with an HF target and an exported EAGLE-3 draft, and plain greedy.

One loop serves chain (topk = 1) and tree (topk > 1) drafting, the way SGLang's EAGLE
worker does it:

- The target's prefill gives the aux features F[0..n) of the prompt and the first token.
- The draft is aligned as in EAGLE-3 training: at draft position t it reads the token
  t + 1 and the target feature of position t (fused by fc). Its own KV cache holds only
  *committed* positions, those whose target features are known.
- Drafting: the draft's output at the last committed position proposes depth 1; each
  further step feeds the frontier nodes with their parent's pre-norm output hidden and
  keeps the `topk` best children by cumulative log-probability. The `num_draft_tokens-1`
  best nodes form the tree (a chain when topk = 1).
- Verification: one target forward over [last token, tree nodes] with a tree attention
  mask on top of the target's KV cache (a chain passes no mask: the model's own causal
  mask keeps its sliding windows). The longest path whose tokens equal the target's
  own greedy choices is accepted, plus the target's choice after it (the bonus token).
- Rollback: the target cache keeps the prefix, the last token and the accepted path; the
  draft drops its tentative tree and re-extends over the accepted tokens with the
  verify pass's target features. Trees need full-attention caches (a sliding-window
  target, e.g. Mistral, Gemma 3, gpt-oss, decodes chains only).

Greedy acceptance keeps the output token-identical to the target's plain greedy decoding
(up to float ties between a batched and a one-token forward); `evaluate` checks that.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from draftsmith.errors import DraftsmithError


@dataclass
class SpecConfig:
    num_steps: int = 5                    # K: draft depth per verify step
    topk: int = 1                         # branching per node; 1 = chain
    num_draft_tokens: int | None = None   # tree nodes verified per step + 1 (SGLang's meaning); None = K*topk + 1
    max_new_tokens: int = 128
    eos_token_ids: tuple[int, ...] = ()

    def __post_init__(self):
        if self.num_steps < 0:
            raise DraftsmithError(f"--draft-depth must be >= 0, got {self.num_steps}")
        if self.topk < 1:
            raise DraftsmithError(f"--topk must be >= 1, got {self.topk}")
        if self.max_new_tokens < 1:
            raise DraftsmithError(f"--max-new-tokens must be >= 1, got {self.max_new_tokens}")
        if self.num_draft_tokens is not None and self.num_draft_tokens < 1:
            raise DraftsmithError(f"--num-draft-tokens must be >= 1, got {self.num_draft_tokens}")

    @property
    def tree_size(self) -> int:
        """Draft nodes verified per step."""
        if self.num_steps == 0:
            return 0
        n = self.num_draft_tokens - 1 if self.num_draft_tokens is not None else self.num_steps * self.topk
        return max(0, n)


@dataclass
class Generation:
    """One decoded reply. `emitted[i]` tokens came out of target forward i after the prefill."""

    tokens: list[int]
    seconds: float
    emitted: list[int] = field(default_factory=list)    # tokens kept per verify step
    accepted: list[int] = field(default_factory=list)   # draft tokens accepted per verify step (before truncation)


def _stop_index(tokens: list[int], eos: tuple[int, ...], budget: int) -> int:
    """How many of `tokens` to keep: up to the budget and up to and including the first eos."""
    keep = min(len(tokens), budget)
    for i, t in enumerate(tokens[:keep]):
        if t in eos:
            return i + 1
    return keep


def _with_cache(model, cache) -> dict:
    """The KV-cache keyword of `model.forward`: `cache` from transformers 5.24 on, `past_key_values`
    before (5.24 still accepts that name, with a deprecation warning; 5.23 and older ignore `cache`)."""
    import inspect

    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: cache}


def _tree_mask(allow: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """bool [Q, S] -> additive 4D mask [1, 1, Q, S] in the model dtype (what HF accepts as a custom mask)."""
    zero = torch.zeros((), dtype=dtype, device=allow.device)
    neg = torch.full((), torch.finfo(dtype).min, dtype=dtype, device=allow.device)
    return torch.where(allow, zero, neg)[None, None]


def _full_attention_only(cache) -> str | None:
    """The first KV-cache layer type that is not plain full attention (sliding window, ...), or None."""
    from transformers.cache_utils import DynamicLayer

    return next((type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer), None)


def _keep_cache_positions(cache, keep: torch.Tensor, length: int) -> None:
    """Keep only the sequence positions `keep` of the target's `length` cached ones.

    An accepted chain keeps a prefix, which every HF cache can crop (sliding-window layers
    too: the cache records the states past their window, `activate_past_recording`); a tree
    path keeps scattered rows, gathered from full-attention layers."""
    if torch.equal(keep.cpu(), torch.arange(keep.numel())):
        if keep.numel() < length:
            cache.crop(keep.numel() - length)          # a negative count removes that many tokens
        return
    for layer in cache.layers:
        layer.keys = layer.keys.index_select(-2, keep)
        layer.values = layer.values.index_select(-2, keep)


class _Target:
    """The HF target with its KV cache for one reply (state: the cache)."""

    def __init__(self, model, aux_layers: list[int]):
        from transformers import DynamicCache

        from draftsmith.target.hf import AuxCapture

        self.model = model
        self.cache = DynamicCache(config=model.config)
        # sliding-window layers drop states past their window; a rejected draft must be croppable
        self.cache.activate_past_recording()
        self.dtype = model.get_input_embeddings().weight.dtype
        self.device = model.get_input_embeddings().weight.device
        # the aux features as the hidden-states stage and online training read them (target/hf.py)
        self.aux = AuxCapture.for_model(model, aux_layers)

    def forward(self, ids: torch.Tensor, positions: torch.Tensor, allow: torch.Tensor | None,
                want_aux: bool, last_logits_only: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """logits [T, V] (or [1, V]) and aux features [T, 3H] (or None) of `ids` appended to the cache."""
        mask = None if allow is None else _tree_mask(allow.to(self.device), self.dtype)
        try:
            out = self.model(input_ids=ids[None].to(self.device), position_ids=positions[None].to(self.device),
                             attention_mask=mask, **_with_cache(self.model, self.cache), use_cache=True,
                             logits_to_keep=1 if last_logits_only else 0)
            aux = self.aux.take()[0] if want_aux else None
        finally:
            self.aux.clear()
        return out.logits[0].float(), aux

    def close(self) -> None:
        self.aux.close()


class _Draft:
    """The draft with its committed KV cache (state: cache and last output hidden)."""

    def __init__(self, draft):
        self.draft = draft
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.last_hidden: torch.Tensor | None = None
        self.draft_to_target = draft.draft_to_target
        self.device = draft.fc.weight.device

    @property
    def length(self) -> int:
        return 0 if self.keys is None else self.keys.shape[2]

    def extend(self, ids: torch.Tensor, aux: torch.Tensor) -> None:
        """Commit positions [length, length + T): tokens t + 1 with target features of t."""
        start = self.length
        positions = torch.arange(start, start + ids.numel(), device=self.device)
        hidden = self.draft.project(aux.to(self.device)[None])
        past = None if self.keys is None else (self.keys, self.values)
        out, (k, v) = self.draft.layer(ids.to(self.device)[None], hidden, positions[None], past_kv=past)
        self.keys = k if self.keys is None else torch.cat([self.keys, k], dim=2)
        self.values = v if self.values is None else torch.cat([self.values, v], dim=2)
        self.last_hidden = out[0, -1]

    def log_probs(self, out: torch.Tensor) -> torch.Tensor:
        return torch.log_softmax(self.draft.logits(out).float(), dim=-1)


@dataclass
class _Tree:
    token: list[int] = field(default_factory=list)     # target ids
    parent: list[int] = field(default_factory=list)    # -1 = the root (last accepted token)
    depth: list[int] = field(default_factory=list)
    score: list[float] = field(default_factory=list)

    def add(self, token: int, parent: int, depth: int, score: float) -> int:
        self.token.append(token)
        self.parent.append(parent)
        self.depth.append(depth)
        self.score.append(score)
        return len(self.token) - 1

    def ancestors(self, i: int) -> list[int]:
        out = []
        while i >= 0:
            out.append(i)
            i = self.parent[i]
        return out


def _draft_tree(d: _Draft, cfg: SpecConfig) -> tuple[_Tree, list[int]]:
    """Grow the draft tree from the draft's last committed output; return it and the chosen nodes."""
    tree = _Tree()
    if cfg.tree_size == 0:
        return tree, []
    k = cfg.topk
    logp = d.log_probs(d.last_hidden[None])[0]
    top = torch.topk(logp, k)
    frontier = [tree.add(int(d.draft_to_target[i]), -1, 1, float(s)) for s, i in zip(top.values, top.indices)]
    hidden_of: dict[int, torch.Tensor] = {}
    fed: list[int] = []                         # nodes whose draft KV sits in tree_k / tree_v, in order
    tree_k = tree_v = None
    root_hidden = d.last_hidden
    p0 = d.length - 1                           # draft position of the root
    for step in range(2, cfg.num_steps + 1):
        parents_hidden = torch.stack([hidden_of[tree.parent[n]] if tree.parent[n] >= 0 else root_hidden
                                      for n in frontier])
        ids = torch.tensor([tree.token[n] for n in frontier], device=d.device)
        positions = torch.full((len(frontier),), p0 + step - 1, device=d.device)
        # each frontier node sees the committed cache, its fed ancestors and itself
        n_past = d.length + len(fed)
        allow = torch.zeros(len(frontier), n_past + len(frontier), dtype=torch.bool, device=d.device)
        allow[:, : d.length] = True
        slot = {node: j for j, node in enumerate(fed)}
        for q, node in enumerate(frontier):
            for a in tree.ancestors(tree.parent[node]):
                allow[q, d.length + slot[a]] = True
            allow[q, n_past + q] = True
        past_k = d.keys if tree_k is None else torch.cat([d.keys, tree_k], dim=2)
        past_v = d.values if tree_v is None else torch.cat([d.values, tree_v], dim=2)
        out, (kk, vv) = d.draft.layer(ids[None], parents_hidden[None], positions[None],
                                      attn_mask=allow[None, None], past_kv=(past_k, past_v))
        tree_k = kk if tree_k is None else torch.cat([tree_k, kk], dim=2)
        tree_v = vv if tree_v is None else torch.cat([tree_v, vv], dim=2)
        fed.extend(frontier)
        for q, node in enumerate(frontier):
            hidden_of[node] = out[0, q]
        logp = d.log_probs(out[0])                                       # [k, Vd]
        base = torch.tensor([tree.score[n] for n in frontier], device=logp.device)[:, None]
        child = torch.topk(logp, k, dim=-1)                              # per frontier node
        cand_scores = (base + child.values).flatten()
        cand = []
        for q, node in enumerate(frontier):
            for j in range(k):
                cand.append(tree.add(int(d.draft_to_target[child.indices[q, j]]), node, step,
                                     float(cand_scores[q * k + j])))
        best = torch.topk(cand_scores, min(k, len(cand))).indices.tolist()
        frontier = [cand[i] for i in best]
    order = sorted(range(len(tree.token)), key=lambda i: (-tree.score[i], tree.depth[i], i))
    chosen: set[int] = set()
    for i in order:
        if len(chosen) >= cfg.tree_size:
            break
        chosen.update(tree.ancestors(i))
    return tree, sorted(chosen, key=lambda i: (tree.depth[i], i))


@torch.inference_mode()
def speculative_generate(model, draft, prompt_ids: list[int], cfg: SpecConfig, aux_layers: list[int]) -> Generation:
    """Greedy speculative decoding of one reply; `aux_layers` are HF hidden_states indices."""
    start = time.perf_counter()
    target = _Target(model, aux_layers)
    try:
        return _speculative_generate(target, draft, prompt_ids, cfg, start)
    finally:
        target.close()


def _speculative_generate(target: _Target, draft, prompt_ids: list[int], cfg: SpecConfig, start: float) -> Generation:
    window_layer = _full_attention_only(target.cache)
    if cfg.topk > 1 and window_layer is not None:
        raise DraftsmithError(f"tree drafting (--topk > 1) needs full-attention KV caches; this target has "
                              f"{window_layer} layers (sliding window): use --topk 1")
    d = _Draft(draft)
    prompt = torch.tensor(prompt_ids, dtype=torch.long)
    n = prompt.numel()
    logits, aux = target.forward(prompt, torch.arange(n), None, want_aux=cfg.tree_size > 0, last_logits_only=True)
    first = int(logits[-1].argmax())
    result = Generation(tokens=[first], seconds=0.0)
    if first in cfg.eos_token_ids or cfg.max_new_tokens == 1:
        result.seconds = time.perf_counter() - start
        return result
    if cfg.tree_size > 0:
        d.extend(torch.cat([prompt[1:], torch.tensor([first])]), aux)
    last, pos = first, n                       # the last token is not in the target cache yet
    while True:
        tree, nodes = _draft_tree(d, cfg) if cfg.tree_size > 0 else (_Tree(), [])
        m = len(nodes)
        index = {node: 1 + j for j, node in enumerate(nodes)}           # row in the verify batch
        ids = torch.tensor([last] + [tree.token[i] for i in nodes], dtype=torch.long)
        positions = torch.tensor([pos] + [pos + tree.depth[i] for i in nodes])
        allow = torch.zeros(1 + m, pos + 1 + m, dtype=torch.bool)
        allow[:, : pos + 1] = True
        for node in nodes:
            for a in tree.ancestors(node):
                allow[index[node], pos + index[a]] = True
        # a chain is plain causal: the target builds its own mask (with its sliding windows)
        chain = all(tree.parent[node] == (nodes[j - 1] if j else -1) for j, node in enumerate(nodes))
        logits, aux = target.forward(ids, positions, None if chain else allow, want_aux=cfg.tree_size > 0)
        choice = logits.argmax(dim=-1).tolist()
        children: dict[int, list[int]] = {}
        for node in nodes:
            children.setdefault(tree.parent[node], []).append(node)
        path, cur = [], -1
        while True:
            want = choice[index[cur] if cur >= 0 else 0]
            nxt = next((c for c in children.get(cur, []) if tree.token[c] == want), None)
            if nxt is None:
                break
            path.append(nxt)
            cur = nxt
        bonus = choice[index[path[-1]] if path else 0]
        new = [tree.token[i] for i in path] + [bonus]
        result.accepted.append(len(path))
        keep = _stop_index(new, cfg.eos_token_ids, cfg.max_new_tokens - len(result.tokens))
        result.emitted.append(keep)
        result.tokens.extend(new[:keep])
        if keep < len(new) or len(result.tokens) >= cfg.max_new_tokens or (new[keep - 1] in cfg.eos_token_ids):
            break
        rows = torch.tensor([0] + [index[i] for i in path])
        if m:
            _keep_cache_positions(target.cache, torch.cat([torch.arange(pos), pos + rows]).to(target.device),
                                  pos + 1 + m)
        if cfg.tree_size > 0:
            d.extend(torch.tensor(new), aux[rows.to(aux.device)])
        pos += len(new)
        last = bonus
    result.seconds = time.perf_counter() - start
    return result


@torch.inference_mode()
def greedy_generate(model, prompt_ids: list[int], max_new_tokens: int, eos_token_ids: tuple[int, ...]) -> Generation:
    """Plain greedy decoding with a KV cache: the reference output and the speed baseline."""
    from transformers import DynamicCache

    start = time.perf_counter()
    device = model.get_input_embeddings().weight.device
    cache = DynamicCache(config=model.config)
    ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    tokens: list[int] = []
    pos = 0
    while True:
        out = model(input_ids=ids, position_ids=torch.arange(pos, pos + ids.shape[1], device=device)[None],
                    **_with_cache(model, cache), use_cache=True, logits_to_keep=1)
        pos += ids.shape[1]
        token = int(out.logits[0, -1].argmax())
        tokens.append(token)
        if token in eos_token_ids or len(tokens) >= max_new_tokens:
            break
        ids = torch.tensor([[token]], device=device)
    return Generation(tokens=tokens, seconds=time.perf_counter() - start, emitted=[1] * (len(tokens) - 1))
