"""prepare-data: a preset or local files -> canonical conversations JSONL (DESIGN.md ✱).

Writes `<output>/<name>/`: `<name>_train.jsonl` (and `<name>_eval.jsonl` with
--split-eval), `<name>_skipped.jsonl` with one {"source", "line"/"index", "id"?,
"reason", "field"?, "detail"?} row per input row that could not be normalized, and
`<name>_summary.json` whose counts add up: read == written + skipped.

Rows are normalized by `conversation.normalize_row` (its docstring states the
policy: role aliases, system/leading/trailing turns, same-role merges). Duplicate
ids are renamed `<id>#2`, `<id>#3`, ... in input order. Output rows keep input order;
the eval rows are a seeded sample, so the same input and seed give byte-identical
files whatever --num-proc is. Everything is written into a hidden staging folder and
moved into place at the end: an interrupted run leaves no half-written output.

No row stops the run: reading (limits, Unicode policy), normalization and encoding
failures all become skipped rows (reasons: rowerrors.TABLE). With --strict the first
skipped row ends the run instead (exit 2, `rowerrors.describe` of its entry, no output).

Why one file over ~400 lines: the ordered multi-process normalization and the byte-range
train/eval split exist only for this stage and share its per-row result tuples; the row
policy is conversation.py's and the readers are formats.py's.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import math
import multiprocessing
import os
import random
import re
import shutil
import sys
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from queue import Empty
from typing import BinaryIO, Callable, Iterator

from tqdm import tqdm

from draftsmith import config, resources
from draftsmith.config import option
from draftsmith.data import conversation, rowerrors
from draftsmith.data.formats import SUFFIXES, Record, RowLimits, file_format, iter_records
from draftsmith.data.presets import PRESETS, Preset, get_preset, hub_records
from draftsmith.errors import DraftsmithError, InputError, StrictRowError
from draftsmith.fsutil import replace_dir, staging_dir, write_json_atomic

BATCH_ROWS = 256
_ENCODER = json.JSONEncoder(ensure_ascii=False, check_circular=False)  # UTF-8 output, readable
# non-ASCII characters that str.splitlines() (and JavaScript) treat as line breaks (json escapes the
# ASCII ones): escaped too, so a row is one line to any line reader
_LINE_BREAKS = re.compile("[\x85\u2028\u2029]")


@dataclass
class PrepareConfig:
    """Every setting of prepare-data: the one source of its flags, defaults, help and config files
    (draftsmith/config.py). `validate()` checks the values that need no input file."""

    dataset: str | None = option(
        None, help=f"preset name ({', '.join(PRESETS)}) or a hub dataset 'org/name' whose rows are already "
                   "chat-shaped; default 'custom' when --data-path is given")
    data_path: list[Path] = option(
        default_factory=list, metavar="FILE",
        help="local .json/.jsonl/.parquet file(s) or folder(s) in the preset's row shape, read instead of the hub")
    split: str | None = option(None, help="hub split to read (default: the preset's, e.g. train_sft for ultrachat)")
    output_dir: Path | None = option(None, aliases=("--output-path",), metavar="DIR",
                                     help="parent folder of the output (default: cache/dataset)")
    name: str | None = option(None, help="output folder and file prefix (default: the dataset name)")
    num_samples: int | None = option(None, aliases=("--sample-size",),
                                     help="stop after N conversations are written (the first N usable rows)")
    split_eval: bool = option(False, help="also write a held-out <name>_eval.jsonl")
    eval_ratio: float = option(0.05, help="share of written rows for eval")
    seed: int = option(0, help="seed of the eval sample")
    num_proc: int = option(1, help="processes that normalize rows")
    overwrite: bool = option(False, help="replace an existing output folder")
    strict: bool = option(False, help="stop at the first row that would be skipped: print why, write nothing, exit 2")
    progress: bool | None = option(None, help="progress bar (default: only on a terminal)")
    limits: RowLimits = field(default_factory=RowLimits)

    def __post_init__(self):
        if self.dataset is None and self.data_path:
            self.dataset = "custom"

    def validate(self) -> None:
        if not self.dataset:
            raise DraftsmithError("pass --dataset NAME (a preset) or --data-path FILE")
        if self.split and self.data_path:
            raise DraftsmithError("--split selects a hub split; it has no meaning with --data-path")
        if self.num_samples is not None and self.num_samples < 1:
            raise DraftsmithError(f"--num-samples must be at least 1, got {self.num_samples}")
        if self.split_eval and not 0.0 < self.eval_ratio < 1.0:
            raise DraftsmithError(f"--eval-ratio must be between 0 and 1 (exclusive), got {self.eval_ratio}")
        if self.num_proc < 1:
            raise DraftsmithError(f"--num-proc must be at least 1, got {self.num_proc}")
        if self.name is not None and (not self.name or Path(self.name).name != self.name or self.name.startswith(".")):
            raise DraftsmithError(f"--name must be a plain folder name, got {self.name!r}")


CONFIG = PrepareConfig


@dataclass
class PrepareResult:
    out_dir: Path
    train_path: Path
    eval_path: Path | None
    skipped_path: Path
    summary_path: Path
    summary: dict


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, PrepareConfig)
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "presets (--dataset):\n" + "".join(
        f"  {p.name:<11} {p.hub_source if p.hub_name else 'local files only'}\n  {'':<11} {p.description}\n"
        for p in PRESETS.values()) + "  org/name    any hub dataset whose rows are already chat-shaped"


def run(args: argparse.Namespace) -> int:
    result = prepare_data(config.from_args(PrepareConfig, args))
    print(format_summary(result))
    if not result.summary["written"]:
        print(f"warning: no conversation was written; the reasons are in {result.skipped_path}", file=sys.stderr)
    return 0


def prepare_data(cfg: PrepareConfig) -> PrepareResult:
    """Run the stage; raises DraftsmithError on bad settings, never on bad rows (but
    StrictRowError at the first bad row with `cfg.strict`)."""
    cfg.validate()
    preset = get_preset(cfg.dataset)
    if preset.hub_name is None and not cfg.data_path:
        raise DraftsmithError(f"dataset {preset.name!r} is local-only: pass --data-path FILE")
    if cfg.split:
        preset = dataclasses.replace(preset, split=cfg.split)
    files = _expand_paths(cfg.data_path)
    name = cfg.name or preset.name.rsplit("/", 1)[-1]  # "org/name" hub datasets -> "name"
    parent = Path(cfg.output_dir) if cfg.output_dir is not None else resources.cache_root() / "dataset"
    out_dir = parent / name
    if out_dir.exists() and any(out_dir.iterdir()) and not cfg.overwrite:
        raise DraftsmithError(f"output {out_dir} already exists; pass --overwrite to replace it "
                              f"(or choose another --output-dir / --name)")
    parent.mkdir(parents=True, exist_ok=True)
    staging = staging_dir(out_dir)
    try:
        summary = _write_outputs(cfg, preset, files, name, staging)
        write_json_atomic(staging / f"{name}_summary.json", summary)
        replace_dir(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    eval_path = out_dir / f"{name}_eval.jsonl" if cfg.split_eval else None
    return PrepareResult(out_dir, out_dir / f"{name}_train.jsonl", eval_path, out_dir / f"{name}_skipped.jsonl",
                         out_dir / f"{name}_summary.json", summary)


def _expand_paths(paths: list[Path]) -> list[Path]:
    """Files as given; a folder contributes its .json/.jsonl/.parquet files in name order."""
    files = []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and _supported(p))
            if not found:
                raise InputError(f"folder has no {', '.join(SUFFIXES)} files", path=path)
            files.extend(found)
        elif not path.is_file():
            raise InputError("no such file", path=path)
        else:
            file_format(path)  # an unsupported type fails now, not after other files were read
            files.append(path)
    return files


def _supported(path: Path) -> bool:
    try:
        file_format(path)
    except InputError:
        return False
    return True


Source = Callable[[Callable[[int], bool]], Iterator[Record]]  # wanted(position in source) -> records


def _open_sources(preset: Preset, files: list[Path], limits: RowLimits) -> list[Source]:
    """One record-iterator factory per input; the hub dataset is loaded here, once, so that a
    download failure surfaces before any work starts and forked workers share the cache."""
    if not files:
        records = hub_records(preset, limits)
        return [lambda wanted: records]
    return [lambda wanted, path=path: iter_records(path, wanted=wanted, limits=limits) for path in files]


# ----------------------------------------------------------------- normalization (runs in workers)
# One result per input row, in input order:
#   ("ok", kind, id, UTF-8 JSON line, fixes)  or  ("skip", entry of the skipped file)

def _process(record: Record, ordinal: int, to_row: Callable[[object, int], object]) -> tuple:
    if record.error:
        return ("skip", record.skip_entry())
    row = None
    try:
        row = to_row(record.value, ordinal)
        result = conversation.normalize_row(row)
        if result.problem is None:
            fixes = tuple(result.fixes.get(k, 0) for k in conversation.FIX_KINDS)
            return ("ok", result.kind, result.row["id"], _encode(result.row), fixes)
        problem = {"reason": result.problem.reason, **({"field": result.problem.field} if result.problem.field else {})}
    except Exception as e:  # the safety net: one row never stops the run (tests assert it never fires)
        problem = rowerrors.internal_error(e)
    source_row = record.value if row is None else row
    raw_id = source_row.get("id") if isinstance(source_row, dict) else None
    entry = {"source": record.source, **record.position()}
    if isinstance(raw_id, str) and raw_id.strip():
        entry["id"] = raw_id
    entry.update(problem)
    return ("skip", entry)


def _encode(row: dict) -> bytes:
    line = _ENCODER.encode(row)
    if not line.isascii():
        line = _LINE_BREAKS.sub(lambda m: f"\\u{ord(m.group()):04x}", line)
    return line.encode()


def _batch_results(to_row: Callable[[object, int], object], sources: list[Source], worker: int = 0,
                   num_workers: int = 1) -> Iterator[list[tuple]]:
    """Read every input row; normalize batches b with b % num_workers == worker (other
    workers' JSON Lines rows are not even decoded).

    A row's ordinal is its position among all input rows (parsed or not), so positional
    ids depend neither on batching nor on --num-proc.
    """
    def mine(ordinal: int) -> bool:
        return (ordinal // BATCH_ROWS) % num_workers == worker

    def all_records() -> Iterator[Record]:
        offset = 0
        for open_records in sources:
            wanted = None if num_workers == 1 else (lambda i, first=offset: mine(first + i))
            for record in open_records(wanted):
                offset += 1
                yield record

    records = all_records()
    for b in itertools.count():
        batch = list(itertools.islice(records, BATCH_ROWS))
        if not batch:
            return
        if b % num_workers == worker:
            first = b * BATCH_ROWS
            yield [_process(record, first + i, to_row) for i, record in enumerate(batch)]


def _worker(to_row: Callable[[object, int], object], sources: list, worker: int, num_workers: int, queue) -> None:
    try:
        for results in _batch_results(to_row, sources, worker, num_workers):
            queue.put(results)
        queue.put(None)
    except BaseException as e:  # hand the failure to the parent instead of dying silently
        user_error = isinstance(e, DraftsmithError)
        queue.put(("error", user_error, str(e) if user_error else f"{type(e).__name__}: {e}"))


def _normalized(to_row: Callable[[object, int], object], sources: list, num_proc: int) -> Iterator[tuple]:
    """Per-row results in input order.

    With num_proc > 1 every worker reads the whole input (parsing is about a third of the
    per-row work) and normalizes every num_proc-th batch; nothing but the encoded output
    crosses process boundaries, and bounded queues keep memory flat.
    """
    if num_proc == 1 or "fork" not in multiprocessing.get_all_start_methods():
        for results in _batch_results(to_row, sources):
            yield from results
        return
    ctx = multiprocessing.get_context("fork")
    queues = [ctx.Queue(maxsize=4) for _ in range(num_proc)]
    procs = [ctx.Process(target=_worker, args=(to_row, sources, k, num_proc, queues[k]), daemon=True)
             for k in range(num_proc)]
    for proc in procs:
        proc.start()
    try:
        for b in itertools.count():
            item = _receive(queues[b % num_proc], procs[b % num_proc])
            if item is None:
                return
            if isinstance(item, tuple):
                _, user_error, message = item
                raise DraftsmithError(message) if user_error else RuntimeError(f"prepare-data worker failed: {message}")
            yield from item
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.terminate()
            proc.join()


def _receive(queue, proc):
    """The worker's next item; a worker killed from outside (OOM, signal) is an error, not a hang."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except Empty:
            if not proc.is_alive():
                try:
                    return queue.get(timeout=1.0)  # whatever it flushed before exiting
                except Empty:
                    raise RuntimeError(f"a prepare-data worker died (exit code {proc.exitcode})") from None


# ----------------------------------------------------------------- writing

def _write_outputs(cfg: PrepareConfig, preset: Preset, files: list[Path], name: str, staging: Path) -> dict:
    train_path = staging / f"{name}_train.jsonl"
    rows_path = staging / f"{name}_rows.jsonl" if cfg.split_eval else train_path
    read = written = duplicates = 0
    skipped_by_reason: Counter = Counter()
    kinds: Counter = Counter()
    fixes = dict.fromkeys(conversation.FIX_KINDS, 0)
    seen_ids: set[str] = set()
    ends = array("q", [0])  # byte offset where each written row ends (row i is ends[i]:ends[i+1])
    sources = _open_sources(preset, files, cfg.limits)
    with open(rows_path, "wb") as out, \
            open(staging / f"{name}_skipped.jsonl", "w", encoding="utf-8", newline="\n",
                 errors="backslashreplace") as skipped, \
            tqdm(desc=f"prepare-data {name}", unit=" rows", disable=_no_bar(cfg), file=sys.stderr) as bar:
        for result in _normalized(preset.to_row, sources, cfg.num_proc):
            read += 1
            bar.update()
            if result[0] == "skip":
                entry = result[1]
                if cfg.strict:
                    raise StrictRowError(rowerrors.describe(entry))
                skipped_by_reason[entry["reason"]] += 1
                skipped.write(json.dumps(entry, ensure_ascii=False) + "\n")
                continue
            _, kind, row_id, line, row_fixes = result
            if row_id in seen_ids:
                row_id = _unique_id(row_id, seen_ids)
                line = _encode({**json.loads(line), "id": row_id})
                duplicates += 1
            seen_ids.add(row_id)
            out.write(line + b"\n")
            ends.append(ends[-1] + len(line) + 1)
            written += 1
            kinds[kind] += 1
            for k, n in zip(conversation.FIX_KINDS, row_fixes):
                fixes[k] += n
            if cfg.num_samples is not None and written >= cfg.num_samples:
                break
    n_eval = 0
    if cfg.split_eval:
        n_eval = _split(rows_path, ends, train_path, staging / f"{name}_eval.jsonl", cfg.eval_ratio, cfg.seed)
        rows_path.unlink()
    skipped_total = sum(skipped_by_reason.values())
    assert read == written + skipped_total
    return {
        "dataset": preset.name,
        "name": name,
        "sources": [str(p) for p in files] or [preset.hub_source],
        "read": read,
        "written": written,
        "skipped": skipped_total,
        "train": written - n_eval,
        "eval": n_eval,
        "duplicates": duplicates,
        "skipped_by_reason": dict(sorted(skipped_by_reason.items())),
        "kinds": dict(sorted(kinds.items())),
        "normalized": fixes,
        "num_samples": cfg.num_samples,
        "split_eval": cfg.split_eval,
        "eval_ratio": cfg.eval_ratio if cfg.split_eval else None,
        "seed": cfg.seed,
        "files": {"train": train_path.name, "eval": f"{name}_eval.jsonl" if cfg.split_eval else None,
                  "skipped": f"{name}_skipped.jsonl"},
    }


def _no_bar(cfg: PrepareConfig) -> bool | None:
    return None if cfg.progress is None else not cfg.progress


def _unique_id(row_id: str, seen: set[str]) -> str:
    n = 2
    while f"{row_id}#{n}" in seen:
        n += 1
    return f"{row_id}#{n}"


def eval_count(n: int, ratio: float) -> int:
    """Rows held out for eval: round(n * ratio), at least 1 and at most n - 1 when n >= 2."""
    if n < 2:
        return 0
    return min(max(int(math.floor(n * ratio + 0.5)), 1), n - 1)


def _split(rows_path: Path, ends: array, train_path: Path, eval_path: Path, ratio: float, seed: int) -> int:
    """Split the rows into train/eval by copying byte ranges; eval is a seeded sample of
    round(n * ratio) rows, and both files keep input order."""
    n = len(ends) - 1
    k = eval_count(n, ratio)
    chosen = sorted(random.Random(seed).sample(range(n), k))
    with open(rows_path, "rb") as rows, open(train_path, "wb") as train, open(eval_path, "wb") as held_out:
        start = 0
        for i in chosen:
            _copy_range(rows, train, ends[start], ends[i])
            _copy_range(rows, held_out, ends[i], ends[i + 1])
            start = i + 1
        _copy_range(rows, train, ends[start], ends[n])
    return k


def _copy_range(src: BinaryIO, dst: BinaryIO, begin: int, end: int) -> None:
    """Append src[begin:end] to dst (in the kernel where the OS can)."""
    dst.flush()
    while begin < end:
        try:
            copied = os.copy_file_range(src.fileno(), dst.fileno(), end - begin, begin)
        except (AttributeError, OSError):  # no copy_file_range here (macOS, some filesystems)
            src.seek(begin)
            copied = dst.write(src.read(min(end - begin, 1 << 24)))
            dst.flush()
        if copied == 0:
            raise DraftsmithError(f"{src.name}: ended before byte {end} while splitting train/eval")
        begin += copied



def format_summary(result: PrepareResult) -> str:
    """The table printed at the end of a run."""
    s = result.summary
    labels = {"merged": "same-role messages merged", "dropped_system": "non-leading system messages dropped",
              "dropped_leading": "replies before the first user dropped",
              "dropped_trailing": "unanswered trailing turns dropped"}
    rows = [("read", s["read"], ""),
            ("written", s["written"], f"   train {s['train']:,}   eval {s['eval']:,}"),
            ("skipped", s["skipped"], "")]
    rows += [(f"  {reason}", n, "") for reason, n in s["skipped_by_reason"].items()]
    rows.append(("duplicate ids renamed", s["duplicates"], ""))
    rows += [(labels[k], n, "") for k, n in s["normalized"].items() if n]
    width = max(len(label) for label, _, _ in rows) + 2
    lines = [f"prepare-data {s['name']}  ({', '.join(s['sources'])})"]
    lines += [f"  {label:<{width}}{n:>10,}{extra}" for label, n, extra in rows]
    lines.append(f"  output: {result.out_dir}")
    return "\n".join(lines)
