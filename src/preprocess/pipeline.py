"""Batch pre-processing: a folder of class folders of videos / frame folders -> rgb and flow .npy arrays.

Layout written under OUT_DIR:
    classes.txt                                   one class per line, sorted; line number = label index
    <split>/<class>/<item>/rgb-SampleRate_<n>.npy  (T, H, W, 3) in [-1, 1] (stored as --dtype)
    <split>/<class>/<item>/flow-SampleRate_<n>.npy (T - 1, H, W, 2) in [-1, 1]: flow between frames t, t+1
    manifest.csv (or manifest-shard<i>of<n>.csv)  one row per item
Every array is written under a temporary name and renamed, so a killed run leaves either complete
files or `.part` files that the next run deletes; items whose arrays all exist are skipped.
"""
from __future__ import annotations

import csv
import errno
import os
import random
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.annotations import AnnotationError, frame_range, read_annotations, resolve_video, segment_name
from src.flow import FlowExtractor, recipe_name, rgb_to_gray
from src.jobs.files import PARTIAL_SUFFIX, atomic_write, save_array_atomic
from src.jobs.lock import FolderLock, LockError, folder_mutex
from src.jobs.workers import set_threads
from src.media.transforms import STORAGE_DTYPES, center_crop, encode_array, resize_short_side, to_model_range
from src.media.video import FrameStream, VideoError, is_frame_folder, is_hidden, is_video_file, natural_key, probe

SPLITS = ("train", "val", "test")
MODALITIES = ("rgb", "flow")
MANIFEST_FIELDS = [
    "source", "class", "split", "name", "status", "source_fps", "duration_s", "source_frames",
    "frames_written", "rgb_shape", "flow_shape", "dtype", "flow_algorithm", "fps", "sample_rate",
    "size", "crop", "message", "labels", "start", "end",
]
_CHUNK = 64  # frames converted to the storage dtype at a time (bounds float32 temporaries)


class PreprocessError(ValueError):
    """A problem with the whole job (paths, options, disk space), reported as one sentence."""


@dataclass
class Options:
    """Recipe and job settings; defaults are the official I3D recipe."""

    fps: float | None = 25.0
    folder_fps: float | None = None
    size: int = 256
    crop: int | None = None
    sample_rate: int = 1
    modalities: tuple[str, ...] = MODALITIES
    flow: str = "tvl1"
    bound: float = 20.0
    dtype: str = "float32"
    val_ratio: float = 0.2
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    shard: tuple[int, int] = (1, 1)
    min_frames: int = 2
    disk_check: bool = True
    flow_device: str = "auto"
    flow_batch: int = 0  # 0: FlowExtractor's choice for the device
    flow_compile: str = "auto"

    def validate(self) -> None:
        """Raise PreprocessError for inconsistent settings."""
        if self.fps is not None and self.fps <= 0:
            raise PreprocessError(f"--fps must be positive, got {self.fps}")
        if self.folder_fps is not None and self.folder_fps <= 0:
            raise PreprocessError(f"--folder-fps must be positive, got {self.folder_fps}")
        if self.size < 1:
            raise PreprocessError(f"--size must be a positive number of pixels, got {self.size}")
        if self.crop is not None and not 0 < self.crop <= self.size:
            raise PreprocessError(f"--crop {self.crop} must be between 1 and --size {self.size}")
        if self.sample_rate < 1:
            raise PreprocessError(f"--sample-rate must be 1 or more, got {self.sample_rate}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise PreprocessError(f"--modalities must be a comma list of {', '.join(MODALITIES)}, got {','.join(self.modalities)}")
        if self.dtype not in STORAGE_DTYPES:
            raise PreprocessError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.dtype}")
        if not 0 <= self.val_ratio < 1:
            raise PreprocessError(f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        if self.workers < 1:
            raise PreprocessError(f"--workers must be 1 or more, got {self.workers}")
        i, n = self.shard
        if not 1 <= i <= n:
            raise PreprocessError(f"--shard {i}/{n}: need 1 <= i <= n")
        if self.flow_batch < 0:
            raise PreprocessError(f"--flow-batch must be 1 or more (0: auto), got {self.flow_batch}")
        if self.flow_compile not in ("auto", "yes", "no"):
            raise PreprocessError(f"--flow-compile must be auto, yes or no, got {self.flow_compile}")
        if "flow" in self.modalities and self.min_frames < 2:
            raise PreprocessError("--min-frames must be at least 2 when flow is computed (flow needs a frame pair)")


@dataclass
class Item:
    """One video file or frame folder and where its arrays go."""

    source: Path
    cls: str
    name: str
    split: str | None = None
    error: str | None = None
    labels: tuple[str, ...] = ()        # annotation items: every label (cls is the first)
    start: float | None = None          # a segment of the source, in seconds
    end: float | None = None
    where: str | None = None            # annotation items: FILE:line, for failures without a usable source

    @property
    def key(self) -> str:
        """What identifies the item in the manifest: its source, plus the times of a segment."""
        return self.where if self.where and self.error else _key(str(self.source), self.start, self.end)


def _key(source: str, start: float | None, end: float | None) -> str:
    return source if start is None else f"{source}@{start:.3f}-{end:.3f}"


@dataclass
class Discovery:
    """What was found under RAW_DIR."""

    items: list[Item]
    classes: list[str]
    presplit: bool
    notes: list[str] = field(default_factory=list)


def parse_shard(text: str) -> tuple[int, int]:
    """'2/4' -> (2, 4)."""
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise PreprocessError(f"--shard must look like i/n (e.g. 2/4), got {text!r}") from None
    if not 1 <= i <= n:
        raise PreprocessError(f"--shard {text}: need 1 <= i <= n")
    return i, n


def _scan_class_root(root: Path, notes: list[str]) -> list[Item]:
    """Items under root/<class>/, skipping hidden and non-media entries with a note."""
    items: list[Item] = []
    for class_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if is_hidden(class_dir):
            notes.append(f"skipped hidden {class_dir}")
            continue
        if not class_dir.is_dir():
            notes.append(f"skipped {class_dir}: a file directly under {root} (expected <class>/<video or frame folder>)")
            continue
        seen: dict[str, Path] = {}
        count = len(items)
        for entry in sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name)):
            if is_hidden(entry):
                notes.append(f"skipped hidden {entry}")
                continue
            if is_video_file(entry):
                name = entry.stem
            elif is_frame_folder(entry):
                name = entry.name
            else:
                what = "folder without png/jpg/jpeg/bmp frames" if entry.is_dir() else "not a video or image-folder"
                notes.append(f"skipped {entry}: {what}")
                continue
            item = Item(entry, class_dir.name, name)
            if name in seen:
                item.error = f"{entry}: its output name {name!r} clashes with {seen[name].name}; rename one of them"
            else:
                seen[name] = entry
            items.append(item)
        if len(items) == count:
            notes.append(f"skipped empty class folder {class_dir}: no videos or frame folders in it, so class "
                         f"{class_dir.name!r} is left out")
    return items


def discover(raw_dir: Path) -> Discovery:
    """Find items and classes under RAW_DIR (kept train/val[/test] split if present)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"{raw_dir}: not a folder; RAW_DIR must hold <class>/<video or frame folder> entries")
    notes: list[str] = []
    has = {s: (raw_dir / s).is_dir() for s in SPLITS}
    if has["train"] and has["val"]:
        items = []
        for split in SPLITS:
            if has[split]:
                for item in _scan_class_root(raw_dir / split, notes):
                    item.split = split
                    items.append(item)
        for entry in sorted(raw_dir.iterdir()):
            if entry.name not in SPLITS and not is_hidden(entry):
                notes.append(f"skipped {entry}: RAW_DIR has train/ and val/, so only {', '.join(SPLITS)} are read")
        presplit = True
    elif has["train"] or has["val"]:
        present, missing = ("train", "val") if has["train"] else ("val", "train")
        raise PreprocessError(
            f"{raw_dir} has a {present}/ folder but no {missing}/; give both to keep your split, or neither to split by --val-ratio"
        )
    else:
        items = _scan_class_root(raw_dir, notes)
        presplit = False
    classes = sorted({item.cls for item in items})
    if not items:
        raise PreprocessError(f"{raw_dir}: no videos or frame folders found under <class>/ folders")
    return Discovery(items, classes, presplit, notes)


def assign_splits(items: list[Item], val_ratio: float, seed: int) -> None:
    """Stratified split: per class, round(n * val_ratio) items to val, keeping at least one in train.

    Deterministic for a given seed and set of item names (each class is shuffled by its own
    random.Random seeded with 'seed:class', independent of the other classes).
    """
    by_class: dict[str, list[Item]] = {}
    for item in items:
        by_class.setdefault(item.cls, []).append(item)
    for cls, members in by_class.items():
        members = sorted(members, key=lambda it: natural_key(it.source.name))
        random.Random(f"{seed}:{cls}").shuffle(members)
        n_val = min(round(len(members) * val_ratio), len(members) - 1)
        for i, item in enumerate(members):
            item.split = "val" if i < n_val else "train"


def discover_annotations(annotations: Path, raw_dir: Path) -> Discovery:
    """Items of an annotation file (src.annotations) over videos in RAW_DIR; bad rows become failed items."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"{raw_dir}: not a folder; RAW_DIR must hold the videos the annotation file names")
    try:
        rows = read_annotations(annotations)
    except AnnotationError as exc:
        raise PreprocessError(str(exc)) from None
    items: list[Item] = []
    names: dict[str, str] = {}
    for row in rows:
        stem = Path(row.video).stem or row.video
        name = segment_name(stem, row.start, row.end) if row.is_segment else stem
        source = None if row.error else resolve_video(raw_dir, row.video)
        item = Item(source or raw_dir / row.video, row.labels[0] if row.labels else "", name, row.split, row.error,
                    row.labels, row.start, row.end, row.where)
        if not item.error and source is None:
            item.error = f"{row.where}: {raw_dir / row.video}: no such video or frame folder"
        elif not item.error and names.get(name, item.key) != item.key:
            item.error = f"{row.where}: its output name {name!r} clashes with {names[name]}; rename one of the videos"
        if not item.error:
            names[name] = item.key
        items.append(item)
    usable = [it for it in items if not it.error]
    if not usable:
        raise PreprocessError(f"{annotations}: none of its {len(items)} rows is usable; first problem: {items[0].error}")
    # labels of rows that fail (missing video, ...) are left out: a class without items could not train
    classes = sorted({lab for it in usable for lab in it.labels}, key=natural_key)
    return Discovery(items, classes, all(it.split for it in usable))


def assign_splits_by_source(items: list[Item], val_ratio: float, seed: int) -> str:
    """Split items without one so that all segments of a recording land in the same split; returns a note.

    Recordings are split like single items (stratified by their most frequent first label); with a
    single recording there is nothing to group, and its segments are split one by one.
    """
    todo = [it for it in items if not it.split and not it.error]
    groups: dict[Path, list[Item]] = {}
    for item in todo:
        groups.setdefault(item.source, []).append(item)
    if len(groups) < 2:
        assign_splits(todo, val_ratio, seed)
        return "one recording: its segments were split one by one (give a split column to control it)"
    stand_ins = []
    for source, members in groups.items():
        firsts = [it.cls for it in members]
        stand_ins.append(Item(source, max(sorted(set(firsts)), key=firsts.count), source.name))
    assign_splits(stand_ins, val_ratio, seed)
    how = "stratified"
    if val_ratio > 0 and not any(s.split == "val" for s in stand_ins):
        # every label has a single recording: stratifying leaves val empty, so split the recordings plainly
        ordered = sorted(stand_ins, key=lambda it: natural_key(str(it.source)))
        random.Random(f"{seed}:recordings").shuffle(ordered)
        n_val = min(max(1, round(len(ordered) * val_ratio)), len(ordered) - 1)
        for i, stand_in in enumerate(ordered):
            stand_in.split = "val" if i < n_val else "train"
        how = "not stratified: too few recordings per label"
    for stand_in in stand_ins:
        for item in groups[stand_in.source]:
            item.split = stand_in.split
    return f"{len(groups)} recordings split whole ({how}), so no recording is in both train and val"


def output_paths(out_dir: Path, item: Item, opts: Options) -> dict[str, Path]:
    """Where each requested modality of an item is stored."""
    folder = Path(out_dir) / str(item.split) / item.cls / item.name
    return {m: folder / f"{m}-SampleRate_{opts.sample_rate}.npy" for m in opts.modalities}


def shard_by_source(items: list[Item], shard: tuple[int, int]) -> list[Item]:
    """Shard i of n of the sources (every n-th in sorted order), with all the items cut from them."""
    i, n = shard
    sources = sorted({str(it.source) for it in items}, key=natural_key)
    mine = set(sources[i - 1 :: n])
    return [it for it in items if str(it.source) in mine]


def shard_items(items: list[Item], shard: tuple[int, int]) -> list[Item]:
    """The deterministic subset of shard i of n (every n-th item of the sorted list, from the i-th)."""
    i, n = shard
    ordered = sorted(items, key=lambda it: (str(it.split), it.cls, natural_key(it.source.name)))
    return ordered[i - 1 :: n]


def _shape_text(shape: tuple[int, ...] | None) -> str:
    return "x".join(str(s) for s in shape) if shape else ""


def _recipe_columns(opts: Options) -> dict[str, str]:
    return {
        "dtype": opts.dtype, "flow_algorithm": opts.flow if "flow" in opts.modalities else "none",
        "fps": "" if opts.fps is None else f"{opts.fps:g}", "sample_rate": str(opts.sample_rate),
        "size": str(opts.size), "crop": str(opts.crop or ""),
    }


def _base_row(item: Item, opts: Options) -> dict[str, str]:
    source = item.where if item.where and item.error else str(item.source)
    times = {} if item.start is None else {"start": f"{item.start:.3f}", "end": f"{item.end:.3f}"}
    return {"source": source, "class": item.cls, "split": str(item.split), "name": item.name,
            "labels": ";".join(item.labels), **times, **_recipe_columns(opts)}


def row_key(row: dict[str, str]) -> str:
    """A manifest row's identity: its source, plus the times of a segment (Item.key of its item)."""
    return _key(row["source"], float(row["start"]), float(row["end"])) if row.get("start") else row["source"]


# manifest column -> the option that sets it; the sample rate is not here: it names the files, so rates coexist
RECIPE_OPTIONS = {"fps": "--fps", "size": "--size", "crop": "--crop", "dtype": "--dtype", "flow_algorithm": "--flow"}


def recipe_conflict(previous: dict[str, dict[str, str]], opts: Options) -> str | None:
    """How the finished arrays of an earlier run differ from what `opts` would write (None if they agree)."""
    want = _recipe_columns(opts)
    for row in previous.values():
        if row.get("status") != "done" or row.get("sample_rate") != want["sample_rate"]:
            continue
        for column, option in RECIPE_OPTIONS.items():
            had, asked = row.get(column, ""), want[column]
            if column == "flow_algorithm" and "none" in (had, asked):
                continue  # adding or leaving out the flow modality is fine
            if column == "flow_algorithm" and recipe_name(had) == recipe_name(asked):
                continue  # tvl1 (PyTorch) and tvl1-opencv give the same flow (tested within 0.02 px)
            if had != asked:
                return f"{option} {had or 'unset'} (now {asked or 'unset'}), e.g. {row['source']}"
    return None


def _encode_frames(frames: np.ndarray, opts: Options) -> np.ndarray:
    """uint8 resized RGB frames -> cropped, model-range, storage-dtype array, a chunk at a time."""
    view = center_crop(frames, opts.crop) if opts.crop else frames
    out = np.empty(view.shape, dtype=np.dtype(opts.dtype))
    for start in range(0, len(view), _CHUNK):
        out[start : start + _CHUNK] = encode_array(to_model_range(view[start : start + _CHUNK]), opts.dtype)
    return out


def _flow_frames(frames: np.ndarray, opts: Options, extractor: FlowExtractor, bar: tqdm | None) -> np.ndarray:
    """Flow of the grayscale resized frames, pair by pair, cropped and stored in the storage dtype."""
    gray = rgb_to_gray(frames)
    h, w = gray.shape[1:]
    ch, cw = (opts.crop, opts.crop) if opts.crop else (h, w)
    out = np.empty((len(gray) - 1, ch, cw, 2), dtype=np.dtype(opts.dtype))
    for i in range(len(gray) - 1):
        flow = extractor.pair(gray[i], gray[i + 1])
        if opts.crop:
            flow = center_crop(flow, opts.crop)
        out[i] = encode_array(flow, opts.dtype)
        if bar is not None:
            bar.update(1)
    return out


_EXTRACTORS: dict[tuple[str, float, str], FlowExtractor] = {}


def _extractor(opts: Options) -> FlowExtractor:
    """One flow object per process and algorithm, reused across items (tvl1 here: on the CPU, one pair at a time)."""
    key = (opts.flow, opts.bound, opts.flow_compile)
    if key not in _EXTRACTORS:
        kwargs = {}
        if opts.flow == "tvl1":
            kwargs = dict(device="cpu", batch_size=1, compile=opts.flow_compile == "yes")
        _EXTRACTORS[key] = FlowExtractor(opts.flow, opts.bound, **kwargs)
    return _EXTRACTORS[key]


def process_item(item: Item, paths: dict[str, Path], opts: Options, show_frames: bool = False) -> dict[str, str]:
    """Decode, resample, resize and write the missing arrays of one item; return its manifest row."""
    return _process(item, paths, opts, show_frames)[0]


def decode_item(item: Item, paths: dict[str, Path], opts: Options) -> tuple[dict[str, str], np.ndarray | None]:
    """Worker half of batched flow: decode, resize, write rgb; return the row and the grayscale frames whose
    flow the parent still has to compute (None when the item failed or needs no flow; the row is then final)."""
    return _process(item, paths, opts, False, flow_outside=True)


def _failure_message(item: Item, exc: Exception, writing: Path | None) -> str:
    """The manifest message of a failed item: the video's own error, a full disk while writing, or anything else."""
    if isinstance(exc, VideoError):
        return str(exc)
    if isinstance(exc, OSError) and writing is not None and is_disk_full(exc):
        return disk_full_message(writing, exc)
    return f"{item.source}: unexpected {type(exc).__name__}: {exc}"


def _process(item: Item, paths: dict[str, Path], opts: Options, show_frames: bool, flow_outside: bool = False
             ) -> tuple[dict[str, str], np.ndarray | None]:
    row = _base_row(item, opts)
    todo = {m: p for m, p in paths.items() if opts.overwrite or not p.exists()}
    bar = None
    writing: Path | None = None
    gray = None
    try:
        stream = FrameStream(item.source, opts.fps, opts.folder_fps)
        if show_frames:
            total = stream.estimated_frames() // opts.sample_rate * (1 + ("flow" in todo))
            bar = tqdm(total=total, desc=item.name[:20], unit="frame", leave=False, position=1)
        kept = []
        for i, frame in enumerate(stream):
            if i % opts.sample_rate == 0:
                kept.append(resize_short_side(frame, opts.size))
                if bar is not None:
                    bar.update(1)
        info = stream.info
        row.update(source_fps=f"{info.fps:.3f}", duration_s=f"{info.duration:.3f}", source_frames=str(info.frame_count))
        if len(kept) < opts.min_frames:
            raise VideoError(
                f"{item.source}: too short, {len(kept)} frame(s) after resampling to {f'{opts.fps:g}' if opts.fps else 'native'} fps "
                f"and sample rate {opts.sample_rate}; at least {opts.min_frames} needed"
            )
        frames = np.stack(kept)
        del kept
        if "rgb" in todo:
            writing = todo["rgb"]
            save_array_atomic(writing, _encode_frames(frames, opts))
        row.update(message=" | ".join(info.warnings), frames_written=str(len(frames)))
        if "flow" in todo and flow_outside:
            return row, rgb_to_gray(frames)
        if "flow" in todo:
            flow = _flow_frames(frames, opts, _extractor(opts), bar)
            writing = todo["flow"]
            save_array_atomic(writing, flow)
        row.update(status="done")
        row.update(_shapes_on_disk(paths))
    except Exception as exc:  # a bad video, a full disk or a bug on one item must not stop the batch
        row.update(status="failed", message=_failure_message(item, exc, writing))
    finally:
        if bar is not None:
            bar.close()
    return row, gray


LABELS_FILE = "labels.txt"


def write_labels(folder: Path, labels: tuple[str, ...]) -> None:
    """An item's label set as <item>/labels.txt (one per line), for items with several labels."""
    folder.mkdir(parents=True, exist_ok=True)
    _write_text_atomic(folder / LABELS_FILE, "".join(f"{lab}\n" for lab in labels))


def output_rate(stream: FrameStream, opts: Options) -> float:
    """Frames per second of what the stream yields under `opts` (segment times map to frames by it)."""
    if stream.kind == "video":
        rate = opts.fps or stream.info.fps
    else:
        rate = opts.fps if opts.folder_fps and opts.fps else (opts.folder_fps or stream.info.fps or opts.fps or 0.0)
    if not rate:
        raise VideoError(f"{stream.path}: its frame rate is unknown, so segment times cannot be mapped to frames; "
                         "pass --fps (or --folder-fps for frame folders)")
    return float(rate)


def _write_item(frames: list[np.ndarray], item: Item, paths: dict[str, Path], opts: Options, row: dict[str, str],
                warnings: list[str]) -> None:
    """Write one cut item's arrays (and labels.txt) and complete its manifest row, or mark it failed."""
    writing: Path | None = None
    try:
        if len(frames) < opts.min_frames:
            span = f" [{item.start:g}, {item.end:g}) s" if item.start is not None else ""
            raise VideoError(f"{item.source}{span}: {len(frames)} frame(s) at sample rate "
                             f"{opts.sample_rate}; at least {opts.min_frames} needed")
        todo = {m: p for m, p in paths.items() if opts.overwrite or not p.exists()}
        if len(item.labels) > 1:
            write_labels(next(iter(paths.values())).parent, item.labels)
        stacked = np.stack(frames)
        if "rgb" in todo:
            writing = todo["rgb"]
            save_array_atomic(writing, _encode_frames(stacked, opts))
        if "flow" in todo:
            flow = _flow_frames(stacked, opts, _extractor(opts), None)
            writing = todo["flow"]
            save_array_atomic(writing, flow)
        row.update(status="done", message=" | ".join(warnings), frames_written=str(len(stacked)))
        row.update(_shapes_on_disk(paths))
    except Exception as exc:  # one bad segment must not stop the others
        row.update(status="failed", message=_failure_message(item, exc, writing))


def process_segments(items: list[Item], paths: list[dict[str, Path]], opts: Options) -> list[dict[str, str]]:
    """Decode one source once and write every item cut from it (segments [start, end) s, or the whole source).

    Output frame k (time k / fps after resampling) belongs to a segment when start <= k / fps < end,
    so a segment of d seconds has round(d * fps) frames, the same frames the whole video's arrays
    hold at those indices. Only frames inside some segment are resized and kept, and each segment
    is written as soon as its last frame is decoded, so memory holds the open segments only.
    """
    rows = [_base_row(item, opts) for item in items]
    buffers: dict[int, list[np.ndarray]] = {j: [] for j in range(len(items))}
    warnings: list[str] = []
    try:
        stream = FrameStream(items[0].source, opts.fps, opts.folder_fps)
        for row in rows:
            row["source_fps"] = f"{stream.info.fps:.3f}"
        rate = output_rate(stream, opts)
        ranges = [frame_range(it.start, it.end, rate) if it.start is not None else (0, None) for it in items]
        last = None if any(b is None for _, b in ranges) else max(b for _, b in ranges)
        frames = iter(stream)
        decoded = 0
        for i, frame in enumerate(frames):
            if last is not None and i >= last:
                break
            decoded = i + 1
            wanted = [j for j in buffers if ranges[j][0] <= i and (i - ranges[j][0]) % opts.sample_rate == 0]
            if wanted:
                small = resize_short_side(frame, opts.size)
                for j in wanted:
                    buffers[j].append(small)
            for j in [j for j in buffers if ranges[j][1] is not None and ranges[j][1] <= i + 1]:
                _write_item(buffers.pop(j), items[j], paths[j], opts, rows[j], warnings)
        if hasattr(frames, "close"):
            frames.close()
        warnings = list(stream.info.warnings)
        length = decoded / rate
        for j in list(buffers):
            item, (first, stop) = items[j], ranges[j]
            if stop is None:
                _write_item(buffers.pop(j), item, paths[j], opts, rows[j], warnings)
            elif first >= decoded:
                buffers.pop(j)
                rows[j].update(status="failed", message=f"{item.where}: segment [{item.start:g}, {item.end:g}) s is "
                                                        f"outside {item.source} ({length:.2f} s long)")
            else:
                note = (f"{item.where}: segment [{item.start:g}, {item.end:g}) s ends after {item.source} "
                        f"({length:.2f} s long); cut to [{item.start:g}, {length:.2f}) s")
                _write_item(buffers.pop(j), item, paths[j], opts, rows[j], [*warnings, note])
    except VideoError as exc:
        for j in buffers:
            rows[j].update(status="failed", message=str(exc))
    except Exception as exc:  # a bug or an OS problem on one video must not stop the batch
        for j in buffers:
            rows[j].update(status="failed", message=f"{items[0].source}: unexpected {type(exc).__name__}: {exc}")
    for row in rows:
        row.setdefault("status", "failed")
    return rows


def _shapes_on_disk(paths: dict[str, Path]) -> dict[str, str]:
    """rgb_shape / flow_shape / dtype read from the .npy headers of existing outputs."""
    row: dict[str, str] = {}
    for modality, path in paths.items():
        if path.exists():
            arr = np.load(path, mmap_mode="r")
            row[f"{modality}_shape"] = _shape_text(arr.shape)
            row["dtype"] = str(arr.dtype)
            if modality == "rgb":
                row["frames_written"] = str(arr.shape[0])
    return row


DISK_FULL = "disk full while writing"
_SHORT_WRITE = re.compile(r"\d+ requested and \d+ written")  # numpy's tofile on a full disk sets no errno


def is_disk_full(exc: OSError) -> bool:
    """Whether a write failed because the disk (or the user's quota) is full."""
    return exc.errno in (errno.ENOSPC, errno.EDQUOT) or (exc.errno is None and bool(_SHORT_WRITE.search(str(exc))))


def disk_full_message(path: Path | None, exc: OSError) -> str:
    """One line saying the disk is full, naming the file being written."""
    where = Path(path).parent if path else Path(".")
    try:
        free = f"; {_gb(_free_bytes(where))} free"
    except OSError:
        free = ""
    return f"{DISK_FULL} {path} ({exc}){free}"


def die_with_parent(parent_pid: int) -> None:
    """End this worker process as soon as the process that started it dies (even by kill -9).

    Linux delivers SIGKILL on the parent's death (prctl PR_SET_PDEATHSIG); elsewhere a daemon thread
    polls the parent pid. Either way a parent that died before the call is caught by the pid check.
    """
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            libc = ctypes.CDLL(None, use_errno=True)
            if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # 1 = PR_SET_PDEATHSIG
                if os.getppid() != parent_pid:
                    os._exit(1)
                return
        except (OSError, AttributeError):
            pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _worker_init(threads: int, parent_pid: int | None = None) -> None:
    if parent_pid is not None:
        die_with_parent(parent_pid)
    set_threads(threads)


def _run_one(job: tuple, show_frames: bool = False) -> dict[str, str] | list[dict[str, str]]:
    """Run one job: (item, paths, opts) of a folder item, or ([items], [paths], opts) cut from one source."""
    items, paths, opts = job
    if not isinstance(items, list):
        return process_item(items, paths, opts, show_frames)
    if len(items) == 1 and items[0].start is None:
        if len(items[0].labels) > 1:
            write_labels(next(iter(paths[0].values())).parent, items[0].labels)
        return [process_item(items[0], paths[0], opts, show_frames)]
    return process_segments(items, paths, opts)


def group_by_source(jobs: list[tuple[Item, dict[str, Path], Options]]) -> list[tuple]:
    """Jobs of items sharing a source merged into one ([items], [paths], opts) job: one decode per video."""
    groups: dict[Path, tuple[list, list, Options]] = {}
    for item, paths, opts in jobs:
        group = groups.setdefault(item.source, ([], [], opts))
        group[0].append(item)
        group[1].append(paths)
    return list(groups.values())


def _write_atomic(path: Path, write, newline: str | None = None) -> None:
    """Call write(f) on a temporary file unique to this process, then rename it to `path`; a full disk is one line."""
    try:
        with atomic_write(path, fsync=False) as tmp, open(tmp, "w", newline=newline) as f:
            write(f)
    except OSError as exc:
        if is_disk_full(exc):
            raise PreprocessError(disk_full_message(path, exc)) from None
        raise


def _decode_one(args: tuple[Item, dict[str, Path], Options]) -> tuple[dict[str, str], np.ndarray | None]:
    return decode_item(*args)


def uses_batched_flow(opts: Options) -> bool:
    """Whether flow is computed in batches in the parent (the PyTorch TV-L1 on a GPU, or any device when
    --flow-batch is given) rather than per item in the workers (OpenCV, and the PyTorch TV-L1 on a CPU: one
    thread per worker scales with cores, where one process's threads synchronise after every small op)."""
    if "flow" not in opts.modalities or opts.flow != "tvl1":
        return False
    from src.device import pick_device

    try:
        return opts.flow_batch > 0 or pick_device(opts.flow_device).type != "cpu"
    except RuntimeError as exc:
        raise PreprocessError(f"--flow-device {opts.flow_device}: {exc}") from None


def flow_extractor(opts: Options, planned_pairs: int = 0) -> FlowExtractor:
    """The batched PyTorch TV-L1 for --flow tvl1, on --flow-device; PreprocessError if that device is unusable."""
    compile_ = {"yes": True, "no": False}.get(opts.flow_compile, "auto")
    try:
        return FlowExtractor(opts.flow, opts.bound, device=opts.flow_device, batch_size=opts.flow_batch,
                             compile=compile_, planned_pairs=planned_pairs)
    except ValueError as exc:
        raise PreprocessError(f"--flow-device {opts.flow_device}: {exc}") from None


@dataclass
class _ClipFlow:
    """An item whose frames are decoded and whose flow pairs are being computed in batches."""

    row: dict[str, str]
    path: Path
    gray: np.ndarray
    out: np.ndarray
    queued: int = 0  # pairs handed to a batch
    done: int = 0  # pairs whose flow is stored in `out`


def _run_batched(jobs: list[tuple[Item, dict[str, Path], Options]], opts: Options, workers: int,
                 record, extractor: FlowExtractor) -> None:
    """Decode items in worker processes while the parent computes their flow in batches of --flow-batch pairs,
    across item boundaries (same frame size), so the flow device never waits for one clip."""
    clips: deque[_ClipFlow] = deque()
    pairs_bar = tqdm(desc=f"flow pairs ({extractor.describe()})", unit="pair", position=1, leave=False)
    jobs_left = iter(jobs)
    paths_of = {str(job[0].source): job[1] for job in jobs}
    inflight: set = set()
    ahead = workers + 2  # decoded items waiting for flow are bounded (memory)

    def refill(pool: ProcessPoolExecutor) -> None:
        while len(inflight) + len(clips) < ahead:
            job = next(jobs_left, None)
            if job is None:
                return
            inflight.add(pool.submit(_decode_one, job))

    def take(future) -> None:
        row, gray = future.result()
        if gray is None:
            record(row)
            return
        crop = (opts.crop, opts.crop) if opts.crop else gray.shape[1:]
        out = np.empty((len(gray) - 1, *crop, 2), dtype=np.dtype(opts.dtype))
        if not len(out):
            finish(_ClipFlow(row, paths_of[row["source"]]["flow"], gray, out))
            return
        clips.append(_ClipFlow(row, paths_of[row["source"]]["flow"], gray, out))
        pairs_bar.total = (pairs_bar.total or 0) + len(out)
        pairs_bar.refresh()

    def waiting_pairs() -> int:
        shape = clips[0].gray.shape[1:] if clips else None
        return sum(len(c.out) - c.queued for c in clips if c.gray.shape[1:] == shape)

    def one_batch() -> None:
        shape = clips[0].gray.shape[1:]
        chosen: list[tuple[_ClipFlow, int]] = []
        for clip in clips:
            while clip.gray.shape[1:] == shape and clip.queued < len(clip.out) and len(chosen) < extractor.batch_size:
                chosen.append((clip, clip.queued))
                clip.queued += 1
        prev = np.stack([c.gray[i] for c, i in chosen])
        nxt = np.stack([c.gray[i + 1] for c, i in chosen])
        try:
            flows = extractor.batch(prev, nxt)
        except Exception as exc:  # a device failure fails these items, the batch goes on
            flows = None
            for clip in {id(c): c for c, _ in chosen}.values():
                clip.row.update(status="failed", message=f"{clip.row['source']}: flow failed: {type(exc).__name__}: {exc}")
                clip.done = clip.queued = len(clip.out)
        if flows is not None:
            for (clip, i), flow in zip(chosen, flows):
                clip.out[i] = encode_array(center_crop(flow, opts.crop) if opts.crop else flow, opts.dtype)
                clip.done += 1
        pairs_bar.update(len(chosen))
        while clips and clips[0].done == len(clips[0].out):
            finish(clips.popleft())
        for clip in [c for c in clips if c.done == len(c.out)]:
            clips.remove(clip)
            finish(clip)

    def finish(clip: _ClipFlow) -> None:
        if clip.row.get("status") != "failed":
            try:
                save_array_atomic(clip.path, clip.out)
                clip.row.update(status="done")
                clip.row.update(_shapes_on_disk(paths_of[clip.row["source"]]))
            except OSError as exc:
                clip.row.update(status="failed", message=f"{clip.row['source']}: writing flow failed: {exc}")
        record(clip.row)

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(1, os.getpid())) as pool:
        try:
            refill(pool)
            while inflight or clips:
                block = waiting_pairs() < extractor.batch_size and inflight
                done, _ = wait(inflight, timeout=None if block else 0, return_when=FIRST_COMPLETED)
                for future in done:
                    inflight.discard(future)
                    take(future)
                refill(pool)
                if clips and (waiting_pairs() >= extractor.batch_size or not inflight):
                    one_batch()
                    refill(pool)
        except BaseException:
            for future in inflight:
                future.cancel()
            raise
        finally:
            pairs_bar.close()


def _write_text_atomic(path: Path, text: str) -> None:
    _write_atomic(path, lambda f: f.write(text))


def write_manifest(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write the manifest CSV atomically, rows sorted by split, class and name."""
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows.values(), key=lambda r: (r["split"], r["class"], natural_key(r["name"]), r["source"])):
            writer.writerow({k: row.get(k, "") for k in MANIFEST_FIELDS})

    _write_atomic(path, write, newline="")


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing manifest keyed by source path (empty if there is none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row_key(row): row for row in csv.DictReader(f)}


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv, or manifest-shard<i>of<n>.csv for a shard of several."""
    i, n = shard
    return "manifest.csv" if n == 1 else f"manifest-shard{i}of{n}.csv"


def merge_shard_manifests(out_dir: Path, n: int) -> Path:
    """Merge the manifest-shard<i>of<n>.csv present into manifest.csv, under the folder's mutex.

    manifest.csv keeps its rows of items that no shard lists (earlier runs, other RAW_DIR content);
    each shard's rows replace the rest. Called by every shard when it ends, so the last one to
    finish leaves manifest.csv complete, and shards running at the same time never lose rows.
    """
    out_dir = Path(out_dir)
    target = out_dir / "manifest.csv"
    with folder_mutex(out_dir, "preprocess"):
        rows = read_manifest(target)
        for i in range(1, n + 1):
            rows.update(read_manifest(out_dir / manifest_name((i, n))))
        write_manifest(target, rows)
    return target


def _prepare_out_dir(out_dir: Path) -> None:
    """Create OUT_DIR, or raise PreprocessError in one line when it cannot be created or written."""
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out_dir):
            pass
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise PreprocessError(f"{out_dir}: OUT_DIR cannot be written ({reason}); choose a folder you can write to") from None


def _output_hw(width: int, height: int, opts: Options) -> tuple[int, int]:
    if opts.crop:
        return opts.crop, opts.crop
    short = min(width, height) or 1
    return round(height * opts.size / short), round(width * opts.size / short)


def estimate_bytes(items: list[Item], opts: Options, sample: int = 32) -> int:
    """Output size estimated from the headers of up to `sample` items, scaled to all of them."""
    if not items:
        return 0
    chosen = items if len(items) <= sample else random.Random(0).sample(items, sample)
    itemsize = np.dtype(opts.dtype).itemsize
    channels = (3 if "rgb" in opts.modalities else 0) + (2 if "flow" in opts.modalities else 0)
    total = 0
    counted = 0
    for item in chosen:
        try:
            stream = FrameStream(item.source, opts.fps, opts.folder_fps)
            info = probe(item.source) if stream.kind == "folder" else stream.info
            h, w = _output_hw(info.width, info.height, opts)
            frames = stream.estimated_frames()
            if item.start is not None:
                frames = min(frames, round((item.end - item.start) * (opts.fps or info.fps or 25.0)))
            total += frames // opts.sample_rate * h * w * channels * itemsize
            counted += 1
        except VideoError:
            continue
    return int(total / max(counted, 1) * len(items))


def _planned_pairs(items: list[Item], opts: Options, sample: int = 16) -> int:
    """Flow pairs a job will compute, estimated from the headers of up to `sample` items."""
    chosen = items if len(items) <= sample else random.Random(0).sample(items, sample)
    counts = []
    for item in chosen:
        try:
            counts.append(max(0, FrameStream(item.source, opts.fps, opts.folder_fps).estimated_frames() // opts.sample_rate - 1))
        except VideoError:
            continue
    return int(sum(counts) / max(len(counts), 1) * len(items))


def _free_bytes(path: Path) -> int:
    path = Path(path).resolve()
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _gb(n: float) -> str:
    return f"{n / 1e9:.2f} GB"


def run(raw_dir: Path, out_dir: Path, opts: Options, log=print, annotations: Path | None = None) -> int:
    """Pre-process RAW_DIR (or the items an annotation file lists over it) into OUT_DIR; return the failures."""
    opts.validate()
    if "flow" in opts.modalities and opts.flow == "tvl1":
        uses_batched_flow(opts)
        flow_extractor(opts)  # an unusable --flow-device fails here, before anything is written
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.resolve() == raw_dir.resolve() or raw_dir.resolve() in out_dir.resolve().parents:
        raise PreprocessError(f"{out_dir}: OUT_DIR must not be RAW_DIR or inside it (its arrays would be read as input)")
    found = discover_annotations(annotations, raw_dir) if annotations else discover(raw_dir)
    if annotations and not found.presplit:
        found.notes.append(assign_splits_by_source(found.items, opts.val_ratio, opts.seed))
    for note in found.notes[:20]:
        log(f"note: {note}")
    if len(found.notes) > 20:
        log(f"note: ... and {len(found.notes) - 20} more skipped entries")
    if not found.presplit and not annotations:
        assign_splits(found.items, opts.val_ratio, opts.seed)
    _prepare_out_dir(out_dir)
    lock = FolderLock(out_dir, opts.shard, "preprocess", "pre-process.py")
    try:
        lock.acquire(when_alone=lambda: _remove_stale_temp_files(out_dir))
    except LockError as exc:
        raise PreprocessError(str(exc)) from None
    except OSError as exc:  # e.g. ENOLCK: a file system without locks; go on as before locks existed
        log(f"warning: {out_dir}: cannot be locked ({exc.strerror or exc}); do not run two pre-process.py into it at once")
    try:
        failures = _run_locked(raw_dir, out_dir, opts, log, found, annotations)
    finally:
        lock.release()
    if opts.shard[1] > 1:
        log(f"merged the shard manifests present into {merge_shard_manifests(out_dir, opts.shard[1])}")
    return failures


def _remove_stale_temp_files(out_dir: Path) -> None:
    """Delete temporary classes.txt / manifest files at OUT_DIR's top: called only when no other run is on it."""
    for tmp in out_dir.glob(f"*{PARTIAL_SUFFIX}"):
        tmp.unlink(missing_ok=True)


def _run_locked(raw_dir: Path, out_dir: Path, opts: Options, log, found: Discovery,
                annotations: Path | None = None) -> int:
    """The body of `run`, once OUT_DIR is locked for this shard."""
    manifest_path = out_dir / manifest_name(opts.shard)
    previous = read_manifest(manifest_path)
    conflict = None if opts.overwrite else recipe_conflict(previous, opts)
    if conflict:
        raise PreprocessError(f"{out_dir}: its arrays were made with {conflict}; mixing recipes in one dataset "
                              "would skip those items silently; use another OUT_DIR or --overwrite")
    classes_text = "".join(f"{c}\n" for c in found.classes)
    classes_path = out_dir / "classes.txt"
    if classes_path.exists() and classes_path.read_text() != classes_text and not opts.overwrite:
        raise PreprocessError(
            f"{classes_path} exists with different classes than {raw_dir} holds; use another OUT_DIR or --overwrite"
        )
    try:
        _write_text_atomic(classes_path, classes_text)
    except OSError as exc:
        raise PreprocessError(f"{classes_path}: cannot be written ({exc.strerror or exc}); choose an OUT_DIR you can write to") from None

    mine = shard_by_source(found.items, opts.shard) if annotations else shard_items(found.items, opts.shard)
    rows: dict[str, dict[str, str]] = {}
    jobs: list[tuple[Item, dict[str, Path], Options]] = []
    for item in mine:
        paths = output_paths(out_dir, item, opts)
        folder = next(iter(paths.values())).parent
        if folder.is_dir():
            for stale in folder.glob(f"*{PARTIAL_SUFFIX}"):
                stale.unlink()  # left by a killed run; never a complete array
        key = item.key
        if item.error:
            rows[key] = {**_base_row(item, opts), "status": "failed", "message": item.error}
        elif not opts.overwrite and all(p.exists() for p in paths.values()) and (
                len(item.labels) < 2 or (folder / LABELS_FILE).exists()):
            old = previous.get(key)
            rows[key] = old if old and old.get("status") != "failed" else {**_base_row(item, opts), "status": "done", **_shapes_on_disk(paths)}
        else:
            jobs.append((item, paths, opts))
    bad = [it for it in mine if it.error]
    n_split = {s: sum(1 for it in found.items if it.split == s) for s in SPLITS}
    log(
        f"{raw_dir}: {len(found.items)} items in {len(found.classes)} classes "
        f"({', '.join(f'{n} {s}' for s, n in n_split.items() if n)}; split {('kept from ' + ('the annotations' if annotations else 'folders')) if found.presplit else f'by --val-ratio {opts.val_ratio} --seed {opts.seed}'})"
        + (f"; shard {opts.shard[0]}/{opts.shard[1]} has {len(mine)}" if opts.shard[1] > 1 else "")
        + f"; {len(mine) - len(jobs) - len(bad)} already done, {len(jobs)} to do"
        + (f", {len(bad)} unusable" if bad else "")
    )
    if "flow" in opts.modalities and recipe_name(opts.flow) != "tvl1":
        log(f"warning: --flow {opts.flow}: the pretrained I3D flow stream was trained on TV-L1 flow; other flow has different statistics (fine-tune, do not just evaluate)")
    if jobs and opts.disk_check:
        need = estimate_bytes([j[0] for j in jobs], opts)
        free = _free_bytes(out_dir)
        log(f"estimated output {_gb(need)}; {_gb(free)} free at {out_dir}")
        if need > free:
            raise PreprocessError(
                f"{out_dir}: about {_gb(need)} needed but only {_gb(free)} free; free space, use --dtype uint8 or "
                "--crop 224, or pass --no-disk-check"
            )

    failures = sum(1 for r in rows.values() if r.get("status") == "failed")
    for r in rows.values():
        if r.get("status") == "failed":
            log(f"FAILED {r['message']}")
    last_save = time.monotonic()
    bar = tqdm(total=len(jobs), desc="items", unit="item", position=0)
    work = group_by_source(jobs) if annotations else jobs
    workers = min(opts.workers, max(1, len(work)))

    def save_manifest() -> None:
        write_manifest(manifest_path, {**previous, **rows})  # a full disk raises PreprocessError

    def record(result: dict[str, str] | list[dict[str, str]]) -> None:
        for row in result if isinstance(result, list) else [result]:
            record_row(row)

    def record_row(row: dict[str, str]) -> None:
        nonlocal failures, last_save
        rows[row_key(row)] = row
        if row["status"] == "failed":
            failures += 1
            bar.write(f"FAILED {row['message']}")
            if row["message"].startswith(DISK_FULL):  # every later item would fail the same way
                raise PreprocessError(f"{row['message']}; free some space, then rerun the same command to resume")
        elif row.get("message"):
            bar.write(f"warning: {row['message']}")
        bar.update(1)
        if time.monotonic() - last_save > 10:
            save_manifest()
            last_save = time.monotonic()

    try:
        segmented = any(item.start is not None for item, _, _ in jobs)  # cut jobs decode a source once
        if jobs and not segmented and uses_batched_flow(opts):
            for item, paths, _ in jobs:
                if len(item.labels) > 1:
                    write_labels(next(iter(paths.values())).parent, item.labels)
            set_threads(os.cpu_count() or 1)  # the parent computes flow; workers decode with one thread each
            extractor = flow_extractor(opts, planned_pairs=_planned_pairs([j[0] for j in jobs], opts))
            if extractor.device.type == "cpu" and extractor.compiled:
                set_threads(1)  # the compiled kernels measured 5-10x slower on two CPU threads than on one
            bar.write(f"flow: {extractor.describe()}")
            _run_batched(jobs, opts, max(1, min(opts.workers, len(jobs))), record, extractor)
        else:
            if jobs and "flow" in opts.modalities and opts.flow == "tvl1":
                # on the CPU each worker computes its items' flow a pair at a time; compiling is decided once here
                planned = _planned_pairs([j[0] for j in jobs], opts) // workers
                compiled = "yes" if flow_extractor(opts, planned_pairs=planned).compiled else "no"
                work = [(items, paths, replace(o, flow_compile=compiled)) for items, paths, o in work]
                bar.write(f"flow: tvl1 (PyTorch TV-L1 on cpu, {'compiled' if compiled == 'yes' else 'eager'}, "
                          f"a pair at a time in each of {workers} process(es))")
            if workers == 1:
                set_threads(os.cpu_count() or 1)
                for job in work:
                    record(_run_one(job, show_frames=True))
            else:
                threads = max(1, (os.cpu_count() or 1) // workers)
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init,
                                         initargs=(threads, os.getpid())) as pool:
                    futures = [pool.submit(_run_one, job) for job in work]
                    try:
                        for future in as_completed(futures):
                            record(future.result())
                    except BaseException:
                        for f in futures:
                            f.cancel()
                        raise
    finally:
        bar.close()
        # Rows of items outside this run (other RAW_DIR content or removed sources) are kept as they were.
        save_manifest()
    log(f"wrote {manifest_path}: {len(rows) - failures} items ok, {failures} failed")
    return failures
