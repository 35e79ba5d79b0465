"""Disk space: how much is free, whether a write failed for lack of it, and the one-line message saying so."""
from __future__ import annotations

import errno
import re
import shutil
from pathlib import Path

DISK_FULL = "disk full while writing"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk sets no errno


def free_bytes(path: Path) -> int:
    """Free bytes on the file system that holds `path` (or would: its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def gigabytes(n: float) -> str:
    """A byte count as '1.23 GB'."""
    return f"{n / 1e9:.2f} GB"


def is_disk_full(exc: OSError) -> bool:
    """Whether a write failed because the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and bool(_SHORT_WRITE.search(str(exc))))


def disk_full_message(path: Path | None, exc: OSError) -> str:
    """One line saying the disk is full, naming the file being written."""
    where = Path(path).parent if path else Path(".")
    try:
        free = f"; {gigabytes(free_bytes(where))} free"
    except OSError:
        free = ""
    return f"{DISK_FULL} {path} ({exc}){free}"
