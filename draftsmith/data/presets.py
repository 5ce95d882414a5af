"""Named datasets for prepare-data: where each lives on the hub and how one of its rows
becomes a conversation.

A preset's `to_row(raw, ordinal)` only reshapes a raw row into something
`conversation.normalize_row` reads ({"id", "conversations" | "messages"} or
{"id", "text"}); role aliases, validation and the normalization policy live there,
so a new preset is a few lines:

    register(Preset("mydata", "org/name", "train", question_answer("mydata", "prompt", "completion")))

The same `to_row` serves hub rows and `--data-path` files in the hub's row shape.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator

from draftsmith.data.formats import DEFAULT_LIMITS, Record, RowLimits
from draftsmith.errors import DraftsmithError, InputError


@dataclass(frozen=True)
class Preset:
    """A named dataset: hub location (None for local-only) and its row -> conversation shape."""

    name: str
    hub_name: str | None
    split: str
    to_row: Callable[[object, int], object]
    config: str | None = None
    description: str = ""

    @property
    def hub_source(self) -> str:
        config = f"/{self.config}" if self.config else ""
        return f"{self.hub_name}{config}:{self.split}"


PRESETS: dict[str, Preset] = {}


def register(preset: Preset) -> Preset:
    """Add a preset to the registry (a later registration with the same name replaces it)."""
    PRESETS[preset.name] = preset
    return preset


def get_preset(name: str) -> Preset:
    """A registered preset, or for "org/name" any hub dataset already in a chat shape
    (canonical, "messages", ShareGPT or pre-formatted rows), split "train"."""
    if name in PRESETS:
        return PRESETS[name]
    if "/" in name:
        prefix = name.rsplit("/", 1)[-1]
        return Preset(name, name, "train", lambda raw, n: _id_if_missing(prefix, raw, n),
                      description="hub dataset in a chat shape")
    raise DraftsmithError(f"unknown dataset {name!r}; presets: {', '.join(sorted(PRESETS))}, "
                          f"or a hub name 'org/name' whose rows are already chat-shaped")


def qa_row(prefix: str, ordinal: int, question: object, answer: object) -> dict:
    """A single-turn conversation from a question/answer row, with a positional id."""
    return {"id": f"{prefix}-{ordinal}",
            "conversations": [{"role": "user", "content": question},
                              {"role": "assistant", "content": answer}]}


def _passthrough(raw: object, ordinal: int) -> object:
    return raw


def _id_if_missing(prefix: str, raw: object, ordinal: int) -> object:
    """Hub chat sets often have no id column: give such rows a positional one."""
    if isinstance(raw, dict) and raw.get("id") is None:
        return {**raw, "id": f"{prefix}-{ordinal}"}
    return raw


def _ultrachat(raw: object, ordinal: int) -> object:
    if not isinstance(raw, dict):
        return raw
    return {"id": raw.get("prompt_id"), "conversations": raw.get("messages")}


def question_answer(prefix: str, question: str, answer: str) -> Callable[[object, int], object]:
    """A `to_row` for single-turn SFT sets: the `question` field is the user turn, `answer` the reply."""
    def to_row(raw: object, ordinal: int) -> object:
        return qa_row(prefix, ordinal, raw.get(question), raw.get(answer)) if isinstance(raw, dict) else raw
    return to_row


register(Preset("ultrachat", "HuggingFaceH4/ultrachat_200k", "train_sft", _ultrachat,
                description="UltraChat 200k (prompt, prompt_id, messages[role, content]); id = prompt_id"))
register(Preset("sharegpt", "Aeala/ShareGPT_Vicuna_unfiltered", "train", _passthrough,
                description="ShareGPT Vicuna (id, conversations[from, value]); human/gpt/... role aliases"))
register(Preset("metamathqa", "meta-math/MetaMathQA", "train", question_answer("metamathqa", "query", "response"),
                description="MetaMathQA 395k math SFT (query, response, type, original_question)"))
register(Preset("gsm8k", "openai/gsm8k", "train", question_answer("gsm8k", "question", "answer"), config="main",
                description="GSM8K grade-school math (question, answer with worked solution)"))
register(Preset("magicoder", "ise-uiuc/Magicoder-Evol-Instruct-110K", "train",
                question_answer("magicoder", "instruction", "response"),
                description="Magicoder Evol-Instruct 110k code SFT (instruction, response)"))
register(Preset("custom", None, "train", _passthrough,
                description="chat-shaped rows: canonical, {id, messages}, ShareGPT, or pre-formatted {id, text}"))


def hub_records(preset: Preset, limits: RowLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """Rows of the preset's hub dataset (downloaded and cached by `datasets`).

    The download happens on the call, not on the first row, so a failure surfaces at once.
    Rows are checked against `limits` and the Unicode policy like file rows (`Record.checked`).
    """
    if preset.hub_name is None:
        raise InputError(f"dataset {preset.name!r} has no hub location: pass --data-path FILE")
    import datasets

    try:
        ds = datasets.load_dataset(preset.hub_name, preset.config, split=preset.split)
    except Exception as e:  # offline, missing, gated, renamed: all end the same way for the user
        raise DraftsmithError(
            f"could not load {preset.hub_name!r} (split {preset.split!r}) from the Hugging Face hub: "
            f"{type(e).__name__}: {e}\nIf the hub is unreachable, download the data and pass it with "
            f"--data-path FILE (.json, .jsonl or .parquet), e.g. "
            f"`draftsmith prepare-data --dataset {preset.name} --data-path data.jsonl`") from e
    return (Record(preset.hub_source, None, index, row).checked(limits) for index, row in enumerate(ds))
