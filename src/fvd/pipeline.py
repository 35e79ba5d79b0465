"""The whole FVD job: open both sets, decode their clips in worker processes while the network runs here,
batch across videos, reduce each set to its statistics, and compare them."""
from __future__ import annotations

import os
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


def default_workers() -> int:
    """Decoding processes by default: half the cores (the network uses the rest), 1 to 4."""
    return max(1, min(4, (os.cpu_count() or 2) // 2))


class ClipReaders:
    """Spawned worker processes reading clips, each dying with this process (src.jobs.worker_init)."""

    def __init__(self, count: int):
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        from src.jobs import worker_init

        self.count = count
        self.pool = ProcessPoolExecutor(count, mp_context=get_context("spawn"), initializer=worker_init,
                                        initargs=(1, os.getpid())) if count > 0 else None

    def clips(self, video_set: VideoSet, protocol: Protocol) -> Iterator[np.ndarray]:
        """Every clip of the set, (T, H, W, 3), in the set's order; at most 2 videos per worker read ahead."""
        if self.pool is None or video_set.array is not None:  # array rows are slices: nothing to decode
            for index, item in enumerate(video_set.items):
                yield from read_clips(item, protocol, index, video_set.array)
            return
        ahead: deque = deque()
        items = iter(enumerate(video_set.items))
        try:
            while True:
                while len(ahead) < 2 * self.count:
                    nxt = next(items, None)
                    if nxt is None:
                        break
                    ahead.append(self.pool.submit(read_clips, nxt[1], protocol, nxt[0]))
                if not ahead:
                    return
                yield from ahead.popleft().result()
        finally:
            for future in ahead:
                future.cancel()

    def close(self) -> None:
        """Stop the workers (queued work is cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


def compute_statistics(video_set: VideoSet, protocol: Protocol, embedding: Embedding, decoders: ClipReaders,
                       options: RunOptions, label: str = "") -> Statistics:
    """Statistics of one set of videos: every clip through the network, then mean and covariance."""
    from tqdm import tqdm

    total = len(video_set.items) * protocol.clips_per_video
    parts = []
    with tqdm(total=total, desc=f"{label} {video_set.spec}".strip(), unit="clip", disable=not options.progress,
              dynamic_ncols=True) as bar:
        for activations in batched_activations(decoders.clips(video_set, protocol), embedding, options.batch):
            parts.append(activations)
            bar.update(len(activations))
    return activation_statistics(np.concatenate(parts), protocol, embedding.weights_sha256, video_set.spec)


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
    results: list[Statistics] = []
    embedding, decoders, path = None, None, "statistics files"
    try:
        for i, video_set in enumerate(sets):
            if i in loaded:
                results.append(loaded[i])
                continue
            if embedding is None:
                embedding = Embedding(options.device, options.precision, options.compile, protocol.network)
                path = embedding.path
                for j, stats in loaded.items():
                    stats.check_weights(embedding.weights_sha256, sets[j].spec)
                decoders = ClipReaders(options.workers)
            label = "AB"[i] if len(sets) > 1 else "A"
            stats = compute_statistics(video_set, protocol, embedding, decoders, options, label)
            if i < len(save_stats):
                save_statistics(stats, save_stats[i], source=video_set.spec)
            results.append(stats)
    finally:
        if decoders is not None:
            decoders.close()
    if len(results) == 1:
        return results[0]
    a, b = results
    value = frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
    counts = [None if s.is_stats else len(s.items) for s in sets]
    return FVDResult(value, a, b, counts[0], counts[1], path, time.perf_counter() - start)
