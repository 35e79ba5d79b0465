"""Pictures of what I3D learned and looks at, as animated GIFs over time.

- first-layer filters: the 64 7x7x7 kernels, one GIF frame per kernel time step;
- activations: the input beside a grid of one endpoint's channels, frame by frame;
- saliency: Grad-CAM of a class at an endpoint, as a heat map over the input.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib import colormaps
from PIL import Image

from src.model import ENDPOINTS, I3D


def save_gif(frames: list[np.ndarray], out: str | Path, fps: float = 8.0) -> Path:
    """Write uint8 RGB frames (H, W, 3) as a looping GIF."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    images = [Image.fromarray(f) for f in frames]
    images[0].save(out, save_all=True, append_images=images[1:], duration=round(1000 / fps), loop=0,
                   optimize=True)
    return out


def to_display(clip: torch.Tensor) -> np.ndarray:
    """A (1, C, T, H, W) clip in [-1, 1] as uint8 RGB (T, H, W, 3); 2-channel flow shows x as red, y as green."""
    x = clip[0].detach().float().clamp(-1, 1).add(1).div(2)
    if x.shape[0] == 2:
        x = torch.cat([x, torch.full_like(x[:1], 0.5)])
    elif x.shape[0] != 3:
        raise ValueError(f"cannot display a clip with {x.shape[0]} channels")
    return (x.permute(1, 2, 3, 0).numpy() * 255).round().astype(np.uint8)


def _grid(tiles: np.ndarray, columns: int, border: int = 2, fill: int = 255) -> np.ndarray:
    """Tile (K, h, w, 3) uint8 images into a grid with borders."""
    k, h, w, _ = tiles.shape
    rows = math.ceil(k / columns)
    grid = np.full((rows * (h + border) + border, columns * (w + border) + border, 3), fill, np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        grid[border + r * (h + border):border + r * (h + border) + h,
             border + c * (w + border):border + c * (w + border) + w] = tile
    return grid


def _resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize uint8 (H, W, 3) to (height, width)."""
    return np.asarray(Image.fromarray(image).resize((size[1], size[0]),
                                                    Image.NEAREST if nearest else Image.BILINEAR))


def filter_frames(model: I3D, scale: int = 8) -> list[np.ndarray]:
    """The first convolution's filters as 7 grid images (one per kernel time step), each filter scaled to [0, 255]."""
    w = model.conv3d_1a_7x7.conv.weight.detach().float().cpu()  # (64, C, 7, 7, 7)
    flow = w.shape[1] == 2
    if flow:
        w = torch.cat([w, torch.zeros_like(w[:, :1])], 1)  # flow: x -> red, y -> green
    elif w.shape[1] != 3:
        raise ValueError(f"cannot show {w.shape[1]}-channel filters as colours")
    low = w.flatten(1).min(1).values.view(-1, 1, 1, 1, 1)
    high = w.flatten(1).max(1).values.view(-1, 1, 1, 1, 1)
    w = ((w - low) / (high - low).clamp_min(1e-12) * 255).round().byte()
    if flow:
        w[:, 2] = 0
    frames = []
    for t in range(w.shape[2]):
        tiles = w[:, :, t].permute(0, 2, 3, 1).numpy()  # (64, 7, 7, 3)
        tiles = np.stack([_resize(tile, (7 * scale, 7 * scale), nearest=True) for tile in tiles])
        frames.append(_grid(tiles, columns=math.ceil(math.sqrt(len(tiles)))))
    return frames


def _colormap(values: np.ndarray, name: str = "viridis") -> np.ndarray:
    """Map [0, 1] floats to uint8 RGB."""
    return (colormaps[name](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def activation_frames(model: I3D, clip: torch.Tensor, endpoint: str, channels: int = 16,
                      size: int = 160) -> list[np.ndarray]:
    """Per input frame: the frame beside a grid of the `channels` most active channels at `endpoint`."""
    if endpoint not in ENDPOINTS:
        raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}")
    with torch.no_grad():
        features = model.eval().forward_features(clip, endpoint)[0].float()  # (C, T', H', W')
    order = features.mean(dim=(1, 2, 3)).argsort(descending=True)[:channels]
    chosen = features[order]
    low = chosen.flatten(1).min(1).values.view(-1, 1, 1, 1)
    high = chosen.flatten(1).max(1).values.view(-1, 1, 1, 1)
    chosen = ((chosen - low) / (high - low).clamp_min(1e-12)).numpy()
    video = to_display(clip)
    columns = math.ceil(math.sqrt(len(chosen)))
    tile = max(8, size // columns - 2)
    frames = []
    for t, image in enumerate(video):
        step = min(t * chosen.shape[1] // len(video), chosen.shape[1] - 1)
        tiles = np.stack([_resize(_colormap(c[step]), (tile, tile), nearest=True) for c in chosen])
        grid = _grid(tiles, columns, fill=0)
        panel = _resize(image, (grid.shape[0], grid.shape[0]))
        frames.append(np.concatenate([panel, np.zeros((grid.shape[0], 4, 3), np.uint8), grid], axis=1))
    return frames


def _forward_from(model: I3D, features: torch.Tensor, endpoint: str) -> torch.Tensor:
    """Logits from the features at `endpoint` (the rest of the network, then the head)."""
    names = [n for n, _ in model.named_children()]
    start = names.index(endpoint[0].lower() + endpoint[1:]) + 1
    h = features
    for name in names[start:names.index("mixed_5c") + 1]:
        h = getattr(model, name)(h)
    return model.forward_head(h)


def grad_cam(model: I3D, clip: torch.Tensor, target: int | None = None,
             endpoint: str = "Mixed_4f") -> tuple[torch.Tensor, int, torch.Tensor]:
    """Grad-CAM over time and space: (T, H, W) map in [0, 1] upsampled to the clip, the class, the logits."""
    model.eval()
    with torch.no_grad():
        features = model.forward_features(clip, endpoint)
    features.requires_grad_(True)
    logits = _forward_from(model, features, endpoint)
    target = int(logits[0].argmax()) if target is None else target
    (grad,) = torch.autograd.grad(logits[0, target], features)
    weights = grad.mean(dim=(2, 3, 4), keepdim=True)  # one weight per channel
    cam = F.relu((weights * features).sum(1, keepdim=True)).detach()
    cam = F.interpolate(cam, size=clip.shape[2:], mode="trilinear", align_corners=False)[0, 0]
    cam = cam / cam.max().clamp_min(1e-12)
    return cam, target, logits.detach()[0]


def saliency_frames(model: I3D, clip: torch.Tensor, target: int | None = None, endpoint: str = "Mixed_4f",
                    size: int = 160, alpha: float = 0.5) -> tuple[list[np.ndarray], int, torch.Tensor]:
    """Frames of the input beside the input with the class's Grad-CAM heat map blended in."""
    cam, target, logits = grad_cam(model, clip, target, endpoint)
    video = to_display(clip)
    heat = _colormap(cam.numpy(), "jet")
    frames = []
    for image, h in zip(video, heat):
        blend = (image.astype(np.float32) * (1 - alpha) + h.astype(np.float32) * alpha).round().astype(np.uint8)
        left, right = _resize(image, (size, size)), _resize(blend, (size, size))
        frames.append(np.concatenate([left, np.zeros((size, 4, 3), np.uint8), right], axis=1))
    return frames, target, logits


def resolve_class(label: str | None, categories: list[str] | None) -> int | None:
    """A class index from a name (exact, then case-insensitive substring) or a number; None keeps the prediction."""
    if label is None:
        return None
    if label.isdigit():
        return int(label)
    if not categories:
        raise ValueError(f"class {label!r} given by name but the model has no class names; pass its index")
    if label in categories:
        return categories.index(label)
    matches = [i for i, c in enumerate(categories) if label.lower() in c.lower()]
    if len(matches) != 1:
        raise ValueError(f"class {label!r} matches {len(matches)} class names; give the exact name or index")
    return matches[0]
