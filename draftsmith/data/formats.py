"""Row readers for local data files: .json arrays, .jsonl, .parquet (optionally .gz).

Every reader yields one `Record` per input row and never raises on a bad row: a
line that is not valid JSON, or the incomplete last record of a truncated JSON
array (the packaged ShareGPT file is cut mid-record), comes back as a record with
`error` set, so callers can count it, report its position and go on.

A `.json` file whose first non-blank character is `[` is read as an array by a
streaming parser (constant memory per record, every complete record kept); any
other `.json` file is read as JSON Lines, as `datasets` does.
"""

from __future__ import annotations

import codecs
import gzip
import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Callable, Iterator

from draftsmith.errors import InputError

INVALID_JSON = "invalid JSON"
TRUNCATED_JSON = "truncated JSON"
UNREADABLE = "unreadable data"

SUFFIXES = (".json", ".jsonl", ".parquet")
_CHUNK_BYTES = 1 << 22
_GZIP_CHUNK_BYTES = 1 << 16
_BOM = b"\xef\xbb\xbf"
_WHITESPACE = " \t\n\r"
_CORRUPT_GZIP = (EOFError, gzip.BadGzipFile, zlib.error)


@dataclass(frozen=True)
class Record:
    """One input row and where it came from.

    `line` is the 1-based line where the row starts (JSON files), `index` its 0-based
    position among the rows (JSON arrays, parquet, hub datasets). `error` is a short
    stable reason ("invalid JSON", "truncated JSON", "unreadable data") when the row could
    not be read; then `value` is None and `detail` says what the reader saw.
    """

    source: str
    line: int | None
    index: int | None
    value: object | None
    error: str | None = None
    detail: str | None = None

    def position(self) -> dict:
        """The row's position as the skipped-file fields: {"line": n} and/or {"index": i}."""
        pos = {}
        if self.line is not None:
            pos["line"] = self.line
        if self.index is not None:
            pos["index"] = self.index
        return pos


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


def iter_records(path: str | os.PathLike, *, wanted: Callable[[int], bool] | None = None) -> Iterator[Record]:
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
        yield from _iter_parquet(path)
        return
    with _open_binary(path) as f:
        head = _first_byte(f)
        f.seek(0)
        if fmt == "json" and head == b"[":
            # a cut .gz stream loses the chunk being read: keep those chunks small
            yield from _iter_json_array(f, str(path), _GZIP_CHUNK_BYTES if _is_gzip(path) else _CHUNK_BYTES)
        else:
            yield from _iter_jsonl(f, str(path), wanted)


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


def _iter_jsonl(f: IO[bytes], source: str, wanted: Callable[[int], bool] | None) -> Iterator[Record]:
    decode = json.JSONDecoder().decode
    lineno = 0
    position = -1
    try:
        for lineno, raw in enumerate(f, 1):
            if lineno == 1 and raw.startswith(_BOM):
                raw = raw[len(_BOM):]
            if not raw or raw.isspace():
                continue
            position += 1
            if wanted is not None and not wanted(position):
                yield Record(source, lineno, None, None)
                continue
            try:
                value = decode(raw.decode("utf-8"))
            except UnicodeDecodeError as e:
                yield Record(source, lineno, None, None, INVALID_JSON, f"not UTF-8 at byte {e.start}")
            except json.JSONDecodeError as e:
                yield Record(source, lineno, None, None, INVALID_JSON, f"{e.msg} (column {e.colno})")
            else:
                yield Record(source, lineno, None, value)
    except _CORRUPT_GZIP as e:
        yield Record(source, lineno + 1, None, None, TRUNCATED_JSON,
                     f"the compressed file is cut or corrupt after line {lineno} ({e})")


def _iter_json_array(f: IO[bytes], source: str, chunk_bytes: int) -> Iterator[Record]:
    """Stream the elements of a top-level JSON array, refilling a text buffer as needed."""
    decoder = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
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
            while True:
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or not fill():
                        break
                except json.JSONDecodeError as e:
                    cut = "Unterminated" in e.msg or e.pos >= len(buf) - 16  # may just need more text
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
            line += buf.count("\n", pos, end)
            pos = end
            yield Record(source, start_line, index, value)
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
    except UnicodeDecodeError as e:
        yield Record(source, line, index, None, INVALID_JSON, f"not UTF-8 ({e.reason}); the rest of the file is unreadable")
    except _CORRUPT_GZIP as e:
        yield Record(source, line, index, None, TRUNCATED_JSON, f"the compressed file is cut or corrupt ({e})")


def _iter_parquet(path: Path) -> Iterator[Record]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises ArrowInvalid / OSError for a bad file
        raise InputError(f"not a readable parquet file ({e})", path=path) from e
    index = 0
    try:
        for group in range(pf.num_row_groups):  # one group at a time: damage stays local
            for batch in pf.iter_batches(batch_size=1024, row_groups=[group]):
                for value in batch.to_pylist():
                    yield Record(str(path), None, index, value)
                    index += 1
    except Exception as e:  # a corrupt row group: report it, keep the rows before it
        yield Record(str(path), None, index, None, UNREADABLE, f"{type(e).__name__}: {e}; the rest of the file is unreadable")
