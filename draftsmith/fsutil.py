"""Atomic writes, folder replacement and cache keys: the one owner of each.

- `atomic_path` / `write_text_atomic` / `write_json_atomic`: an interrupted job leaves the old
  file or the new one, never half.
- `staging_dir(out)` + `replace_dir(staging, out)`: a stage builds its output folder under a
  hidden temporary name beside `out` and publishes it with one rename; an old `out` is set aside
  first and deleted only after the new one is in place (a crash leaves either folder whole).
- `cache_key(parts)`: the one key scheme of every cache (build-dataset's dataset cache, the
  demo's stage state): SHA-256 of the canonical JSON of `parts`, shortened.
- `file_digest(path)`: SHA-256 of a file's bytes, streamed.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it over `path` only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_path, 0o666 & ~umask)  # mkstemp makes 0600; outputs are shared like any written file
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def read_json_object(path: str | os.PathLike) -> dict:
    """A JSON object from a user-supplied file; bad JSON is an InputError naming the file and line."""
    from draftsmith.errors import InputError

    try:
        value = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise InputError(f"invalid JSON: {e.msg}", path=path, line=e.lineno) from None
    if not isinstance(value, dict):
        raise InputError("must hold a JSON object", path=path)
    return value


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json_atomic(path: str | os.PathLike, obj: object) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def staging_dir(out: str | os.PathLike) -> Path:
    """A new empty hidden folder beside `out`, to build it in before `replace_dir`."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))


def replace_dir(staging: str | os.PathLike, out: str | os.PathLike) -> Path:
    """Publish the finished folder `staging` as `out` with one rename; an old `out` is moved aside
    first and removed only once the new one is in place. Files keep the umask's modes (mkdtemp /
    mkstemp make 0700 / 0600)."""
    staging, out = Path(staging), Path(out)
    umask = os.umask(0)
    os.umask(umask)
    for path in [staging, *staging.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, (0o777 if path.is_dir() else 0o666) & ~umask)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.replace(out, old / out.name)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return out


def file_digest(path: str | os.PathLike, h=None):
    """The SHA-256 object of a file's bytes (updates `h` when given)."""
    h = h or hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h


def cache_key(parts, length: int = 24) -> str:
    """The key of a cache entry: SHA-256 of the canonical JSON of `parts` (sorted keys)."""
    blob = json.dumps(parts, sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]
