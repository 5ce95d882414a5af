"""The `build-dataset` stage: conversations JSONL -> tokenized dataset (id, input_ids, loss_mask).

Rows are rendered with a chat template (data/templates/), tokenized once with offsets and
masked (loss_mask.py), truncated to `max_length`, and written as a `datasets` folder.
Rows that cannot be used are skipped with a stable reason (rowerrors.TABLE), counted in
the report and listed with their position in `skipped.jsonl`; nothing is turned into an
all-zero mask, and no row can stop the run (a failure of the template or the tokenizer
on one row skips that row) unless `--strict`: then the first row that would be skipped ends
the run (exit 2, its position and reason; nothing is written). Assistant and tool messages before a conversation's first
user message are dropped before rendering and counted (`dropped_leading`), whatever the
template: text a template adds (a default system prompt, a date header) is never
supervised.

The output is cached under a key of everything that changes it (data file content,
tokenizer files, template, max length and every flag; not `num_proc`, which never
changes the output), so the training and hidden-state stages that call
`build_dataset` with the same inputs reuse it instantly.

Why one file over ~400 lines: its parts (config, cache key, per-process worker, reader,
writer, `load_tokenized`) are the steps of one pipeline in the order they run, sharing
`BuildConfig` and `_Chunk`; the rendering and masking it calls live in templates/ and
loss_mask.py.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import shutil
import sys
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from draftsmith import config, resources
from draftsmith.config import option
from draftsmith.data import rowerrors
from draftsmith.data.conversation import check_row, drop_leading_replies
from draftsmith.data.formats import RowLimits, iter_records
from draftsmith.data.loss_mask import backend_tokenizer, tokenize_with_mask
from draftsmith.data.rowerrors import NO_REPLY, NO_SUPERVISED
from draftsmith.data.templates import HF, JinjaTemplate, TemplateError, get_template, template_names
from draftsmith.errors import DraftsmithError, InputError, StrictRowError
from draftsmith.fsutil import cache_key as fsutil_cache_key, file_digest, replace_dir, staging_dir, write_json_atomic
from draftsmith.target.loading import load_tokenizer

FORMAT_VERSION = 2  # 2: replies before the first user message are dropped (#16.4)
MANIFEST = "draftsmith_build.json"
SKIPPED = "skipped.jsonl"
CHUNK_ROWS = 256
_TOKENIZER_SKIP_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack", ".ckpt", ".onnx")


TEMPLATE_DEFAULT = object()   # `--system-prompt` without a value: the template's default system prompt


@dataclass
class BuildConfig:
    """Every setting of build-dataset: the one source of its flags, defaults, help and config files
    (draftsmith/config.py). `system_prompt` fills rows without a system message;
    `use_template_system_prompt` opts in to a named template's default one instead."""

    data_path: str = option(help="conversations or pre-formatted JSONL/JSON/parquet", metavar="FILE")
    target_model_path: str = option(
        help="the target model (a folder or hub name) whose tokenizer and chat template tokenize the rows",
        aliases=("--model-path",), deprecated=("--tokenizer",), metavar="PATH")
    chat_template: str = option(HF, choices=template_names(),
                                help="named template, or 'hf' for the tokenizer's own jinja template")
    max_length: int = option(2048, help="tokens per row (longer rows are truncated)")
    is_preformatted: bool = option(False, help="rows are {'id','text'} already rendered with the chat template")
    train_only_last_turn: bool = option(False, help="supervise only the last reply")
    system_prompt: str | None = option(None, nargs="?", const=TEMPLATE_DEFAULT, metavar="TEXT",
                                       help="system message for rows without one; without a value, the template's "
                                            "default (as --use-template-system-prompt)")
    use_template_system_prompt: bool = option(
        False, help="fill rows without a system message with the named template's default system prompt")
    num_proc: int = option(1, help="processes that render and tokenize (never changes the output)")
    output_dir: str | None = option(None, deprecated=("--output",), metavar="DIR",
                                    help="output folder (default: a cache folder keyed by the inputs)")
    trust_remote_code: bool = option(False, help="allow the tokenizer's own Python code")
    overwrite: bool = option(False, help="rebuild even when the cache matches")
    strict: bool = option(False, help="stop at the first row that would be skipped: print why, write nothing, exit 2")
    draft_vocab_size: int | None = option(None, help="also build the draft vocab mapping (d2t/t2d) of this size")
    target_vocab_size: int | None = option(
        None, help="target vocab size for the mapping (default: the model config's, else the tokenizer's)")
    limits: RowLimits = field(default_factory=RowLimits)

    def __post_init__(self):
        if self.system_prompt is TEMPLATE_DEFAULT:
            self.system_prompt, self.use_template_system_prompt = None, True

    def validate(self) -> None:
        if self.max_length <= 0:
            raise InputError("must be positive", field="--max-length")
        if self.num_proc < 1:
            raise InputError("must be >= 1", field="--num-proc")
        if self.system_prompt is not None and self.use_template_system_prompt:
            raise InputError("give a --system-prompt text or --use-template-system-prompt, not both",
                             field="--system-prompt")
        for name in ("draft_vocab_size", "target_vocab_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise InputError("must be >= 1", field="--" + name.replace("_", "-"))
        if self.chat_template not in template_names():
            get_template(self.chat_template)  # raises with the known names
        if (self.use_template_system_prompt and self.chat_template != HF
                and get_template(self.chat_template).default_system is None):
            raise DraftsmithError(f"template {self.chat_template!r} has no default system prompt")


CONFIG = BuildConfig
# settings that never change the tokenized output (not in its manifest; the cache key names what does)
_NOT_OUTPUT = ("output_dir", "overwrite", "num_proc", "strict", "draft_vocab_size", "target_vocab_size")


@dataclass
class BuildResult:
    path: Path
    report: dict
    key: str
    cached: bool = False


@dataclass
class _Chunk:
    """Output of one chunk of rows, in input order."""

    ids: list[str] = field(default_factory=list)
    input_ids: list[np.ndarray] = field(default_factory=list)
    loss_mask: list[np.ndarray] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)
    truncated: int = 0
    dropped_leading: int = 0
    last: tuple[int, int] = (0, 0)   # input position of the chunk's last row (`_position`)


# ------------------------------------------------------------------------------ cache key
def tokenizer_fingerprint(tokenizer_ref: str, tokenizer=None) -> str:
    """Hash of the tokenizer: its local files (not weights), else the loaded tokenizer's state."""
    h = hashlib.sha256()
    path = Path(tokenizer_ref)
    if path.is_dir():
        for f in sorted(p for p in path.iterdir() if p.is_file() and not p.name.endswith(_TOKENIZER_SKIP_SUFFIXES)):
            if f.name.startswith("."):
                continue
            h.update(f.name.encode() + b"\0")
            file_digest(f, h)
        return h.hexdigest()
    if tokenizer is None:
        tokenizer = load_tokenizer(tokenizer_ref)
    h.update(backend_tokenizer(tokenizer).to_str().encode())
    h.update(json.dumps({"chat_template": tokenizer.chat_template, "special": tokenizer.special_tokens_map},
                        sort_keys=True, default=str).encode())
    return h.hexdigest()


def cache_key(cfg: BuildConfig, tokenizer=None) -> str:
    data = Path(cfg.data_path)
    if not data.is_file():
        raise InputError("no such file", path=data, field="data_path")
    template = cfg.chat_template if cfg.chat_template == HF else get_template(cfg.chat_template).fingerprint()
    parts = {
        "format": FORMAT_VERSION,
        "data": file_digest(data).hexdigest(),
        "tokenizer": tokenizer_fingerprint(cfg.target_model_path, tokenizer),
        "template": template,
        "max_length": cfg.max_length,
        "is_preformatted": cfg.is_preformatted,
        "train_only_last_turn": cfg.train_only_last_turn,
        "system_prompt": cfg.system_prompt,
        "use_template_system_prompt": cfg.use_template_system_prompt,
        "limits": [cfg.limits.max_row_bytes, cfg.limits.max_row_depth],
    }
    return fsutil_cache_key(parts)


# ------------------------------------------------------------------------------ workers
def _stop_tokens(ref: str, tokenizer) -> list[str]:
    """End-of-generation tokens from generation_config.json beside the tokenizer, if any."""
    path = Path(ref) / "generation_config.json"
    if not path.is_file():
        return []
    eos = json.loads(path.read_text(encoding="utf-8")).get("eos_token_id")
    ids = eos if isinstance(eos, list) else [eos] if isinstance(eos, int) else []
    return [t for t in tokenizer.convert_ids_to_tokens(ids) if t]


def make_renderer(cfg: BuildConfig, tokenizer):
    if cfg.chat_template == HF:
        return JinjaTemplate(tokenizer, stop_tokens=_stop_tokens(cfg.target_model_path, tokenizer))
    return get_template(cfg.chat_template)


class _Worker:
    """Per-process state: tokenizer backend and renderer, built once."""

    def __init__(self, cfg: BuildConfig, tokenizer=None):
        tokenizer = tokenizer or load_tokenizer(cfg.target_model_path, cfg.trust_remote_code)
        self.cfg = cfg
        self.backend = backend_tokenizer(tokenizer)
        self.renderer = make_renderer(cfg, tokenizer)

    def process(self, rows: list[tuple[dict, dict]]) -> _Chunk:
        cfg, chunk = self.cfg, _Chunk(last=_position(rows[-1][0]))
        texts, spans, kept = [], [], []
        for where, row in rows:
            try:
                if cfg.is_preformatted:
                    rendered = self.renderer.parse(row["text"])
                else:
                    messages, dropped = drop_leading_replies(row["conversations"])
                    chunk.dropped_leading += dropped
                    rendered = self.renderer.render(messages, system_prompt=cfg.system_prompt,
                                                    use_default_system=cfg.use_template_system_prompt,
                                                    tools=row.get("tools"))
            except TemplateError as e:
                chunk.skipped.append({**where, "reason": rowerrors.TEMPLATE_FAILED, "detail": str(e)})
                continue
            except Exception as e:  # the safety net: one row never stops the run (tests assert it never fires)
                chunk.skipped.append({**where, **rowerrors.internal_error(e)})
                continue
            row_spans = rendered.spans[-1:] if cfg.train_only_last_turn else rendered.spans
            if not row_spans:
                chunk.skipped.append({**where, "reason": NO_REPLY})
                continue
            texts.append(rendered.text)
            spans.append(row_spans)
            kept.append((where, row))
        for (where, row), encoded in zip(kept, self._tokenize(texts, spans)):
            if isinstance(encoded, dict):
                chunk.skipped.append({**where, **encoded})
                continue
            ids, mask = encoded
            cut = len(ids) > cfg.max_length
            if cut:
                ids, mask = ids[: cfg.max_length], mask[: cfg.max_length]
            if not mask.any():
                chunk.skipped.append({**where, "reason": NO_SUPERVISED})
                continue
            chunk.truncated += cut
            chunk.ids.append(row["id"])
            chunk.input_ids.append(ids)
            chunk.loss_mask.append(mask)
        return chunk

    def _tokenize(self, texts: list[str], spans: list) -> list:
        """(ids, mask) per text in one batch; if the batch fails, row by row, a failing row
        giving its skip reason instead."""
        try:
            return tokenize_with_mask(self.backend, texts, spans)
        except Exception:
            out = []
            for text, text_spans in zip(texts, spans):
                try:
                    out.extend(tokenize_with_mask(self.backend, [text], [text_spans]))
                except Exception as e:
                    out.append({"reason": rowerrors.TOKENIZER_FAILED, "detail": f"{type(e).__name__}: {e}"[:500]})
            return out


_WORKER: _Worker | None = None


def _init_worker(cfg: BuildConfig) -> None:
    global _WORKER
    _WORKER = _Worker(cfg)


def _process_in_worker(rows):
    return _WORKER.process(rows)


# ------------------------------------------------------------------------------ reading
def _read_rows(cfg: BuildConfig, skipped: list[dict], counts: Counter) -> Iterator[list[tuple[dict, dict]]]:
    """Chunks of (position, row) for valid rows of the expected kind; the rest go to `skipped`."""
    chunk = []
    for rec in iter_records(cfg.data_path, limits=cfg.limits):
        counts["rows_in"] += 1
        where = {"source": rec.source, **rec.position()}
        if rec.error:
            skipped.append(rec.skip_entry())
            continue
        if isinstance(rec.value, dict) and isinstance(rec.value.get("id"), str):
            where["id"] = rec.value["id"]
        try:
            kind, reason = check_row(rec.value)
        except Exception as e:  # the safety net (never expected: tests assert it)
            skipped.append({**where, **rowerrors.internal_error(e)})
            continue
        if reason is None and (kind == "preformatted") != cfg.is_preformatted:
            reason = (rowerrors.PREFORMATTED_IN_CONVERSATIONS if kind == "preformatted"
                      else rowerrors.CONVERSATION_IN_PREFORMATTED)
        if reason:
            skipped.append({**where, "reason": reason})
            continue
        chunk.append((where, rec.value))
        if len(chunk) >= CHUNK_ROWS:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _chunks(cfg: BuildConfig, tokenizer, skipped: list[dict], counts: Counter) -> Iterator[_Chunk]:
    rows = _read_rows(cfg, skipped, counts)
    if cfg.num_proc <= 1:
        # two threads: one chunk's tokenization (Rust, GIL released) overlaps the next one's rendering and masking
        worker = _Worker(cfg, tokenizer)
        with ThreadPoolExecutor(2) as pool:
            pending: deque = deque()
            for chunk in rows:
                pending.append(pool.submit(worker.process, chunk))
                if len(pending) > 2:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        return
    global _WORKER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # forked Rust thread pools deadlock otherwise
    if sys.platform.startswith("linux"):
        # forked workers inherit the loaded tokenizer instead of loading it again
        _WORKER = _Worker(cfg, tokenizer)
        pool = multiprocessing.get_context("fork").Pool(cfg.num_proc)
    else:
        pool = multiprocessing.get_context("spawn").Pool(cfg.num_proc, initializer=_init_worker, initargs=(cfg,))
    try:
        with pool:
            yield from pool.imap(_process_in_worker, rows, chunksize=1)
    finally:
        _WORKER = None


# ------------------------------------------------------------------------------ writing
def _record_batch(chunk: _Chunk):
    import pyarrow as pa

    def lists(arrays: list[np.ndarray], dtype) -> "pa.Array":
        lengths = np.fromiter((len(a) for a in arrays), dtype=np.int64, count=len(arrays))
        offsets = np.concatenate(([0], np.cumsum(lengths))).astype(np.int32)
        values = np.concatenate(arrays).astype(dtype) if arrays else np.zeros(0, dtype)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))

    return pa.RecordBatch.from_arrays(
        [pa.array(chunk.ids, pa.string()), lists(chunk.input_ids, np.int64), lists(chunk.loss_mask, np.int8)],
        names=["id", "input_ids", "loss_mask"])


def _schema():
    import pyarrow as pa

    return pa.schema([("id", pa.string()), ("input_ids", pa.list_(pa.int64())), ("loss_mask", pa.list_(pa.int8()))])


def _save_quietly(dataset, path: Path) -> None:
    from datasets.utils import logging as ds_logging

    was_enabled = ds_logging.is_progress_bar_enabled()
    ds_logging.disable_progress_bar()
    try:
        dataset.save_to_disk(str(path))
    finally:
        if was_enabled:
            ds_logging.enable_progress_bar()


def _position(entry: dict) -> tuple[int, int]:
    """Sort key of a row's place in the input (a skipped entry, or a row's `where`)."""
    return entry.get("line") or 0, entry.get("index") or 0


def _stop_at_first(skipped: list[dict], upto: tuple[int, int] | None = None) -> None:
    """--strict: StrictRowError for the first skipped row in input order. Rows are read ahead of the
    chunks being tokenized, so only rows up to the last tokenized one (`upto`) are known to be first."""
    known = [s for s in skipped if upto is None or _position(s) <= upto]
    if known:
        raise StrictRowError(rowerrors.describe(min(known, key=_position)))


def read_manifest(path: str | os.PathLike) -> dict | None:
    f = Path(path) / MANIFEST
    if not f.is_file():
        return None
    try:
        return json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def output_folder(cfg: BuildConfig, key: str) -> Path:
    return Path(cfg.output_dir) if cfg.output_dir else resources.cache_root() / "datasets" / key


def build_dataset(cfg: BuildConfig, progress: bool = False) -> BuildResult:
    """Build (or reuse from cache) the tokenized dataset for `cfg`; see the module docstring."""
    cfg.validate()
    tokenizer = None if Path(cfg.target_model_path).is_dir() else load_tokenizer(cfg.target_model_path,
                                                                                  cfg.trust_remote_code)
    key = cache_key(cfg, tokenizer)
    out = output_folder(cfg, key)
    manifest = read_manifest(out)
    if not cfg.overwrite and manifest and manifest.get("key") == key and (out / "dataset_info.json").exists():
        if cfg.strict and manifest["report"]["skipped"]:
            with open(out / SKIPPED, encoding="utf-8") as f:
                _stop_at_first([json.loads(f.readline())])
        return BuildResult(out, manifest["report"], key, cached=True)

    import pyarrow as pa
    from datasets import Dataset

    started = time.perf_counter()
    tokenizer = tokenizer or load_tokenizer(cfg.target_model_path, cfg.trust_remote_code)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = staging_dir(out)
    try:
        skipped: list[dict] = []
        counts: Counter = Counter()
        arrow = tmp / "rows.arrow"
        with pa.OSFile(str(arrow), "wb") as sink, pa.ipc.new_stream(sink, _schema()) as writer:
            for chunk in _chunks(cfg, tokenizer, skipped, counts):
                skipped.extend(chunk.skipped)
                if cfg.strict:
                    _stop_at_first(skipped, upto=chunk.last)
                counts["truncated"] += chunk.truncated
                counts["dropped_leading"] += chunk.dropped_leading
                counts["rows_out"] += len(chunk.ids)
                counts["tokens"] += sum(len(a) for a in chunk.input_ids)
                counts["supervised_tokens"] += int(sum(int(m.sum()) for m in chunk.loss_mask))
                if chunk.ids:
                    writer.write_batch(_record_batch(chunk))
                if progress:
                    print(f"\r{counts['rows_in']} rows read, {counts['rows_out']} written", end="", file=sys.stderr)
        if progress:
            print(file=sys.stderr)
        if cfg.strict:
            _stop_at_first(skipped)
        if counts["rows_out"] == 0:
            reasons = Counter(s["reason"] for s in skipped).most_common(3)
            raise InputError(f"no usable row ({counts['rows_in']} read; skipped: {reasons})", path=cfg.data_path)
        data_dir = tmp / "data"
        _save_quietly(Dataset.from_file(str(arrow)), data_dir)
        for f in data_dir.iterdir():
            os.replace(f, tmp / f.name)
        data_dir.rmdir()
        arrow.unlink()
        report = {
            "rows_in": counts["rows_in"], "rows_out": counts["rows_out"], "skipped": len(skipped),
            "skipped_by_reason": dict(sorted(Counter(s["reason"] for s in skipped).items())),
            "truncated": counts["truncated"], "dropped_leading": counts["dropped_leading"],
            "tokens": counts["tokens"],
            "supervised_tokens": counts["supervised_tokens"], "seconds": round(time.perf_counter() - started, 3),
        }
        skipped.sort(key=_position)
        with open(tmp / SKIPPED, "w", encoding="utf-8", errors="backslashreplace") as f:
            for s in skipped:
                f.write(json.dumps(s, ensure_ascii=False) + "\n")
        settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_OUTPUT}
        write_json_atomic(tmp / MANIFEST, {"key": key, "format": FORMAT_VERSION, "config": settings, "report": report})
        replace_dir(tmp, out)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return BuildResult(out, report, key)


# ------------------------------------------------------------------------------ CLI
def is_tokenized_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())


def load_tokenized(data_path: str | Path, *, tokenizer: str | None, chat_template: str | None, max_length: int,
                   is_preformatted: bool, flag: str = "--data-path"):
    """(dataset, folder) for a stage's data flag: an existing tokenized dataset ✱ (its `train`
    split for a DatasetDict), or conversations / pre-formatted rows built here (cached by inputs).
    The hidden-states stage and the trainer both read their input through this: bad rows are
    skipped as build-dataset skips them, and a line on stderr counts them per reason."""
    from datasets import load_from_disk

    path = Path(data_path)
    if not path.exists():
        raise InputError("no such file or folder", path=path, field=flag)
    if not is_tokenized_folder(path):
        if tokenizer is None:
            raise DraftsmithError(f"{flag} {path} needs tokenizing: give the target model (its tokenizer)")
        result = build_dataset(BuildConfig(data_path=str(path), target_model_path=tokenizer,
                                           chat_template=chat_template or HF, max_length=max_length,
                                           is_preformatted=is_preformatted))
        path = Path(result.path)
        if result.report["skipped"]:  # the stage goes on without them, and says so
            reasons = ", ".join(f"{n} {r}" for r, n in result.report["skipped_by_reason"].items())
            print(f"{flag} {data_path}: {result.report['skipped']} of {result.report['rows_in']} rows skipped "
                  f"({reasons}); see {path / SKIPPED}", file=sys.stderr)
    ds = load_from_disk(str(path))
    if hasattr(ds, "keys") and not hasattr(ds, "column_names"):
        if "train" not in ds:
            raise InputError(f"dataset folder has splits {list(ds)} and no 'train'", path=path)
        ds = ds["train"]
    for column in ("input_ids", "loss_mask"):
        if column not in ds.column_names:
            raise InputError("tokenized dataset lacks a column", path=path, field=column)
    return ds, path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    config.add_arguments(parser, BuildConfig)


def config_from_args(args: argparse.Namespace) -> BuildConfig:
    """BuildConfig defaults <- the --config file <- flags given on the command line."""
    return config.from_args(BuildConfig, args)


def run(args: argparse.Namespace) -> int:
    cfg = config_from_args(args)
    result = build_dataset(cfg, progress=True)
    summary = {"path": str(result.path), "cached": result.cached, **result.report}
    if cfg.draft_vocab_size:
        from draftsmith.data.vocab import build_vocab_mapping, target_vocab_size_of

        size = cfg.target_vocab_size or target_vocab_size_of(cfg.target_model_path, cfg.trust_remote_code)
        vm = build_vocab_mapping(result.path, target_vocab_size=size, draft_vocab_size=cfg.draft_vocab_size)
        summary["vocab_mapping"] = {"path": str(vm.path), "draft_vocab_size": cfg.draft_vocab_size,
                                    "target_vocab_size": size, "coverage": round(vm.coverage, 6)}
    print(json.dumps(summary, indent=2))
    return 0
