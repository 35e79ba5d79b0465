"""cd-fvd's published reference statistics (.pkl): a pickled dict of float64 sums `raw_mean` (d,) and `raw_cov`
(d, d) over `num_items` activations, read without running code (src/weights/unpickle.py's restricted unpickler).

mean = raw_mean / N and covariance = raw_cov / N - mean mean^T (the biased, 1/N covariance). They were made by
cd-fvd's own network and preprocessing (the VideoGPT-lineage PyTorch I3D), so they are labelled as such and are
not compared with activations of another protocol unless the user allows mixing.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.weights.errors import CheckpointError
from src.weights.unpickle import load_numpy_pickle

LABEL = "cd-fvd (songweige/content-debiased-fvd): its own I3D network and preprocessing"


@dataclass
class CdFvdStatistics:
    """Mean and (1/N) covariance, float64, of N activations from a cd-fvd .pkl."""

    mean: np.ndarray
    covariance: np.ndarray
    n: int
    path: str


def read_cdfvd(path: str | Path) -> CdFvdStatistics:
    """The statistics in a cd-fvd .pkl; InputError naming the file if it is not one (or holds anything but data)."""
    path = Path(path)
    try:
        tree = load_numpy_pickle(path)
    except CheckpointError as exc:
        raise InputError(str(exc)) from None
    if not isinstance(tree, dict) or not {"raw_mean", "raw_cov", "num_items"} <= set(tree):
        keys = sorted(map(str, tree)) if isinstance(tree, dict) else type(tree).__name__
        raise InputError(f"{path}: not cd-fvd statistics (expected a dict with raw_mean, raw_cov, num_items; found "
                         f"{keys})")
    try:
        n = int(tree["num_items"])
        raw_mean = np.asarray(tree["raw_mean"], dtype=np.float64)
        raw_cov = np.asarray(tree["raw_cov"], dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise InputError(f"{path}: cd-fvd statistics of the wrong types ({exc})") from None
    d = raw_mean.shape[0] if raw_mean.ndim == 1 else -1
    if n < 2 or d < 1 or raw_cov.shape != (d, d) or not (np.isfinite(raw_mean).all() and np.isfinite(raw_cov).all()):
        raise InputError(f"{path}: inconsistent cd-fvd statistics (raw_mean {raw_mean.shape}, raw_cov "
                         f"{raw_cov.shape}, num_items {n})")
    mean = raw_mean / n
    return CdFvdStatistics(mean, raw_cov / n - np.outer(mean, mean), n, str(path))


def open_cdfvd(spec: str) -> CdFvdStatistics | None:
    """The cd-fvd statistics a spec names (a .pkl file), or None for anything else."""
    path = Path(spec)
    if path.suffix.lower() != ".pkl":
        return None
    if not path.is_file():
        raise InputError(f"{spec}: no such file")
    return read_cdfvd(path)
