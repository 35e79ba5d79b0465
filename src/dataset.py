"""Reading the pre-processed layout: DATA/classes.txt and DATA/<split>/<class>/<item>/{rgb,flow}-SampleRate_<n>.npy.

Training clips are a random temporal window of `clip_len` frames (short items loop-padded), a random
crop and a horizontal flip (which negates the flow's x channel); validation clips are the centre
window and centre crop. A clip is (C, T, H, W) float32 in [-1, 1]; joint items give (rgb, flow).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from src.media import decode_array, finite_frames
from src.paths import ITEM_LABELS_FILE

MODALITY_CHANNELS = {"rgb": 3, "flow": 2}


class DatasetError(ValueError):
    """The dataset folder is not usable; the message names the file or folder."""




@dataclass(frozen=True)
class Item:
    """One pre-processed video: its folder, label (the class folder) and the array file of each modality.

    `labels` is every label of a multi-label item (read from <item>/labels.txt), else just (label,).
    """

    folder: Path
    label: int
    files: dict[str, Path]
    labels: tuple[int, ...] = ()

    def label_set(self) -> tuple[int, ...]:
        """All the item's label indices."""
        return self.labels or (self.label,)


def is_multi_label(items: list[Item]) -> bool:
    """True when any item has several labels."""
    return any(len(it.label_set()) > 1 for it in items)


def targets(items: list[Item], num_classes: int) -> np.ndarray:
    """(N, num_classes) 0/1 matrix of the items' label sets."""
    out = np.zeros((len(items), num_classes), np.float32)
    for i, it in enumerate(items):
        out[i, list(it.label_set())] = 1.0
    return out


def read_item_labels(folder: Path, classes: list[str], label: int) -> tuple[int, ...]:
    """The label indices listed in folder/labels.txt (its class folder's label when there is none)."""
    path = Path(folder) / ITEM_LABELS_FILE
    if not path.exists():
        return ()
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    unknown = [n for n in names if n not in classes]
    if unknown:
        raise DatasetError(f"{path}: labels {unknown} are not in classes.txt ({len(classes)} classes)")
    indices = tuple(dict.fromkeys(classes.index(n) for n in names))
    return indices if indices and indices != (label,) else ()


def streams(modality: str) -> tuple[str, ...]:
    """The array modalities a training modality reads: rgb, flow, or both for joint."""
    return ("rgb", "flow") if modality == "joint" else (modality,)


def read_classes(data_dir: Path) -> list[str]:
    """Class names from DATA/classes.txt (line number = label), or the train folder names when absent."""
    data_dir = Path(data_dir)
    path = data_dir / "classes.txt"
    if path.exists():
        classes = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    elif (data_dir / "train").is_dir():
        classes = sorted(p.name for p in (data_dir / "train").iterdir() if p.is_dir() and not p.name.startswith("."))
    elif any(data_dir.glob("*/*/test_rgb.npy")) or any(data_dir.glob("*/*/test_flow.npy")):
        raise DatasetError(f"{data_dir}: the original toolkit's layout (<class>/<series>/test_rgb.npy); convert it "
                           f"once with: python3 pre-process.py --from-seed {data_dir} NEW_DATA_DIR")
    else:
        raise DatasetError(f"{data_dir}: no classes.txt and no train/ folder; run pre-process.py first")
    if not classes:
        raise DatasetError(f"{path}: no classes listed")
    return classes


def find_array(folder: Path, modality: str, sample_rate: int | None) -> Path | None:
    """An item folder's <modality>-SampleRate_<n>.npy (of `sample_rate`, or the first by name), or None."""
    pattern = re.compile(rf"{modality}(?:-SampleRate_(\d+))?\.npy$")
    found = sorted((p for p in folder.iterdir() if pattern.fullmatch(p.name)), key=lambda p: p.name)
    if sample_rate is not None:
        found = [p for p in found if (pattern.fullmatch(p.name).group(1) or "1") == str(sample_rate)]
    return found[0] if found else None


def scan_split(data_dir: Path, split: str, classes: list[str], modality: str,
               sample_rate: int | None = None) -> list[Item]:
    """Every item of one split that has the arrays `modality` needs, with clear errors for a bad layout."""
    root = Path(data_dir) / split
    if not root.is_dir():
        raise DatasetError(f"{root}: missing split folder (expected {split}/<class>/<item>/rgb-SampleRate_1.npy)")
    present = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    unknown = sorted(set(present) - set(classes))
    if unknown:
        raise DatasetError(f"{root}: classes {unknown} are not in {Path(data_dir) / 'classes.txt'} ({classes})")
    items = []
    for label, name in enumerate(classes):
        class_dir = root / name
        if class_dir.is_dir():
            for folder in sorted(p for p in class_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
                files = {m: find_array(folder, m, sample_rate) for m in streams(modality)}
                if all(files.values()):
                    items.append(Item(folder, label, files, read_item_labels(folder, classes, label)))
    if split == "train":
        present = {c for it in items for c in it.label_set()}
        for label, name in enumerate(classes):
            if label not in present:
                raise DatasetError(f"{root / name}: class {name!r} has no {'+'.join(streams(modality))} arrays "
                                   "(empty class); add videos or remove it from classes.txt")
    return items


def check_array(path: Path, arr: np.ndarray, modality: str) -> None:
    """Raise DatasetError unless `arr` is a (T, H, W, C) clip of the modality's channel count."""
    channels = MODALITY_CHANNELS[modality]
    if arr.dtype not in (np.float32, np.float16, np.float64, np.uint8):
        raise DatasetError(f"{path}: dtype {arr.dtype}, expected float32, float16 or uint8 (as pre-process.py writes)")
    if arr.ndim != 4 or arr.shape[-1] != channels or min(arr.shape) == 0:
        raise DatasetError(f"{path}: shape {arr.shape}, expected (T, H, W, {channels}) for {modality}")


def error_text(exc: BaseException) -> str:
    """An error's own message, without the traceback a DataLoader worker process wraps around it."""
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = text.rstrip().splitlines()[-1]
    prefix = f"{type(exc).__module__}.{type(exc).__qualname__}: "
    return last.removeprefix(prefix)


class NonFiniteValues(DatasetError):
    """An array holding NaN or infinite values: the message names the file and the frames."""


def frame_span(frames: np.ndarray | list[int]) -> str:
    """Frame indices in words: 'frame 4' or 'frames 3..17 (5 of them)'."""
    frames = sorted(set(int(f) for f in frames))
    if len(frames) == 1:
        return f"frame {frames[0]}"
    return f"frames {frames[0]}..{frames[-1]} ({len(frames)} of them)"


SKIP_HINT = "re-make the item with pre-process.py or remove it, or pass --skip-bad-items to leave such items out"


def nonfinite_frames(path: Path, chunk: int = 16) -> list[int]:
    """The frames of a stored array that hold NaN or inf (none for uint8), read once, a few frames at a time."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError):
        return []  # unreadable: loading the item reports it
    if arr.dtype.kind != "f" or arr.ndim == 0:
        return []
    bad: list[int] = []
    for start in range(0, len(arr), chunk):
        block = decode_array(np.asarray(arr[start:start + chunk]))  # float64 beyond float32's range is inf too
        bad += (start + np.flatnonzero(~finite_frames(block))).tolist()
    return bad


def drop_nonfinite_items(items: list[Item]) -> tuple[list[Item], list[str]]:
    """The items none of whose arrays holds NaN/inf, and one line per item left out (for --skip-bad-items).

    This reads every float array once; uint8 arrays cannot hold such values and are not read.
    """
    from tqdm import tqdm

    kept, dropped = [], []
    for item in tqdm(items, desc="checking arrays for NaN/inf", unit="item", leave=False, disable=len(items) < 50):
        bad = {m: nonfinite_frames(path) for m, path in item.files.items()}
        if any(bad.values()):
            path, frames = next((item.files[m], f) for m, f in bad.items() if f)
            dropped.append(f"{path}: NaN/inf values in {frame_span(frames)}; item left out (--skip-bad-items)")
        else:
            kept.append(item)
    return kept, dropped


def window(length: int, clip_len: int, start: int) -> np.ndarray:
    """Frame indices of a clip starting at `start`, looping over the item when it is shorter."""
    return (start + np.arange(clip_len)) % length


@dataclass(frozen=True)
class View:
    """Where a clip is taken from an item: temporal start, crop corner (fractions of the slack), flip, and
    whether it plays backwards (train.py --reverse-pairs: the label becomes the class it is paired with)."""

    start: float
    top: float
    left: float
    flip: bool
    reverse: bool = False

    @staticmethod
    def centre() -> "View":
        """The validation view: centre window, centre crop, no flip."""
        return View(0.5, 0.5, 0.5, False)

    @staticmethod
    def random(rng: np.random.Generator, flip: bool = True, reversible: bool = False) -> "View":
        """A training view drawn from `rng`; `flip=False` never mirrors (for direction-sensitive classes);
        `reversible`: played backwards with probability 0.5."""
        start, top, left, coin = rng.random(4)
        reverse = reversible and bool(rng.random() < 0.5)  # drawn last: views without reversal stay as they were
        return View(float(start), float(top), float(left), flip and bool(coin < 0.5), reverse)


class ClipDataset(Dataset):
    """Clips of pre-processed items; `view_for(index, epoch)` decides each clip's window, crop and flip.

    views=None: a fresh random view per epoch (train) or the centre view (eval);
    views=V: one of V fixed random views per item, chosen by epoch, so a feature cache can hold them all.
    """

    def __init__(self, items: list[Item], modality: str, clip_len: int = 64, crop: int = 224, train: bool = True,
                 views: int | None = None, seed: int = 0, cache=None, split: str = "train", flip: bool = True,
                 multi_label_classes: int | None = None, reverse_to: dict[int, int] | None = None):
        self.items, self.modality, self.clip_len, self.crop, self.flip = items, modality, clip_len, crop, flip
        # label -> label of the same clip played backwards, for the classes that may be reversed (training only)
        self.reverse_to = reverse_to or {}
        # multi-label: labels come as (num_classes,) 0/1 float vectors instead of class indices
        self.multi_label_classes = multi_label_classes
        self.train, self.views, self.seed, self.epoch = train, views, seed, 0
        self.cache, self.split = cache, split  # a FeatureCache: cached items skip loading their clip

    def __len__(self) -> int:
        return len(self.items)

    def set_epoch(self, epoch: int) -> None:
        """Choose the views of this epoch (random views differ per epoch; fixed views cycle)."""
        self.epoch = epoch

    def view_index(self, index: int) -> int:
        """Which of the fixed views an item shows this epoch: they take turns, so V epochs fill a cache."""
        if not self.train or not self.views:
            return 0
        return self.epoch % self.views

    def view_for(self, index: int) -> View:
        """The view of item `index` in the current epoch."""
        if not self.train:
            return View.centre()
        key = [self.seed, index, self.view_index(index)] if self.views else [self.seed, index, 10**6 + self.epoch]
        # reversal is part of the view, so a fixed view (and its cache entry) is always the same way round
        return View.random(np.random.default_rng(key), self.flip, self.items[index].label in self.reverse_to)

    def load(self, item: Item, modality: str, view: View) -> torch.Tensor:
        """One modality's clip of an item as (C, T, H, W) float32."""
        path = item.files[modality]
        try:
            stored = np.load(path, mmap_mode="r", allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise DatasetError(f"{path}: cannot be read as a .npy array ({exc})") from None
        check_array(path, stored, modality)
        t, h, w = stored.shape[:3]
        if min(h, w) < self.crop:
            raise DatasetError(f"{path}: frames {w}x{h} are smaller than the {self.crop} crop")
        start = int(view.start * (t - self.clip_len)) if t > self.clip_len else 0
        top, left = int(round(view.top * (h - self.crop))), int(round(view.left * (w - self.crop)))
        frames = window(t, self.clip_len, start)
        if view.reverse:  # flow i (frame i -> i+1) backwards is about minus flow i: reversed order, negated below
            frames = frames[::-1]
        clip = decode_array(np.asarray(stored[frames, top:top + self.crop, left:left + self.crop]))
        if stored.dtype.kind == "f":  # checking what is read costs little next to the network, and misses nothing used
            finite = finite_frames(clip)
            if not finite.all():
                raise NonFiniteValues(f"{path}: NaN/inf values in {frame_span(frames[~finite])}; {SKIP_HINT}")
        if view.flip:
            clip = clip[:, :, ::-1]
            if modality == "flow":
                clip = clip * np.array([-1.0, 1.0], np.float32)  # mirrored motion: x flow changes sign
        if view.reverse and modality == "flow":
            clip = -clip
        return torch.from_numpy(np.ascontiguousarray(clip)).permute(3, 0, 1, 2)

    def target(self, index: int, view: View | None = None) -> int | torch.Tensor:
        """An item's class index (its pair's when `view` plays it backwards), or its 0/1 label vector (multi-label)."""
        item = self.items[index]
        if self.multi_label_classes is None:
            return self.reverse_to[item.label] if view is not None and view.reverse else item.label
        vector = torch.zeros(self.multi_label_classes)
        vector[list(item.label_set())] = 1.0
        return vector

    def __getitem__(self, index: int) -> tuple[int, int, list[tuple[str, torch.Tensor]], int | torch.Tensor]:
        """(index, view, [("clip" | "features", tensor) per stream], label or label vector)."""
        item, fixed, view = self.items[index], self.view_index(index), self.view_for(index)
        inputs = []
        for stream in streams(self.modality):
            cached = self.cache.get(self.split, stream, index, fixed) if self.cache is not None else None
            inputs.append(("features", cached) if cached is not None else ("clip", self.load(item, stream, view)))
        return index, fixed, inputs, self.target(index, view)


def collate(batch: list) -> tuple[list[int], list[int], list[list[tuple[str, torch.Tensor]]], torch.Tensor]:
    """Keep per-sample inputs as lists: a batch may mix raw clips and cached features."""
    indices, views, inputs, labels = zip(*batch)
    stacked = torch.stack(labels) if isinstance(labels[0], torch.Tensor) else torch.tensor(labels)
    return list(indices), list(views), list(inputs), stacked


def class_counts(items: list[Item], num_classes: int) -> np.ndarray:
    """How many items each class has."""
    return np.bincount([it.label for it in items], minlength=num_classes)


def balanced_weights(items: list[Item], num_classes: int) -> torch.Tensor:
    """Per-item sampling weights that make every class equally likely."""
    counts = class_counts(items, num_classes)
    return torch.tensor([1.0 / counts[it.label] for it in items], dtype=torch.double)


def load_array(path: Path, mmap: bool = False) -> np.ndarray:
    """Load a stored rgb/flow .npy (float32, float16 or uint8) as float32 in [-1, 1]."""
    path = Path(path)
    try:
        arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: cannot be read as a .npy array ({exc})") from exc
    return decode_array(arr)
