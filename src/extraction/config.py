"""What to extract and how: the FeatureConfig of a features job, its checks, and the recipe words that decide the numbers."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from numbers import Integral, Real
from pathlib import Path

from src.media.transforms import RESIZE_FILTERS
from src.model import ENDPOINTS
from src.weights import RGB_RECIPE

STREAMS = ("rgb", "flow")
CROPS = (1, 5, 10)
POOLS = ("mean", "head", "none")  # mean over (t, h, w); the classifier head's (2, 7, 7) pool then mean; none
PADS = ("edge", "zero", "still")  # per-frame ends: repeat the end frame; zeros; the video standing still
# T frames, T - 1 flows + the last repeated; dense_flow's frames 2..T with the flow into each; or frames 1..T-1 with
# the flow out of each (video_features: a stack of W frames reads W + 1)
ALIGNS = ("repeat-last", "drop-first", "drop-last")
CROP_ORDERS = ("centre-first", "cmcs", "torchvision")
FLIP_FLOWS = ("negate", "keep")
SHORT_VIDEOS = ("one-window", "reject", "drop")
TAILS = ("drop", "repeat-last", "loop")  # the last, incomplete window: dropped, or completed by the last or first frames
TIME_FILES = ("seconds", "video-features")  # NAME_times.npy; or video_features' NAME_fps.npy and NAME_timestamps_ms.npy


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
    pad: str = "edge"  # per-frame end padding: edge (repeat the end frame), zero, or still (see PADS)
    crops: int = 1
    endpoint: str = "Mixed_5c"
    pool: str = "mean"
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
    preset: str = "i3d"  # the named convention the options came from (src.extraction.presets)
    resize_to: tuple[int, int] | None = None  # (width, height): resize without keeping the aspect, then crop
    rgb_jpeg: bool = False  # RGB frames through OpenCV's JPEG at quality 95 (stored frames, as dense_flow's)
    flow_jpeg: bool = False  # flow quantised and stored as JPEG images, as dense_flow does, then read back
    align: str = "repeat-last"
    crop_order: str = "centre-first"
    flip_flow: str = "negate"  # flipped crops' x flow: negated (mirrored motion) or kept as the CMCS extractor did
    short_videos: str = "one-window"  # a video of at most --window frames: one window of all of it, or refused
    # (reject: at most --window frames; drop: fewer)
    tail: str = "drop"  # the last window when frames run out: dropped, or completed (see TAILS)
    resize_filter: str = "bilinear"
    crops_first: bool = False  # (crops, T', C) instead of (T', crops, C)
    per_crop_files: bool = False  # one (T', C) file per crop, NAME__k.npy (DeepMIL's naming)
    time_files: str = "seconds"
    flow_device: str | None = None  # where TV-L1 runs (None: --device); a GPU's flow is batched across videos here
    flow_batch: int = 0  # >0: flow in this process in calls of that many pairs across videos, on any device

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
        for option, value, choices in (("--pad", self.pad, PADS), ("--pool", self.pool, POOLS),
                                       ("--align", self.align, ALIGNS), ("--crop-order", self.crop_order, CROP_ORDERS),
                                       ("--flip-flow", self.flip_flow, FLIP_FLOWS),
                                       ("--short-videos", self.short_videos, SHORT_VIDEOS),
                                       ("--tail", self.tail, TAILS),
                                       ("--resize-filter", self.resize_filter, RESIZE_FILTERS),
                                       ("--time-files", self.time_files, TIME_FILES)):
            if value not in choices:
                raise ExtractionError(f"{option} must be {' or '.join(choices)}, got {value!r}")
        if self.crops not in CROPS:
            raise ExtractionError(f"--crops must be 1, 5 or 10, got {self.crops}")
        layout = [option for option, on in (("--crops-first", self.crops_first),
                                            ("--per-crop-files", self.per_crop_files)) if on]
        if layout and self.crops == 1:
            raise ExtractionError(f"{layout[0]} lays out the crop axis; pass --crops 5 or 10 with it")
        if self.crops_first and self.per_crop_files:
            raise ExtractionError("--crops-first and --per-crop-files are two layouts of the crops; choose one")
        if self.endpoint not in ENDPOINTS:
            raise ExtractionError(f"--endpoint {self.endpoint}: unknown; choose one of {', '.join(ENDPOINTS)}")
        if self.pool == "head" and self.endpoint != "Mixed_5c":
            raise ExtractionError(f"--pool head is the classifier head's pooling of Mixed_5c; use --pool mean "
                                  f"with --endpoint {self.endpoint}")
        if self.resize_to is not None:
            if len(self.resize_to) != 2:
                raise ExtractionError(f"--resize-to must be WIDTHxHEIGHT, got {self.resize_to!r}")
            for side in self.resize_to:
                _whole(side, "--resize-to", RGB_RECIPE.crop, f" pixels a side, to crop {RGB_RECIPE.crop} from")
        _whole(self.batch, "--batch", 1)
        if self.dtype not in ("float32", "float16"):
            raise ExtractionError(f"--dtype must be float32 or float16, got {self.dtype}")
        _whole(self.workers, "--workers", 0)
        _whole(self.flow_batch, "--flow-batch", 0)
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
        frames = (f"per_frame={self.pad} stride=1" if self.per_frame
                  else f"per_frame=no stride={self.stride} tail={self.tail}")
        resize = "x".join(map(str, self.resize_to)) if self.resize_to else f"short-side-{RGB_RECIPE.resize_short_side}"
        crops = f"crops={self.crops}" + (f" crop_order={self.crop_order}" if self.crops > 1 else "")
        if self.crops > 1:
            crops += " crop_layout=" + ("per-crop-files" if self.per_crop_files else
                                        "crops-first" if self.crops_first else "time-first")
        if self.crops == 10 and "flow" in self.streams:
            crops += f" flip_flow={self.flip_flow}"
        jpeg = " ".join(f"{s}_jpeg={'yes' if getattr(self, f'{s}_jpeg') else 'no'}" for s in self.streams)
        return (f"preset={self.preset} window={self.window} {frames} fps={fps} resize={resize} "
                f"resize_filter={self.resize_filter} {crops} time_files={self.time_files} "
                f"endpoint={self.endpoint} pool={self.pool} align={self.align} short_videos={self.short_videos} "
                f"{jpeg} dtype={self.dtype} {weights}")


LEGACY_WORDS = {("pool", "yes"): "mean", ("pool", "no"): "none"}  # recipes written before --pool had names


def parse_recipe(text: str) -> dict[str, str]:
    """'window=16 stride=16 ...' -> {'window': '16', ...} (older spellings of a value read as today's)."""
    words = dict(word.split("=", 1) for word in text.split() if "=" in word)
    return {k: LEGACY_WORDS.get((k, v), v) for k, v in words.items()}


def recipe_option(key: str) -> str:
    """The command-line option of a recipe word ('per_frame' -> '--per-frame', 'resize' -> '--resize-to')."""
    return {"resize": "--resize-to", "crop_layout": "--crops-first / --per-crop-files"}.get(
        key, "--" + key.replace("_", "-"))


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
