"""Dataset feature extraction speed against the model's own windows/s, and the decode / flow / model split.

RGB: `extract_features.py --out-dir` over a folder of clips (decoding in a worker process while the
model runs) against the same fast path run on the same kind of windows (cut from the first clip by the
recipe) already in memory, at the same batch; the
two are timed interleaved and reported as a ratio. Flow: seconds per window spent decoding,
computing TV-L1 (the flow of a window's frame pairs) and in the flow model.

Example (from the repository root):
    python bench/extract.py                              # the shared Kinetics clips, batch 4, fp32
    python bench/extract.py --batch 8 --precision auto --rounds 3 --tvl1-pairs 2
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from src.clips import load_clip  # noqa: E402
from src.device import machine_description, pick_device  # noqa: E402
from src.extraction import FeatureConfig, load_models, run  # noqa: E402
from src.flow import FlowExtractor, rgb_to_gray  # noqa: E402
from src.inference import accelerate  # noqa: E402
from src.measure.speed import load_average  # noqa: E402
from src.media.transforms import resize_short_side  # noqa: E402
from src.media.video import FrameStream  # noqa: E402
from src.weights import i3d  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"


def model_windows_per_second(model, windows: torch.Tensor, batch: int, device, seconds: float = 0.0) -> float:
    """Windows/s of the model alone on real windows already in memory, `batch` at a time, pooled as extraction does."""
    batches = [windows[i:i + batch].to(device) for i in range(0, len(windows) - batch + 1, batch)]
    with torch.inference_mode():
        model.forward_features(batches[0], "Mixed_5c")  # shape planning / warm-up
        start = time.perf_counter()
        n = 0
        while True:
            for x in batches:
                model.forward_features(x, "Mixed_5c").mean(dim=(2, 3, 4)).cpu()
                n += len(x)
            if time.perf_counter() - start >= seconds:
                break
    return n / (time.perf_counter() - start)


def main() -> None:
    """Measure and print the figures."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, default=VIDEOS, help="folder of clips (default: ../shared/data/videos, .mp4)")
    p.add_argument("--batch", type=int, default=4, help="clips per forward pass (default: %(default)s)")
    p.add_argument("--window", type=int, default=16, help="frames per window (default: %(default)s)")
    p.add_argument("--precision", default="fp32", help="fast path precision (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds of model-alone / extraction (default: %(default)s)")
    p.add_argument("--copies", type=int, default=3, help="links to each clip in the dataset folder (default: %(default)s)")
    p.add_argument("--tvl1-pairs", type=int, default=2, help="frame pairs timed for TV-L1 (default: %(default)s)")
    args = p.parse_args()
    device = pick_device()
    print(machine_description())
    print(f"{load_average()}; device {device}; the machine may be shared: compare ratios, not seconds")

    clips = sorted(args.videos.glob("*.mp4"))
    clips = [c for c in clips if "corrupted" not in c.name]
    folder = Path(tempfile.mkdtemp(prefix="bench-extract-"))
    try:
        for copy in range(args.copies):  # a dataset of several videos: start-up is paid once, as in real use
            for clip in clips:
                os.symlink(clip.resolve(), folder / f"{clip.stem}_{copy}{clip.suffix}")
        cfg = FeatureConfig(window=args.window, stride=args.window, batch=args.batch, precision=args.precision, workers=1)
        models, _, path = load_models(cfg, device)
        print(f"{path}; {args.copies} x {len(clips)} clips ({', '.join(c.name for c in clips)}), window {args.window}, "
              f"stride {args.window}, batch {args.batch}")
        clip = load_clip(clips[0])  # the recipe: 25 fps, short side 256, centre 224, [-1, 1]
        windows = torch.from_numpy(clip[:len(clip) // args.window * args.window]).reshape(
            -1, args.window, *clip.shape[1:]).permute(0, 4, 1, 2, 3)  # (windows, 3, window, 224, 224)
        alone, piped = [], []
        for round_ in range(args.rounds):
            alone.append(model_windows_per_second(models["rgb"], windows, args.batch, device, seconds=8))
            out = folder / f"out{round_}"
            summary = run([folder], out, cfg, log=lambda *_: None)
            piped.append(summary.windows / summary.seconds)
            print(f"round {round_ + 1}: model alone {alone[-1]:.2f} windows/s; extraction {piped[-1]:.2f} windows/s "
                  f"({summary.windows} windows of {summary.done} videos in {summary.seconds:.1f} s, "
                  f"{summary.model_seconds:.1f} s of it in the model)")
        alone.append(model_windows_per_second(models["rgb"], windows, args.batch, device, seconds=8))
        # each extraction round against the mean of the model-alone timings just before and after it
        ratios = [p / ((a + b) / 2) for p, a, b in zip(piped, alone, alone[1:])]
        print(f"RGB extraction: {statistics.median(ratios):.0%} of the model's own windows/s at batch {args.batch} "
              f"(median of {args.rounds} rounds, each against the model alone just before and after it: "
              f"{', '.join(f'{r:.0%}' for r in ratios)})")

        # flow: where a window's time goes
        start = time.perf_counter()
        frames = [resize_short_side(f, 256) for f in FrameStream(clips[0], 25.0)]
        decode = (time.perf_counter() - start) / len(frames)
        gray = rgb_to_gray(np.stack(frames[:args.tvl1_pairs + 1]))
        extractor = FlowExtractor("tvl1")
        start = time.perf_counter()
        flow = extractor(gray)
        tvl1 = (time.perf_counter() - start) / len(flow)
        # the flow stream's cost does not depend on its weights: rgb_scratch made 2-channel stands in
        flow_model = accelerate({"flow": i3d("rgb_scratch", in_channels=2).eval()}, device, args.precision)[0]["flow"]
        flow_windows = windows[:, :2]  # the flow model's cost does not depend on the values
        model = 1 / model_windows_per_second(flow_model, flow_windows, args.batch, device, seconds=8)
        w = args.window
        parts = {"decode + resize": decode * w, "TV-L1 flow": tvl1 * w, "flow model": model}
        total = sum(parts.values())
        print(f"flow stream, seconds per {w}-frame window ({len(frames)} frames decoded from {clips[0].name}, "
              f"{len(flow)} TV-L1 pairs at {gray.shape[2]}x{gray.shape[1]}):")
        for name, seconds in parts.items():
            print(f"  {name:<16} {seconds:8.3f} s  {seconds / total:6.1%}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
