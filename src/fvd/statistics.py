"""A set's statistics: float64 mean and covariance (n - 1) of its activations, saved with what made them.

A statistics file is an .npz holding `mean`, `covariance` and `fvd_meta` (JSON: n, the protocol,
the weights and the sha256 of their tensors, the toolkit version). Two sets are compared only when
their protocols and weights are the same; N may differ but FVD is biased by it, so compare FVD
values only at one N. A file is read without trusting it (src.fvd.npzfile: headers checked before any
array is read) and refused unless its mean and covariance are finite and the covariance symmetric PSD.
"""
from __future__ import annotations

import json
import subprocess
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.inputs import STATS_KEY
from src.fvd.npzfile import open_npz, read_member
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


MAX_META_CHARS = 1 << 16  # fvd_meta is a few hundred characters; a longer one is not ours
MAX_DIM = 16384  # activations' width: 400 for I3D's logits; the covariance (d, d) stays under 2 GiB
PSD_TOLERANCE = 1e-4  # relative: a float32-stored covariance moves eigenvalues by up to ~d * 6e-8 of the largest


def refuse_constant(word: str) -> None:
    """json.loads' parse_constant: NaN and Infinity are not JSON."""
    raise ValueError(f"{word} is not a JSON number")


def read_meta(archive: zipfile.ZipFile, path: Path) -> dict:
    """The fvd_meta record of a statistics file: bounded JSON text, standard numbers only, an object."""
    text = read_member(archive, STATS_KEY, path, shape=(), kinds="U", max_bytes=4 * MAX_META_CHARS)
    try:
        meta = json.loads(str(text), parse_constant=refuse_constant)
    except (ValueError, RecursionError) as exc:
        reason = f"{type(exc).__name__}: {one_line_text(exc)}"
        raise InputError(f"{path}: {STATS_KEY} is not valid JSON ({reason})") from None
    if not isinstance(meta, dict):
        raise InputError(f"{path}: {STATS_KEY} is a JSON {type(meta).__name__}, not an object")
    return meta


def one_line_text(exc: BaseException) -> str:
    """An exception's message, on one line and at most 200 characters."""
    text = " ".join(str(exc).split())
    return text if len(text) <= 200 else text[:197] + "..."


def check_statistics(mean: np.ndarray, covariance: np.ndarray, name: str) -> None:
    """Raise InputError naming `name` unless the mean and covariance are finite and the covariance symmetric PSD."""
    for label, values in (("mean", mean), ("covariance", covariance)):
        bad = int(np.count_nonzero(~np.isfinite(values)))
        if bad:
            raise InputError(f"{name}: the {label} holds {bad} non-finite value(s) (NaN or infinity)")
    scale = float(np.max(np.abs(covariance))) if covariance.size else 0.0
    asymmetry = float(np.max(np.abs(covariance - covariance.T))) if covariance.size else 0.0
    if asymmetry > PSD_TOLERANCE * scale:
        raise InputError(f"{name}: the covariance is not symmetric (|C - C^T| up to {asymmetry:.3g}, entries up to "
                         f"{scale:.3g})")
    eigenvalues = np.linalg.eigvalsh(covariance)
    largest = float(np.max(np.abs(eigenvalues))) if eigenvalues.size else 0.0
    if eigenvalues.size and eigenvalues[0] < -PSD_TOLERANCE * largest:
        raise InputError(f"{name}: the covariance is not positive semi-definite (eigenvalue {eigenvalues[0]:.4g}; "
                         f"the largest in magnitude is {largest:.4g}): not a covariance")


def load_statistics(path: str | Path) -> Statistics:
    """Statistics saved by `save_statistics`; InputError naming the file if it is not one.

    Every array's header is checked (shape, dtype, real size) before it is read, so a hostile file
    costs no more memory than it holds; NaN, infinity and a covariance that is not symmetric
    positive semi-definite are refused.
    """
    path = Path(path)
    with open_npz(path) as archive:
        meta = read_meta(archive, path)
        mean = read_member(archive, "mean", path, shape=(None,), kinds="fiu", max_bytes=8 * MAX_DIM)
        d = mean.shape[0]
        covariance = read_member(archive, "covariance", path, shape=(d, d), kinds="fiu")
    try:
        protocol = Protocol.from_dict(meta["protocol"])
        n = int(meta["n"])
    except (ValueError, KeyError, TypeError, OverflowError, AttributeError) as exc:
        raise InputError(f"{path}: not a readable FVD statistics file ({type(exc).__name__}: "
                         f"{one_line_text(exc)})") from None
    if d < 1 or n < 2:
        raise InputError(f"{path}: statistics of inconsistent shapes (mean {mean.shape}, covariance "
                         f"{covariance.shape}, n {n})")
    mean, covariance = mean.astype(np.float64), covariance.astype(np.float64)
    check_statistics(mean, covariance, str(path))
    return Statistics(mean, covariance, n, protocol, str(meta.get("weights", "")), str(meta.get("weights_sha256", "")),
                      {k: v for k, v in meta.items() if k in ("toolkit_version", "source", "format")})
