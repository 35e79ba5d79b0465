"""The frozen-feature cache: the output of the first K (frozen) blocks for each item and view.

With the first K blocks frozen (weights fixed, batch norm in eval mode) their output for a given
input never changes, so it is computed once and later epochs run only the unfrozen blocks.
Entries are .npy files under one folder, named by split, stream, item and view; a fingerprint of
everything that determines them (weights, K, clip length, crop, data folder) guards against reuse
by a run that would compute something else.
"""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import torch

from src.jobs.files import save_array_atomic


class FrozenFeatureCache:
    """Cached frozen-block outputs on disk, stored as float16 (default) or float32."""

    def __init__(self, folder: Path, fingerprint: dict, dtype: str = "float16"):
        self.folder, self.dtype = Path(folder), np.dtype(dtype)
        stamp = self.folder / "fingerprint.json"
        text = json.dumps({**fingerprint, "dtype": dtype}, sort_keys=True, default=str)
        if stamp.exists() and stamp.read_text() != text:
            shutil.rmtree(self.folder)  # made for other weights/inputs: stale, start again
        self.folder.mkdir(parents=True, exist_ok=True)
        if not stamp.exists():
            stamp.write_text(text)
        self.id = hashlib.sha1(text.encode()).hexdigest()[:8]

    def path(self, split: str, stream: str, index: int, view: int) -> Path:
        """Where one entry lives."""
        return self.folder / split / stream / f"{index:06d}-view{view}.npy"

    def stored(self, features: torch.Tensor) -> torch.Tensor:
        """`features` as `get` will return them once stored (rounded to the storage dtype), on their device."""
        return features.detach().to(getattr(torch, self.dtype.name)).float()

    def get(self, split: str, stream: str, index: int, view: int) -> torch.Tensor | None:
        """The cached features as float32, or None."""
        path = self.path(split, stream, index, view)
        if not path.exists():
            return None
        return torch.from_numpy(np.load(path, allow_pickle=False).astype(np.float32))

    def put(self, split: str, stream: str, index: int, view: int, features: torch.Tensor) -> None:
        """Store one item's features (C, T, H, W), atomically."""
        save_array_atomic(self.path(split, stream, index, view),
                          features.detach().float().cpu().numpy().astype(self.dtype))
