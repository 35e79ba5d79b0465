"""FVD speed: clips/s of the whole job (decoding in worker processes, TF1 resize, network, statistics) over a
folder of the shared clips, against the network's own clips/s on the same clips already in memory, at
the same batch. The two are timed interleaved, round by round, and reported as a ratio (goal >= 90%).

Example (from the repository root):
    python bench/fvd.py                           # plain float32 model, batch 4, 2 videos x 4 clips of 16 frames
    python bench/fvd.py --fast --batch 8 --rounds 3 --device cuda
    python bench/fvd.py --protocol stylegan-v     # a sampled protocol's job: frame counting, seeded clips, network
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from src.device import machine_description, pick_device  # noqa: E402
from src.fvd import Embedding, Protocol, RunOptions, open_set  # noqa: E402
from src.fvd.clips import read_clips  # noqa: E402
from src.fvd.pipeline import ClipReaders, compute_statistics  # noqa: E402
from src.fvd.recipes import PROTOCOL_NAMES, recipe  # noqa: E402
from src.fvd.runs import plan_set, set_activations, stream_set, streams  # noqa: E402
from src.measure.speed import load_average  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"


def model_clips_per_second(embedding: Embedding, clips: list[torch.Tensor], batch: int) -> float:
    """Clips/s of the network alone on network-ready clips in memory, `batch` at a time."""
    batches = [torch.stack(clips[i:i + batch]) for i in range(0, len(clips) - batch + 1, batch)]
    if embedding.device.type == "cuda":
        torch.cuda.synchronize(embedding.device)
    start = time.perf_counter()
    for x in batches:
        embedding.logits(x).cpu()
    return sum(len(x) for x in batches) / (time.perf_counter() - start)


def main() -> None:
    """Measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, default=VIDEOS, help="folder of .mp4 clips (default: ../shared/data/videos)")
    p.add_argument("--batch", type=int, default=4, help="clips per network batch (default: %(default)s)")
    p.add_argument("--frames", type=int, default=16, help="frames per clip (default: %(default)s)")
    p.add_argument("--clips-per-video", type=int, default=4, help="(default: %(default)s)")
    p.add_argument("--rounds", type=int, default=2, help="interleaved rounds (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, help="decoding processes (default: %(default)s)")
    p.add_argument("--protocol", choices=PROTOCOL_NAMES, default="tf",
                   help="a sampled protocol times its whole job: frame counting, seeded clips (one clip per video, "
                        "--clips-per-video ignored), network (default: %(default)s)")
    p.add_argument("--copies", type=int, default=1, help="each video this many times in the set (default: 1)")
    p.add_argument("--fast", action="store_true", help="the fp32 fast path instead of the plain float32 model")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    args = p.parse_args()
    device = pick_device(args.device)
    print(machine_description())
    print(f"{load_average()}; device {device}; the machine may be shared: compare ratios, not seconds")

    clips = sorted(c for c in args.videos.glob("*.mp4") if "corrupted" not in c.name)
    with tempfile.TemporaryDirectory(prefix="bench-fvd-") as tmp:
        for copy in range(args.copies):
            for clip in clips:
                os.symlink(clip.resolve(), Path(tmp) / (f"{copy}_{clip.name}" if args.copies > 1 else clip.name))
        sampled = args.protocol != "tf"
        if sampled:
            protocol = Protocol(args.protocol, args.frames, seed=0)
            args.clips_per_video = 1
        else:
            protocol = Protocol(frames=args.frames, clips_per_video=args.clips_per_video)
        video_set = open_set(tmp)
        started = time.perf_counter()
        embedding = Embedding(device, "fp32" if args.fast else None)
        readers = ClipReaders(args.workers)
        print(f"{embedding.path}; {len(video_set.items)} videos ({', '.join(c.name for c in clips)}) x "
              f"{args.clips_per_video} clips of {args.frames} frames, batch {args.batch}, {args.workers} decoding "
              f"process(es); model load {time.perf_counter() - started:.1f} s")
        first = Protocol(frames=args.frames) if sampled else protocol  # the network alone: clips of the same size
        in_memory = [embedding.prepare(c) for i, item in enumerate(video_set.items)
                     for c in read_clips(item, first, i)]
        embedding.logits(torch.stack(in_memory[:args.batch]))  # warm-up
        options = RunOptions(batch=args.batch, workers=args.workers, progress=False)
        ratios = []
        try:
            for r in range(args.rounds):
                before = model_clips_per_second(embedding, in_memory, args.batch)
                start = time.perf_counter()
                if sampled:
                    own = recipe(args.protocol)
                    if streams(protocol, own, "real", own.videos, len(video_set.items), (1, 1)):  # as run_metrics
                        acts, _ = stream_set(video_set, protocol, own, "real", own.videos, [own.seed], embedding,
                                             readers, options, "")
                    else:
                        plan = plan_set(video_set, protocol, own, "real", own.videos, [own.seed], (1, 1), readers)
                        acts = set_activations(video_set, protocol, plan, embedding, readers, options, "")
                    count = len(acts)
                else:
                    count = compute_statistics(video_set, protocol, embedding, readers, options).n
                whole = count / (time.perf_counter() - start)
                after = model_clips_per_second(embedding, in_memory, args.batch)
                model = (before + after) / 2
                ratios.append(whole / model)
                print(f"round {r + 1}: model alone {before:.3f} / {after:.3f} clips/s; whole job {whole:.3f} clips/s "
                      f"({count} clips) = {whole / model:.0%}")
        finally:
            readers.close()
    print(f"FVD job: {statistics.median(ratios):.0%} of the network's own clips/s at batch {args.batch} "
          f"(median of {len(ratios)} rounds: {', '.join(f'{r:.0%}' for r in ratios)})")


if __name__ == "__main__":
    main()
