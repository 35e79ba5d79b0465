"""Every metric from two sets of activations: FVD under each protocol's statistics and square root, KVD, and
precision / recall.

- covariance: 'unbiased' divides by n - 1 (TF-GAN, np.cov), 'biased' by n (StyleGAN-V's FeatureStats); float64.
- square root: 'tf-gan' is src/fvd/distance.py; 'scipy' the real part of scipy.linalg.sqrtm(S_b S_a) (StyleGAN-V);
  'svd32' TF-GAN's symmetric form in float32 torch, as the VideoGPT-lineage fvd.py (VideoGPT, TATS, DIGAN) computes
  it from activations: float32 mean and covariance, the generated set's (B's) covariance square-rooted first
  (their frechet_distance(fake, real)).
- KVD: the unbiased MMD^2 estimate with k(x, y) = (x.y / d + 1)^3, d the feature size (400), over the whole
  sets (no subsets), as DIGAN and TATS compute it with scikit-learn's polynomial_kernel defaults.
- precision / recall: Kynkaanniemi et al. 2019 with k = 3: a sample is inside a set's manifold when it lies
  within the distance from some member of that set to that member's k-th nearest other member (data-juicer's
  video_precision_recall.py compute_pr, nhood_size = 3 for prv2048_3n_16f; it stores the radii in float16, here
  everything is float64).
"""
from __future__ import annotations

import warnings

import numpy as np
import torch

from src.clips import InputError
from src.fvd.distance import EPS, frechet_distance

METRICS = ("fvd", "kvd", "precision", "recall")
SQRTM = ("tf-gan", "scipy", "svd32")
NEIGHBOURS = 3  # k of precision / recall
DEFINITIONS = {
    "fvd": "Frechet distance between Gaussians fitted to the two sets' I3D activations (covariance {covariance}, "
           "square root {sqrtm})",
    "kvd": "unbiased MMD^2 between the two sets' activations, kernel (x.y / d + 1)^3, d = {d}, whole sets",
    "precision": "fraction of B's activations within the k-NN radius (k = 3) of some A activation "
                 "(Kynkaanniemi et al. 2019)",
    "recall": "fraction of A's activations within the k-NN radius (k = 3) of some B activation "
              "(Kynkaanniemi et al. 2019)",
}


def mean_covariance(x: np.ndarray, covariance: str = "unbiased") -> tuple[np.ndarray, np.ndarray]:
    """float64 mean and covariance of (n, d) activations, divided by n - 1 ('unbiased') or n ('biased')."""
    x = np.asarray(x, dtype=np.float64)
    if len(x) < 2:
        raise InputError(f"{len(x)} clip(s); FVD needs at least 2 per set (a covariance)")
    mean = x.mean(axis=0)
    centered = x - mean
    divisor = {"unbiased": len(x) - 1, "biased": len(x)}[covariance]
    return mean, centered.T @ centered / divisor


def symmetric_sqrt32(matrix: torch.Tensor) -> torch.Tensor:
    """TF-GAN's symmetric square root by SVD (values under 1e-10 kept as they are), in the matrix's own dtype."""
    u, s, vh = torch.linalg.svd(matrix)
    return (u * torch.where(s < EPS, s, torch.sqrt(s))) @ vh


def frechet(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray, cov_b: np.ndarray, sqrtm: str = "tf-gan"
            ) -> float:
    """The Fréchet distance with the square root taken as `sqrtm` says (SQRTM)."""
    if sqrtm == "tf-gan":
        return frechet_distance(mean_a, cov_a, mean_b, cov_b)
    if sqrtm == "scipy":
        import scipy.linalg

        # StyleGAN-V calls sqrtm(..., disp=False), which is silent; a product of two covariances of fewer clips than
        # dimensions is singular, and scipy would warn about that on every run of a small set
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", scipy.linalg.LinAlgWarning)
            root = scipy.linalg.sqrtm(np.asarray(cov_b, np.float64) @ np.asarray(cov_a, np.float64))
        value = np.sum(np.square(mean_b - mean_a)) + np.trace(cov_a + cov_b - 2 * root)
        return float(np.real(value))
    if sqrtm == "svd32":
        mb, sb, ma, sa = (torch.from_numpy(np.asarray(v, np.float32)) for v in (mean_b, cov_b, mean_a, cov_a))
        return frechet32(mb, sb, ma, sa)
    raise ValueError(f"unknown square root {sqrtm!r} (known: {', '.join(SQRTM)})")


def mean_covariance32(x: np.ndarray, covariance: str = "unbiased") -> tuple[torch.Tensor, torch.Tensor]:
    """float32 torch mean and covariance of (n, d) activations, as the VideoGPT-lineage fvd.py's cov computes them."""
    t = torch.from_numpy(np.asarray(x, dtype=np.float32))
    if len(t) < 2:
        raise InputError(f"{len(t)} clip(s); FVD needs at least 2 per set (a covariance)")
    mean = t.mean(dim=0)
    centered = t - mean
    divisor = {"unbiased": len(t) - 1, "biased": len(t)}[covariance]
    return mean, (1.0 / divisor) * (centered.T @ centered)


def frechet32(mean_x: torch.Tensor, cov_x: torch.Tensor, mean_y: torch.Tensor, cov_y: torch.Tensor) -> float:
    """TF-GAN's form in float32: tr(Sx + Sy) - 2 tr(sqrt(A Sy A)) + |mx - my|^2 with A = sqrt(Sx), Sx's root first."""
    root = symmetric_sqrt32(cov_x)
    trace = torch.trace(cov_x + cov_y) - 2.0 * torch.trace(symmetric_sqrt32(root @ (cov_y @ root)))
    return float(trace + torch.sum((mean_x - mean_y) ** 2))


def fvd(a: np.ndarray, b: np.ndarray, covariance: str = "unbiased", sqrtm: str = "tf-gan") -> float:
    """FVD between (n, d) activations `a` (real) and `b` (generated) under one covariance normalisation and root."""
    if sqrtm == "svd32":  # statistics in float32 as well, the generated set first (VideoGPT/TATS/DIGAN fvd.py)
        return frechet32(*mean_covariance32(b, covariance), *mean_covariance32(a, covariance))
    return frechet(*mean_covariance(a, covariance), *mean_covariance(b, covariance), sqrtm=sqrtm)


def kvd(a: np.ndarray, b: np.ndarray) -> float:
    """Unbiased MMD^2 with the cubic polynomial kernel (x.y / d + 1)^3 over the whole sets, float64."""
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if len(x) < 2 or len(y) < 2:
        raise InputError(f"KVD needs at least 2 clips per set, got {len(x)} and {len(y)}")
    d = x.shape[1]
    kxx, kyy, kxy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances (len(x), len(y)), float64."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    squared = (x * x).sum(1)[:, None] + (y * y).sum(1)[None] - 2 * x @ y.T
    return np.sqrt(np.maximum(squared, 0))


def manifold_coverage(support: np.ndarray, queries: np.ndarray, k: int = NEIGHBOURS) -> float:
    """Fraction of `queries` inside the k-NN manifold of `support` (Kynkaanniemi et al. 2019)."""
    if len(support) <= k:
        raise InputError(f"precision/recall with k = {k} needs at least {k + 1} clips per set, got {len(support)}")
    radii = np.sort(distances(support, support), axis=1)[:, k]  # column 0 is the member itself
    return float(np.mean((distances(queries, support) <= radii[None]).any(axis=1)))


def compute_metrics(a: np.ndarray, b: np.ndarray, names: tuple[str, ...], covariance: str = "unbiased",
                    sqrtm: str = "tf-gan") -> dict[str, float]:
    """The metrics `names` (METRICS) between activations `a` (real) and `b` (generated)."""
    out = {}
    for name in names:
        if name == "fvd":
            out[name] = fvd(a, b, covariance, sqrtm)
        elif name == "kvd":
            out[name] = kvd(a, b)
        elif name == "precision":
            out[name] = manifold_coverage(a, b)
        elif name == "recall":
            out[name] = manifold_coverage(b, a)
        else:
            raise ValueError(f"unknown metric {name!r} (known: {', '.join(METRICS)})")
    return out


def parse_metrics(text: str) -> tuple[str, ...]:
    """'fvd,kvd' -> ('fvd', 'kvd'); ValueError naming an unknown one."""
    names = tuple(dict.fromkeys(w.strip() for w in text.split(",") if w.strip()))
    unknown = [n for n in names if n not in METRICS]
    if unknown or not names:
        raise ValueError(f"--metrics {text!r}: unknown {', '.join(unknown) or 'empty list'} (known: "
                         f"{', '.join(METRICS)})")
    return names


def summarise(trials: list[dict[str, float]]) -> dict[str, float]:
    """Each metric's mean over trials, and with several trials its population standard deviation as NAME_std."""
    out: dict[str, float] = {}
    for name in trials[0]:
        values = np.array([t[name] for t in trials], np.float64)
        out[name] = float(values.mean())
        if len(trials) > 1:
            out[f"{name}_std"] = float(values.std())
    return out
