"""Benchmark prompts: MT-bench, GSM8K, HumanEval from the packaged datasets, or a JSONL file.

A prompt is a list of user turns; multi-turn prompts (MT-bench) are answered turn by
turn, each later turn after the model's own previous answer.
"""

from __future__ import annotations

import gzip
import json
from dataclasses import dataclass
from pathlib import Path

from draftsmith import resources
from draftsmith.errors import InputError

NAMED = ("mtbench", "gsm8k", "humaneval")
HUMANEVAL_INSTRUCTION = "Complete the following Python function. Reply with the code only.\n\n"


@dataclass
class Prompt:
    id: str
    turns: list[str]
    system: str | None = None


def _jsonl(path: Path, limit: int | None):
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        count = 0
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            if limit is not None and count >= limit:
                return
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise InputError(f"invalid JSON: {e.msg}", path=path, line=line_no) from None
            if not isinstance(row, dict):
                raise InputError("each line must be a JSON object", path=path, line=line_no)
            count += 1
            yield line_no, row


def mtbench(limit: int | None = None) -> list[Prompt]:
    return [Prompt(id=f"mtbench/{row['question_id']}", turns=list(row["turns"]))
            for _, row in _jsonl(resources.mtbench_questions(), limit)]


def gsm8k(limit: int | None = None) -> list[Prompt]:
    return [Prompt(id=f"gsm8k/{i}", turns=[row["question"]])
            for i, (_, row) in enumerate(_jsonl(resources.gsm8k_test(), limit))]


def humaneval(limit: int | None = None) -> list[Prompt]:
    return [Prompt(id=row["task_id"], turns=[HUMANEVAL_INSTRUCTION + row["prompt"]])
            for _, row in _jsonl(resources.humaneval(), limit)]


def from_file(path: Path, limit: int | None = None) -> list[Prompt]:
    """Rows {"turns": [...]}, {"prompt"|"question"|"text": str} or a conversation row ✱ (its user turns)."""
    path = Path(path)
    if not path.exists():
        raise InputError("no such prompt file", path=path)
    prompts = []
    for line_no, row in _jsonl(path, limit):
        system = None
        if "turns" in row:
            turns = row["turns"]
        elif "conversations" in row:
            convo = row["conversations"]
            if not isinstance(convo, list):
                raise InputError("conversations must be a list", path=path, line=line_no, field="conversations")
            turns = [m.get("content") for m in convo if isinstance(m, dict) and m.get("role") == "user"]
            system = next((m.get("content") for m in convo if isinstance(m, dict) and m.get("role") == "system"),
                          None)
        else:
            key = next((k for k in ("prompt", "question", "text") if k in row), None)
            if key is None:
                raise InputError("row has none of turns / conversations / prompt / question / text",
                                 path=path, line=line_no)
            turns = [row[key]]
        if not turns or not all(isinstance(t, str) and t for t in turns):
            raise InputError("prompt turns must be non-empty strings", path=path, line=line_no)
        pid = row.get("id", row.get("question_id", row.get("task_id", f"{path.stem}/{line_no}")))
        prompts.append(Prompt(id=str(pid), turns=list(turns), system=system))
    return prompts


def load(name: str, limit: int | None = None) -> list[Prompt]:
    """A named benchmark or a .jsonl / .jsonl.gz path; `limit` keeps the first prompts."""
    if name == "mtbench":
        return mtbench(limit)
    if name == "gsm8k":
        return gsm8k(limit)
    if name == "humaneval":
        return humaneval(limit)
    if name.endswith((".jsonl", ".jsonl.gz")):
        return from_file(Path(name), limit)
    raise InputError(f"unknown benchmark {name!r}: use {', '.join(NAMED)} or a FILE.jsonl", field="benchmark")
