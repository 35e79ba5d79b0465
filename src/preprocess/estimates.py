"""Estimates made from video headers before a job starts: output bytes (the disk check) and flow pairs."""
from __future__ import annotations

import random

import numpy as np

from src.media import FrameStream, VideoError, probe
from src.preprocess.discovery import RawItem
from src.preprocess.options import Options


def output_hw(width: int, height: int, opts: Options) -> tuple[int, int]:
    """(height, width) of the stored frames of a width x height source."""
    if opts.crop:
        return opts.crop, opts.crop
    short = min(width, height) or 1
    return round(height * opts.size / short), round(width * opts.size / short)


def _sample(items: list[RawItem], sample: int) -> list[RawItem]:
    return items if len(items) <= sample else random.Random(0).sample(items, sample)


def estimate_bytes(items: list[RawItem], opts: Options, sample: int = 32) -> int:
    """Output size estimated from the headers of up to `sample` items, scaled to all of them."""
    if not items:
        return 0
    itemsize = np.dtype(opts.dtype).itemsize
    channels = (3 if "rgb" in opts.modalities else 0) + (2 if "flow" in opts.modalities else 0)
    total = 0
    counted = 0
    for item in _sample(items, sample):
        try:
            stream = FrameStream(item.source, opts.fps, opts.folder_fps)
            info = probe(item.source) if stream.kind == "folder" else stream.info
            h, w = output_hw(info.width, info.height, opts)
            frames = stream.estimated_frames()
            if item.start is not None:
                frames = min(frames, round((item.end - item.start) * (opts.fps or info.fps or 25.0)))
            total += frames // opts.sample_rate * h * w * channels * itemsize
            counted += 1
        except VideoError:
            continue
    return int(total / max(counted, 1) * len(items))


def planned_pairs(items: list[RawItem], opts: Options, sample: int = 16) -> int:
    """Flow pairs a job will compute, estimated from the headers of up to `sample` items."""
    counts = []
    for item in _sample(items, sample):
        try:
            frames = FrameStream(item.source, opts.fps, opts.folder_fps).estimated_frames()
            counts.append(max(0, frames // opts.sample_rate - 1))
        except VideoError:
            continue
    return int(sum(counts) / max(len(counts), 1) * len(items))


def planned_pixels(items: list[RawItem], opts: Options, sample: int = 8) -> int:
    """Pixels of the frames flow is computed on (resized, before any crop), the largest of up to `sample` items."""
    sizes = [256 * 340]
    for item in _sample(items, sample):
        try:
            info = probe(item.source)
        except VideoError:
            continue
        h, w = output_hw(info.width, info.height, Options(size=opts.size))
        sizes.append(h * w)
    return max(sizes[1:] or sizes)
