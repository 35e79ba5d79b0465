"""TF1's `resize_bilinear` (align_corners=False, half_pixel_centers=False), as the FVD reference resizes, in PyTorch.

Output pixel i reads source position x = i * (in / out), computed in float32 as TensorFlow does:
no half-pixel offset, no antialiasing when shrinking, the right/bottom neighbour clamped to the
last pixel. The blend is TensorFlow's order of operations, top = tl + (tr - tl) * dx, bottom likewise,
out = top + (bottom - top) * dy, in float32, and the result stays float (never rounded to uint8).
Half-pixel bilinear (torch's F.interpolate, OpenCV, TF2's tf.image.resize) samples (i + 0.5) * in/out - 0.5
instead: a different image, and a different FVD.
"""
from __future__ import annotations

import numpy as np
import torch

from src.fvd.protocol import SIZE


def source_positions(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(lower index, upper index, float32 weight of the upper) for each output position along one axis."""
    scale = np.float32(in_size) / np.float32(out_size)
    position = np.arange(out_size, dtype=np.float32) * scale
    floor = np.floor(position)
    lower = np.maximum(floor.astype(np.int64), 0)
    upper = np.minimum(np.ceil(position).astype(np.int64), in_size - 1)
    return lower, upper, (position - floor).astype(np.float32)


def resize_bilinear_tf1(frames: torch.Tensor, size: tuple[int, int] = (SIZE, SIZE)) -> torch.Tensor:
    """(..., H, W, C) frames of any real dtype -> (..., size[0], size[1], C) float32, as TF1's resize_bilinear."""
    if frames.dim() < 3:
        raise ValueError(f"expected (..., H, W, C) frames, got shape {tuple(frames.shape)}")
    in_h, in_w = frames.shape[-3], frames.shape[-2]
    if (in_h, in_w) == tuple(size):
        return frames.to(torch.float32)  # scale 1: every weight is 0, the frame itself
    device = frames.device
    y0, y1, dy = (torch.from_numpy(a).to(device) for a in source_positions(in_h, size[0]))
    x0, x1, dx = (torch.from_numpy(a).to(device) for a in source_positions(in_w, size[1]))
    dy, dx = dy.view(-1, 1, 1), dx.view(-1, 1)
    # The neighbours are gathered before the float32 conversion (exact either way), and the blend runs in place:
    # IEEE addition and multiplication commute, so (tr - tl) * dx + tl is tl + (tr - tl) * dx bit for bit.
    top_rows, bottom_rows = frames.index_select(-3, y0), frames.index_select(-3, y1)
    top_left = top_rows.index_select(-2, x0).to(torch.float32)
    top = top_rows.index_select(-2, x1).to(torch.float32).sub_(top_left).mul_(dx).add_(top_left)
    bottom_left = bottom_rows.index_select(-2, x0).to(torch.float32)
    bottom = bottom_rows.index_select(-2, x1).to(torch.float32).sub_(bottom_left).mul_(dx).add_(bottom_left)
    return bottom.sub_(top).mul_(dy).add_(top)


def to_network_input(clip: torch.Tensor) -> torch.Tensor:
    """One (T, H, W, 3) clip in [0, 255] -> (3, T, 224, 224) float32 in [-1, 1]: resized, then 2 * x / 255 - 1.

    The result is a channels-last view of the resized frames (the fast path's own memory layout).
    """
    resized = resize_bilinear_tf1(clip)
    return (2.0 * resized).div_(255.0).sub_(1.0).permute(3, 0, 1, 2)  # 2.0 * resized: a new tensor, never `clip`
