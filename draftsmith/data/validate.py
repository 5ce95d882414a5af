"""validate-data: check conversation / pre-formatted files before training, writing nothing.

Every row goes through `conversation.find_problem` (the same rules build-dataset
applies), so a file that passes here tokenizes without skips. The report counts rows
per problem kind with the first few positions of each; exit status 1 when any row is
invalid (or a file holds no rows), 0 otherwise. Duplicate ids and files that mix
conversation with pre-formatted rows are warnings: they do not make a row invalid,
but build-dataset reads one kind per run and merged files often repeat ids. So are
replies before a conversation's first user message: build-dataset drops them (the
leading-reply policy, conversation.drop_leading_replies), keeping the row's later turns.
Rows are read with the same limits and Unicode policy as every data stage
(formats.RowLimits, rowerrors.py), and no row can stop the check.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tqdm import tqdm

from draftsmith import config
from draftsmith.config import option
from draftsmith.data import rowerrors
from draftsmith.data.conversation import drop_leading_replies, find_problem, normalize_row
from draftsmith.data.formats import DEFAULT_LIMITS, Record, RowLimits, file_format, iter_records
from draftsmith.errors import InputError

EMPTY_FILE = "empty file"
NORMALIZABLE = "invalid here, but prepare-data can normalize it"
LEADING_REPLIES = "replies before the first user message (build-dataset drops them)"


@dataclass
class ProblemCount:
    count: int = 0
    examples: list[str] = field(default_factory=list)  # "file:line 12" / "file:index 3"


@dataclass
class FileReport:
    path: str
    rows: int = 0
    valid: int = 0
    kinds: dict[str, int] = field(default_factory=dict)  # valid rows per kind


@dataclass
class ValidationReport:
    files: list[FileReport]
    problems: dict[str, ProblemCount]
    warnings: dict[str, ProblemCount]

    @property
    def rows(self) -> int:
        return sum(f.rows for f in self.files)

    @property
    def invalid(self) -> int:
        return sum(p.count for k, p in self.problems.items() if k != EMPTY_FILE)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict:
        return {"ok": self.ok, "rows": self.rows, "invalid": self.invalid, **asdict(self)}


@dataclass
class ValidateConfig:
    """Every setting of validate-data (draftsmith/config.py: flags, defaults, config files)."""

    files: list[Path] = option(default_factory=list, positional=True, metavar="FILE",
                               help=".jsonl / .json / .parquet files of conversation or pre-formatted rows")
    max_examples: int = option(5, help="positions listed per problem kind")
    json: bool = option(False, help="print the report as JSON")
    limits: RowLimits = field(default_factory=RowLimits)

    def validate(self) -> None:
        if not self.files:
            raise InputError("give at least one FILE to check", field="files")
        if self.max_examples < 0:
            raise InputError("must be >= 0", field="--max-examples")


CONFIG = ValidateConfig


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, ValidateConfig)


def run(args: argparse.Namespace) -> int:
    cfg = config.from_args(ValidateConfig, args)
    cfg.validate()
    report = validate_files(cfg.files, max_examples=cfg.max_examples, limits=cfg.limits)
    print(json.dumps(report.to_dict(), indent=2) if cfg.json else format_report(report))
    return 0 if report.ok else 1


def validate_files(paths: list[Path], max_examples: int = ValidateConfig.max_examples,
                   limits: RowLimits = DEFAULT_LIMITS) -> ValidationReport:
    """Check every row of every file; unreadable files raise InputError (missing, wrong type)."""
    problems: dict[str, ProblemCount] = {}
    warnings: dict[str, ProblemCount] = {}
    files = []
    first_seen: dict[str, str] = {}

    def note(table: dict[str, ProblemCount], kind: str, where: str) -> None:
        entry = table.setdefault(kind, ProblemCount())
        entry.count += 1
        if len(entry.examples) < max_examples:
            entry.examples.append(where)

    for path in paths:  # fail on a missing or unsupported file before reading any
        file_format(path)
        if not Path(path).is_file():
            raise InputError("no such file", path=path)
    for path in paths:
        report = FileReport(str(path))
        kinds: Counter = Counter()
        for record in tqdm(iter_records(path, limits=limits), desc=f"validate {Path(path).name}", unit=" rows",
                           disable=None, file=sys.stderr):  # a bar only on a terminal
            report.rows += 1
            where = _where(path, record)
            if record.error:
                note(problems, record.error, f"{where} ({record.detail})" if record.detail else where)
                continue
            try:
                kind, problem = find_problem(record.value)
                normalizable = bool(problem) and normalize_row(record.value).problem is None
            except Exception as e:  # the safety net (never expected: tests assert it)
                failure = rowerrors.internal_error(e)
                note(problems, failure["reason"], f"{where} ({failure['detail']})")
                continue
            if problem:
                note(problems, problem.reason, f"{where} ({problem.field})" if problem.field else where)
                if normalizable:  # e.g. ShareGPT from/value, "messages"
                    note(warnings, NORMALIZABLE, where)
                continue
            if kind == "conversation" and drop_leading_replies(record.value["conversations"])[1]:
                note(warnings, LEADING_REPLIES, where)
            report.valid += 1
            kinds[kind] += 1
            row_id = record.value["id"]
            if row_id in first_seen:
                note(warnings, "duplicate id", f"{where} (id {row_id!r}, first at {first_seen[row_id]})")
            else:
                first_seen[row_id] = where
        report.kinds = dict(sorted(kinds.items()))
        if report.rows == 0:
            note(problems, EMPTY_FILE, str(path))
        if len(kinds) > 1:
            note(warnings, "mixes conversation and pre-formatted rows", str(path))
        files.append(report)
    return ValidationReport(files, problems, warnings)


def _where(path: Path, record: Record) -> str:
    if record.line is not None:
        return f"{path}:{record.line}"
    return f"{path}[{record.index}]"


def format_report(report: ValidationReport) -> str:
    lines = []
    for f in report.files:
        kinds = ", ".join(f"{n:,} {k}" for k, n in f.kinds.items()) or "none"
        lines.append(f"{f.path}: {f.rows:,} rows, {f.valid:,} valid ({kinds}), {f.rows - f.valid:,} invalid")
    for title, table in (("problems", report.problems), ("warnings", report.warnings)):
        if table:
            lines.append(f"{title}:")
            for kind, entry in sorted(table.items(), key=lambda kv: (-kv[1].count, kv[0])):
                more = ", ..." if entry.count > len(entry.examples) else ""
                lines.append(f"  {kind:<44}{entry.count:>8,}   {', '.join(entry.examples)}{more}")
    if NORMALIZABLE in report.warnings:
        lines.append("hint: `draftsmith prepare-data --data-path FILE` turns rows in other chat shapes "
                     "(ShareGPT from/value, \"messages\", role aliases) into canonical rows")
    verdict = "OK" if report.ok else f"INVALID: {report.invalid:,} of {report.rows:,} rows"
    lines.append(f"{verdict} ({len(report.files)} file{'s' if len(report.files) != 1 else ''})")
    return "\n".join(lines)
