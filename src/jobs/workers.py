"""Worker processes of a batch job: their thread count, a lower priority, and an end together with their parent."""
from __future__ import annotations

import os
import signal
import sys
import threading
import time


def set_threads(n: int) -> None:
    """Threads OpenCV and PyTorch may use in this process (flow and resizing are parallelised inside them)."""
    import cv2
    import torch

    cv2.setNumThreads(max(1, int(n)))
    torch.set_num_threads(max(1, int(n)))


def die_with_parent(parent_pid: int) -> None:
    """End this worker process as soon as the process that started it dies (even by kill -9).

    Linux delivers SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread
    polls the parent pid. Either way a parent that died before the call is caught by the pid check.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def worker_init(threads: int, parent_pid: int | None = None, nice: int = 0) -> None:
    """Set up a worker process: die with `parent_pid`, use `threads` threads, and lower its priority by `nice`."""
    if parent_pid is not None:
        die_with_parent(parent_pid)
    set_threads(threads)
    if nice and hasattr(os, "nice"):
        os.nice(nice)
