"""Model-ready clips from a video, GIF, frame folder or .npy file, with DeepMind's RGB recipe.

Decoding and transforms are branch prep's (src/video.py, src/transforms.py); this only chains them
for the speed, export and visualisation tools.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from src.transforms import center_crop, resize_short_side, to_model_range
from src.video import read_frames


def middle(frames: np.ndarray, count: int | None) -> np.ndarray:
    """The middle `count` frames (all when None or fewer)."""
    if count is None or len(frames) <= count:
        return frames
    start = (len(frames) - count) // 2
    return frames[start:start + count]


def load_clip(path: str | Path, frames: int | None = None, fps: float = 25.0) -> torch.Tensor:
    """A (1, C, T, 224, 224) float32 clip in [-1, 1]: decode at `fps`, short side 256, centre 224, middle frames.

    GIFs and frame folders are taken as already sampled; already-224 frames are not resized; .npy files
    hold prepared (T, H, W, C) or (1, T, H, W, C) float input and are used as they are.
    """
    path = Path(path)
    if path.suffix == ".npy":
        array = np.load(path)
        array = array[0] if array.ndim == 5 else array
        x = torch.from_numpy(np.ascontiguousarray(middle(array, frames))).float()
    else:
        rgb, _ = read_frames(path, fps)
        if rgb.shape[1:3] != (224, 224):
            rgb = center_crop(resize_short_side(rgb, 256), 224)
        x = torch.from_numpy(to_model_range(np.ascontiguousarray(middle(rgb, frames))))
    return x.permute(3, 0, 1, 2).unsqueeze(0).contiguous()
