"""Turning an input (video, frame folder, GIF, .npy) into a model-ready clip by a checkpoint's input recipe."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from src.weights import RGB_RECIPE, Recipe

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input file that cannot be used, with a one-line reason naming it."""


def load_npy_clip(path: Path, channels: int) -> np.ndarray:
    """A .npy clip already in model range, (T, H, W, C) or (1, T, H, W, C), checked and returned as float32."""
    try:
        clip = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    if clip.dtype.kind not in "fiu":  # complex, bool, strings: no meaningful float clip (NumPy would only warn)
        raise InputError(f"{path}: dtype {clip.dtype}, expected real numbers (float32 in [-1, 1])")
    if clip.ndim == 5 and clip.shape[0] == 1:
        clip = clip[0]
    if clip.ndim != 4 or clip.shape[-1] != channels or min(clip.shape) == 0:
        raise InputError(f"{path}: shape {clip.shape}, expected (T, H, W, {channels}) or (1, T, H, W, {channels})")
    clip = clip.astype(np.float32, copy=False)
    low, high = float(clip.min()), float(clip.max())
    if low < -1.001 or high > 1.001 or not np.isfinite(clip).all():
        raise InputError(f"{path}: values span [{low:g}, {high:g}], expected model range [-1, 1] "
                         "(scale RGB pixels with x / 255 * 2 - 1)")
    return clip


def central_frames(clip: np.ndarray, frames: int | None) -> np.ndarray:
    """The `frames` central frames of a (T, ...) clip (all of it when shorter or None)."""
    if frames is None or frames >= len(clip):
        return clip
    start = (len(clip) - frames) // 2
    return clip[start:start + frames]


def load_clip(path: str | Path, recipe: Recipe = RGB_RECIPE, frames: int | None = None,
              force_resize: bool = False) -> np.ndarray:
    """A float32 (T, H, W, C) clip in [-1, 1] by the recipe: RGB, or optical flow when `recipe.flow` is set.

    Frames that are already crop x crop (such as the official demo GIF) are taken as pre-cropped
    unless `force_resize`; everything else is resized to the recipe's short side and centre-cropped.
    """
    return load_crops(path, recipe, [CENTRE], frames, force_resize)[0]


CENTRE = (0.5, 0.5)  # a crop corner (top, left) as fractions of the slack
TEST_CROPS = {1: [CENTRE], 3: [(0.0, 0.0), CENTRE, (1.0, 1.0)]}  # multi-crop testing: --crops 1 or 3 along the frame


def crop_at(frames: np.ndarray, size: int, corner: tuple[float, float]) -> np.ndarray:
    """The size x size crop of (T, H, W, C) frames at `corner`; CENTRE is transforms.center_crop's crop."""
    h, w = frames.shape[1:3]
    if h < size or w < size:
        raise InputError(f"cannot crop {size}x{size} from {w}x{h} frames; resize to a short side of at least {size}")
    top, left = int(corner[0] * (h - size)), int(corner[1] * (w - size))
    return frames[:, top:top + size, left:left + size]


def load_crops(path: str | Path, recipe: Recipe, corners: list[tuple[float, float]], frames: int | None = None,
               force_resize: bool = False) -> list[np.ndarray]:
    """`load_clip`'s clip at each crop corner (one decode; RGB pixels are scaled after cropping, to save memory).

    A .npy clip is used as it is for every corner (it is already a model input).
    """
    path = Path(path)
    channels = 2 if recipe.flow else 3
    if path.suffix.lower() == ".npy":
        return [central_frames(load_npy_clip(path, channels), frames)] * len(corners)
    from src.media import read_frames, resize_short_side, to_model_range

    rgb, info = read_frames(path, fps=recipe.fps)
    rgb = rgb[::recipe.sample_rate]  # as pre-process.py --sample-rate: flow is then between kept frames
    for warning in info.warnings:
        log.warning(warning if str(path) in warning else f"{path}: {warning}")
    if len(rgb) == 0:
        raise InputError(f"{path}: no frames could be decoded")
    if recipe.flow:
        # Flow needs neighbours, so take one frame more than asked before computing it.
        rgb = central_frames(rgb, None if frames is None else frames + 1)
    else:
        rgb = central_frames(rgb, frames)
    if force_resize or rgb.shape[1:3] != (recipe.crop, recipe.crop):
        rgb = resize_short_side(rgb, recipe.resize_short_side)
    if not recipe.flow:
        return [to_model_range(crop_at(rgb, recipe.crop, corner)) for corner in corners]
    if len(rgb) < 2:
        raise InputError(f"{path}: flow needs at least 2 frames, got {len(rgb)}")
    from tqdm import tqdm

    from src.flow import FlowExtractor, rgb_to_gray
    # TV-L1 takes seconds per frame pair on a CPU: show progress on anything but a short clip
    with tqdm(total=len(rgb) - 1, desc=f"{path.name}: {recipe.flow_algorithm} flow", unit="pair", leave=False,
              disable=len(rgb) < 16) as bar:
        flow = FlowExtractor(recipe.flow_algorithm)(rgb_to_gray(rgb), bar.update)
    return [crop_at(flow, recipe.crop, corner) for corner in corners]


def clip_to_tensor(clip: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) numpy clip -> (1, C, T, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).unsqueeze(0).float()


def load_official_sample(path: str | Path, modality: str) -> np.ndarray:
    """DeepMind's cricket sample as a (T, H, W, C) clip: the official .npy, or the GIF made from it.

    The GIFs hold the RGB input as (x + 1) / 2 and the flow input as (x + 0.5) with a zero third
    channel, so they decode back to the model input up to palette loss (flow beyond +-0.5 is clipped).
    """
    path = Path(path)
    channels = 3 if modality == "rgb" else 2
    if path.suffix.lower() == ".npy":
        return load_npy_clip(path, channels)
    from PIL import Image, ImageSequence

    try:
        with Image.open(path) as gif:
            pixels = np.stack([np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]).astype(np.float32)
    except OSError as exc:
        raise InputError(f"{path}: not a readable GIF ({exc})") from None
    return pixels / 255 * 2 - 1 if modality == "rgb" else pixels[..., :2] / 255 - 0.5


def load_clip_tensor(path: str | Path, frames: int | None = None) -> torch.Tensor:
    """An input as a (1, 3, T, H, W) RGB tensor by the official recipe (`load_clip`, then `clip_to_tensor`)."""
    return clip_to_tensor(load_clip(path, RGB_RECIPE, frames))
