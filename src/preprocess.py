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
import os
import random
import shutil
import time
from collections import deque
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, as_completed, wait
from dataclasses import dataclass, field, replace
from multiprocessing import get_context
from pathlib import Path

import numpy as np
from tqdm import tqdm

from src.arrays import PARTIAL_SUFFIX, save_array_atomic
from src.flow import FlowExtractor, recipe_name, rgb_to_gray, set_threads
from src.transforms import DTYPES, center_crop, encode_array, resize_short_side, to_model_range
from src.video import FrameStream, VideoError, is_frame_folder, is_hidden, is_video_file, natural_key, probe

SPLITS = ("train", "val", "test")
MODALITIES = ("rgb", "flow")
MANIFEST_FIELDS = [
    "source", "class", "split", "name", "status", "source_fps", "duration_s", "source_frames",
    "frames_written", "rgb_shape", "flow_shape", "dtype", "flow_algorithm", "fps", "sample_rate",
    "size", "crop", "message",
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
        if self.dtype not in DTYPES:
            raise PreprocessError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype}")
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


def output_paths(out_dir: Path, item: Item, opts: Options) -> dict[str, Path]:
    """Where each requested modality of an item is stored."""
    folder = Path(out_dir) / str(item.split) / item.cls / item.name
    return {m: folder / f"{m}-SampleRate_{opts.sample_rate}.npy" for m in opts.modalities}


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
    return {"source": str(item.source), "class": item.cls, "split": str(item.split), "name": item.name,
            **_recipe_columns(opts)}


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


def _process(item: Item, paths: dict[str, Path], opts: Options, show_frames: bool, flow_outside: bool = False
             ) -> tuple[dict[str, str], np.ndarray | None]:
    row = _base_row(item, opts)
    todo = {m: p for m, p in paths.items() if opts.overwrite or not p.exists()}
    bar = None
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
            save_array_atomic(todo["rgb"], _encode_frames(frames, opts))
        row.update(message=" | ".join(info.warnings), frames_written=str(len(frames)))
        if "flow" in todo and flow_outside:
            return row, rgb_to_gray(frames)
        if "flow" in todo:
            save_array_atomic(todo["flow"], _flow_frames(frames, opts, _extractor(opts), bar))
        row.update(status="done")
        row.update(_shapes_on_disk(paths))
    except VideoError as exc:
        row.update(status="failed", message=str(exc))
    except Exception as exc:  # a bug or an OS problem on one item must not stop the batch
        row.update(status="failed", message=f"{item.source}: unexpected {type(exc).__name__}: {exc}")
    finally:
        if bar is not None:
            bar.close()
    return row, gray


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


def _worker_init(threads: int) -> None:
    set_threads(threads)


def _run_one(args: tuple[Item, dict[str, Path], Options]) -> dict[str, str]:
    return process_item(*args)


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

    with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(1,)) as pool:
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
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    tmp.write_text(text)
    os.replace(tmp, path)


def write_manifest(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write the manifest CSV atomically, rows sorted by split, class and name."""
    tmp = path.with_name(path.name + PARTIAL_SUFFIX)
    with open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows.values(), key=lambda r: (r["split"], r["class"], natural_key(r["name"]), r["source"])):
            writer.writerow({k: row.get(k, "") for k in MANIFEST_FIELDS})
    os.replace(tmp, path)


def read_manifest(path: Path) -> dict[str, dict[str, str]]:
    """Rows of an existing manifest keyed by source path (empty if there is none)."""
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["source"]: row for row in csv.DictReader(f)}


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv, or manifest-shard<i>of<n>.csv for a shard of several."""
    i, n = shard
    return "manifest.csv" if n == 1 else f"manifest-shard{i}of{n}.csv"


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
            total += stream.estimated_frames() // opts.sample_rate * h * w * channels * itemsize
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


def run(raw_dir: Path, out_dir: Path, opts: Options, log=print) -> int:
    """Pre-process RAW_DIR into OUT_DIR; return the number of failed items."""
    opts.validate()
    if "flow" in opts.modalities and opts.flow == "tvl1":
        uses_batched_flow(opts)
        flow_extractor(opts)  # an unusable --flow-device fails here, before anything is written
    raw_dir, out_dir = Path(raw_dir), Path(out_dir)
    if out_dir.resolve() == raw_dir.resolve() or raw_dir.resolve() in out_dir.resolve().parents:
        raise PreprocessError(f"{out_dir}: OUT_DIR must not be RAW_DIR or inside it (its arrays would be read as input)")
    found = discover(raw_dir)
    for note in found.notes[:20]:
        log(f"note: {note}")
    if len(found.notes) > 20:
        log(f"note: ... and {len(found.notes) - 20} more skipped entries")
    if not found.presplit:
        assign_splits(found.items, opts.val_ratio, opts.seed)
    manifest_path = out_dir / manifest_name(opts.shard)
    previous = read_manifest(manifest_path)
    conflict = None if opts.overwrite else recipe_conflict(previous, opts)
    if conflict:
        raise PreprocessError(f"{out_dir}: its arrays were made with {conflict}; mixing recipes in one dataset "
                              "would skip those items silently; use another OUT_DIR or --overwrite")
    out_dir.mkdir(parents=True, exist_ok=True)
    classes_text = "".join(f"{c}\n" for c in found.classes)
    classes_path = out_dir / "classes.txt"
    if classes_path.exists() and classes_path.read_text() != classes_text and not opts.overwrite:
        raise PreprocessError(
            f"{classes_path} exists with different classes than {raw_dir} holds; use another OUT_DIR or --overwrite"
        )
    _write_text_atomic(classes_path, classes_text)

    mine = shard_items(found.items, opts.shard)
    rows: dict[str, dict[str, str]] = {}
    jobs: list[tuple[Item, dict[str, Path], Options]] = []
    for item in mine:
        paths = output_paths(out_dir, item, opts)
        folder = next(iter(paths.values())).parent
        if folder.is_dir():
            for stale in folder.glob(f"*{PARTIAL_SUFFIX}"):
                stale.unlink()  # left by a killed run; never a complete array
        key = str(item.source)
        if item.error:
            rows[key] = {**_base_row(item, opts), "status": "failed", "message": item.error}
        elif not opts.overwrite and all(p.exists() for p in paths.values()):
            old = previous.get(key)
            rows[key] = old if old and old.get("status") != "failed" else {**_base_row(item, opts), "status": "done", **_shapes_on_disk(paths)}
        else:
            jobs.append((item, paths, opts))
    n_split = {s: sum(1 for it in found.items if it.split == s) for s in SPLITS}
    log(
        f"{raw_dir}: {len(found.items)} items in {len(found.classes)} classes "
        f"({', '.join(f'{n} {s}' for s, n in n_split.items() if n)}; split {'kept from folders' if found.presplit else f'by --val-ratio {opts.val_ratio} --seed {opts.seed}'})"
        + (f"; shard {opts.shard[0]}/{opts.shard[1]} has {len(mine)}" if opts.shard[1] > 1 else "")
        + f"; {len(mine) - len(jobs)} already done, {len(jobs)} to do"
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
    workers = min(opts.workers, max(1, len(jobs)))
    bar = tqdm(total=len(jobs), desc="items", unit="item", position=0)

    def record(row: dict[str, str]) -> None:
        nonlocal failures, last_save
        rows[row["source"]] = row
        if row["status"] == "failed":
            failures += 1
            bar.write(f"FAILED {row['message']}")
        elif row.get("message"):
            bar.write(f"warning: {row['message']}")
        bar.update(1)
        if time.monotonic() - last_save > 10:
            write_manifest(manifest_path, {**previous, **rows})
            last_save = time.monotonic()

    try:
        if jobs and uses_batched_flow(opts):
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
                jobs = [(item, paths, replace(o, flow_compile=compiled)) for item, paths, o in jobs]
                bar.write(f"flow: tvl1 (PyTorch TV-L1 on cpu, {'compiled' if compiled == 'yes' else 'eager'}, "
                          f"a pair at a time in each of {workers} process(es))")
            if workers == 1:
                set_threads(os.cpu_count() or 1)
                for job in jobs:
                    record(process_item(*job, show_frames=True))
            else:
                threads = max(1, (os.cpu_count() or 1) // workers)
                with ProcessPoolExecutor(workers, mp_context=get_context("spawn"), initializer=_worker_init, initargs=(threads,)) as pool:
                    futures = [pool.submit(_run_one, job) for job in jobs]
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
        write_manifest(manifest_path, {**previous, **rows})
    log(f"wrote {manifest_path}: {len(rows) - failures} items ok, {failures} failed")
    return failures
