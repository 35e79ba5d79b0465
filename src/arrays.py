"""Writing arrays atomically (temporary name, then rename) and reading any stored dtype back to float32."""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from src.transforms import decode_array

PARTIAL_SUFFIX = ".part"


def partial_path(path: Path) -> Path:
    """The temporary name an array is written under before being renamed into place."""
    path = Path(path)
    return path.with_name(path.name + PARTIAL_SUFFIX)


def save_array_atomic(path: Path, arr: np.ndarray) -> None:
    """Save `arr` as .npy at `path` via a temporary name, so `path` is either absent or complete."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_path(path)
    try:
        with open(tmp, "wb") as f:
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """Load a stored rgb/flow .npy (float32, float16 or uint8) as float32 in [-1, 1]."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as a .npy array ({exc})") from exc
    return decode_array(arr)
