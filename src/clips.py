"""Model-ready clips from a video, GIF or .npy file, with DeepMind's RGB recipe.

A stop-gap until branch `prep` (src/video.py, src/transforms.py) is merged: decoding here is the
minimum the speed, export and visualisation tools need (OpenCV for videos, PIL for GIFs).
"""
from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image, ImageSequence


def read_rgb_frames(path: str | Path, fps: float = 25.0) -> np.ndarray:
    """All frames of a GIF, or of a video resampled to `fps` by timestamp, as uint8 RGB (T, H, W, 3)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix.lower() == ".gif":
        with Image.open(path) as gif:
            return np.stack([np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)])
    capture = cv2.VideoCapture(str(path))
    source_fps = capture.get(cv2.CAP_PROP_FPS) or fps
    frames = []
    while True:
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"{path}: OpenCV decoded no frames; is it a video file?")
    duration = len(frames) / source_fps
    picks = [min(int(k * source_fps / fps), len(frames) - 1) for k in range(int(round(duration * fps)))]
    return np.stack([frames[i] for i in picks])


def prepare_rgb(frames: np.ndarray, short_side: int = 256, crop: int = 224) -> np.ndarray:
    """Resize the short side (bilinear) and centre-crop; skipped for frames already crop x crop."""
    t, h, w, _ = frames.shape
    if (h, w) != (crop, crop):
        scale = short_side / min(h, w)
        size = (max(crop, round(w * scale)), max(crop, round(h * scale)))
        frames = np.stack([cv2.resize(f, size, interpolation=cv2.INTER_LINEAR) for f in frames])
        h, w = frames.shape[1:3]
        top, left = (h - crop) // 2, (w - crop) // 2
        frames = frames[:, top:top + crop, left:left + crop]
    return frames


def middle(frames: np.ndarray, count: int | None) -> np.ndarray:
    """The middle `count` frames (all when None or fewer)."""
    if count is None or len(frames) <= count:
        return frames
    start = (len(frames) - count) // 2
    return frames[start:start + count]


def load_clip(path: str | Path, frames: int | None = None) -> torch.Tensor:
    """A (1, 3, T, 224, 224) float32 clip in [-1, 1]; .npy files are taken as already-prepared (T,H,W,C) input."""
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path)
        array = array[0] if array.ndim == 5 else array
        x = torch.from_numpy(np.ascontiguousarray(middle(array, frames))).float()
    else:
        rgb = middle(prepare_rgb(read_rgb_frames(path)), frames)
        x = torch.from_numpy(np.ascontiguousarray(rgb)).float() / 255 * 2 - 1
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()
