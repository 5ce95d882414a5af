"""Shared by the build-dataset tests: hand-written conversations, real templates and tokenizers."""

from __future__ import annotations

import datetime
import functools
import json
import random

from draftsmith import resources

SINGLE = [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "It is 4."}]
SYSTEM_MULTI = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": " Name a color. "},
    {"role": "assistant", "content": "Blue.\n"},
]
REASONING = [
    {"role": "user", "content": "Is 7 prime?"},
    {"role": "assistant", "content": "Yes.", "reasoning_content": "7 has no divisors but 1 and 7."},
]
REASONING_MULTI = [
    {"role": "user", "content": "a?"},
    {"role": "assistant", "content": "A.", "reasoning_content": "think a"},
    {"role": "user", "content": "b?"},
    {"role": "assistant", "content": "B.", "reasoning_content": "think b"},
]
TOOLS = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "",
     "tool_calls": [{"type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
    {"role": "tool", "content": "{\"temp\": 21}"},
    {"role": "assistant", "content": "It is 21 degrees."},
]
CONVERSATIONS = {"single": SINGLE, "system_multi": SYSTEM_MULTI, "reasoning": REASONING,
                 "reasoning_multi": REASONING_MULTI, "tools": TOOLS}

# special-token variables the llama.cpp templates need (their tokenizers are not on hand)
_JINJA_VARS = {
    "meta-llama-Llama-3.1-8B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "meta-llama-Llama-3.3-70B-Instruct": {"bos_token": "<|begin_of_text|>", "eos_token": "<|eot_id|>"},
    "Qwen-Qwen2.5-7B-Instruct": {"eos_token": "<|im_end|>"},
    "deepseek-ai-DeepSeek-R1-Distill-Qwen-32B": {"bos_token": "<｜begin▁of▁sentence｜>",
                                                 "eos_token": "<｜end▁of▁sentence｜>"},
    "microsoft-Phi-3.5-mini-instruct": {"bos_token": "<s>", "eos_token": "<|endoftext|>"},
    "mistralai-Mistral-Nemo-Instruct-2407": {"bos_token": "<s>", "eos_token": "</s>"},
    "openai-gpt-oss-120b": {},
}
FIXED_DATE = datetime.date(2025, 8, 5)


def real_template(ref: str) -> tuple[str, dict]:
    """(jinja source, variables) of a registry entry's `real_template` reference."""
    kind, name = ref.split(":", 1)
    if kind == "tokenizer":
        config = json.loads((resources.tokenizer_dir(name) / "tokenizer_config.json").read_text(encoding="utf-8"))
        variables = {k: (config[k]["content"] if isinstance(config[k], dict) else config[k])
                     for k in ("bos_token", "eos_token") if config.get(k)}
        return config["chat_template"], variables
    return resources.jinja_template(name), dict(_JINJA_VARS[name])


def render_real(ref: str, messages: list[dict], **kwargs) -> str:
    """Render with the real jinja template in transformers' own sandbox (gpt-oss's "Current date"
    line, which the template takes from the clock, set to FIXED_DATE)."""
    from draftsmith.data.templates import render_chat_template

    source, variables = real_template(ref)
    today = datetime.date.today().strftime("%Y-%m-%d")
    text = render_chat_template(source, messages, **variables, **kwargs)[0]
    return text.replace(f"Current date: {today}\n", f"Current date: {FIXED_DATE:%Y-%m-%d}\n")


@functools.lru_cache(maxsize=None)
def real_tokenizer(name: str):
    """A real tokenizer: "smollm2" or one of resources.tokenizer_dir's names."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tokenizer_path(name)))


@functools.lru_cache(maxsize=None)
def real_backend(name: str):
    from draftsmith.data.loss_mask import backend_tokenizer

    return backend_tokenizer(real_tokenizer(name))


@functools.lru_cache(maxsize=None)
def tokenizer_path(name: str):
    return resources.smollm2_dir() if name == "smollm2" else resources.tokenizer_dir(name)


def annotate(tokenizer, ids, mask) -> str:
    """Tokens joined by '|', supervised ones in «»: the golden-mask notation."""
    pieces = []
    for token_id, m in zip(ids, mask):
        piece = tokenizer.decode([int(token_id)])
        pieces.append(f"«{piece}»" if m else piece)
    return "|".join(pieces)


_WORDS = ["alpha", "Beta", "γάμμα", "δ", "naïve", "北京", "emoji🙂", "x=1;", "(ok)", "42", "-", "end.", "😀😀",
          "tab\tsep", "line\nbreak", "  spaced", "<b>", "{json}", "'quote'", "über"]


def random_text(rng: random.Random, n_max: int = 12) -> str:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(1, n_max))]
    return " ".join(words).strip() or "x"


def random_conversation(rng: random.Random, reasoning: bool = False) -> list[dict]:
    messages = []
    if rng.random() < 0.5:
        messages.append({"role": "system", "content": random_text(rng)})
    for _ in range(rng.randint(1, 3)):
        messages.append({"role": "user", "content": random_text(rng)})
        reply = {"role": "assistant", "content": random_text(rng, 30)}
        if reasoning and rng.random() < 0.7:
            reply["reasoning_content"] = random_text(rng, 20)
        messages.append(reply)
    return messages


def write_jsonl(path, rows) -> str:
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write((row if isinstance(row, str) else json.dumps(row, ensure_ascii=False)) + "\n")
    return str(path)
