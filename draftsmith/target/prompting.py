"""How a conversation becomes a generation prompt for the target, and where its replies stop.

Shared by the two stages that make the target talk: `regenerate-data` (the target writes
the training replies) and `eval` (speculative vs plain decoding). Both must render and
stop exactly the way serving does, or the draft is trained and measured on text the
served model never produces.
"""

from __future__ import annotations


def eos_ids(tokenizer, model) -> tuple[int, ...]:
    """Every token id that ends a reply: the tokenizer's eos and the model's generation_config eos list."""
    ids: set[int] = set()
    for value in (tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(int(v) for v in value)
    return tuple(sorted(ids))


def render_prompt(tokenizer, messages: list[dict[str, str]]) -> str:
    """The prompt text with the target tokenizer's chat template (plain turns for a base model)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return "\n\n".join(m["content"] for m in messages) + "\n\n"


def encode_prompt(tokenizer, text: str) -> list[int]:
    """Token ids of a rendered prompt: the template already holds BOS, a base model's plain text does not."""
    return tokenizer(text, add_special_tokens=not getattr(tokenizer, "chat_template", None)).input_ids
