"""Features of a whole dataset: sliding windows over every video, one array per video and stream.

Layout written under OUT_DIR (NAME = the input's path relative to the INPUT folder, without extension):
    NAME_rgb.npy, NAME_flow.npy     (T', C) or (T', crops, C); (T', C, t, h, w) ... with pool=False
    NAME_rgb+flow.npy               the two streams side by side on the last feature axis (RGB first)
    NAME_times.npy                  (T',) start of each window in seconds (per-frame: the frame's time)
    features.csv                    one row per video: recipe, shapes, status
Windows: starts 0, S, 2S, ... while start + W <= T, so T' = (T - W) // S + 1 (the tail is dropped);
a clip shorter than W gives one window of all its frames; per-frame gives T rows, row t from the
window of W frames starting at t - W // 2, padded at the ends by repeating the end frame or by zeros.
Flow: T frames give T - 1 flows; the last flow is repeated once so the flow stream also has T frames
and shares the RGB windows (window s uses flows s .. s + W - 1, i.e. frames s .. s + W).
"""
from __future__ import annotations

import csv
import glob
import io
import os
import queue
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from src.jobs.files import PARTIAL_SUFFIX, atomic_write, save_array_atomic
from src.media.video import FrameStream, VideoError, is_frame_folder, is_hidden, is_video_file, natural_key
from src.model import ENDPOINTS
from src.weights import RGB_RECIPE, Recipe, flow_recipe

STREAMS = ("rgb", "flow")
CROPS = (1, 5, 10)
CSV_NAME = "features.csv"
CSV_FIELDS = ["name", "file", "stream", "frames", "fps", "T'", "window", "stride", "crops", "status", "recipe", "outputs",
              "message"]
CHUNK = 32  # frames a decoding worker sends at a time
CROP_NAMES = ("centre", "top-left", "top-right", "bottom-left", "bottom-right")


class ExtractionError(ValueError):
    """A problem with the whole job (inputs, options, output folder), as one sentence."""


@dataclass
class Config:
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
        if self.window < 1:
            raise ExtractionError(f"--window must be 1 or more frames, got {self.window}")
        if self.stride < 1:
            raise ExtractionError(f"--stride must be 1 or more frames, got {self.stride}")
        if self.fps is not None and self.fps != "recipe" and not self.fps > 0:
            raise ExtractionError(f"--fps must be positive or 'native', got {self.fps}")
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
        if self.batch < 1:
            raise ExtractionError(f"--batch must be 1 or more, got {self.batch}")
        if self.dtype not in ("float32", "float16"):
            raise ExtractionError(f"--dtype must be float32 or float16, got {self.dtype}")
        if self.workers < 0:
            raise ExtractionError(f"--workers must be 0 or more, got {self.workers}")
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


# ----- windows and crops (pure functions, documented in the README)

def window_count(frames: int, window: int, stride: int, per_frame: bool = False) -> int:
    """T': per-frame T; else (T - W) // S + 1 windows, and one window for a clip shorter than W (0 for none)."""
    if frames <= 0:
        return 0
    if per_frame:
        return frames
    return (frames - window) // stride + 1 if frames >= window else 1


def window_indices(row: int, frames: int, window: int, stride: int, per_frame: bool) -> np.ndarray:
    """The frame indices of one window; -1 marks zero padding, indices past the ends are clamped (edge)."""
    if per_frame:
        idx = np.arange(row - window // 2, row - window // 2 + window)
        return idx  # the caller clamps (edge) or zeroes out-of-range frames
    start = row * stride
    return np.arange(start, min(start + window, frames))


def window_starts(frames: int, window: int, stride: int, per_frame: bool, fps: float) -> np.ndarray:
    """Seconds at which each row's window starts (per-frame: the row's own frame time), float64 (T',)."""
    n = window_count(frames, window, stride, per_frame)
    step = 1 if per_frame else stride
    return np.arange(n, dtype=np.float64) * step / fps


def crop_boxes(height: int, width: int, size: int, crops: int) -> list[tuple[int, int, bool]]:
    """(top, left, flipped) of each crop: centre; for 5, then the four corners TL, TR, BL, BR; 10 adds their flips."""
    if height < size or width < size:
        raise ValueError(f"cannot crop {size}x{size} from {width}x{height} frames")
    centre = ((height - size) // 2, (width - size) // 2)
    boxes = [centre]
    if crops >= 5:
        boxes += [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size)]
    out = [(top, left, False) for top, left in boxes]
    if crops == 10:
        out += [(top, left, True) for top, left in boxes]
    return out


class Windower:
    """Collects one stream's frames as they are decoded and hands out each window once its frames are in."""

    def __init__(self, window: int, stride: int, per_frame: bool, pad: str) -> None:
        self.window, self.stride, self.per_frame, self.pad = window, stride, per_frame, pad
        self.frames: list[np.ndarray] = []  # frames[i] is frame offset + i
        self.offset = 0
        self.count = 0  # frames received
        self.next_row = 0
        self.first: np.ndarray | None = None  # kept for edge padding at the start

    def _needed_end(self, row: int) -> int:
        """One past the last frame index that row's window reads (ignoring the end of the clip)."""
        if self.per_frame:
            return row - self.window // 2 + self.window
        return row * self.stride + self.window

    def _take(self, row: int, total: int | None) -> np.ndarray:
        idx = window_indices(row, total if total is not None else self.count, self.window, self.stride,
                             self.per_frame)
        last = self.count - 1
        parts = []
        for i in idx:
            if 0 <= i <= last:
                parts.append(self.frames[i - self.offset])
            elif self.pad == "zero" and self.per_frame:
                parts.append(None)
            else:
                parts.append(self.first if i < 0 else self.frames[last - self.offset])
        if any(p is None for p in parts):
            # zero in model range (mid grey, no motion): uint8 frames go to float first
            parts = [None if p is None else (p.astype(np.float32) / 255 * 2 - 1 if p.dtype == np.uint8
                                             else p.astype(np.float32)) for p in parts]
            like = next(p for p in parts if p is not None)
            parts = [np.zeros_like(like) if p is None else p for p in parts]
        return np.stack(parts)

    def push(self, chunk: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """Add frames; return the (row, window) pairs now complete."""
        if self.first is None and len(chunk):
            self.first = chunk[0]
        self.frames.extend(chunk)
        self.count += len(chunk)
        ready = []
        while self._needed_end(self.next_row) <= self.count:
            ready.append((self.next_row, self._take(self.next_row, None)))
            self.next_row += 1
        self._trim()
        return ready

    def _trim(self) -> None:
        if self.per_frame:
            keep_from = self.next_row - self.window // 2
        else:
            keep_from = self.next_row * self.stride
        keep_from = min(max(keep_from, 0), self.count - 1)
        if keep_from > self.offset:
            del self.frames[:keep_from - self.offset]
            self.offset = keep_from

    def finish(self) -> list[tuple[int, np.ndarray]]:
        """The windows left once the clip has ended (end padding, or the one window of a short clip)."""
        total = self.count
        rows = window_count(total, self.window, self.stride, self.per_frame)
        out = [(row, self._take(row, total)) for row in range(self.next_row, rows)]
        self.next_row = rows
        return out


# ----- inputs

@dataclass
class Video:
    """One input to extract: a video file, a frame folder, or a pre-processed item's arrays."""

    source: Path
    name: str  # output stem relative to OUT_DIR, '/'-separated
    arrays: dict[str, Path] = field(default_factory=dict)  # pre-processed: stream -> .npy
    array_fps: float | None = None
    error: str | None = None


def _is_preprocessed(folder: Path) -> bool:
    return (folder / "manifest.csv").is_file() or any(folder.glob("manifest-shard*of*.csv"))


def _preprocessed_items(root: Path) -> list[Video]:
    """Items of a pre-process.py output folder (split/class/item/{rgb,flow}-SampleRate_n.npy)."""
    from src.dataset import find_array

    fps_by_source: dict[str, str] = {}
    for manifest in sorted(root.glob("manifest*.csv")):
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                fps_by_source[f"{row.get('split')}/{row.get('class')}/{row.get('name')}"] = \
                    f"{row.get('fps', '')}|{row.get('sample_rate', '1')}|{row.get('source_fps', '')}"
    videos = []
    for folder in sorted((p for p in root.glob("*/*/*") if p.is_dir() and not is_hidden(p)),
                         key=lambda p: [natural_key(x) for x in p.relative_to(root).parts]):
        arrays = {s: find_array(folder, s, None) for s in STREAMS}
        arrays = {s: p for s, p in arrays.items() if p is not None}
        if not arrays:
            continue
        name = folder.relative_to(root).as_posix()
        fps_text, rate, source_fps = (fps_by_source.get(name, "") or "||").split("|")
        fps = float(fps_text) if fps_text else (float(source_fps) if source_fps else None)
        rgb_or_flow = next(iter(arrays.values())).name
        sample_rate = int(rgb_or_flow.split("SampleRate_")[1].split(".")[0]) if "SampleRate_" in rgb_or_flow else 1
        videos.append(Video(folder, name, arrays, (fps / sample_rate) if fps else None))
    return videos


def _media_under(root: Path) -> list[Path]:
    """Videos and frame folders under `root`, recursively (a frame folder is not searched further)."""
    found = []
    for entry in sorted(root.iterdir(), key=lambda p: natural_key(p.name)):
        if is_hidden(entry):
            continue
        if is_video_file(entry):
            found.append(entry)
        elif entry.is_dir():
            found.extend([entry] if is_frame_folder(entry) else _media_under(entry))
    return found


def _stem(path: Path) -> str:
    """An output name: the path without its video extension ('/'-separated); frame folders keep their name."""
    from src.media.video import VIDEO_EXTENSIONS
    return (path.with_suffix("") if path.suffix.lower() in VIDEO_EXTENSIONS else path).as_posix()


def discover(inputs: list[str | Path]) -> list[Video]:
    """Every video of the INPUTs (file, frame folder, folder searched recursively, list file, pre-processed folder)."""
    videos: list[Video] = []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise ExtractionError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix.lower() in (".txt", ".lst", ".list"):
            lines = [line.strip() for line in path.read_text().splitlines()]
            listed = [Path(line) for line in lines if line and not line.startswith("#")]
            if not listed:
                raise ExtractionError(f"{path}: the list names no videos (one path a line)")
            absolute = [Path(os.path.abspath(p)) for p in listed]  # not resolve(): keep symlinks' own names
            common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
            for p, full in zip(listed, absolute):
                video = Video(p, _stem(full.relative_to(common)))
                if not p.exists():
                    video.error = f"{p}: no such file (listed in {path})"
                videos.append(video)
        elif path.is_file():
            videos.append(Video(path, _stem(Path(path.name))))
        elif is_frame_folder(path):
            videos.append(Video(path, path.resolve().name))
        elif _is_preprocessed(path):
            videos.extend(_preprocessed_items(path))
        else:
            media = _media_under(path)
            if not media:
                raise ExtractionError(f"{path}: no videos or frame folders found in it (searched recursively)")
            videos.extend(Video(p, _stem(p.relative_to(path))) for p in media)
    seen: dict[str, Path] = {}
    for video in videos:
        if video.name in seen and video.error is None:
            video.error = f"{video.source}: its output name {video.name!r} clashes with {seen[video.name]}; rename one"
        seen.setdefault(video.name, video.source)
    return videos


def shard_videos(videos: list[Video], shard: tuple[int, int]) -> list[Video]:
    """Shard i of n: every n-th video of the list sorted by output name, from the i-th (same on every machine)."""
    i, n = shard
    ordered = sorted(videos, key=lambda v: (natural_key(v.name), str(v.source)))
    return ordered[i - 1::n]


def shard_from_env(env: dict[str, str] | None = None) -> tuple[int, int] | None:
    """(i, n) from SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT (offset by SLURM_ARRAY_TASK_MIN), else None."""
    env = os.environ if env is None else env
    if "SLURM_ARRAY_TASK_ID" not in env or "SLURM_ARRAY_TASK_COUNT" not in env:
        return None
    try:
        task, count = int(env["SLURM_ARRAY_TASK_ID"]), int(env["SLURM_ARRAY_TASK_COUNT"])
        first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
    except ValueError:
        raise ExtractionError("SLURM_ARRAY_TASK_ID / SLURM_ARRAY_TASK_COUNT are not integers") from None
    i = task - first + 1
    if not 1 <= i <= count:
        raise ExtractionError(f"SLURM array task {task} (min {first}) is outside a count of {count}; "
                              "use --array=0-(N-1) or pass --shard i/n")
    return i, count


def output_paths(out_dir: Path, name: str, cfg: Config) -> dict[str, Path]:
    """Feature files of one video: each stream (or 'rgb+flow' with concat) and 'times'."""
    base = Path(out_dir) / name
    keys = ["rgb+flow"] if cfg.concat else list(cfg.streams)
    paths = {k: base.with_name(f"{base.name}_{k}.npy") for k in keys}
    paths["times"] = base.with_name(f"{base.name}_times.npy")
    return paths


# ----- decoding (runs in worker processes)

def _prepare(frame: np.ndarray, recipe: Recipe, force_resize: bool) -> np.ndarray:
    from src.media.transforms import resize_short_side

    if force_resize or frame.shape[:2] != (recipe.crop, recipe.crop):
        return resize_short_side(frame, recipe.resize_short_side)
    return frame


def _centre(frames: np.ndarray, size: int) -> np.ndarray:
    from src.media.transforms import center_crop
    return np.ascontiguousarray(center_crop(frames, size))


def flow_extractor(algorithm: str, device: str | None):
    """src.flow.FlowExtractor for the algorithm, on `device` where that FlowExtractor takes one (a torch TV-L1)."""
    import inspect

    from src.flow import FlowExtractor
    if device and "device" in inspect.signature(FlowExtractor).parameters:
        return FlowExtractor(algorithm, device=device)
    return FlowExtractor(algorithm)


def iter_source(video: Video, cfg: Config, recipes: dict[str, Recipe]) -> Iterator[tuple[str, object]]:
    """Messages for one video: ('rgb' | 'flow', chunk) ... then ('end', {'frames', 'fps', 'warnings'}).

    RGB chunks are uint8 pixels (or a pre-processed array's stored values), flow chunks float32 in
    [-1, 1]; with one crop they are already centre-cropped to save copying.
    """
    recipe = recipes.get("rgb") or recipes["flow"]
    size = recipe.crop
    one = cfg.crops == 1
    if video.arrays:
        missing = [s for s in cfg.streams if s not in video.arrays]
        if missing:
            raise VideoError(f"{video.source}: no {missing[0]} array in this pre-processed item")
        lengths = {}
        for stream in cfg.streams:
            arr = np.load(video.arrays[stream], mmap_mode="r", allow_pickle=False)
            lengths[stream] = len(arr)
            for start in range(0, len(arr), CHUNK):
                chunk = np.asarray(arr[start:start + CHUNK])
                yield stream, _centre(chunk, size) if one else chunk
        frames = lengths.get("rgb", lengths.get("flow", 0) + 1)
        fps = video.array_fps or cfg.fps or 25.0
        yield "end", {"frames": frames, "fps": fps, "warnings": []}
        return
    fps = cfg.fps
    stream = FrameStream(video.source, fps)
    extractor = flow_extractor(cfg.flow_algorithm or recipes["flow"].flow_algorithm, cfg.device) \
        if "flow" in cfg.streams else None
    pending: list[np.ndarray] = []
    previous_gray = None
    count = 0

    def emit() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal previous_gray
        frames = np.stack(pending)
        pending.clear()
        if "rgb" in cfg.streams:
            yield "rgb", _centre(frames, size) if one else frames
        if extractor is not None:
            from src.flow import rgb_to_gray
            gray = rgb_to_gray(frames)
            sequence = gray if previous_gray is None else np.concatenate([previous_gray[None], gray])
            previous_gray = gray[-1]
            if len(sequence) > 1:
                flow = extractor(sequence)
                yield "flow", _centre(flow, size) if one else flow

    for i, frame in enumerate(stream):
        if i % recipe.sample_rate:
            continue
        pending.append(_prepare(frame, recipe, cfg.force_resize))
        count += 1
        if len(pending) == CHUNK:
            yield from emit()
    if pending:
        yield from emit()
    if count == 0:
        raise VideoError(f"{video.source}: no frames could be decoded")
    if "flow" in cfg.streams and count < 2:
        raise VideoError(f"{video.source}: flow needs at least 2 frames, got {count}")
    native = stream.info.fps if stream.kind == "video" else 0.0
    rate = (fps or native or 25.0) / recipe.sample_rate
    yield "end", {"frames": count, "fps": rate, "warnings": list(stream.info.warnings)}


def _worker(tasks, results, cfg: Config, threads: int) -> None:
    """Decoding process: take (index, Video, recipes) tasks, put (index, message) results; None ends it.

    It also ends when the main process has gone (killed), instead of waiting on the queues forever.
    """
    import cv2
    cv2.setNumThreads(threads)
    torch.set_num_threads(threads)
    # the model's threads come first: a preempted thread stalls every parallel op of the model, while
    # decoding has slack (it is far faster than the model), and when flow is the bottleneck the model waits anyway
    if hasattr(os, "nice"):
        os.nice(10)
    parent = os.getppid()

    def put(message: tuple) -> None:
        while True:
            try:
                results.put(message, timeout=1.0)
                return
            except queue.Full:
                if os.getppid() != parent:
                    raise SystemExit(0) from None

    while True:
        try:
            task = tasks.get(timeout=1.0)
        except queue.Empty:
            if os.getppid() != parent:
                return
            continue
        if task is None:
            return
        index, video, recipes = task
        put((index, ("start", os.getpid())))
        try:
            for message in iter_source(video, cfg, recipes):
                put((index, message))
        except VideoError as exc:
            put((index, ("failed", str(exc))))
        except Exception as exc:  # one broken input must not stop the others
            put((index, ("failed", f"{video.source}: unexpected {type(exc).__name__}: {exc}")))


# ----- the model side

@dataclass
class Pending:
    """One clip waiting for the model: which video, stream, row and crop, and its window of frames."""

    video: int
    stream: str
    row: int
    crop: int
    window: np.ndarray
    box: tuple[int, int, bool]


def to_model_input(windows: list[np.ndarray], boxes: list[tuple[int, int, bool]], size: int, stream: str,
                   device: torch.device) -> torch.Tensor:
    """Crop (and flip) each (t, H, W, C) window and stack them as a float32 (N, C, t, size, size) batch in [-1, 1]."""
    clips = []
    for window, (top, left, flip) in zip(windows, boxes):
        x = torch.from_numpy(np.ascontiguousarray(window[:, top:top + size, left:left + size]))
        clips.append(x.flip(2) if flip else x)
    if len({c.dtype for c in clips}) > 1:  # zero-padded windows are float already
        clips = [_model_range(c) for c in clips]
    x = _model_range(torch.stack(clips).to(device))
    if stream == "flow":
        for i, (_, _, flip) in enumerate(boxes):
            if flip:  # mirrored motion: horizontal flow changes sign
                x[i, ..., 0].neg_()
    return x.permute(0, 4, 1, 2, 3)


def _model_range(x: torch.Tensor) -> torch.Tensor:
    """uint8 pixels (or pre-processed uint8 arrays) as x / 255 * 2 - 1; float arrays are model range already."""
    return x.float() / 255.0 * 2.0 - 1.0 if x.dtype == torch.uint8 else x.float()


@dataclass
class VideoState:
    """What is known about one video while it is in flight."""

    video: Video
    windowers: dict[str, Windower]
    results: dict[str, dict[int, np.ndarray]]
    outstanding: int = 0
    ended: bool = False
    info: dict = field(default_factory=dict)
    failed: str | None = None
    started: float = field(default_factory=time.monotonic)


class Extractor:
    """Runs the streams' models over batches of windows gathered across videos, and writes finished videos."""

    def __init__(self, cfg: Config, out_dir: Path, log=print) -> None:
        from src.device import pick_device

        self.cfg, self.out_dir, self.log = cfg, Path(out_dir), log
        self.device = pick_device(cfg.device)
        self.models, self.recipes, self.path = load_models(cfg, self.device)
        self.queue: dict[tuple, list[Pending]] = {}
        self.states: dict[int, VideoState] = {}
        self.model_seconds = 0.0
        self.windows_run = 0

    def open(self, index: int, video: Video) -> None:
        """Start collecting a video's windows."""
        cfg = self.cfg
        self.states[index] = VideoState(
            video, {s: Windower(cfg.window, cfg.stride, cfg.per_frame, cfg.pad) for s in cfg.streams},
            {s: {} for s in cfg.streams})

    def feed(self, index: int, kind: str, payload) -> list[int]:
        """Take one decoding message; return the indices of videos that are now finished."""
        state = self.states.get(index)
        if state is None or state.failed:
            return []
        if kind == "failed":
            state.failed = str(payload)
            state.ended = True
            return self._drop(index)
        if kind == "end":
            state.info = payload
            ready = {s: w.finish() if s == "rgb" else self._finish_flow(w) for s, w in state.windowers.items()}
            state.ended = True
            for stream, windows in ready.items():
                self._enqueue(index, stream, windows)
        elif kind in state.windowers:
            self._enqueue(index, kind, state.windowers[kind].push(payload))
        return self.run_full()

    @staticmethod
    def _finish_flow(windower: Windower) -> list[tuple[int, np.ndarray]]:
        # T frames gave T - 1 flows: repeat the last so the flow stream has T frames and the RGB windows
        last = windower.frames[-1] if windower.frames else None
        ready = windower.push(np.asarray(last)[None]) if last is not None else []
        return ready + windower.finish()

    def _enqueue(self, index: int, stream: str, windows: list[tuple[int, np.ndarray]]) -> None:
        state = self.states[index]
        size = self.recipes[stream].crop
        for row, window in windows:
            # frames already crop-sized (centre-cropped by the decoder for one crop) give every box at (0, 0)
            boxes = crop_boxes(window.shape[1], window.shape[2], size, self.cfg.crops)
            for crop, box in enumerate(boxes):
                key = (stream, window.shape)
                self.queue.setdefault(key, []).append(Pending(index, stream, row, crop, window, box))
                state.outstanding += 1

    def _drop(self, index: int) -> list[int]:
        for key in list(self.queue):
            self.queue[key] = [p for p in self.queue[key] if p.video != index]
        return [index]

    def run_full(self) -> list[int]:
        """Run every full batch; return videos finished by it."""
        done = []
        for key in list(self.queue):
            while len(self.queue.get(key, [])) >= self.cfg.batch:
                done += self._run(key)
        return done + [i for i, s in self.states.items() if s.ended and s.outstanding == 0 and i not in done]

    def flush(self) -> list[int]:
        """Run every partial batch too (nothing else is coming soon); return videos finished."""
        done = []
        for key in list(self.queue):
            while self.queue.get(key):
                done += self._run(key)
        return done + [i for i, s in self.states.items() if s.ended and s.outstanding == 0 and i not in done]

    def _run(self, key: tuple) -> list[int]:
        stream = key[0]
        batch, self.queue[key] = self.queue[key][:self.cfg.batch], self.queue[key][self.cfg.batch:]
        size = self.recipes[stream].crop
        x = to_model_input([p.window for p in batch], [p.box for p in batch], size, stream, self.device)
        start = time.perf_counter()
        with torch.inference_mode():
            y = self.models[stream].forward_features(x, self.cfg.endpoint)
            if self.cfg.pool:
                y = y.mean(dim=(2, 3, 4))
            y = y.float().cpu().numpy()
        self.model_seconds += time.perf_counter() - start
        self.windows_run += len(batch)
        done = []
        for p, vector in zip(batch, y):
            state = self.states[p.video]
            rows = state.results[p.stream].setdefault(p.row, [None] * self.cfg.crops)
            rows[p.crop] = vector
            state.outstanding -= 1
            if state.ended and state.outstanding == 0:
                done.append(p.video)
        return done

    def arrays(self, index: int) -> dict[str, np.ndarray]:
        """The finished video's feature arrays by output key, and its window times."""
        state, cfg = self.states[index], self.cfg
        info = state.info
        t_prime = window_count(info["frames"], cfg.window, cfg.stride, cfg.per_frame)
        out: dict[str, np.ndarray] = {}
        for stream, rows in state.results.items():
            if sorted(rows) != list(range(t_prime)):
                raise VideoError(f"{state.video.source}: the {stream} stream gave {len(rows)} windows where its "
                                 f"{info['frames']} frames make {t_prime} (rgb and flow arrays of unequal length?)")
            stacked = np.stack([np.stack(rows[r]) for r in range(t_prime)])  # (T', crops, ...)
            out[stream] = stacked[:, 0] if cfg.crops == 1 else stacked
        if cfg.concat:
            axis = -1 if cfg.pool else (2 if cfg.crops > 1 else 1)
            out = {"rgb+flow": np.concatenate([out["rgb"], out["flow"]], axis=axis)}
        out = {k: v.astype(cfg.dtype) for k, v in out.items()}
        out["times"] = window_starts(info["frames"], cfg.window, cfg.stride, cfg.per_frame, info["fps"])
        return out

    def close(self, index: int) -> None:
        """Forget a written video."""
        self.states.pop(index, None)


def load_models(cfg: Config, device: torch.device) -> tuple[dict[str, torch.nn.Module], dict[str, Recipe], str]:
    """Each requested stream's model (fast path or plain), its input recipe, and a line saying which path runs."""
    from src.inference import accelerate
    from src.predict import predictor_from_run
    from src.weights import i3d

    if cfg.checkpoint:
        predictor = predictor_from_run(cfg.checkpoint, device, cfg.precision, cfg.compile)
        missing = [s for s in cfg.streams if s not in predictor.models]
        if missing:
            raise ExtractionError(f"{cfg.checkpoint}: the run has no {missing[0]} stream "
                                  f"(it has {', '.join(predictor.models)}); pass --streams {','.join(predictor.models)}")
        models = {s: predictor.models[s] for s in cfg.streams}
        recipes = {s: predictor.recipes[s] for s in cfg.streams}
        return models, recipes, predictor.path
    models, recipes = {}, {}
    for stream in cfg.streams:
        weights = cfg.weights if stream == "rgb" else cfg.flow_weights
        model = i3d(weights=weights).eval()
        want = 3 if stream == "rgb" else 2
        if model.in_channels != want:
            option = "--weights" if stream == "rgb" else "--flow-weights"
            raise ExtractionError(f"{option} {weights}: a {'flow' if want == 3 else 'RGB'} checkpoint "
                                  f"({model.in_channels} input channels); the {stream} stream needs {want}")
        models[stream] = model
        recipes[stream] = RGB_RECIPE if stream == "rgb" else flow_recipe(cfg.flow_algorithm or "tvl1")
    fast, path = accelerate(models, device, cfg.precision, cfg.compile)
    return fast, recipes, path


# ----- the CSV (shared by concurrent shards through a lock file)

class _Lock:
    """An exclusive lock on DIR/features.csv.lock for the read-merge-write of the CSV (POSIX; a no-op elsewhere)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self):
        self.file = open(self.path, "a")
        try:
            import fcntl
            fcntl.lockf(self.file, fcntl.LOCK_EX)
        except ImportError:
            pass
        return self

    def __exit__(self, *exc) -> None:
        try:
            import fcntl
            fcntl.lockf(self.file, fcntl.LOCK_UN)
        except ImportError:
            pass
        self.file.close()


def read_csv(out_dir: Path) -> dict[str, dict[str, str]]:
    """Rows of DIR/features.csv keyed by the output name (empty if there is none)."""
    path = Path(out_dir) / CSV_NAME
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f) if row.get("name")}


def update_csv(out_dir: Path, rows: dict[str, dict[str, str]]) -> None:
    """Merge rows (keyed by output name) into DIR/features.csv under the lock, writing it atomically."""
    path = Path(out_dir) / CSV_NAME
    with _Lock(path.with_name(CSV_NAME + ".lock")):
        merged = {**read_csv(out_dir), **rows}
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        for key in sorted(merged, key=natural_key):
            writer.writerow({k: merged[key].get(k, "") for k in CSV_FIELDS})
        with atomic_write(path, fsync=False) as tmp:
            tmp.write_text(buffer.getvalue())


def recipe_conflict(previous: dict[str, dict[str, str]], cfg: Config) -> str | None:
    """How finished features in DIR differ from what `cfg` would write (None when they agree)."""
    want = parse_recipe(cfg.recipe_text())
    for row in previous.values():
        if row.get("status") != "ok":
            continue
        had = parse_recipe(row.get("recipe", ""))
        for key in sorted(set(had) & set(want)):  # a stream added or left out is not a conflict
            if had[key] != want[key]:
                option = {"per_frame": "--per-frame", "flow_weights": "--flow-weights"}.get(key, f"--{key}")
                return (f"{option} {had[key]} (now {want[key]}), "
                        f"e.g. {row.get('file')}")
    return None


def check_writable(folder: Path) -> None:
    """Raise ExtractionError unless `folder` exists or can be made, and a file can be written in it."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise ExtractionError(f"{folder}: cannot write there ({exc.strerror or exc})") from None


# ----- the whole job

def resolve_fps(cfg: Config) -> float | None:
    """The frame rate asked for: the option, or the recipe's (25, or a fine-tuned run's input rate)."""
    if cfg.fps != "recipe":
        return cfg.fps
    if cfg.checkpoint:
        import json
        path = Path(cfg.checkpoint) / "config.json"
        try:
            return json.loads(path.read_text()).get("input_fps", RGB_RECIPE.fps)
        except (OSError, ValueError) as exc:
            raise ExtractionError(f"{path}: cannot read the run's config ({exc}); is --checkpoint a train.py run?") from None
    return RGB_RECIPE.fps


@dataclass
class Summary:
    """What a run did."""

    done: int = 0
    skipped: int = 0
    failed: int = 0
    seconds: float = 0.0
    model_seconds: float = 0.0
    windows: int = 0


def _row(video: Video, cfg: Config, status: str, info: dict | None = None, t_prime: int | None = None,
         out_dir: Path | None = None, message: str = "") -> dict[str, str]:
    paths = output_paths(out_dir or Path("."), video.name, cfg)
    info = info or {}
    return {
        "name": video.name, "file": str(video.source), "stream": "rgb+flow" if cfg.concat else ",".join(cfg.streams),
        "frames": str(info.get("frames", "")), "fps": f"{info['fps']:.6g}" if "fps" in info else "",
        "T'": "" if t_prime is None else str(t_prime), "window": str(cfg.window),
        "stride": "1" if cfg.per_frame else str(cfg.stride), "crops": str(cfg.crops), "status": status,
        "recipe": cfg.recipe_text(),
        "outputs": ";".join(p.relative_to(out_dir).as_posix() if out_dir else p.name for p in paths.values()),
        "message": message,
    }


def run(inputs: list[str | Path], out_dir: Path, cfg: Config, log=print) -> Summary:
    """Extract features of every video of the INPUTs into OUT_DIR (this shard's share); return a summary."""
    from tqdm import tqdm

    cfg.validate()
    cfg.fps = resolve_fps(cfg)
    out_dir = Path(out_dir)
    videos = discover(inputs)
    check_writable(out_dir)
    previous = read_csv(out_dir)
    conflict = None if cfg.overwrite else recipe_conflict(previous, cfg)
    if conflict:
        raise ExtractionError(f"{out_dir}: its features were made with {conflict}; use another --out-dir "
                              "or --overwrite")
    mine = shard_videos(videos, cfg.shard)
    summary = Summary()
    todo: list[Video] = []
    rows: dict[str, dict[str, str]] = {}
    for video in mine:
        paths = output_paths(out_dir, video.name, cfg)
        for path in paths.values():
            for stale in path.parent.glob(f"{glob.escape(path.name)}.*{PARTIAL_SUFFIX}"):
                stale.unlink(missing_ok=True)  # left by a killed run; never a complete array
        if video.error:
            rows[video.name] = _row(video, cfg, f"failed: {video.error}", out_dir=out_dir)
            summary.failed += 1
        elif (not cfg.overwrite and previous.get(video.name, {}).get("status") == "ok"
              and all(p.exists() for p in paths.values())):
            summary.skipped += 1
        else:
            todo.append(video)
    shard_note = f"; shard {cfg.shard[0]}/{cfg.shard[1]} has {len(mine)}" if cfg.shard[1] > 1 else ""
    log(f"{len(videos)} videos{shard_note}; {summary.skipped} already done, {len(todo)} to do -> {out_dir}")
    if rows:
        update_csv(out_dir, rows)
    for row in rows.values():
        log(f"FAILED {row['status'][len('failed: '):]}")
    if not todo:
        return summary
    decoders = Decoders(cfg, min(cfg.workers, len(todo))) if cfg.workers else None  # start-up overlaps the model's
    try:
        extractor = Extractor(cfg, out_dir, log)
    except BaseException:
        if decoders:
            decoders.close()
        raise
    log(f"{extractor.path}; streams {','.join(cfg.streams)}, {cfg.crops} crop(s), batch {cfg.batch}")
    start = time.perf_counter()
    bar = tqdm(total=len(todo), unit="video", desc="features", dynamic_ncols=True)

    def finish(index: int) -> None:
        state = extractor.states[index]
        video = state.video
        if state.failed:
            row = _row(video, cfg, f"failed: {state.failed}", out_dir=out_dir)
            summary.failed += 1
            bar.write(f"FAILED {state.failed}")
        else:
            try:
                arrays = extractor.arrays(index)
                paths = output_paths(out_dir, video.name, cfg)
                for key, array in arrays.items():
                    save_array_atomic(paths[key], array)
                t_prime = len(arrays["times"])
                warnings = " | ".join(state.info.get("warnings", []))
                row = _row(video, cfg, "ok", state.info, t_prime, out_dir, warnings)
                summary.done += 1
                if warnings:
                    bar.write(f"warning: {warnings}")
            except VideoError as exc:
                row = _row(video, cfg, f"failed: {exc}", state.info, out_dir=out_dir)
                summary.failed += 1
                bar.write(f"FAILED {exc}")
            except OSError as exc:
                row = _row(video, cfg, f"failed: cannot write its features ({exc})", state.info, out_dir=out_dir)
                summary.failed += 1
                bar.write(f"FAILED {video.source}: cannot write its features ({exc})")
        update_csv(out_dir, {video.name: row})
        extractor.close(index)
        bar.update(1)
        elapsed = time.perf_counter() - start
        bar.set_postfix_str(f"{bar.n / elapsed * 3600:.0f} videos/h", refresh=False)

    try:
        if cfg.workers == 0:
            _run_inline(todo, cfg, extractor, finish)
        else:
            _run_workers(todo, decoders, extractor, finish)
    finally:
        bar.close()
    summary.seconds = time.perf_counter() - start
    summary.model_seconds = extractor.model_seconds
    summary.windows = extractor.windows_run
    log(f"wrote {out_dir / CSV_NAME}: {summary.done} done, {summary.skipped} skipped, {summary.failed} failed "
        f"in {summary.seconds:.1f} s (model {summary.model_seconds:.1f} s, {summary.windows} clips)")
    return summary


def _finish_all(done: list[int], finish) -> None:
    for index in dict.fromkeys(done):
        finish(index)


def _run_inline(todo: list[Video], cfg: Config, extractor: Extractor, finish) -> None:
    for index, video in enumerate(todo):
        extractor.open(index, video)
        try:
            for kind, payload in iter_source(video, cfg, extractor.recipes):
                _finish_all(extractor.feed(index, kind, payload), finish)
        except VideoError as exc:
            _finish_all(extractor.feed(index, "failed", str(exc)), finish)
        except Exception as exc:  # one broken input must not stop the others
            _finish_all(extractor.feed(index, "failed", f"{video.source}: unexpected {type(exc).__name__}: {exc}"),
                        finish)
    _finish_all(extractor.flush(), finish)


def _unpack(message: tuple) -> tuple[int, str, object]:
    index, (kind, payload) = message
    return index, kind, payload


class Decoders:
    """Decoding processes (spawned, one OpenCV/torch thread share each), started before the model loads."""

    def __init__(self, cfg: Config, count: int) -> None:
        from multiprocessing import get_context

        self.ctx = get_context("spawn")
        self.cfg = cfg
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue(maxsize=4 * count + 4)
        self.threads = max(1, (os.cpu_count() or 1) // (count + 1))
        self.workers: list = []
        for _ in range(count):
            self.spawn()

    def spawn(self) -> None:
        """Start one more decoding process."""
        proc = self.ctx.Process(target=_worker, args=(self.tasks, self.results, self.cfg, self.threads), daemon=True)
        proc.start()
        self.workers.append(proc)

    def submit(self, tasks: list[tuple[int, Video, dict[str, Recipe]]]) -> None:
        """Queue the videos, then one end marker per process (a replacement adds its own)."""
        for task in tasks:
            self.tasks.put(task)
        for _ in self.workers:
            self.tasks.put(None)

    def close(self) -> None:
        """Stop every process still running."""
        for proc in self.workers:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)


def _run_workers(todo: list[Video], decoders: Decoders, extractor: Extractor, finish) -> None:
    """Decode in worker processes while the model runs here; a crashed decoder fails its video only."""
    for index, video in enumerate(todo):
        extractor.open(index, video)
    decoders.submit([(index, video, extractor.recipes) for index, video in enumerate(todo)])
    results, workers = decoders.results, decoders.workers

    def spawn() -> None:
        decoders.spawn()
        decoders.tasks.put(None)

    on_worker: dict[int, int] = {}  # pid -> video index being decoded
    crashed = [0]  # bounded respawns: a decoder that cannot even start must not loop forever
    remaining = set(range(len(todo)))

    def settle(done: list[int]) -> None:
        for i in dict.fromkeys(done):
            if i in remaining:
                remaining.discard(i)
                finish(i)

    def handle(index: int, kind: str, payload) -> None:
        if kind == "start":
            on_worker[payload] = index
            return
        if kind in ("end", "failed"):
            on_worker.update({pid: -1 for pid, i in on_worker.items() if i == index})
        settle(extractor.feed(index, kind, payload))

    try:
        while remaining:
            try:
                handle(*_unpack(results.get(timeout=0.05)))
                continue
            except queue.Empty:
                pass
            settle(extractor.flush())  # the decoders are behind: run what is queued meanwhile
            for proc in list(workers):
                if proc.is_alive() or proc.exitcode == 0:
                    continue
                workers.remove(proc)
                lost = on_worker.pop(proc.pid, -1)
                if lost in remaining:
                    settle(extractor.feed(lost, "failed", f"{todo[lost].source}: the decoding process died "
                                                          f"(exit code {proc.exitcode})"))
                if crashed[0] < len(todo):
                    crashed[0] += 1
                    spawn()  # a replacement takes the tasks still queued
            if remaining and not any(proc.is_alive() for proc in workers):
                try:  # whatever the last decoders sent is read before giving up on the rest
                    while True:
                        handle(*_unpack(results.get(timeout=1.0)))
                except queue.Empty:
                    pass
                settle(extractor.flush())
                for i in sorted(remaining):
                    settle(extractor.feed(i, "failed", f"{todo[i].source}: not decoded (no decoding process left)"))
    finally:
        decoders.close()
