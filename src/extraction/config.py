"""What to extract and how: the FeatureConfig of a features job, its checks, and the recipe words that decide the numbers."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

from src.model import ENDPOINTS
from src.weights import RGB_RECIPE

STREAMS = ("rgb", "flow")
CROPS = (1, 5, 10)


class ExtractionError(ValueError):
    """A problem with the whole job (inputs, options, output folder), as one sentence."""


def _whole(value: object, option: str, least: int, unit: str = "") -> None:
    """Raise ExtractionError unless `value` is an integer of at least `least` (bool, float and NaN are not)."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise ExtractionError(f"{option} must be a whole number, got {value!r}")
    if value < least:
        raise ExtractionError(f"{option} must be {least} or more{unit}, got {value}")


def check_fps(fps: object, option: str = "--fps") -> None:
    """Raise ExtractionError unless `fps` is None (native), 'recipe' or a positive finite number."""
    if fps is None or fps == "recipe":
        return
    if isinstance(fps, bool) or not isinstance(fps, Real) or not (math.isfinite(fps) and fps > 0):
        raise ExtractionError(f"{option} must be a positive finite number or 'native', got {fps}")


@dataclass
class FeatureConfig:
    """What to extract and how; defaults are the official recipe, 16-frame windows every 16 frames."""

    window: int = 16
    stride: int = 16
    fps: float | None | str = "recipe"  # a rate; None: each video's native rate; "recipe": the weights' (25)
    streams: tuple[str, ...] = ("rgb",)
    concat: bool = False
    per_frame: bool = False
    pad: str = "edge"  # per-frame end padding: edge (repeat the end frame) or zero
    crops: int = 1
    endpoint: str = "Mixed_5c"
    pool: bool = True
    weights: str = "rgb_scratch"
    flow_weights: str = "flow_scratch"
    checkpoint: str | None = None
    batch: int = 8
    dtype: str = "float32"
    precision: str | None = "fp32"  # None: the plain eager model
    compile: bool = False
    device: str | None = None
    workers: int = 1  # decoding processes; 0 decodes in this process
    overwrite: bool = False
    shard: tuple[int, int] = (1, 1)
    force_resize: bool = False
    flow_algorithm: str | None = None  # None: the recipe's (TV-L1 unless a fine-tuned run says otherwise)

    def validate(self) -> None:
        """Raise ExtractionError for an impossible setting."""
        _whole(self.window, "--window", 1, " frames")
        _whole(self.stride, "--stride", 1, " frames")
        check_fps(self.fps)
        bad = [s for s in self.streams if s not in STREAMS]
        if bad or not self.streams or len(set(self.streams)) != len(self.streams):
            raise ExtractionError(f"--streams must be rgb, flow or rgb,flow, got {','.join(self.streams)}")
        if self.concat and set(self.streams) != set(STREAMS):
            raise ExtractionError("--concat joins the two streams; pass --streams rgb,flow with it")
        if self.pad not in ("edge", "zero"):
            raise ExtractionError(f"--pad must be edge or zero, got {self.pad}")
        if self.crops not in CROPS:
            raise ExtractionError(f"--crops must be 1, 5 or 10, got {self.crops}")
        if self.endpoint not in ENDPOINTS:
            raise ExtractionError(f"--endpoint {self.endpoint}: unknown; choose one of {', '.join(ENDPOINTS)}")
        _whole(self.batch, "--batch", 1)
        if self.dtype not in ("float32", "float16"):
            raise ExtractionError(f"--dtype must be float32 or float16, got {self.dtype}")
        _whole(self.workers, "--workers", 0)
        i, n = self.shard
        if not 1 <= i <= n:
            raise ExtractionError(f"--shard {i}/{n}: need 1 <= i <= n")

    def recipe_text(self) -> str:
        """The settings that decide the numbers in a feature file, as 'key=value' words (stored in the CSV)."""
        fps = "native" if self.fps is None else f"{self.fps:g}"
        if self.checkpoint:
            weights = f"checkpoint={Path(self.checkpoint).resolve()}"
        else:
            weights = " ".join(([f"weights={self.weights}"] if "rgb" in self.streams else []) +
                               ([f"flow_weights={self.flow_weights}"] if "flow" in self.streams else []))
        frames = f"per_frame={self.pad} stride=1" if self.per_frame else f"per_frame=no stride={self.stride}"
        return (f"window={self.window} {frames} fps={fps} crops={self.crops} endpoint={self.endpoint} "
                f"pool={'yes' if self.pool else 'no'} dtype={self.dtype} {weights}")


def parse_recipe(text: str) -> dict[str, str]:
    """'window=16 stride=16 ...' -> {'window': '16', ...}."""
    return dict(word.split("=", 1) for word in text.split() if "=" in word)


def recipe_option(key: str) -> str:
    """The command-line option of a recipe word ('per_frame' -> '--per-frame')."""
    return {"per_frame": "--per-frame", "flow_weights": "--flow-weights"}.get(key, f"--{key}")


def resolve_fps(cfg: FeatureConfig) -> float | None:
    """The frame rate asked for: the option, or the recipe's (25, or a fine-tuned run's input rate)."""
    if cfg.fps != "recipe":
        return cfg.fps
    if not cfg.checkpoint:
        return RGB_RECIPE.fps
    path = Path(cfg.checkpoint) / "config.json"
    try:
        fps = json.loads(path.read_text()).get("input_fps", RGB_RECIPE.fps)
    except (OSError, ValueError, AttributeError) as exc:
        raise ExtractionError(f"{path}: cannot read the run's config ({exc}); is --checkpoint a train.py run?") from None
    check_fps(fps, f"{path}: input_fps")
    return fps
