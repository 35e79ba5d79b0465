"""Predictions of a model on whole clips or a timeline of windows, and their formats (table, JSON, DeepMind's)."""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from src.clips import InputError, clip_to_tensor, load_clip
from src.inference import ExportedModel, accelerate
from src.training.runs import run_streams
from src.weights import Recipe, Streams, pretrained_streams


@dataclass
class Prediction:
    """One row of a top-k answer."""

    label: str
    index: int
    prob: float
    logit: float


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
            from src.media import probe
            fps = probe(Path(path)).fps
        return (fps or 25.0) / recipe.sample_rate


def make_predictor(streams: Streams, device: torch.device, precision: str | None = "auto",
                   compile: bool = False) -> Predictor:
    """A Predictor running `streams` on `device` by the fast path of `precision` (src.inference; None: plain)."""
    models, path = accelerate(streams.models, device, precision, compile)
    return Predictor(models, streams.recipes, streams.categories, streams.name, path, streams.thresholds)


def predictor_from_weights(weights: str, device: torch.device, precision: str | None = "auto",
                           compile: bool = False) -> Predictor:
    """A Predictor of pretrained (registry or file) weights; its stream is the checkpoint's modality."""
    return make_predictor(pretrained_streams(weights), device, precision, compile)


def predictor_from_run(run_dir: str | Path, device: torch.device, precision: str | None = "auto",
                       compile: bool = False) -> Predictor:
    """A Predictor of a fine-tuned train.py run: its streams, classes and training recipe."""
    return make_predictor(run_streams(run_dir), device, precision, compile)


def timeline(predictor: Predictor, clips: dict[str, np.ndarray], window: int, stride: int, device: torch.device,
             fps: float = 25.0, probabilities: list[np.ndarray] | None = None) -> list[dict]:
    """Top class of each window of `window` frames, every `stride` frames, over a long clip.

    Multi-label predictors give every class over its threshold instead: `labels` and `probs` are
    ';'-separated (empty when no class is over its threshold). A `probabilities` list receives each
    window's probability of every class (softmax; sigmoid for multi-label), for plot_timeline.
    """
    length = min(len(c) for c in clips.values())
    starts = list(range(0, max(length - window, 0) + 1, stride))
    rows = []
    for start in starts:
        part = {s: c[start:start + window] for s, c in clips.items()}
        end = min(start + window, length)
        row = {"start_frame": start, "end_frame": end, "start_s": round(start / fps, 3), "end_s": round(end / fps, 3)}
        logits = predictor.logits(part, device)
        if predictor.thresholds is not None:
            found = predictor.decide(logits)
            row.update(labels=";".join(p.label for p in found), probs=";".join(f"{p.prob:.4f}" for p in found))
        else:
            best = top_k(logits, predictor.categories, 1)[0]
            row.update(label=best.label, index=best.index, prob=best.prob, logit=best.logit)
        if probabilities is not None:
            scores = torch.as_tensor(np.asarray(logits, dtype=np.float64)).flatten()
            probabilities.append((scores.sigmoid() if predictor.thresholds is not None else scores.softmax(0)).numpy())
        rows.append(row)
    return rows


def plot_timeline(rows: list[dict], probabilities: list[np.ndarray], categories: list[str], path: str | Path,
                  top: int = 5, title: str = "") -> Path:
    """A PNG of each of the `top` classes' probability over the video's time (the classes most probable in any
    window, labelled; one point per window, at its middle), written through a temporary name."""
    from src.jobs.files import atomic_write
    from src.plots import pyplot

    plt = pyplot()
    probs = np.stack(probabilities)  # (windows, classes)
    middle = [(r["start_s"] + r["end_s"]) / 2 for r in rows]
    shown = np.argsort(-probs.max(0), kind="stable")[:top]
    fig, ax = plt.subplots(figsize=(10, 4))
    for c in shown:
        ax.plot(middle, probs[:, c], "o-" if len(rows) < 40 else "-", markersize=3, label=categories[c])
    ax.set_xlabel("time (s), middle of each window"), ax.set_ylabel("probability"), ax.set_ylim(0, 1.02)
    ax.set_xlim(rows[0]["start_s"], rows[-1]["end_s"])
    ax.set_title(title or f"top {len(shown)} classes over time ({len(rows)} windows)")
    ax.grid(alpha=0.3), ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1), fontsize=8)
    fig.tight_layout()
    with atomic_write(path, fsync=False) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def exported_predictor(path: str | Path, like: Predictor, trust: bool = False) -> Predictor:
    """A Predictor running an exported single-stream model with `like`'s classes and recipe (`trust`: see
    src.inference.exported)."""
    if len(like.models) != 1:
        raise InputError(f"{path}: exported models are single-stream; {like.name} has {len(like.models)} streams")
    if not Path(path).exists():
        raise InputError(f"{path}: no such exported model; create one with `python export.py`")
    stream = next(iter(like.models))
    return Predictor({stream: ExportedModel(path, trust)}, like.recipes, like.categories, f"{path} (exported)",
                     f"exported model {Path(path).suffix}", like.thresholds)
