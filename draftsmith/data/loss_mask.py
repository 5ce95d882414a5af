"""Supervised character spans -> per-token loss mask, from one fast-tokenizer pass with offsets.

Rule for a token that straddles a span boundary: a token is supervised iff at least one
of its characters lies in a supervised span. Every supervised character is then covered
by a supervised token, so the masked tokens always contain the whole reply; a token
that merges the tail of a header with the head of a reply is supervised, because it is
the only way this tokenization writes those reply characters. A token with an empty
character range (e.g. one the tokenizer inserts) counts as covering the character at
its offset. Offsets are characters of the rendered text (Python str indices), as the
`tokenizers` library reports them, and survive normalizers that rewrite the text.
"""

from __future__ import annotations

from itertools import chain
from typing import Sequence

import numpy as np

from draftsmith.errors import DraftsmithError

Span = tuple[int, int]


def backend_tokenizer(tokenizer):
    """The fast tokenizer's Rust backend, copied with truncation and padding off if it has them set."""
    from tokenizers import Tokenizer

    backend = getattr(tokenizer, "backend_tokenizer", None) or getattr(tokenizer, "_tokenizer", None)
    if not isinstance(backend, Tokenizer):
        raise DraftsmithError(f"{type(tokenizer).__name__} is not a fast tokenizer: build-dataset needs offsets "
                              "from a tokenizer.json (fast) tokenizer")
    if backend.truncation is not None or backend.padding is not None:
        backend = Tokenizer.from_str(backend.to_str())
        backend.no_truncation()
        backend.no_padding()
    return backend


def char_spans_to_token_mask(offsets: np.ndarray, spans: Sequence[Span]) -> np.ndarray:
    """Loss mask (int8 0/1, one per token) for tokens with character `offsets` [T, 2]."""
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.int8)
    merged: list[list[int]] = []
    for start, end in sorted(s for s in spans if s[1] > s[0]):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    if not merged:
        return np.zeros(len(offsets), dtype=np.int8)
    starts, ends = np.array(merged, dtype=np.int64).T
    begin = offsets[:, 0]
    end = np.maximum(offsets[:, 1], begin + 1)
    # the first span ending after the token's first character overlaps it iff it starts before the token ends
    idx = np.searchsorted(ends, begin, side="right")
    hit = idx < len(ends)
    hit[hit] = starts[idx[hit]] < end[hit]
    return hit.astype(np.int8)


def tokenize_with_mask(backend, texts: Sequence[str], spans: Sequence[Sequence[Span]]
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids int64, loss_mask int8) per text: one batched tokenization with offsets, no special tokens added.

    The chat template writes bos and every special token itself, so nothing is added here
    (as transformers' `apply_chat_template(tokenize=True)` does).
    """
    out = []
    for text_spans, enc in zip(spans, backend.encode_batch(list(texts), add_special_tokens=False)):
        ids = np.fromiter(enc.ids, dtype=np.int64, count=len(enc.ids))
        offsets = np.fromiter(chain.from_iterable(enc.offsets), dtype=np.int64, count=2 * len(ids)).reshape(-1, 2)
        out.append((ids, char_spans_to_token_mask(offsets, text_spans)))
    return out
