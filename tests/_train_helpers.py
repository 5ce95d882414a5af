"""Helpers shared by the draft / TTT / trainer tests: small drafts, data and a 'sharp' target."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch
from transformers import LlamaConfig

from draftsmith.draft import Eagle3Config, Eagle3Draft

WORDS = ("the cat sat on a mat and then it ran to the big red house with many small dogs "
         "while seven blue birds sang about rain over quiet green hills").split()


def small_draft(vocab: int = 300, hidden: int = 64, draft_vocab: int | None = None, seed: int = 0,
                dtype: torch.dtype = torch.float32) -> Eagle3Draft:
    target = LlamaConfig(hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=8,
                         num_attention_heads=4, num_key_value_heads=2, vocab_size=vocab, rope_theta=50000.0)
    cfg = Eagle3Config.from_target_config(target, draft_vocab_size=draft_vocab or vocab)
    torch.manual_seed(seed)
    draft = Eagle3Draft(cfg)
    for p in draft.parameters():
        torch.nn.init.normal_(p, std=0.1)
    draft.load_embeddings(torch.randn(vocab, hidden))
    return draft.to(dtype)


def write_conversations(path: Path, n: int, seed: int = 0, answer_words: int = 24) -> Path:
    """Multi-turn conversations of a small word set (patterned, so a draft can learn them)."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        turns = []
        for _ in range(rng.choice([1, 2])):
            start = rng.randrange(len(WORDS))
            question = " ".join(rng.choices(WORDS, k=6))
            answer = " ".join(WORDS[(start + j) % len(WORDS)] for j in range(answer_words))
            turns += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        rows.append({"id": f"conv-{i}", "conversations": turns})
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def sharp_target(src: Path, out: Path, scale: float = 60.0) -> Path:
    """The tiny random target with its lm_head scaled up: a peaked, context-dependent next-token
    distribution, so the draft has something learnable (a random tiny head is near-uniform)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out / "config.json").exists():
        return out
    model = AutoModelForCausalLM.from_pretrained(src, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(scale)
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def online_config(target: Path, data: Path, out: Path, **kw) -> dict:
    """TrainConfig fields of a small deterministic online run on CPU (tests/test_equivalence.py,
    tests/test_resume_world_size.py); `kw` overrides."""
    base = dict(mode="online", target_model_path=str(target), train_data_path=str(data), output_dir=str(out),
                draft_vocab_size=128, max_length=64, eval_interval=1000, dtype="float32", autocast="off",
                attention="blockwise", device="cpu", progress=False)
    base.update(kw)
    return base


def run_two_ranks(configs: list[dict], spec: Path):
    """Train each TrainConfig dict in turn under one 2-process gloo torchrun launch
    (tests/_equivalence_worker.py); the completed process (returncode, stderr)."""
    import json
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    spec.write_text(json.dumps(configs))
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([str(repo), os.environ.get("PYTHONPATH", "")]))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           str(repo / "tests" / "_equivalence_worker.py"), str(spec)],
                          env=env, capture_output=True, text=True, timeout=600)
