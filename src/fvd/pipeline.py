"""The whole FVD job: open both sets, decode their clips in worker processes while the network runs here,
batch across videos, reduce each set to its statistics, and compare them."""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.activations import Embedding, batched_activations
from src.fvd.clips import read_clips
from src.fvd.distance import frechet_distance
from src.fvd.inputs import VideoSet, open_set
from src.fvd.protocol import Protocol
from src.fvd.statistics import Statistics, activation_statistics, load_statistics, save_statistics
from src.jobs import worker_init

log = logging.getLogger(__name__)


@dataclass
class RunOptions:
    """How the job runs: batch, decoding processes, device, model path (None: plain float32; 'fp32': fast), progress."""

    batch: int = 8
    workers: int = 1
    device: str | None = None
    precision: str | None = None
    compile: bool = False
    max_videos: int | None = None
    progress: bool = True


def reader_init(parent_pid: int) -> None:
    """Set up a clip-reading worker: Ctrl-C is the parent's to handle (it reaches the whole process group), and the
    worker dies with the parent."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    worker_init(1, parent_pid)


@contextlib.contextmanager
def interrupts_held() -> Iterator[None]:
    """Ctrl-C held back (not lost) in this thread while worker processes start: they inherit the mask, so none can
    be interrupted before reader_init runs; a held Ctrl-C is delivered here when the block ends."""
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def default_workers() -> int:
    """Decoding processes by default: half the cores (the network uses the rest), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class ClipReaders:
    """Spawned worker processes reading clips, each dying with this process (src.jobs.worker_init)."""

    def __init__(self, count: int):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.count = count
        self.pool = ProcessPoolExecutor(count, mp_context=get_context("spawn"), initializer=reader_init,
                                        initargs=(os.getpid(),)) if count > 0 else None
        # Start the processes now: a spawned worker's imports take seconds, which the first batch would wait for.
        with interrupts_held():
            for _ in range(count):
                self.pool.submit(os.getpid)

    def clips(self, video_set: VideoSet, protocol: Protocol, batch: int = 0) -> Iterator[np.ndarray]:
        """Every clip of the set, (T, H, W, 3), in the set's order; 2 videos per worker read ahead, and at least
        `batch` clips' worth (the next network batch is read while one runs)."""
        if self.pool is None or video_set.array is not None:  # array rows are slices: nothing to decode
            for index, item in enumerate(video_set.items):
                yield from read_clips(item, protocol, index, video_set.array)
            return
        ahead: deque = deque()
        items = iter(enumerate(video_set.items))
        depth = max(2 * self.count, -(-batch // protocol.clips_per_video))
        try:
            while True:
                while len(ahead) < depth:
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    with interrupts_held():  # a submit may start a worker process
                        ahead.append(self.pool.submit(read_clips, nxt[1], protocol, nxt[0]))
                if not ahead:
                    return
                yield from ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()

    def close(self, interrupted: bool = False) -> None:
        """Stop the workers (queued work is cancelled); `interrupted`: end them now, without finishing their video."""
        if self.pool is None:
            return
        if interrupted:
            for process in list((getattr(self.pool, "_processes", None) or {}).values()):
                process.terminate()  # the executor has no public way to stop a task in progress
        self.pool.shutdown(wait=True, cancel_futures=True)


class ValueRange:
    """The range of the pixel values of a set's clips, and whether they were all uint8."""

    def __init__(self) -> None:
        self.low, self.high, self.clips, self.all_uint8 = np.inf, -np.inf, 0, True

    def track(self, clips: Iterator[np.ndarray]) -> Iterator[np.ndarray]:
        """The clips, passed on unchanged, their values' range noted."""
        for clip in clips:
            self.low, self.high = min(self.low, float(clip.min())), max(self.high, float(clip.max()))
            self.clips += 1
            self.all_uint8 &= clip.dtype == np.uint8
            yield clip

    def warn(self, name: str) -> None:
        """Log a warning naming the set if every clip holds only 0 and 1 (uint8): [0, 1] pixels cast to uint8
        without the x255 (float clips in [0, 1] are refused clip by clip in src.fvd.clips)."""
        if self.clips and self.all_uint8 and self.high <= 1:
            log.warning("%s: every value of its %d clips lies in [%d, %d] (uint8): [0, 1] pixels cast to uint8 "
                        "without x255? FVD takes pixels in [0, 255]; this FVD compares near-black videos",
                        name, self.clips, self.low, self.high)


def embed_clips(clips: Iterator[np.ndarray], embedding: Embedding, options: RunOptions, name: str,
                total: int | None = None) -> np.ndarray:
    """Activations (n, d) of the clips through the network in batches, with a progress bar named `name`; a
    warning naming the set if its pixels look like a unit slip (ValueRange)."""
    from tqdm import tqdm

    parts = []
    value_range = ValueRange()
    with tqdm(total=total, desc=name, unit="clip", disable=not options.progress, dynamic_ncols=True) as bar:
        for activations in batched_activations(value_range.track(clips), embedding, options.batch):
            parts.append(activations)
            bar.update(len(activations))
    value_range.warn(name)
    return np.concatenate(parts) if parts else np.zeros((0, 400), np.float32)


def compute_statistics(video_set: VideoSet, protocol: Protocol, embedding: Embedding, decoders: ClipReaders,
                       options: RunOptions, label: str = "") -> Statistics:
    """Statistics of one set of videos: every clip through the network, then mean and covariance."""
    activations = embed_clips(decoders.clips(video_set, protocol, options.batch), embedding, options,
                              f"{label} {video_set.spec}".strip(), len(video_set.items) * protocol.clips_per_video)
    return activation_statistics(activations, protocol, embedding.weights_sha256, video_set.spec)


def check_first_array(video_set: VideoSet, protocol: Protocol) -> None:
    """Read the first video of a set of arrays here, before any set goes through the network, so that a
    wrong shape or float values in [0, 1] are refused at once (array reads are cheap; video files decode later)."""
    item = video_set.items[0]
    if item.path.suffix.lower() in (".npy", ".npz"):
        read_clips(item, protocol, 0, video_set.array)


@dataclass
class FVDResult:
    """The distance, both sets' sizes and everything it was computed under."""

    fvd: float
    a: Statistics
    b: Statistics
    videos_a: int | None
    videos_b: int | None
    path: str
    seconds: float

    def as_dict(self) -> dict:
        """JSON-ready: fvd, n_a, n_b, frames, protocol and the rest of the protocol, weights, timing."""
        protocol = self.a.protocol.as_dict()
        return {"fvd": self.fvd, "n_a": self.a.n, "n_b": self.b.n, "frames": protocol.pop("frames"),
                "protocol": protocol.pop("name"), **protocol, "videos_a": self.videos_a, "videos_b": self.videos_b,
                "weights": self.a.weights, "weights_sha256": self.a.weights_sha256, "model": self.path,
                "tf32": False, "seconds": round(self.seconds, 3)}


def run_fvd(spec_a: str, spec_b: str | None, protocol: Protocol, options: RunOptions,
            save_stats: tuple[str | Path, ...] = ()) -> FVDResult | Statistics:
    """FVD between two sets (folders, lists, arrays or statistics files); with `spec_b` None, A's statistics only.

    `save_stats` names files for A's (and B's) statistics. Saved statistics are checked against the
    other side's protocol and weights before any video is decoded.
    """
    start = time.perf_counter()
    sets = [open_set(spec, options.max_videos) for spec in (spec_a, spec_b) if spec is not None]
    loaded = {i: load_statistics(s.stats_path) for i, s in enumerate(sets) if s.is_stats}
    for i in loaded:
        if i < len(save_stats):
            raise InputError(f"{sets[i].spec}: is a statistics file already; --save-stats saves computed sets")
    computing = len(loaded) < len(sets)
    if loaded:  # checked before any video is decoded: videos are computed under the command's protocol
        first = next(iter(loaded.values()))
        for i, stats in loaded.items():
            stats.check_protocol(protocol if computing else first.protocol, sets[i].spec)
            stats.check_weights(first.weights_sha256, sets[i].spec)
    for i, video_set in enumerate(sets):
        if i not in loaded:
            check_first_array(video_set, protocol)
    results: list[Statistics] = []
    embedding, decoders, path = None, None, "statistics files"
    try:
        for i, video_set in enumerate(sets):
            if i in loaded:
                results.append(loaded[i])
                continue
            if embedding is None:
                decoders = ClipReaders(options.workers)  # first: the workers start while the model loads
                embedding = Embedding(options.device, options.precision, options.compile, protocol.network)
                path = embedding.path
                for j, stats in loaded.items():
                    stats.check_weights(embedding.weights_sha256, sets[j].spec)
            label = "AB"[i] if len(sets) > 1 else "A"
            stats = compute_statistics(video_set, protocol, embedding, decoders, options, label)
            if i < len(save_stats):
                save_statistics(stats, save_stats[i], source=video_set.spec)
            results.append(stats)
    except KeyboardInterrupt:
        if decoders is not None:
            decoders.close(interrupted=True)
            decoders = None
        raise
    finally:
        if decoders is not None:
            decoders.close()
    if len(results) == 1:
        return results[0]
    a, b = results
    value = frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
    counts = [None if s.is_stats else len(s.items) for s in sets]
    return FVDResult(value, a, b, counts[0], counts[1], path, time.perf_counter() - start)
