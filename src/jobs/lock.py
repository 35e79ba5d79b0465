"""Advisory locks on an output folder, so two runs of a batch job never write the same files.

A run holds `OUT_DIR/.<job>-shard<i>of<n>.lock` (1of1 for a whole run) for as long as it runs; the file
holds its pid. Runs that would write the same items (same shard, a whole run beside anything, or
shards of different splits) refuse to start; shards i/n and j/n (i != j) run side by side. The locks
are kernel locks (flock; msvcrt byte locks on Windows), so a killed run's lock is released with it: a
stale file of a dead pid is simply taken over. `OUT_DIR/.<job>.lock` serialises short critical
sections (recipe checks, manifest and CSV merges). `<job>` names the pipeline, e.g. `preprocess`.
"""
from __future__ import annotations

import errno
import os
import re
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Callable, Iterator

try:
    import fcntl
except ImportError:  # Windows: byte-range locks of msvcrt, also released when the process dies
    fcntl = None
    import msvcrt



class LockError(OSError):
    """Another run holds the lock; the message names its pid."""


def _try_lock(f: IO, blocking: bool = False) -> bool:
    """Take an exclusive lock on an open file; False if another process holds it (non-blocking).

    Other failures (a file system without locks: ENOLCK) raise OSError.
    """
    try:
        if fcntl is not None:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        else:
            f.seek(0)
            msvcrt.locking(f.fileno(), msvcrt.LK_LOCK if blocking else msvcrt.LK_NBLCK, 1)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK, errno.EDEADLK):
            return False
        raise


def _unlock(f: IO) -> None:
    if fcntl is not None:
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
    else:
        f.seek(0)
        msvcrt.locking(f.fileno(), msvcrt.LK_UNLCK, 1)


@contextmanager
def folder_mutex(folder: Path, job: str) -> Iterator[None]:
    """A short critical section of `job` over `folder` (blocking), e.g. to merge manifests."""
    with open(Path(folder) / f".{job}.lock", "a+") as f:
        try:
            locked = _try_lock(f, blocking=True)
        except OSError:  # no locks on this file system: the caller goes on unprotected, as before locks
            locked = False
        try:
            yield
        finally:
            if locked:
                _unlock(f)


def overlaps(a: tuple[int, int], b: tuple[int, int]) -> bool:
    """Whether shards a = (i, n) and b = (j, m) can hold the same item (only i != j of the same n cannot)."""
    return not (a[1] == b[1] and a[0] != b[0])


def _holder_pid(path: Path) -> str:
    try:
        return path.read_text().strip().split("\n")[0] or "unknown"
    except OSError:
        return "unknown"


class FolderLock:
    """The lock of one run (shard i of n) of `job` on an output folder; `tool` names it in messages."""

    def __init__(self, folder: Path, shard: tuple[int, int], job: str, tool: str):
        self.folder, self.shard, self.job, self.tool = Path(folder), shard, job, tool
        self.path = self.folder / f".{job}-shard{shard[0]}of{shard[1]}.lock"
        self._pattern = re.compile(rf"\.{re.escape(job)}-shard(\d+)of(\d+)\.lock")
        self._file: IO | None = None

    def acquire(self, when_alone: Callable[[], None] | None = None) -> None:
        """Take the lock, or raise LockError naming the pid of a run writing the same items.

        `when_alone` runs (under the folder's mutex) when no other run holds any lock on the folder,
        i.e. when whatever temporary files lie there were left by runs that are gone.
        """
        with folder_mutex(self.folder, self.job):
            alone = True
            for other in sorted(self.folder.glob(f".{self.job}-shard*of*.lock")):
                m = self._pattern.fullmatch(other.name)
                if not m:
                    continue
                with open(other, "a+") as f:
                    if _try_lock(f):  # nobody holds it: a finished or killed run's file
                        _unlock(f)
                        continue
                alone = False
                if not overlaps(self.shard, (int(m[1]), int(m[2]))):
                    continue
                what = "a whole run" if m[2] == "1" else f"shard {m[1]}/{m[2]}"
                raise LockError(
                    f"{self.folder} is being written by another {self.tool} ({what}, pid {_holder_pid(other)}); "
                    "wait for it to finish, or use another OUT_DIR (different --shard i/n of the same n may run together)"
                )
            f = open(self.path, "a+")
            if not _try_lock(f):
                f.close()
                raise LockError(f"{self.folder} is being written by another {self.tool} (pid {_holder_pid(self.path)})")
            f.seek(0)
            f.truncate()
            f.write(f"{os.getpid()}\n")
            f.flush()
            self._file = f
            if alone and when_alone is not None:
                when_alone()

    def release(self) -> None:
        """Give the lock back and remove its file."""
        if self._file is None:
            return
        with folder_mutex(self.folder, self.job):
            self.path.unlink(missing_ok=True)
            _unlock(self._file)
            self._file.close()
            self._file = None

    def __enter__(self) -> "FolderLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
