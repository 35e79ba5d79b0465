"""Writing arrays atomically (temporary name, then rename) and reading any stored dtype back to float32."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from src.files import PARTIAL_SUFFIX, atomic_write
from src.transforms import decode_array

__all__ = ["PARTIAL_SUFFIX", "load_array", "save_array_atomic"]


def save_array_atomic(path: Path, arr: np.ndarray) -> None:
    """Save `arr` as .npy at `path` via a temporary name, so `path` is either absent or complete."""
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.ascontiguousarray(arr), allow_pickle=False)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """Load a stored rgb/flow .npy (float32, float16 or uint8) as float32 in [-1, 1]."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as a .npy array ({exc})") from exc
    return decode_array(arr)
