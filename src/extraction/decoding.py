"""Decoding: each video as a stream of frame chunks (RGB pixels, flow computed on the fly, or a pre-processed item's
arrays), in this process or in decoding processes that run beside the model.

Flow: T frames give T - 1 flows; the batching side repeats the last flow once so the flow stream also
has T frames and shares the RGB windows. With align drop-first (dense_flow's files) the first frame is not sent
to the RGB stream instead: frame t is paired with the flow from t - 1 to t, and both streams have T - 1; with
drop-last (video_features) the last frame is not: frame t is paired with the flow from t to t + 1.
"""
from __future__ import annotations

import os
import queue
from collections.abc import Iterator
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from src.extraction.config import FeatureConfig
from src.extraction.inputs import Video
from src.flow import FlowExtractor, rgb_to_gray
from src.flow.jpeg import flow_through_jpeg
from src.jobs import worker_init
from src.media.transforms import center_crop, finite_frames, jpeg_round_trip, resize_exact, resize_short_side
from src.media.video import FrameStream, VideoError
from src.weights import Recipe

FRAMES_PER_MESSAGE = 32  # frames a decoding worker sends at a time


def _prepare(frame: np.ndarray, recipe: Recipe, cfg: FeatureConfig) -> np.ndarray:
    if cfg.resize_to:
        return resize_exact(frame, *cfg.resize_to, cfg.resize_filter)
    if cfg.force_resize or frame.shape[:2] != (recipe.crop, recipe.crop):
        return resize_short_side(frame, recipe.resize_short_side, cfg.resize_filter)
    return frame


def _centre(frames: np.ndarray, size: int) -> np.ndarray:
    return np.ascontiguousarray(center_crop(frames, size))


def _check_finite(chunk: np.ndarray, path: Path, start: int) -> None:
    """VideoError naming the file and frame when a stored float array holds NaN or infinite values."""
    if chunk.dtype.kind != "f":
        return
    finite = finite_frames(chunk)
    if not finite.all():
        frame = start + int(np.argmin(finite))
        raise VideoError(f"{path}: frame {frame} holds NaN or infinite values; re-make this item with pre-process.py")


def _iter_arrays(video: Video, cfg: FeatureConfig, size: int) -> Iterator[tuple[str, object]]:
    """A pre-processed item: its stored arrays, chunk by chunk, then the end message."""
    missing = [s for s in cfg.streams if s not in video.arrays]
    if missing:
        raise VideoError(f"{video.source}: no {missing[0]} array in this pre-processed item")
    decoding_only = [option for option, on in (("--resize-to", cfg.resize_to), ("--rgb-jpeg", cfg.rgb_jpeg),
                                               ("--flow-jpeg", cfg.flow_jpeg),
                                               ("--resize-filter", cfg.resize_filter != "bilinear")) if on]
    if decoding_only:
        raise VideoError(f"{video.source}: a pre-processed item's arrays are resized and stored already; "
                         f"{', '.join(decoding_only)} apply to videos and frame folders")
    lengths = {}
    for stream in cfg.streams:
        arr = np.load(video.arrays[stream], mmap_mode="r", allow_pickle=False)
        first = 1 if stream == "rgb" and cfg.align == "drop-first" else 0  # the flow array has T - 1 already
        stop = len(arr) - 1 if stream == "rgb" and cfg.align == "drop-last" else len(arr)
        lengths[stream] = stop - first
        for start in range(first, stop, FRAMES_PER_MESSAGE):
            chunk = np.asarray(arr[start:min(start + FRAMES_PER_MESSAGE, stop)])
            _check_finite(chunk, video.arrays[stream], start)
            yield stream, _centre(chunk, size) if cfg.crops == 1 else chunk
    frames = lengths.get("rgb", lengths.get("flow", 0) + (cfg.align == "repeat-last"))
    fps = video.array_fps or cfg.fps or 25.0
    yield "end", {"frames": frames, "fps": fps, "warnings": []}


def iter_source(video: Video, cfg: FeatureConfig, recipes: dict[str, Recipe],
                flow_elsewhere: bool = False) -> Iterator[tuple[str, object]]:
    """Messages for one video: ('rgb' | 'flow', chunk) ... then ('end', {'frames', 'fps', 'warnings'}).

    RGB chunks are uint8 pixels (or a pre-processed array's stored values), flow chunks float32 in
    [-1, 1]; with one crop they are already centre-cropped to save copying. With `flow_elsewhere` the flow
    is left to the parent (src.extraction.flow_stage): ('gray', frames) chunks come instead, each
    starting with the previous chunk's last frame, so chunk k gives the flows of its consecutive frames.
    """
    recipe = recipes.get("rgb") or recipes["flow"]
    size = recipe.crop
    one = cfg.crops == 1
    if video.arrays:
        yield from _iter_arrays(video, cfg, size)
        return
    fps = cfg.fps
    stream = FrameStream(video.source, fps)
    flow = FlowExtractor(recipes["flow"].flow_algorithm, device=cfg.flow_device or cfg.device or "auto") \
        if "flow" in cfg.streams and not flow_elsewhere else None
    pending: list[np.ndarray] = []
    previous_gray = None
    held = None  # drop-last: the latest frame, sent to the RGB stream only once a later one comes
    count = 0
    drop_first, drop_last = cfg.align == "drop-first", cfg.align == "drop-last"

    def emit() -> Iterator[tuple[str, np.ndarray]]:
        nonlocal previous_gray, held
        frames = np.stack(pending)
        pending.clear()
        if "rgb" in cfg.streams:
            rgb = frames[1:] if drop_first and count == len(frames) else frames  # the first chunk
            if drop_last:
                rgb = rgb if held is None else np.concatenate([held[None], rgb])
                held, rgb = rgb[-1], rgb[:-1]
            if cfg.rgb_jpeg and len(rgb):  # the stored frames; the flow is computed before any JPEG, as dense_flow
                rgb = jpeg_round_trip(rgb)
            if len(rgb):
                yield "rgb", _centre(rgb, size) if one else rgb
        if "flow" in cfg.streams:
            gray = rgb_to_gray(frames)
            sequence = gray if previous_gray is None else np.concatenate([previous_gray[None], gray])
            previous_gray = gray[-1]
            if len(sequence) > 1 and flow is None:
                yield "gray", sequence
            elif len(sequence) > 1:
                if cfg.flow_jpeg:
                    flows = flow_through_jpeg(flow.raw_batch(sequence[:-1], sequence[1:]), flow.bound)
                else:
                    flows = flow(sequence)
                yield "flow", _centre(flows, size) if one else flows

    for i, frame in enumerate(stream):
        if i % recipe.sample_rate:
            continue
        pending.append(_prepare(frame, recipe, cfg))
        count += 1
        if len(pending) == FRAMES_PER_MESSAGE:
            yield from emit()
    if pending:
        yield from emit()
    if count == 0:
        raise VideoError(f"{video.source}: no frames could be decoded")
    if ("flow" in cfg.streams or drop_first or drop_last) and count < 2:
        why = "flow needs" if "flow" in cfg.streams else \
            f"--align {cfg.align} (the {'first' if drop_first else 'last'} frame is not used) needs"
        raise VideoError(f"{video.source}: {why} at least 2 frames, got {count}")
    native = stream.info.fps if stream.kind == "video" else 0.0
    rate = (fps or native or 25.0) / recipe.sample_rate
    yield "end", {"frames": count - drop_first - drop_last, "fps": rate, "warnings": list(stream.info.warnings)}


def decode_failure(video: Video, exc: Exception) -> str:
    """One line saying why a video could not be decoded."""
    if isinstance(exc, VideoError):
        return str(exc)
    return f"{video.source}: unexpected {type(exc).__name__}: {exc}"


def decoding_worker(tasks, results, cfg: FeatureConfig, threads: int, parent_pid: int,
                    flow_elsewhere: bool = False) -> None:
    """Decoding process: take (index, Video, recipes) tasks, put (index, message) results; None ends it.

    It ends with its parent (even a parent killed with SIGKILL), instead of blocking on a full queue for good.
    """
    # the model's threads come first: a preempted thread stalls every parallel op of the model, while
    # decoding has slack (it is far faster than the model), and when flow is the bottleneck the model waits anyway
    worker_init(threads, parent_pid, nice=10)
    while (task := tasks.get()) is not None:
        index, video, recipes = task
        results.put((index, ("start", os.getpid())))
        try:
            for message in iter_source(video, cfg, recipes, flow_elsewhere):
                results.put((index, message))
        except Exception as exc:  # one broken input must not stop the others
            results.put((index, ("failed", decode_failure(video, exc))))


class Decoders:
    """Decoding processes (spawned, one OpenCV/torch thread share each), started before the model loads.

    They report ('start', pid) before each video, so a process that dies fails only the video it was decoding.
    """

    def __init__(self, cfg: FeatureConfig, count: int, flow_elsewhere: bool = False) -> None:
        self.ctx = get_context("spawn")
        self.cfg, self.flow_elsewhere = cfg, flow_elsewhere
        self.tasks, self.results = self.ctx.Queue(), self.ctx.Queue(maxsize=4 * count + 4)
        self.threads = max(1, (os.cpu_count() or 1) // (count + 1))
        self.workers: list = []
        self.on_worker: dict[int, int] = {}  # pid -> index of the video it decodes (-1: none)
        self.respawns_left = 0
        for _ in range(count):
            self.spawn()

    def spawn(self) -> None:
        """Start one more decoding process."""
        proc = self.ctx.Process(target=decoding_worker, daemon=True,
                                args=(self.tasks, self.results, self.cfg, self.threads, os.getpid(),
                                      self.flow_elsewhere))
        proc.start()
        self.workers.append(proc)

    def submit(self, tasks: list[tuple[int, Video, dict[str, Recipe]]]) -> None:
        """Queue the videos, then one end marker per process (a replacement adds its own)."""
        self.respawns_left = len(tasks)  # bounded: a decoder that cannot even start must not loop forever
        for task in tasks:
            self.tasks.put(task)
        for _ in self.workers:
            self.tasks.put(None)

    def get(self, timeout: float) -> tuple[int, str, object] | None:
        """The next (video index, kind, payload) a decoder sent, or None if none came within `timeout` seconds."""
        while True:
            try:
                index, (kind, payload) = self.results.get(timeout=timeout)
            except queue.Empty:
                return None
            if kind == "start":
                self.on_worker[payload] = index
                continue
            if kind in ("end", "failed"):
                self.on_worker.update({pid: -1 for pid, i in self.on_worker.items() if i == index})
            return index, kind, payload

    def reap(self) -> list[tuple[int, int]]:
        """(video index or -1, exit code) of each process that died since the last call; a replacement is started."""
        lost = []
        for proc in list(self.workers):
            if proc.is_alive() or proc.exitcode == 0:
                continue
            self.workers.remove(proc)
            lost.append((self.on_worker.pop(proc.pid, -1), proc.exitcode))
            if self.respawns_left > 0:
                self.respawns_left -= 1
                self.spawn()  # the replacement takes the tasks still queued
                self.tasks.put(None)
        return lost

    def any_alive(self) -> bool:
        """Whether a decoding process is still running."""
        return any(proc.is_alive() for proc in self.workers)

    def close(self) -> None:
        """Stop every process still running."""
        for proc in self.workers:
            if proc.is_alive():
                proc.terminate()
            proc.join(timeout=5)
