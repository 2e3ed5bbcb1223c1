"""Crash-consistent files: every state file is written whole or not at all.

A process killed while it writes a file in place (an OOM kill, a preempted node, ``kill -9``)
leaves it torn: empty or cut short, and whatever reads it next fails. So each file tagtune
keeps is written to a temporary file beside it, flushed and fsynced, then renamed over the
old one (``os.replace`` is atomic on POSIX filesystems): a reader sees the old file or the
new one, never a mix. The directory is fsynced too, so the rename survives a power cut.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any


def fsync_dir(directory: str | Path) -> None:
    """Make a rename or a new file in ``directory`` durable (where the OS allows it)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems refuse fsync on a directory: the rename still holds
        pass
    finally:
        os.close(fd)


def fsync_file(path: str | Path) -> None:
    """Flush a file that a library wrote (torch.save, savefig, h5py) to the disk."""
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` on success, removed
    on failure. For libraries that write to a path themselves (torch.save, savefig, to_csv)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        yield tmp
        fsync_file(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_dir(path.parent)


def write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename)."""
    path = Path(path)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(data)
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode())


def write_json(path: str | Path, value: Any, **dump_kwargs: Any) -> Path:
    """``value`` as JSON in ``path``, atomically (``dump_kwargs`` go to ``json.dumps``)."""
    return write_text(path, json.dumps(value, **dump_kwargs))


__all__ = ["atomic_path", "fsync_dir", "fsync_file", "write_bytes", "write_json", "write_text"]
