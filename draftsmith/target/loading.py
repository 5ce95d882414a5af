"""Loading a Hugging Face model, tokenizer or config: the one place every stage does it.

build-dataset, regenerate-data, hidden-states, train, export, estimate-memory and eval all
load the target through these three functions, so a path that does not hold a model, a
hub name without network or a model that needs `--trust-remote-code` fails the same way in
every stage: a `DraftsmithError` naming what could not be loaded and why.
`trust_remote_code` is always opt-in (the stages' `--trust-remote-code`).
"""

from __future__ import annotations

import os

import torch

from draftsmith.errors import DraftsmithError


def load_tokenizer(ref: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(ref), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise DraftsmithError(f"cannot load tokenizer {str(ref)!r}: {e}") from e


def load_config(ref: str | os.PathLike, trust_remote_code: bool = False):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(str(ref), trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as e:
        raise DraftsmithError(f"cannot read the model config {str(ref)!r}: {e}") from e


def load_causal_lm(ref: str | os.PathLike, dtype: torch.dtype, trust_remote_code: bool = False, **kwargs):
    """`AutoModelForCausalLM.from_pretrained` in eval mode; `kwargs` pass through (device_map,
    distributed_config, ...)."""
    from transformers import AutoModelForCausalLM

    try:
        model = AutoModelForCausalLM.from_pretrained(str(ref), dtype=dtype, trust_remote_code=trust_remote_code,
                                                     **kwargs)
    except (OSError, ValueError) as e:
        raise DraftsmithError(f"cannot load model {str(ref)!r}: {e}") from e
    return model.eval()
