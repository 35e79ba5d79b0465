"""Run folders: a run's config, its checkpoints, metrics and plots, and loading a finished run.

A run folder holds config.json, classes.txt, best.safetensors (the best validation epoch), last.pt
(everything needed to resume), metrics.json / metrics.csv, curves.png, confusion_matrix.png and
train.log; a multi-label run has thresholds.json and ap_per_class.png instead of the confusion matrix. A folder without last.pt has not finished an epoch: it is not a run yet, and training
may start again in it.
"""
from __future__ import annotations

import csv
import json
import random
import re
import time
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch
from torch import nn

from src.dataset import streams
from src.jobs.files import atomic_write
from src.model import I3D
from src.plots import pyplot
from src.training.config import RunConfig, TrainingError
from src.weights import RGB_RECIPE, Streams, flow_recipe

RUN_FILES = ("config.json", "classes.txt", "last.pt", "best.safetensors", "metrics.json", "metrics.csv",
             "curves.png", "confusion_matrix.png", "train.log", "thresholds.json", "ap_per_class.png")
THRESHOLDS_FILE = "thresholds.json"


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a run; the message says what the run folder keeps and how to go on."""

    def __init__(self, run_dir: Path):
        super().__init__(interruption_message(Path(run_dir)))
        self.run_dir = Path(run_dir)


def interruption_message(run_dir: Path) -> str:
    """One line: which epochs `run_dir` keeps after an interruption and the command that continues it."""
    if not (run_dir / "last.pt").exists():
        return (f"interrupted before the first epoch finished, so {run_dir} holds no run to resume; "
                f"start it again with the same command (--out {run_dir} is reused without --overwrite)")
    try:
        done = len(json.loads((run_dir / "metrics.json").read_text())["history"])
        kept = f"keeps its {done} finished epoch{'s' if done != 1 else ''}"
    except (OSError, ValueError, KeyError, TypeError):
        kept = "keeps its last finished epoch"
    return f"interrupted: {run_dir} {kept}; continue it with: python train.py --resume {run_dir}"


def new_run_dir(cfg: RunConfig, overwrite: bool = False) -> Path:
    """The --out folder, or runs/<date>-<modality>; a folder holding a run (last.pt) is refused unless `overwrite`."""
    if not cfg.out:
        return Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{cfg.modality}"
    run_dir = Path(cfg.out)
    if (run_dir / "last.pt").exists() and not overwrite:
        raise TrainingError(f"{run_dir} already holds a run; use --resume {run_dir} to continue it, "
                            "--overwrite to replace it, or another --out")
    return run_dir


def clear_run_dir(run_dir: Path) -> None:
    """Remove what an earlier run left in `run_dir` (its files and feature cache), nothing else."""
    import shutil
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)
    if (run_dir / "cache").is_dir():
        shutil.rmtree(run_dir / "cache")


def start_run_dir(run_dir: Path, cfg: RunConfig) -> None:
    """Create the run folder with config.json and classes.txt."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    (run_dir / "classes.txt").write_text("\n".join(cfg.classes) + "\n")


def record_recipe(cfg: RunConfig, data: Path, example: Path) -> None:
    """Fill cfg's input_* fields and flow_algorithm from pre-process.py's manifest (or the arrays themselves).

    A column counts only where every row agrees; otherwise the array's short side, the sample rate in
    its file name (`rgb-SampleRate_<n>.npy`) and the official 25 fps / TV-L1 stand.
    """
    rows: list[dict[str, str]] = []
    for manifest in sorted(data.glob("manifest*.csv")):
        with open(manifest, newline="") as f:
            rows += list(csv.DictReader(f))

    def agreed(column: str, skip: tuple[str, ...] = ()) -> str | None:
        values = {row.get(column) for row in rows} - {None, *skip}
        return values.pop() if len(values) == 1 else None

    size = agreed("size", ("",))
    cfg.input_size = int(size) if size else int(min(np.load(example, mmap_mode="r", allow_pickle=False).shape[1:3]))
    fps = agreed("fps")  # "" is pre-process.py's native rate (--fps 0)
    if fps is not None:
        cfg.input_fps = float(fps) if fps else None
    rate = re.search(r"SampleRate_(\d+)", example.name)
    cfg.input_sample_rate = int(rate.group(1)) if rate else 1
    cfg.flow_algorithm = agreed("flow_algorithm", ("", "none")) or "tvl1"


# ---------------------------------------------------------------- checkpoints

def rng_state() -> dict:
    """Every random generator's state, as tensors and numbers, for an exact resume."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {"torch": torch.get_rng_state(), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss,
                                                      gauss],
            "python": [version, list(internal), gauss_next],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` saved."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run_dir: Path, state: dict) -> None:
    """last.pt: one dict with everything needed to resume, written through a temporary name."""
    with atomic_write(run_dir / "last.pt") as tmp:
        torch.save({**state, "rng": rng_state()}, tmp)


def load_checkpoint(run_dir: Path) -> dict:
    """The last.pt of a run folder (tensors only: never unpickles code)."""
    path = Path(run_dir) / "last.pt"
    if not path.exists():
        raise TrainingError(f"{run_dir}: no last.pt, so no epoch finished there; start it again with "
                            f"--out {run_dir} instead of --resume")
    return torch.load(path, map_location="cpu", weights_only=True)


def stream_state_dict(models: nn.ModuleDict) -> dict[str, torch.Tensor]:
    """One stream: its state dict in this repository's naming; joint: keys prefixed 'rgb.' / 'flow.'."""
    if len(models) == 1:
        return next(iter(models.values())).state_dict()
    return models.state_dict()


# ---------------------------------------------------------------- metrics and plots

def write_metrics(run_dir: Path, history: list[dict], best: dict) -> None:
    """metrics.json ({"best", "history"}) and metrics.csv, each written atomically."""
    with atomic_write(run_dir / "metrics.json", fsync=False) as tmp:
        tmp.write_text(json.dumps({"best": best, "history": history}, indent=2))
    with atomic_write(run_dir / "metrics.csv", fsync=False) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(history[0]))
        writer.writeheader()
        writer.writerows(history)


def save_plots(run_dir: Path, history: list[dict], confusion: np.ndarray, classes: list[str],
               per_class_ap: list[float] | None = None) -> None:
    """curves.png (loss and top-1 per epoch, and val mAP for multi-label runs) and confusion_matrix.png,
    or, given the best epoch's per-class AP of a multi-label run, ap_per_class.png."""
    plt = pyplot()

    epochs = [h["epoch"] for h in history]
    multi = "val_map" in history[-1]
    fig, axes = plt.subplots(1, 3 if multi else 2, figsize=(15 if multi else 10, 4))
    ax_loss, ax_acc = axes[:2]
    ax_loss.plot(epochs, [h["train_loss"] for h in history], "o-", label="train")
    ax_acc.plot(epochs, [h["train_top1"] for h in history], "o-", label="train")
    if history[-1]["val_loss"] is not None:  # None: no val split
        ax_loss.plot(epochs, [h["val_loss"] for h in history], "o-", label="val")
        ax_acc.plot(epochs, [h["val_top1"] for h in history], "o-", label="val")
    panels = [(ax_loss, "loss"), (ax_acc, "top-1 accuracy" + (" (a label ranked first)" if multi else ""))]
    if multi:
        axes[2].plot(epochs, [h["val_map"] for h in history], "o-", label="val")
        panels.append((axes[2], "mAP"))
    for ax, title in panels:
        ax.set_xlabel("epoch"), ax.set_title(title), ax.legend(), ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(run_dir / "curves.png", dpi=100)
    plt.close(fig)
    if per_class_ap is not None:
        plot_ap(per_class_ap, classes, run_dir / "ap_per_class.png")
    else:
        plot_confusion(confusion, classes, run_dir / "confusion_matrix.png")


def plot_ap(per_class_ap: list[float], classes: list[str], path: Path) -> None:
    """A bar chart of each class's average precision (classes without a positive left at 0, marked n/a)."""
    import math

    plt = pyplot()

    from src.training.metrics import mean_ap

    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(classes) + 2), 4))
    ax.bar(range(len(classes)), [0.0 if math.isnan(a) else a for a in per_class_ap])
    for i, a in enumerate(per_class_ap):
        if math.isnan(a):
            ax.text(i, 0.02, "n/a", ha="center", fontsize=7, rotation=90)
    ax.set_xticks(range(len(classes)), classes, rotation=90)
    ax.set_ylim(0, 1), ax.set_ylabel("average precision")
    ax.set_title(f"mAP {mean_ap(per_class_ap):.3f}"), ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_thresholds(run_dir: Path, classes: list[str], thresholds: list[float], epoch: int) -> None:
    """RUN/thresholds.json: per class, the probability from which predict.py reports it (best F1 on val)."""
    with atomic_write(run_dir / THRESHOLDS_FILE, fsync=False) as tmp:
        tmp.write_text(json.dumps({"epoch": epoch, "chosen_on": "val", "rule": "maximum F1 per class",
                                   "thresholds": dict(zip(classes, thresholds))}, indent=2))


def read_thresholds(run_dir: str | Path, classes: list[str]) -> list[float]:
    """The per-class thresholds of a multi-label run (0.5 for a class the file does not list)."""
    path = Path(run_dir) / THRESHOLDS_FILE
    try:
        chosen = json.loads(path.read_text())["thresholds"]
    except FileNotFoundError:
        raise TrainingError(f"{path}: missing; a multi-label run writes it with its best epoch") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise TrainingError(f"{path}: not a thresholds file ({exc})") from None
    return [float(chosen.get(c, 0.5)) for c in classes]


def plot_confusion(confusion: np.ndarray, classes: list[str], path: Path) -> None:
    """A labelled confusion-matrix heat map (rows: true class, columns: predicted)."""
    plt = pyplot()

    size = max(4.0, 0.5 * len(classes) + 2)
    fig, ax = plt.subplots(figsize=(size, size))
    ax.imshow(confusion, cmap="Blues")
    ax.set_xticks(range(len(classes)), classes, rotation=90), ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted"), ax.set_ylabel("true")
    for (i, j), v in np.ndenumerate(confusion):
        ax.text(j, i, str(v), ha="center", va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def tensorboard_writer(run_dir: Path):
    """A TensorBoard SummaryWriter when tensorboard is installed, else None."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    return SummaryWriter(run_dir / "tensorboard")


# ---------------------------------------------------------------- using a finished run

def load_run(run_dir: str | Path, device: torch.device | None = None) -> tuple[RunConfig, nn.ModuleDict]:
    """A run's config and its best model streams (eval mode), from config.json and best.safetensors."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    run_dir = Path(run_dir)
    if not (run_dir / "config.json").exists():
        raise TrainingError(f"{run_dir}: no config.json; is this a train.py run folder (finished at least one epoch)?")
    cfg = RunConfig.load(run_dir)
    if not (run_dir / "best.safetensors").exists():
        raise TrainingError(f"{run_dir}: no best.safetensors; is this a train.py run folder (finished at least one "
                            "epoch)?")
    try:
        state = load_file(run_dir / "best.safetensors")
    except (SafetensorError, OSError) as exc:
        raise TrainingError(f"{run_dir / 'best.safetensors'}: cannot be read ({exc})") from None
    models = nn.ModuleDict({s: I3D(len(cfg.classes), 3 if s == "rgb" else 2, cfg.dropout) for s in streams(cfg.modality)})
    target = next(iter(models.values())) if len(models) == 1 else models
    try:
        missing, unexpected = target.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # a tensor of another shape
        raise TrainingError(f"{run_dir / 'best.safetensors'}: does not fit the run's model: "
                            f"{str(exc).splitlines()[-1].strip()}") from None
    if missing or unexpected:
        what = (f"{len(missing)} tensors missing (e.g. {missing[0]})" if missing else
                f"{len(unexpected)} unexpected tensors (e.g. {unexpected[0]})")
        raise TrainingError(f"{run_dir / 'best.safetensors'}: does not hold the {cfg.modality} run's model: {what}")
    return cfg, models.to(device or torch.device("cpu")).eval()


def run_streams(run_dir: str | Path) -> Streams:
    """A fine-tuned run's streams with the input recipe it was trained on, its classes and thresholds."""
    cfg, models = load_run(run_dir)
    thresholds = read_thresholds(run_dir, cfg.classes) if cfg.multi_label else None
    recipes = {s: replace(flow_recipe(cfg.flow_algorithm) if s == "flow" else RGB_RECIPE, crop=cfg.crop,
                          resize_short_side=cfg.input_size or RGB_RECIPE.resize_short_side, fps=cfg.input_fps,
                          sample_rate=cfg.input_sample_rate) for s in models}
    kind = f"{cfg.modality}, multi-label" if cfg.multi_label else cfg.modality
    return Streams(dict(models.items()), recipes, cfg.classes, f"{run_dir} ({kind})", thresholds)
