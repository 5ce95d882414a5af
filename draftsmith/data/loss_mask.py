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


def char_spans_to_token_mask(offsets: np.ndarray, spans: Sequence[Span], text_length: int) -> np.ndarray:
    """Loss mask (int8 0/1, one per token) for tokens with character `offsets` [T, 2]."""
    if len(offsets) == 0:
        return np.zeros(0, dtype=np.int8)
    covered = np.zeros(text_length + 1, dtype=np.int32)
    for start, end in spans:
        if end > start:
            covered[start] += 1
            covered[end] -= 1
    supervised_chars = np.cumsum(covered[:-1]) > 0
    prefix = np.concatenate(([0], np.cumsum(supervised_chars, dtype=np.int64)))
    begin = np.clip(offsets[:, 0], 0, text_length)
    end = np.clip(np.maximum(offsets[:, 1], offsets[:, 0] + 1), 0, text_length)
    return ((prefix[end] - prefix[begin]) > 0).astype(np.int8)


def tokenize_with_mask(backend, texts: Sequence[str], spans: Sequence[Sequence[Span]]
                       ) -> list[tuple[np.ndarray, np.ndarray]]:
    """(input_ids int64, loss_mask int8) per text: one batched tokenization with offsets, no special tokens added.

    The chat template writes bos and every special token itself, so nothing is added here
    (as transformers' `apply_chat_template(tokenize=True)` does).
    """
    out = []
    for text, text_spans, enc in zip(texts, spans, backend.encode_batch(list(texts), add_special_tokens=False)):
        ids = np.asarray(enc.ids, dtype=np.int64)
        offsets = np.asarray(enc.offsets, dtype=np.int64).reshape(-1, 2)
        out.append((ids, char_spans_to_token_mask(offsets, text_spans, len(text))))
    return out
