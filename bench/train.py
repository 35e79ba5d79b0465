"""Seconds per training epoch with and without the frozen-feature cache, on real clips.

Builds a small dataset from ../shared/data/videos (windows of the Kinetics clips, official RGB
recipe, short side 256), then trains three times with the first K blocks frozen: the frozen blocks
on the plain model, on the fast inference path, and cached; prints epoch times and the speed-ups.

Example (from the repository root):
    python bench/train.py                          # K = 15, 64 frames, 224 crop, 8 items, 3 epochs
    python bench/train.py --freeze 12 --clip-len 32 --items 4
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.device import machine_description  # noqa: E402
from src.jobs.files import save_array_atomic  # noqa: E402
from src.media.transforms import encode_array, resize_short_side, to_model_range  # noqa: E402
from src.media.video import read_frames  # noqa: E402
from src.training.loop import train  # noqa: E402
from src.training.runs import RunConfig  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"
CLIPS = {"arm_wrestling": "arm_wrestling.mp4", "cleaning_pool": "cleaning_pool.mp4"}


def make_dataset(root: Path, items: int, frames: int) -> Path:
    """items/2 windows of each shared clip per split, pre-processed by the official RGB recipe (uint8)."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("\n".join(CLIPS) + "\n")
    for name, file in CLIPS.items():
        video = to_model_range(resize_short_side(read_frames(VIDEOS / file, fps=25.0)[0], 256))
        starts = [round(i * (len(video) - frames) / max(items - 1, 1)) for i in range(items)]
        for i, start in enumerate(starts):
            split = "val" if i % 4 == 3 else "train"
            save_array_atomic(root / split / name / f"{name}_{i}" / "rgb-SampleRate_1.npy",
                              encode_array(video[start:start + frames], "uint8"))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--freeze", type=int, default=15, help="frozen blocks K (default: %(default)s)")
    parser.add_argument("--clip-len", type=int, default=64, help="frames per clip (default: %(default)s)")
    parser.add_argument("--crop", type=int, default=224, help="crop size (default: %(default)s)")
    parser.add_argument("--items", type=int, default=8, help="windows per clip (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per run (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=4, help="(default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    print(f"CPU: {machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"load average {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory() as tmp:
        data = make_dataset(Path(tmp) / "data", args.items, args.clip_len)
        common = dict(data=str(data), freeze=args.freeze, clip_len=args.clip_len, crop=args.crop,
                      batch_size=args.batch_size, epochs=args.epochs, cache_views=1, lr=1e-3, optimizer="adamw")
        runs = {"plain": dict(cache_features="off", precision="plain"),  # eager fp32 frozen blocks, every epoch
                "no cache": dict(cache_features="off"),                    # fast-path frozen blocks, every epoch
                "cache": dict(cache_features="on")}                        # fast path once, then the cache
        seconds = {}
        for name, options in runs.items():
            run = train(RunConfig(out=str(Path(tmp) / name.replace(" ", "-")), **options, **common))
            seconds[name] = [h["seconds"] for h in json.loads((run / "metrics.json").read_text())["history"]]
    items = args.items * len(CLIPS)
    print(f"\n{items} items ({args.clip_len} frames, {args.crop} crop), K = {args.freeze}, batch {args.batch_size}; "
          "frozen blocks on the plain model, on the fast inference path (--precision auto), and cached")
    print(f"{'epoch':>5}  {'plain (s)':>9}  {'no cache (s)':>12}  {'cache (s)':>9}")
    for i, row in enumerate(zip(*seconds.values()), 1):
        print(f"{i:>5}  {row[0]:9.2f}  {row[1]:12.2f}  {row[2]:9.2f}")
    plain, uncached = statistics.median(seconds["plain"]), statistics.median(seconds["no cache"])
    cached = statistics.median(seconds["cache"][1:])
    print(f"fast-path frozen blocks: {plain / uncached:.1f}x faster epochs than the plain model "
          f"(median {plain:.2f} s vs {uncached:.2f} s)")
    print(f"cached epochs after the first: {uncached / cached:.1f}x faster than uncached epochs, {plain / cached:.1f}x "
          f"than plain ones (median {cached:.2f} s; the first, cache-filling epoch took {seconds['cache'][0]:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
