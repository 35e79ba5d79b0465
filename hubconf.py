"""torch.hub entry points, as torchvision's video models have them.

    model = torch.hub.load("path/to/this/repo", "i3d", source="local", weights="rgb_scratch")
    model = torch.hub.load("path/to/this/repo", "i3d", source="local", weights="rgb_scratch", num_classes=5)

Weights are fetched, verified and cached as by `src.weights.i3d` (model/ or $I3D_MODEL_DIR).
"""
from __future__ import annotations

from pathlib import Path

import torch

from src.weights import CHECKPOINTS
from src.weights import i3d as _build

dependencies = ["torch", "numpy", "safetensors", "tqdm"]


def i3d(weights: str | Path | None = None, num_classes: int | None = None, in_channels: int | None = None,
        dropout: float = 0.5, progress: bool = True) -> torch.nn.Module:
    """I3D (Carreira & Zisserman 2017); `weights` is a registry name (e.g. "rgb_scratch"), a weights file, or None.

    `num_classes` replaces the classifier, `in_channels=2` makes a flow stream from RGB weights; the model
    has `.categories` (class names, for pretrained weights) and `.weights` (the registry record). `progress`
    is accepted as torchvision's builders accept it; downloads always show a progress bar.
    """
    return _build(weights, num_classes=num_classes, in_channels=in_channels, dropout=dropout)


i3d.__doc__ = (i3d.__doc__ or "") + "\n\n    Registry names: " + ", ".join(CHECKPOINTS) + "."
