"""The other protocols' preprocessing: VideoGPT's (short side to 224, rounded up, half-pixel bilinear, centre crop),
DIGAN's (centre square crop, half-pixel bilinear to 128, truncated to uint8, then VideoGPT's) and TATS's (every frame
squashed to 224x224, half-pixel bilinear, no crop). Each returns (T, 224, 224, 3) float32 in [0, 255]; the TF
protocol's own resize is src/fvd/resize.py."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from src.fvd.protocol import SIZE
from src.fvd.resize import resize_bilinear_tf1

RESIZES = ("tf1", "videogpt", "digan", "squash")


def half_pixel_resize(frames: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """(T, H, W, 3) -> (T, size[0], size[1], 3) float32, half-pixel bilinear without antialiasing (torch's)."""
    x = frames.to(torch.float32).permute(0, 3, 1, 2)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)


def centre_crop(frames: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The centre (height, width) of (T, H, W, 3) frames (the extra pixel, if odd, on the bottom/right)."""
    top, left = (frames.shape[1] - height) // 2, (frames.shape[2] - width) // 2
    return frames[:, top:top + height, left:left + width]


def resize_videogpt(frames: torch.Tensor) -> torch.Tensor:
    """VideoGPT: the short side to 224 (the long side rounded up), half-pixel bilinear, then the centre 224x224."""
    h, w = frames.shape[1], frames.shape[2]
    scale = SIZE / min(h, w)
    size = (SIZE, math.ceil(w * scale)) if h < w else (math.ceil(h * scale), SIZE)
    return centre_crop(half_pixel_resize(frames, size), SIZE, SIZE)


def resize_digan(frames: torch.Tensor) -> torch.Tensor:
    """DIGAN: the centre square, half-pixel bilinear to 128x128, truncated to uint8, then VideoGPT's resize."""
    side = min(frames.shape[1], frames.shape[2])
    small = half_pixel_resize(centre_crop(frames, side, side), (128, 128))
    return resize_videogpt(small.clamp(0, 255).to(torch.uint8))


def resize_squash(frames: torch.Tensor) -> torch.Tensor:
    """TATS: every frame to 224x224 whatever its aspect ratio, half-pixel bilinear, no crop."""
    return half_pixel_resize(frames, (SIZE, SIZE))


def resize_for(name: str, frames: torch.Tensor) -> torch.Tensor:
    """(T, H, W, 3) frames in [0, 255] -> (T, 224, 224, 3) float32 by the resize called `name`."""
    if name == "tf1":
        return resize_bilinear_tf1(frames)
    if name == "videogpt":
        return resize_videogpt(frames)
    if name == "digan":
        return resize_digan(frames)
    if name == "squash":
        return resize_squash(frames)
    raise ValueError(f"unknown resize {name!r} (known: {', '.join(RESIZES)})")
