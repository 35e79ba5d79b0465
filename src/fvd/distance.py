"""The Fréchet distance between two Gaussians, computed as TF-GAN's frechet_classifier_distance_from_activations.

FD = tr(S1 + S2) - 2 tr(sqrt(S1 S2)) + ||m1 - m2||^2, with tr(sqrt(S1 S2)) taken as
tr(sqrt(A S2 A)) for A = sqrt(S1): both square roots of symmetric matrices, by SVD, singular values
under 1e-10 kept as they are (not square-rooted), everything in float64. scipy's sqrtm of S1 S2
gives the same number up to rounding on well-conditioned input; for rank-deficient covariances
(fewer videos than 400) this form is the one the reference computes.
"""
from __future__ import annotations

import numpy as np

EPS = 1e-10  # TF-GAN's: singular values below it are used as they are


def symmetric_sqrt(matrix: np.ndarray, eps: float = EPS) -> np.ndarray:
    """Square root of a symmetric positive semi-definite matrix by SVD (TF-GAN's _symmetric_matrix_square_root)."""
    u, s, vh = np.linalg.svd(np.asarray(matrix, dtype=np.float64))
    root = np.where(s < eps, s, np.sqrt(s))
    return (u * root) @ vh


def trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr(sqrt(sigma1 sigma2)) as tr(sqrt(A sigma2 A)), A = sqrt(sigma1) (TF-GAN's trace_sqrt_product)."""
    root = symmetric_sqrt(sigma1)
    return float(np.trace(symmetric_sqrt(root @ (sigma2 @ root))))


def frechet_distance(mean1: np.ndarray, sigma1: np.ndarray, mean2: np.ndarray, sigma2: np.ndarray) -> float:
    """The Fréchet distance between N(mean1, sigma1) and N(mean2, sigma2), float64, as TF-GAN computes it."""
    mean1, mean2 = np.asarray(mean1, np.float64), np.asarray(mean2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    if mean1.shape != mean2.shape or sigma1.shape != sigma2.shape or sigma1.shape != mean1.shape * 2:
        raise ValueError(f"mismatched statistics: means {mean1.shape} {mean2.shape}, covariances "
                         f"{sigma1.shape} {sigma2.shape}")
    for name, values in (("first mean", mean1), ("first covariance", sigma1), ("second mean", mean2),
                         ("second covariance", sigma2)):
        if not np.all(np.isfinite(values)):
            raise ValueError(f"the {name} holds NaN or infinite values: no Fréchet distance")
    trace = np.trace(sigma1 + sigma2) - 2.0 * trace_sqrt_product(sigma1, sigma2)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow is refused below, in one line
        value = float(trace + np.sum(np.square(mean1 - mean2)))
    if not np.isfinite(value):  # never hand on a NaN: json.dumps would print it as the invalid token NaN
        raise ValueError(f"the Fréchet distance came out {value} (statistics too large for float64?)")
    return value
