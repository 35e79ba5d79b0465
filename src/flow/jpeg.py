"""Flow stored as 8-bit JPEG images, as dense-flow tools store it, and read back as the feature extractors read it.

dense_flow (yjxiong/dense_flow, used by TSN and by the CMCS THUMOS-14 features) writes each flow component as
one grayscale image: v = 255 if f > bound, 0 if f < -bound, else cvRound(255 (f + bound) / (2 bound)) (OpenCV's
cvRound: to nearest, ties to even), JPEG-encoded by cv::imencode at OpenCV's default quality 95. The CMCS fork
of pytorch-i3d's extractor reads a pixel back as v * 2 / 255 - 1, so 0 px reads as +1/255, not 0.
Before the JPEG the error is at most half a step: bound / 255 px (0.078 px for bound 20).
"""
from __future__ import annotations

import numpy as np

from src.media.transforms import JPEG_QUALITY, jpeg_round_trip

DENSE_FLOW_BOUND = 20.0


def quantise_flow(raw: np.ndarray, bound: float = DENSE_FLOW_BOUND) -> np.ndarray:
    """Flow in pixels (..., 2) -> uint8 images as dense_flow makes them (clipped at +-bound, ties to even)."""
    f = np.asarray(raw, dtype=np.float64)
    v = np.rint(255.0 * (f + bound) / (2.0 * bound))  # in range except past the bound, which the clip sets
    return np.clip(v, 0, 255).astype(np.uint8)


def dequantise_flow(images: np.ndarray) -> np.ndarray:
    """uint8 flow images -> float32 model input in [-1, 1], as the CMCS extractor reads them (v * 2 / 255 - 1)."""
    return (images.astype(np.float64) * 2.0 / 255.0 - 1.0).astype(np.float32)


def flow_through_jpeg(raw: np.ndarray, bound: float = DENSE_FLOW_BOUND, quality: int = JPEG_QUALITY) -> np.ndarray:
    """Raw flow (T, H, W, 2) in pixels -> what the model reads from dense_flow's JPEG files: float32 in [-1, 1]."""
    images = quantise_flow(raw, bound)
    if len(images):  # each component is its own grayscale JPEG file (flow_x, flow_y)
        images = np.stack([jpeg_round_trip(np.ascontiguousarray(images[..., c]), quality) for c in range(2)], axis=-1)
    return dequantise_flow(images)
