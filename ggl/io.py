"""Canonical JSON and atomic writes: the two ways every store, report and checkpoint reaches the disk.

Canonical JSON (sorted keys, no spaces) is what keys and hashes are made of, so one spelling of it exists. A file is
written to a temporary name beside its destination and renamed over it, so a reader never sees half a file.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


def canonical_json(value: Any) -> str:
    """The one JSON spelling of plain data used for keys and hashes (sorted keys, no whitespace)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def pretty_json(value: Any, indent: int = 2) -> str:
    """Readable JSON for published files: sorted keys, ``indent`` spaces, a final newline."""
    return json.dumps(value, indent=indent, sort_keys=True) + "\n"


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on a clean exit it replaces ``path`` in one rename.

    Use it with writers that want a path (``torch.save``, ``savefig``). On an error the temporary file is removed
    and ``path`` is left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        yield partial
        os.replace(partial, path)
    finally:
        if partial.exists():
            partial.unlink()


def atomic_write(path: str | Path, data: str | bytes) -> Path:
    """Write text (UTF-8) or bytes to ``path`` atomically; returns the path."""
    with atomic_path(path) as partial:
        if isinstance(data, bytes):
            partial.write_bytes(data)
        else:
            partial.write_text(data, encoding="utf-8")
    return Path(path)


def atomic_write_with(path: str | Path, write: Callable[[Path], Any]) -> Path:
    """Call ``write(temporary_path)`` and move the result to ``path`` atomically; returns the path."""
    with atomic_path(path) as partial:
        write(partial)
    return Path(path)
