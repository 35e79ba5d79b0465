"""Files a job writes: atomically (a temporary name unique to this process, renamed over the target when
complete), and the one check that a folder or file can be written before the work starts."""
from __future__ import annotations

import contextlib
import os
import secrets
from pathlib import Path
from typing import Callable, Iterator, TextIO

import numpy as np

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


def write_text_atomic(path: Path, text: str | Callable[[TextIO], object], newline: str | None = None) -> None:
    """Write a text file atomically: `text` itself, or what `text(f)` writes to the open file."""
    with atomic_write(path, fsync=False) as tmp, open(tmp, "w", newline=newline) as f:
        if callable(text):
            text(f)
        else:
            f.write(text)


def save_array_atomic(path: Path, arr: np.ndarray) -> None:
    """Save `arr` as .npy at `path` via a temporary name, so `path` is either absent or complete."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(arr, order="C"), allow_pickle=False)  # ascontiguousarray makes a 0-d array 1-d


def reason(exc: OSError) -> str:
    """The short reason of an OS error ('Permission denied'), without errno numbers or paths."""
    return exc.strerror or str(exc)


def prepare_folder(folder: str | Path, create: bool = True) -> Path:
    """Create `folder` (and its parents) unless told not to, and check that a file can be created in it.

    The OSError of a failure is raised as it is (its `strerror` is the reason).
    """
    folder = Path(folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
    probe = temporary_name(folder / ".write-test")
    open(probe, "xb").close()
    probe.unlink()
    return folder


def check_writable(path: str | Path, create_folders: bool = True) -> None:
    """Raise OSError with a one-line reason unless a file can be created at `path` (missing folders are made,
    unless `create_folders` is False)."""
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a folder, not a file name")
    try:
        prepare_folder(path.parent, create_folders)
    except OSError as exc:
        raise OSError(f"{path}: cannot be written ({reason(exc)})") from None
