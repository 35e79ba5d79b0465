"""Writing a file atomically: under a temporary name unique to this process, renamed over the target when complete."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Iterator

PARTIAL_SUFFIX = ".part"  # every temporary name ends with it, so a killed run's leftovers can be found and removed


def temporary_name(path: Path) -> Path:
    """A fresh temporary name beside `path`: `NAME.<pid>.<random>.part`, never shared by two processes or calls."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}{PARTIAL_SUFFIX}")


@contextlib.contextmanager
def atomic_write(path: str | Path, fsync: bool = True) -> Iterator[Path]:
    """Yield a new empty temporary file beside `path` to write; on success it replaces `path`, on failure it is removed.

    Readers therefore see `path` either absent, as it was, or complete, even if the writer is killed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = temporary_name(path)
        try:
            open(tmp, "xb").close()  # exclusive create, with the usual permissions (mkstemp's would be 0600)
            break
        except FileExistsError:  # pragma: no cover - 32 random bits collided
            continue
    try:
        yield tmp
        if fsync:
            with open(tmp, "r+b") as f:
                os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def check_writable(path: str | Path) -> None:
    """Raise OSError with a one-line reason unless a file can be created at `path` (missing folders are made)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file name")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        probe = temporary_name(path)
        open(probe, "xb").close()
        probe.unlink()
    except OSError as e:
        raise OSError(f"{path}: cannot be written ({e.strerror or e})") from None
