"""Optical flow between consecutive frames: TV-L1 (the official I3D recipe), Farneback or DIS, via OpenCV.

Convention (OpenCV's): flow[y, x] = (dx, dy) such that prev[y, x] ~ next[y + dy, x + dx], so content
moving right gives positive x-flow and moving down positive y-flow. Values are clipped to
[-bound, bound] pixels and divided by bound, giving float32 in [-1, 1]; T frames give T - 1 flows.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

ALGORITHMS = ("tvl1", "farneback", "dis")


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) or (H, W, 3) to uint8 grayscale (T, H, W) or (H, W)."""
    if frames.ndim == 3:
        return cv2.cvtColor(frames, cv2.COLOR_RGB2GRAY)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else frames[..., 0]


def set_threads(n: int) -> None:
    """Threads OpenCV may use in this process (TV-L1 and resizing are parallelised inside OpenCV)."""
    cv2.setNumThreads(max(1, int(n)))


class FlowExtractor:
    """Reusable OpenCV flow object; TV-L1 keeps OpenCV's defaults, which the official I3D flow used."""

    def __init__(self, algorithm: str = "tvl1", bound: float = 20.0) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if bound <= 0:
            raise ValueError(f"flow bound must be positive, got {bound}")
        self.algorithm = algorithm
        self.bound = float(bound)
        if algorithm == "tvl1":
            # tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01: OpenCV's defaults.
            self._impl = cv2.optflow.DualTVL1OpticalFlow_create()
        elif algorithm == "dis":
            self._impl = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        else:
            self._impl = None

    def raw(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Unscaled flow in pixels (H, W, 2) float32 between two uint8 grayscale frames."""
        if prev.dtype != np.uint8 or nxt.dtype != np.uint8 or prev.ndim != 2 or prev.shape != nxt.shape:
            raise ValueError(f"flow needs two uint8 grayscale frames of one size, got {prev.shape} {prev.dtype} and {nxt.shape} {nxt.dtype}")
        if self._impl is None:
            return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        return self._impl.calc(prev, nxt, None)

    def pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow (H, W, 2) between two grayscale frames, clipped at +-bound and scaled to [-1, 1]."""
        flow = self.raw(prev, nxt)
        np.clip(flow, -self.bound, self.bound, out=flow)
        flow /= self.bound
        return flow

    def __call__(self, gray_frames: np.ndarray, progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Flow between consecutive frames of uint8 (T, H, W): float32 (T - 1, H, W, 2) in [-1, 1]."""
        t, h, w = gray_frames.shape
        out = np.empty((max(0, t - 1), h, w, 2), dtype=np.float32)
        for i in range(t - 1):
            out[i] = self.pair(gray_frames[i], gray_frames[i + 1])
            if progress is not None:
                progress(1)
        return out
