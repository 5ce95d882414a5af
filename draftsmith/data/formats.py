"""Row readers for local data files: .json arrays, .jsonl, .parquet (optionally .gz).

Every reader yields one `Record` per input row and never raises on a bad row: a
line that is not valid JSON, the incomplete last record of a truncated JSON array (the
packaged ShareGPT file is cut mid-record), a row over the size or nesting limits, or a
row that is not valid Unicode comes back as a record with `error` set (a reason of
`rowerrors.TABLE`), so callers can count it, report its position and go on.

A `.json` file whose first non-blank character is `[` is read as an array by a
streaming parser (constant memory per record, every complete record kept); any
other `.json` file is read as JSON Lines, as `datasets` does.

Limits (`RowLimits`, flags `--max-row-bytes` / `--max-row-depth` in every data stage)
protect the machine from one hostile row, and are enforced before a row is decoded:
- size: JSON Lines are read with a bounded `readline`, so a longer line is skipped
  without being held in memory; a JSON-array element stops growing the read buffer
  once it passes the limit (counted in characters there) and is skipped by a scanner
  that keeps only the current chunk; a parquet row's arrow size is checked before it
  becomes Python objects.
- depth: a cheap upper bound (the count of `[` and `{`) is checked first; only a row
  over it is scanned exactly (strings removed, running bracket depth) before
  `json.loads`, which would otherwise recurse once per level and raise RecursionError
  at about 1,000 levels. A parquet schema's depth is checked once per file.
Invalid Unicode is rejected by `check_value` (policy in rowerrors.py).

Why one file over ~400 lines: the three readers share `Record`, the limits and the Unicode
check, and the streaming JSON-array scanner (about 170 lines) is one function by design (one
buffer, one position).
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import re
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

import numpy as np

from draftsmith.config import option
from draftsmith.data.rowerrors import (INVALID_JSON, INVALID_UNICODE, TOO_DEEP, TOO_LARGE, TRUNCATED_JSON,
                                       UNREADABLE)
from draftsmith.errors import DraftsmithError, InputError

__all__ = ["INVALID_JSON", "INVALID_UNICODE", "TOO_DEEP", "TOO_LARGE", "TRUNCATED_JSON", "UNREADABLE",
           "SUFFIXES", "Record", "RowLimits", "DEFAULT_LIMITS", "check_value", "file_format", "iter_records"]

SUFFIXES = (".json", ".jsonl", ".parquet")
_CHUNK_BYTES = 1 << 22
_GZIP_CHUNK_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = " \t\n\r"
_CORRUPT_GZIP = (EOFError, gzip.BadGzipFile, zlib.error)
_MAX_DEPTH_CEILING = 500  # json.loads recurses once per level; Python's default limit is 1,000 frames
# a JSON string, or an escape outside one: consuming `\x` pairs keeps an unterminated string's
# escaped quotes from each starting a new match (quadratic time on `"\"\"\"...`)
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"|\\.', re.S)
_SURROGATE = re.compile("[\ud800-\udfff]")
_OPEN, _CLOSE = np.zeros(256, np.int64), np.zeros(256, np.int64)
_OPEN[[ord("["), ord("{")]] = 1
_CLOSE[[ord("]"), ord("}")]] = 1


@dataclass(frozen=True)
class RowLimits:
    """Per-row limits: `max_row_bytes` (a JSON Lines line's bytes, a JSON-array element's
    characters, a parquet row's arrow bytes) and `max_row_depth` (nesting of lists/objects,
    the row itself being level 1). A data stage's config holds one as its `limits` field, which
    gives the stage the two flags (draftsmith/config.py: a nested dataclass contributes its
    fields' flags, and is a nested `limits:` mapping in a config file)."""

    max_row_bytes: int = option(64 << 20, group="row limits",
                                help="skip a row longer than N bytes without loading it")
    max_row_depth: int = option(64, group="row limits",
                                help=f"skip a row nested deeper than N lists/objects (at most {_MAX_DEPTH_CEILING})")

    def __post_init__(self):
        if self.max_row_bytes < 1:
            raise DraftsmithError(f"--max-row-bytes must be at least 1, got {self.max_row_bytes}")
        if not 1 <= self.max_row_depth <= _MAX_DEPTH_CEILING:
            raise DraftsmithError(f"--max-row-depth must be between 1 and {_MAX_DEPTH_CEILING}, "
                                  f"got {self.max_row_depth}")


DEFAULT_LIMITS = RowLimits()


@dataclass(frozen=True)
class Record:
    """One input row and where it came from.

    `line` is the 1-based line where the row starts (JSON files), `index` its 0-based
    position among the rows (JSON arrays, parquet, hub datasets). `error` is a stable
    reason of `rowerrors.TABLE` ("invalid JSON", "row too large", ...) when the row could
    not be read; then `value` is None and `detail` says what the reader saw.
    """

    source: str
    line: int | None
    index: int | None
    value: object | None
    error: str | None = None
    detail: str | None = None
    row_id: str | None = None  # the id of a row rejected after decoding, when it has a clean one

    def position(self) -> dict:
        """The row's position as the skipped-file fields: {"line": n} and/or {"index": i}."""
        pos = {}
        if self.line is not None:
            pos["line"] = self.line
        if self.index is not None:
            pos["index"] = self.index
        return pos

    def skip_entry(self) -> dict:
        """The skipped-file entry of an `error` record: source, position, id when known, reason, detail."""
        entry = {"source": self.source, **self.position()}
        if self.row_id is not None:
            entry["id"] = self.row_id
        entry["reason"] = self.error
        if self.detail:
            entry["detail"] = self.detail
        return entry

    def checked(self, limits: RowLimits = DEFAULT_LIMITS) -> "Record":
        """This record, or an `error` record when its value breaks the depth or Unicode rules
        (rows from parquet and the hub, which arrive as Python objects)."""
        if self.error or self.value is None:
            return self
        problem = check_value(self.value, limits.max_row_depth)
        if problem is None:
            return self
        return _rejected(self.source, self.line, self.index, self.value, problem)


def _rejected(source: str, line: int | None, index: int | None, value: object,
              problem: tuple[str, str]) -> Record:
    """The error record of a decoded row that breaks a rule, keeping its id when that is clean text."""
    row_id = value.get("id") if isinstance(value, dict) else None
    if not isinstance(row_id, str) or len(row_id) > 200 or _bad_text(row_id):
        row_id = None
    return Record(source, line, index, None, *problem, row_id=row_id)


def check_value(value: object, max_depth: int | None = None) -> tuple[str, str] | None:
    """(reason, detail) when a decoded row nests deeper than `max_depth` or holds a string
    (value or key) that is not valid Unicode text: a lone surrogate or a NUL character.
    Iterative, so it is safe on any depth."""
    stack: list[tuple[object, int, tuple]] = [(value, 1, ())]
    while stack:
        obj, depth, path = stack.pop()
        if isinstance(obj, str):
            problem = _bad_text(obj)
            if problem:
                return INVALID_UNICODE, f"{problem} in {_path(path)}" if path else problem
        elif isinstance(obj, (dict, list)):
            if max_depth is not None and depth > max_depth:
                return TOO_DEEP, f"deeper than --max-row-depth {max_depth} at {_path(path) or 'the row'}"
            items = obj.items() if isinstance(obj, dict) else enumerate(obj)
            for key, item in items:
                if isinstance(key, str):
                    problem = _bad_text(key)
                    if problem:
                        return INVALID_UNICODE, f"{problem} in a key of {_path(path) or 'the row'}"
                stack.append((item, depth + 1, (*path, key)))
    return None


def _bad_text(s: str) -> str | None:
    if "\x00" in s:
        return "NUL character"
    if s.isascii():
        return None
    m = _SURROGATE.search(s)
    if m is None:
        return None
    code = ord(m.group())
    if 0xDC80 <= code <= 0xDCFF:
        return f"bytes that are not UTF-8 (0x{code - 0xDC00:02x}) or a lone surrogate U+{code:04X}"
    return f"lone surrogate U+{code:04X}"


def _path(path: tuple) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out


def _too_deep(raw: bytes, max_depth: int) -> bool:
    """Exact nesting depth of a JSON text (bytes) > max_depth, without decoding it."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    codes = np.frombuffer(_JSON_STRING.sub(b"", raw), dtype=np.uint8)
    return bool(np.cumsum(_OPEN[codes] - _CLOSE[codes]).max(initial=0) > max_depth)


def file_format(path: str | os.PathLike) -> str:
    """'json', 'jsonl' or 'parquet' from the file name (.json.gz and .jsonl.gz are read too)."""
    name = Path(path).name.lower()
    if name.endswith(".parquet"):
        return "parquet"
    base = name.removesuffix(".gz")
    for fmt in ("jsonl", "json"):
        if base.endswith(f".{fmt}"):
            return fmt
    raise InputError("unsupported file type: expected .json, .jsonl (optionally .gz) or .parquet", path=path)


def iter_records(path: str | os.PathLike, *, wanted: Callable[[int], bool] | None = None,
                 limits: RowLimits = DEFAULT_LIMITS) -> Iterator[Record]:
    """Yield every row of a .json / .jsonl / .parquet file as a `Record`, bad rows included.

    `wanted(i)` (optional) lets a caller that handles only some rows skip the cost of
    decoding the others: JSON Lines rows whose 0-based position i is not wanted come back
    undecoded (value and error None). Other formats must be parsed to be read at all and
    decode every row.
    """
    path = Path(path)
    fmt = file_format(path)
    if not path.is_file():
        raise InputError("no such file", path=path)
    if fmt == "parquet":
        yield from _iter_parquet(path, limits)
        return
    with _open_binary(path) as f:
        head = _first_byte(f)
        f.seek(0)
        if fmt == "json" and head == b"[":
            # a cut .gz stream loses the chunk being read: keep those chunks small
            yield from _iter_json_array(f, str(path), _GZIP_CHUNK_BYTES if _is_gzip(path) else _CHUNK_BYTES, limits)
        else:
            yield from _iter_jsonl(f, str(path), wanted, limits)


def _is_gzip(path: Path) -> bool:
    return path.name.lower().endswith(".gz")


def _open_binary(path: Path) -> IO[bytes]:
    return gzip.open(path, "rb") if _is_gzip(path) else open(path, "rb")


def _first_byte(f: IO[bytes]) -> bytes:
    while True:
        chunk = f.read(4096)
        if not chunk:
            return b""
        stripped = chunk.lstrip(_WHITESPACE.encode() + _BOM)
        if stripped:
            return stripped[:1]


def _iter_jsonl(f: IO[bytes], source: str, wanted: Callable[[int], bool] | None,
                limits: RowLimits) -> Iterator[Record]:
    decode = json.JSONDecoder().decode
    max_bytes, max_depth = limits.max_row_bytes, limits.max_row_depth
    lineno = 0
    position = -1
    try:
        while True:
            raw = f.readline(max_bytes + 1)  # bounded: a longer line is never held whole
            if not raw:
                return
            lineno += 1
            start_line = lineno
            too_long = len(raw) > max_bytes and not raw.endswith(b"\n")
            if too_long:
                while not raw.endswith(b"\n"):
                    raw = f.readline(1 << 20)
                    if not raw:
                        break
            elif lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not too_long and (not raw or raw.isspace()):
                continue
            position += 1
            if wanted is not None and not wanted(position):
                yield Record(source, start_line, None, None)
                continue
            if too_long:
                yield Record(source, start_line, None, None, TOO_LARGE, f"longer than --max-row-bytes {max_bytes}")
                continue
            yield _decode_line(raw, source, start_line, decode, max_depth)
    except _CORRUPT_GZIP as e:
        yield Record(source, lineno + 1, None, None, TRUNCATED_JSON,
                     f"the compressed file is cut or corrupt after line {lineno} ({e})")


def _decode_line(raw: bytes, source: str, line: int, decode, max_depth: int) -> Record:
    if raw.startswith(_BOM):
        return Record(source, line, None, None, INVALID_UNICODE,
                      "a byte-order mark starts this line (a file with a BOM appended to another?)")
    nul = raw.find(b"\x00")
    if nul != -1:
        return Record(source, line, None, None, INVALID_UNICODE, f"NUL byte at byte {nul} (a UTF-16 file?)")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        return Record(source, line, None, None, INVALID_UNICODE, f"not UTF-8 at byte {e.start}")
    if _too_deep(raw, max_depth):
        return Record(source, line, None, None, TOO_DEEP, f"deeper than --max-row-depth {max_depth}")
    try:
        value = decode(text)
    except json.JSONDecodeError as e:
        return Record(source, line, None, None, INVALID_JSON, f"{e.msg} (column {e.colno})")
    if b"\\u" in raw:  # only an escape can put a lone surrogate or a NUL into valid UTF-8 JSON
        problem = check_value(value)
        if problem:
            return _rejected(source, line, None, value, problem)
    return Record(source, line, None, value)


_OUTSIDE = re.compile(r'["\[\]{},]')


def _iter_json_array(f: IO[bytes], source: str, chunk_bytes: int, limits: RowLimits) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array, refilling a text buffer as needed.

    Bytes that are not UTF-8 are decoded as lone surrogates (surrogateescape), so they
    cost only the element that holds them (`check_value` rejects it). An element over
    the limits, or with a raw control character in a string, is stepped over by a
    bracket-and-string scanner that holds one chunk at a time.
    """
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")(errors="surrogateescape")
    max_chars, max_depth = limits.max_row_bytes, limits.max_row_depth
    buf = ""
    pos = 0
    line = 1  # line number at buf[pos]
    eof = False

    def fill() -> bool:
        nonlocal buf, pos, eof
        if eof:
            return False
        chunk = f.read(max(chunk_bytes, len(buf) - pos))  # geometric growth for huge records
        eof = not chunk
        text = utf8.decode(chunk, final=eof)
        if not text:
            return not eof
        buf = buf[pos:] + text
        pos = 0
        return True

    def skip_ws() -> str:
        """Advance past whitespace (counting lines); return the next char or '' at EOF."""
        nonlocal pos, line
        while True:
            n = len(buf)
            while pos < n and buf[pos] in _WHITESPACE:
                if buf[pos] == "\n":
                    line += 1
                pos += 1
            if pos < n:
                return buf[pos]
            if not fill():
                return ""

    def skip_value() -> bool:
        """Move `pos` past the element that starts at `pos`, without decoding it; False when
        the file ends inside it."""
        nonlocal pos, line
        depth, in_string, escaped, i = 0, False, False, pos
        while True:
            if escaped:
                if i < len(buf):
                    i, escaped = i + 1, False
                    continue
            elif in_string:  # str.find, not a regex: a huge string is scanned at memchr speed
                quote = buf.find('"', i)
                backslash = buf.find("\\", i, len(buf) if quote == -1 else quote)
                if backslash != -1:
                    i, escaped = backslash + 1, True
                    continue
                if quote != -1:
                    i, in_string = quote + 1, False
                    if depth == 0:
                        break
                    continue
            else:
                m = _OUTSIDE.search(buf, i)
                if m is not None:
                    c = m.group()
                    if c == '"':
                        in_string, i = True, m.end()
                    elif c in "[{":
                        depth, i = depth + 1, m.end()
                    elif depth == 0:  # "," or "]" ends a scalar element
                        i = m.start()
                        break
                    elif c == ",":
                        i = m.end()
                    else:
                        depth, i = depth - 1, m.end()
                        if depth == 0:
                            break
                    continue
            line += buf.count("\n", pos)  # everything scanned is dropped before the next chunk
            pos = len(buf)
            if not fill():
                return False
            i = pos
        line += buf.count("\n", pos, i)
        pos = i
        return True

    index = 0
    try:
        fill()
        if buf.startswith("\ufeff"):
            pos = 1
        skip_ws()
        pos += 1  # the "[" seen by iter_records
        if skip_ws() == "]":
            return
        while True:
            start_line = line
            problem = None
            bom = pos < len(buf) and buf[pos] == "\ufeff"  # a file with a BOM pasted into the array
            if bom:
                pos += 1
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf):
                        break
                    if len(buf) - pos > max_chars:
                        problem = (TOO_LARGE, f"longer than --max-row-bytes {max_chars} characters")
                        break
                    if not fill():
                        break
                except RecursionError:
                    problem = (TOO_DEEP, f"deeper than --max-row-depth {max_depth}")
                    break
                except json.JSONDecodeError as e:
                    if e.msg.startswith("Invalid control character"):  # the structure is intact: step over it
                        problem = ((INVALID_UNICODE, "NUL character") if buf[e.pos] == "\x00" else
                                   (INVALID_JSON, f"{e.msg} at line {line + buf.count(chr(10), pos, e.pos)}"))
                        break
                    cut = "Unterminated" in e.msg or e.pos >= len(buf) - 16  # may just need more text
                    if cut and len(buf) - pos > max_chars:
                        problem = (TOO_LARGE, f"longer than --max-row-bytes {max_chars} characters")
                        break
                    if cut and fill():
                        continue
                    tail = buf[e.pos:].rstrip()
                    if "Unterminated" in e.msg or (len(tail) < 8 and not any(c in tail for c in ",]}")):
                        yield Record(source, start_line, index, None, TRUNCATED_JSON,
                                     f"the file ends inside this record ({e.msg}); "
                                     "every complete record before it was read")
                    else:
                        yield Record(source, start_line, index, None, INVALID_JSON,
                                     f"{e.msg} at line {line + buf.count(chr(10), pos, e.pos)}; "
                                     "the rest of the array cannot be read")
                    return
            if problem is not None:
                yield Record(source, start_line, index, None, *problem)
                if not skip_value():
                    return
            else:
                problem = _array_element_problem(buf, pos, end, value, limits) or (
                    (INVALID_UNICODE, "a byte-order mark before this element") if bom else None)
                line += buf.count("\n", pos, end)
                pos = end
                yield _rejected(source, start_line, index, value, problem) if problem else \
                    Record(source, start_line, index, value)
            index += 1
            sep = skip_ws()
            if sep == ",":
                pos += 1
                skip_ws()
                continue
            if sep == "]":
                pos += 1
                if skip_ws():
                    yield Record(source, line, index, None, INVALID_JSON,
                                 "unexpected text after the array's closing ']'")
                return
            if sep == "":
                yield Record(source, line, index, None, TRUNCATED_JSON,
                             "the file ends before the array is closed; every complete record was read")
            else:
                yield Record(source, line, index, None, INVALID_JSON,
                             f"expected ',' or ']' after record {index - 1}, found {sep!r}; "
                             "the rest of the array cannot be read")
            return
    except _CORRUPT_GZIP as e:
        yield Record(source, line, index, None, TRUNCATED_JSON, f"the compressed file is cut or corrupt ({e})")


def _array_element_problem(buf: str, start: int, end: int, value: object,
                           limits: RowLimits) -> tuple[str, str] | None:
    """The limits and Unicode checks of a decoded array element, from its text where that is cheaper."""
    if end - start > limits.max_row_bytes:
        return TOO_LARGE, f"longer than --max-row-bytes {limits.max_row_bytes} characters"
    text = buf[start:end]
    if text.count("[") + text.count("{") > limits.max_row_depth and \
            _too_deep(text.encode("utf-8", "surrogatepass"), limits.max_row_depth):
        return TOO_DEEP, f"deeper than --max-row-depth {limits.max_row_depth}"
    if "\\u" in text or _SURROGATE.search(text):
        return check_value(value)
    return None


def _arrow_depth(arrow_type) -> int:
    """Nesting levels of an arrow type as JSON would nest it (struct / list / map: one each)."""
    import pyarrow as pa

    if pa.types.is_struct(arrow_type):
        return 1 + max((_arrow_depth(arrow_type.field(i).type) for i in range(arrow_type.num_fields)), default=0)
    if pa.types.is_map(arrow_type):
        return 1 + max(_arrow_depth(arrow_type.key_type), _arrow_depth(arrow_type.item_type))
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type) or pa.types.is_fixed_size_list(arrow_type):
        return 1 + _arrow_depth(arrow_type.value_type)
    return 0


def _iter_parquet(path: Path, limits: RowLimits) -> Iterator[Record]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a bad file
        raise InputError(f"not a readable parquet file ({e})", path=path) from e
    source = str(path)
    schema = pf.schema_arrow
    depth = 1 + max((_arrow_depth(f.type) for f in schema), default=0)
    index = 0
    try:
        for group in range(pf.num_row_groups):  # one group at a time: damage stays local
            if depth > limits.max_row_depth:  # the schema decides every row's depth
                for _ in range(pf.metadata.row_group(group).num_rows):
                    yield Record(source, None, index, None, TOO_DEEP,
                                 f"the file's schema nests {depth} levels, deeper than --max-row-depth "
                                 f"{limits.max_row_depth}")
                    index += 1
                continue
            for batch in pf.iter_batches(batch_size=256, row_groups=[group]):
                for record in _parquet_rows(batch, source, index, limits, pa):
                    yield record
                index += batch.num_rows
    except Exception as e:  # a corrupt row group: report it, keep the rows before it
        yield Record(source, None, index, None, UNREADABLE, f"{type(e).__name__}: {e}; the rest of the file is unreadable")


def _parquet_rows(batch, source: str, first: int, limits: RowLimits, pa) -> Iterator[Record]:
    """A batch's rows, each checked alone: a row over the size limit is never turned into
    Python objects, and a row that cannot be decoded costs only itself."""
    if batch.nbytes <= limits.max_row_bytes:
        try:
            values = batch.to_pylist()
        except Exception:  # e.g. a string column holding bytes that are not UTF-8: find the row
            values = None
        if values is not None:
            for i, value in enumerate(values):
                yield Record(source, None, first + i, value).checked(limits)
            return
    for i in range(batch.num_rows):
        row = batch.slice(i, 1)
        if row.nbytes > limits.max_row_bytes:
            yield Record(source, None, first + i, None, TOO_LARGE,
                         f"{row.nbytes} bytes, over --max-row-bytes {limits.max_row_bytes}")
            continue
        try:
            value = row.to_pylist()[0]
        except UnicodeDecodeError as e:
            yield Record(source, None, first + i, None, INVALID_UNICODE, f"a string that is not UTF-8 ({e.reason})")
            continue
        except (pa.ArrowException, ValueError, TypeError) as e:
            yield Record(source, None, first + i, None, UNREADABLE, f"{type(e).__name__}: {e}")
            continue
        yield Record(source, None, first + i, value).checked(limits)
