"""A set's statistics: float64 mean and covariance (n - 1) of its activations, saved with what made them.

A statistics file is an .npz holding `mean`, `covariance` and `fvd_meta` (JSON: n, the protocol,
the weights and the sha256 of their tensors, the toolkit version). Two sets are compared only when
their protocols and weights are the same; N may differ but FVD is biased by it, so compare FVD
values only at one N.
"""
from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.inputs import STATS_KEY
from src.fvd.protocol import Protocol
from src.jobs import atomic_write
from src.paths import REPO_ROOT

FORMAT = 1


def toolkit_version() -> str:
    """The repository's commit (git describe --always --dirty), or 'unknown' outside a git checkout."""
    try:
        out = subprocess.run(["git", "-C", str(REPO_ROOT), "describe", "--always", "--dirty"], capture_output=True,
                             text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"


@dataclass
class Statistics:
    """Mean (d,) and covariance (d, d) in float64 of n activations, with the protocol and weights behind them."""

    mean: np.ndarray
    covariance: np.ndarray
    n: int
    protocol: Protocol
    weights: str = "rgb_scratch"
    weights_sha256: str = ""
    meta: dict = field(default_factory=dict)  # anything else recorded (toolkit version, source)

    def check_protocol(self, expected: Protocol, name: str) -> None:
        """Raise InputError naming this set (`name`) unless it was made under `expected`."""
        differences = expected.differences(self.protocol)
        if differences:
            raise InputError(f"{name}: statistics computed under another protocol ({'; '.join(differences)} here); "
                             "FVD compares two sets only under one protocol")

    def check_weights(self, weights_sha256: str, name: str) -> None:
        """Raise InputError naming this set unless it was made with weights whose tensors hash to `weights_sha256`."""
        if self.weights_sha256 != weights_sha256:
            raise InputError(f"{name}: statistics computed with other {self.weights} weights (tensors' sha256 "
                             f"{self.weights_sha256[:12]}... vs {weights_sha256[:12]}... here)")


def activation_statistics(activations: np.ndarray, protocol: Protocol, weights_sha256: str = "",
                          name: str = "activations") -> Statistics:
    """Statistics of (n, d) activations as TF-GAN computes them: float64 mean, covariance with n - 1."""
    x = np.asarray(activations, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"{name}: activations of shape {x.shape}; expected (n, d)")
    if len(x) < 2:
        raise InputError(f"{name}: {len(x)} clip(s); FVD needs at least 2 per set (a covariance)")
    mean = x.mean(axis=0)
    centered = x - mean
    covariance = centered.T @ centered / (len(x) - 1)
    return Statistics(mean, covariance, len(x), protocol, weights_sha256=weights_sha256)


def save_statistics(stats: Statistics, path: str | Path, source: str = "") -> None:
    """Write `stats` to an .npz at `path` through a temporary name (complete or absent, never half-written)."""
    meta = {"format": FORMAT, "n": stats.n, "protocol": stats.protocol.as_dict(), "weights": stats.weights,
            "weights_sha256": stats.weights_sha256, "toolkit_version": toolkit_version(), "source": source}
    with atomic_write(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, mean=stats.mean, covariance=stats.covariance, **{STATS_KEY: np.array(json.dumps(meta))})


def load_statistics(path: str | Path) -> Statistics:
    """Statistics saved by `save_statistics`; InputError naming the file if it is not one."""
    path = Path(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z[STATS_KEY]))
            mean, covariance = z["mean"].astype(np.float64), z["covariance"].astype(np.float64)
        protocol = Protocol.from_dict(meta["protocol"])
        n = int(meta["n"])
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        raise InputError(f"{path}: not a readable FVD statistics file ({type(exc).__name__}: {exc})") from None
    d = mean.shape[0] if mean.ndim == 1 else -1
    if d < 1 or covariance.shape != (d, d) or n < 2:
        raise InputError(f"{path}: statistics of inconsistent shapes (mean {mean.shape}, covariance "
                         f"{covariance.shape}, n {n})")
    return Statistics(mean, covariance, n, protocol, meta.get("weights", ""), meta.get("weights_sha256", ""),
                      {k: v for k, v in meta.items() if k in ("toolkit_version", "source", "format")})
