"""Logging for draftsmith: the standard `logging` module, one line format, rank 0 only under torchrun.

`get_logger(__name__)` returns a logger under the `draftsmith` root logger; the first call installs
one stderr handler with a filter that drops records on ranks other than 0 (RANK from torchrun's
environment, read per record so a process that joins a group later is filtered too). Pass
`extra={"all_ranks": True}` to log from every rank (messages are then prefixed with the rank).
"""

from __future__ import annotations

import logging
import os
import sys

ROOT = "draftsmith"


class RankFilter(logging.Filter):
    """Keep records of rank 0 (or any rank when the record asks for all ranks)."""

    def filter(self, record: logging.LogRecord) -> bool:
        rank = int(os.environ.get("RANK", "0"))
        if getattr(record, "all_ranks", False):
            record.msg = f"[rank {rank}] {record.msg}"
            return True
        return rank == 0


class _StderrHandler(logging.StreamHandler):
    """Writes to the current sys.stderr (not the one of import time: tests and tqdm swap it)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def get_logger(name: str) -> logging.Logger:
    root = logging.getLogger(ROOT)
    if not any(isinstance(h, _StderrHandler) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.addFilter(RankFilter())
        root.addHandler(handler)
        root.setLevel(logging.INFO)
        root.propagate = False
    return logging.getLogger(name if name.startswith(ROOT) else f"{ROOT}.{name}")
