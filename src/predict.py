"""Turning an input (video, frame folder, GIF, .npy) into a model-ready clip, and logits into top-k rows."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.weights import RGB_RECIPE, Recipe

log = logging.getLogger(__name__)


class InputError(ValueError):
    """An input file that cannot be used, with a one-line reason naming it."""


@dataclass
class Prediction:
    """One row of a top-k answer."""

    label: str
    index: int
    prob: float
    logit: float


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


def check_writable(path: str | Path, option: str, overwrite: bool = False) -> None:
    """Raise InputError unless `path` can be written (and is new, or `overwrite`), before the work, not after."""
    path = Path(path)
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name")
    existed = path.exists()
    if existed and not overwrite:
        raise InputError(f"{option} {path}: exists; pass --overwrite to replace it")
    try:
        with open(path, "ab"):  # append mode: an existing file is left as it is
            pass
    except OSError as exc:
        raise InputError(f"{option} {path}: cannot be written ({exc.strerror or exc})") from None
    if not existed:
        path.unlink()


def check_positive(value: int | None, option: str) -> None:
    """Raise InputError unless an integer option is unset or at least 1."""
    if value is not None and value < 1:
        raise InputError(f"{option} must be 1 or more, got {value}")


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
    path = Path(path)
    channels = 2 if recipe.flow else 3
    if path.suffix.lower() == ".npy":
        return central_frames(load_npy_clip(path, channels), frames)
    from src.transforms import center_crop, resize_short_side, to_model_range
    from src.video import read_frames

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
        return to_model_range(center_crop(rgb, recipe.crop))
    if len(rgb) < 2:
        raise InputError(f"{path}: flow needs at least 2 frames, got {len(rgb)}")
    from tqdm import tqdm

    from src.flow import FlowExtractor, rgb_to_gray
    # TV-L1 takes seconds per frame pair on a CPU: show progress on anything but a short clip
    with tqdm(total=len(rgb) - 1, desc=f"{path.name}: {recipe.flow_algorithm} flow", unit="pair", leave=False,
              disable=len(rgb) < 16) as bar:
        flow = FlowExtractor(recipe.flow_algorithm)(rgb_to_gray(rgb), bar.update)
    return center_crop(flow, recipe.crop)


def clip_to_tensor(clip: np.ndarray) -> torch.Tensor:
    """(T, H, W, C) numpy clip -> (1, C, T, H, W) float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2).unsqueeze(0).float()


def top_k(logits: torch.Tensor | np.ndarray, categories: list[str], k: int = 5) -> list[Prediction]:
    """The k most probable classes of one clip's logits."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64)).flatten()
    probs = logits.softmax(0)
    order = logits.argsort(descending=True)[:k]
    return [Prediction(categories[i], int(i), float(probs[i]), float(logits[i])) for i in order]


def over_threshold(logits: torch.Tensor | np.ndarray, categories: list[str],
                   thresholds: list[float]) -> list[Prediction]:
    """Multi-label: every class whose sigmoid probability reaches its threshold, most probable first."""
    logits = torch.as_tensor(np.asarray(logits, dtype=np.float64)).flatten()
    probs = logits.sigmoid()
    order = probs.argsort(descending=True)
    return [Prediction(categories[i], int(i), float(probs[i]), float(logits[i])) for i in order
            if float(probs[i]) >= thresholds[i]]


def default_categories(num_classes: int) -> list[str]:
    """Kinetics labels for 400/600-way heads, else class_0, class_1, ..."""
    from src.paths import LABELS_DIR
    from src.weights import read_labels

    if num_classes in (400, 600):
        return read_labels(LABELS_DIR / f"kinetics{num_classes}.txt")
    return [f"class_{i}" for i in range(num_classes)]


def format_official(logits: np.ndarray, predictions: list[Prediction]) -> str:
    """DeepMind's demo output: the logit norm, then 'prob logit label' lines."""
    lines = [f"Norm of logits: {np.linalg.norm(np.asarray(logits, dtype=np.float64)):f}", "",
             "Top classes and probabilities"]
    lines += [f"{p.prob:.6g} {p.logit:.6f} {p.label}" for p in predictions]
    return "\n".join(lines)


def format_table(predictions: list[Prediction]) -> str:
    """A readable table of ranked predictions."""
    width = max([len(p.label) for p in predictions] + [5])
    rows = [f"{'rank':>4}  {'prob':>8}  {'logit':>9}  {'class':<{width}}"]
    rows += [f"{i:>4}  {p.prob:>8.4f}  {p.logit:>9.4f}  {p.label}" for i, p in enumerate(predictions, 1)]
    return "\n".join(rows)


def format_json(predictions: list[Prediction]) -> str:
    """`{"predictions": [{"label", "index", "prob", "logit"}, ...]}`."""
    return json.dumps({"predictions": [p.__dict__ for p in predictions]}, indent=2)


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


@dataclass
class Predictor:
    """The streams of a model (pretrained or fine-tuned) with their input recipes and class names."""

    models: dict[str, torch.nn.Module]
    recipes: dict[str, Recipe]
    categories: list[str]
    name: str
    path: str = ""  # which inference path runs, in words
    thresholds: list[float] | None = None  # multi-label runs: per-class probability thresholds

    def decide(self, logits: np.ndarray, k: int = 5) -> list[Prediction]:
        """Multi-label: every class over its threshold; otherwise the top k (softmax)."""
        if self.thresholds is not None:
            return over_threshold(logits, self.categories, self.thresholds)
        return top_k(logits, self.categories, k)

    def logits(self, clips: dict[str, np.ndarray], device: torch.device) -> np.ndarray:
        """Summed logits of all streams for one clip per stream (late fusion, as the official joint model)."""
        with torch.inference_mode():
            total = sum(model(clip_to_tensor(clips[s]).to(device))[0].float().cpu()
                        for s, model in self.models.items())
        return total.numpy()

    def load(self, path: str | Path, frames: int | None = None, force_resize: bool = False) -> dict[str, np.ndarray]:
        """Each stream's clip of an input, by that stream's recipe."""
        return {s: load_clip(path, self.recipes[s], frames, force_resize) for s in self.models}

    def frame_rate(self, path: str | Path) -> float:
        """Frames per second of the clips `load` makes of an input (for timelines in seconds)."""
        recipe = next(iter(self.recipes.values()))
        fps = recipe.fps
        if not fps and Path(path).suffix.lower() != ".npy":  # the source's own rate was kept
            from src.video import probe
            fps = probe(Path(path)).fps
        return (fps or 25.0) / recipe.sample_rate


def accelerate(models: dict[str, torch.nn.Module], device: torch.device, precision: str | None,
               compile: bool = False) -> tuple[dict[str, torch.nn.Module], str]:
    """The fast inference path of each stream (None: the plain eager model), and a line saying which ran."""
    if precision is None:
        return {s: m.to(device).eval() for s, m in models.items()}, "plain float32 model (eager)"
    from src.inference import optimize_for_inference

    fast = {s: optimize_for_inference(m, device, precision, compile) for s, m in models.items()}
    return fast, str(next(iter(fast.values())).path)


def predictor_from_weights(weights: str, device: torch.device, precision: str | None = "auto",
                           compile: bool = False) -> Predictor:
    """A Predictor of pretrained (registry or file) weights; `precision` as in src.inference (None: plain)."""
    from src.weights import FLOW_RECIPE, i3d

    model = i3d(weights=weights).eval()
    stream = "flow" if model.in_channels == 2 else "rgb"
    name = model.weights.name if model.weights else str(weights)
    models, path = accelerate({stream: model}, device, precision, compile)
    return Predictor(models, {stream: FLOW_RECIPE if stream == "flow" else RGB_RECIPE},
                     model.categories or default_categories(model.num_classes), name, path)


def predictor_from_run(run_dir: str | Path, device: torch.device, precision: str | None = "auto",
                       compile: bool = False) -> Predictor:
    """A Predictor of a fine-tuned train.py run: its streams, classes and training recipe."""
    from dataclasses import replace

    from src.runs import load_run, read_thresholds
    from src.weights import flow_recipe

    cfg, models = load_run(run_dir)
    thresholds = read_thresholds(run_dir, cfg.classes) if cfg.multi_label else None
    recipes = {s: replace(flow_recipe(cfg.flow_algorithm) if s == "flow" else RGB_RECIPE, crop=cfg.crop,
                          resize_short_side=cfg.input_size or RGB_RECIPE.resize_short_side, fps=cfg.input_fps,
                          sample_rate=cfg.input_sample_rate) for s in models}
    fast, path = accelerate(dict(models.items()), device, precision, compile)
    kind = f"{cfg.modality}, multi-label" if cfg.multi_label else cfg.modality
    return Predictor(fast, recipes, cfg.classes, f"{run_dir} ({kind})", path, thresholds)


def timeline(predictor: Predictor, clips: dict[str, np.ndarray], window: int, stride: int, device: torch.device,
             fps: float = 25.0) -> list[dict]:
    """Top class of each window of `window` frames, every `stride` frames, over a long clip.

    Multi-label predictors give every class over its threshold instead: `labels` and `probs` are
    ';'-separated (empty when no class is over its threshold).
    """
    length = min(len(c) for c in clips.values())
    starts = list(range(0, max(length - window, 0) + 1, stride))
    rows = []
    for start in starts:
        part = {s: c[start:start + window] for s, c in clips.items()}
        end = min(start + window, length)
        row = {"start_frame": start, "end_frame": end, "start_s": round(start / fps, 3), "end_s": round(end / fps, 3)}
        if predictor.thresholds is not None:
            found = predictor.decide(predictor.logits(part, device))
            row.update(labels=";".join(p.label for p in found), probs=";".join(f"{p.prob:.4f}" for p in found))
        else:
            best = top_k(predictor.logits(part, device), predictor.categories, 1)[0]
            row.update(label=best.label, index=best.index, prob=best.prob, logit=best.logit)
        rows.append(row)
    return rows


class _Exported(torch.nn.Module):
    """An exported model (ONNX / TorchScript) behind the model interface: clip -> logits."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        from src.inference import run_exported
        return run_exported(self.path, clip.float().cpu())


def exported_predictor(path: str | Path, like: Predictor) -> Predictor:
    """A Predictor running an exported single-stream model with `like`'s classes and recipe."""
    if len(like.models) != 1:
        raise InputError(f"{path}: exported models are single-stream; {like.name} has {len(like.models)} streams")
    if not Path(path).exists():
        raise InputError(f"{path}: no such exported model; create one with `python export.py`")
    stream = next(iter(like.models))
    return Predictor({stream: _Exported(path)}, like.recipes, like.categories, f"{path} (exported)",
                     f"exported model {Path(path).suffix}", like.thresholds)


def load_clip_tensor(path: str | Path, frames: int | None = None) -> torch.Tensor:
    """An input as a (1, 3, T, H, W) RGB tensor by the official recipe (`load_clip`, then `clip_to_tensor`)."""
    return clip_to_tensor(load_clip(path, RGB_RECIPE, frames))
