"""A model as its streams (RGB and/or flow), each with the input recipe it expects, and its class names."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch import nn

from src.weights.registry import FLOW_RECIPE, RGB_RECIPE, Recipe, default_categories, i3d

STREAM_CHANNELS = {"rgb": 3, "flow": 2}


@dataclass
class Streams:
    """Plain (eval-mode) models by stream, each stream's input recipe, the class names and a name to print."""

    models: dict[str, nn.Module]
    recipes: dict[str, Recipe]
    categories: list[str]
    name: str
    thresholds: list[float] | None = None  # multi-label runs: per-class probability thresholds


def pretrained_streams(weights: str | Path | dict[str, str | Path]) -> Streams:
    """Pretrained streams: one checkpoint (its stream is its modality), or {stream: checkpoint}.

    ValueError (naming the checkpoint) when a checkpoint of {stream: checkpoint} is of the other modality.
    """
    named = weights if isinstance(weights, dict) else {None: weights}
    models, recipes, names, categories = {}, {}, [], None
    for stream, source in named.items():
        model = i3d(weights=source).eval()
        kind = "flow" if model.in_channels == 2 else "rgb"
        if stream is not None and kind != stream:
            raise ValueError(f"{source}: a {kind} checkpoint ({model.in_channels} input channels); "
                             f"the {stream} stream needs {STREAM_CHANNELS[stream]}")
        models[kind] = model
        recipes[kind] = FLOW_RECIPE if kind == "flow" else RGB_RECIPE
        names.append(model.weights.name if model.weights else str(source))
        categories = categories or model.categories or default_categories(model.num_classes)
    return Streams(models, recipes, categories, "+".join(names))
