"""Shared fixtures: tiny random-initialized real HF models (fast, no download) that use
the real SmolLM2 tokenizer, and the packaged SmolLM2 folder for end-to-end tests."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch


@pytest.fixture(autouse=True)
def _seed_everything():
    random.seed(0)
    np.random.seed(0)
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny tensors: one intra-op thread avoids thread-sync stalls on a shared, loaded CPU
    (opt in per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _save_tiny(out: Path, arch: str, vocab_size: int = 49152, num_layers: int = 8, hidden: int = 64) -> Path:
    from transformers import (AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config,
                              Qwen2ForCausalLM)

    from draftsmith import resources

    torch.manual_seed(1234)
    common = dict(vocab_size=vocab_size, hidden_size=hidden, intermediate_size=2 * hidden,
                  num_hidden_layers=num_layers, num_attention_heads=4, num_key_value_heads=2,
                  max_position_embeddings=4096, bos_token_id=1, eos_token_id=2, pad_token_id=2,
                  tie_word_embeddings=False)
    if arch == "llama":
        model = LlamaForCausalLM(LlamaConfig(rope_theta=100000.0, **common))
    elif arch == "qwen2":
        model = Qwen2ForCausalLM(Qwen2Config(rope_theta=1000000.0, **common))
    else:
        raise ValueError(arch)
    model.eval()
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(resources.smollm2_dir()).save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory) -> Path:
    """An 8-layer (default aux layers [2, 4, 5]), hidden-64 random Llama with the SmolLM2 tokenizer (ChatML template)."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_llama"), "llama")


@pytest.fixture(scope="session")
def tiny_qwen2_dir(tmp_path_factory) -> Path:
    """An 8-layer, hidden-64 random Qwen2 with the SmolLM2 tokenizer."""
    return _save_tiny(tmp_path_factory.mktemp("tiny_qwen2"), "qwen2")


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The real SmolLM2-135M-Instruct as an HF folder (converted from the packaged GGUF once)."""
    from draftsmith import resources

    return resources.smollm2_dir()
