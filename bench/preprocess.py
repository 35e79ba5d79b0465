"""Pre-processing speed per stage (frames/s), the --workers 2 over 1 speed-up, and the whole pipeline with
OpenCV's TV-L1 (--flow tvl1-opencv, the pipeline before the PyTorch port) against --flow tvl1, on
../shared/data/videos.

Example (from the repository root):
    python3 bench/preprocess.py                       # full-size stages, small pipeline runs
    python3 bench/preprocess.py --tvl1-pairs 2 --pipeline-size 32
    python3 bench/preprocess.py --pipeline-size 256 --pipeline-fps 2   # end to end at the recipe's size
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.device import machine_description  # noqa: E402
from src.flow import ALGORITHMS, FlowExtractor, rgb_to_gray  # noqa: E402
from src.jobs.files import save_array_atomic  # noqa: E402
from src.jobs.workers import set_threads  # noqa: E402
from src.media.transforms import encode_array, resize_short_side, to_model_range  # noqa: E402
from src.media.video import read_frames  # noqa: E402
from src.preprocess import Options, run  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"


def timed(fn, *args) -> tuple[float, object]:
    """Seconds one call takes, and its result."""
    start = time.perf_counter()
    result = fn(*args)
    return time.perf_counter() - start, result


def main() -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--videos", type=Path, default=VIDEOS, help="folder of clips (default ../shared/data/videos)")
    p.add_argument("--tvl1-pairs", type=int, default=4, help="frame pairs timed for TV-L1 at full size (default 4)")
    p.add_argument("--pairs", type=int, default=50, help="frame pairs timed for Farneback and DIS (default 50)")
    p.add_argument("--pipeline-size", type=int, default=64, help="--size of the workers 1 vs 2 runs (default 64)")
    p.add_argument("--pipeline-fps", type=float, default=5, help="--fps of the workers 1 vs 2 runs (default 5)")
    p.add_argument("--pipeline-compile", choices=("auto", "yes", "no"), default="no", help="--flow-compile of the --flow tvl1 runs (default no)")
    p.add_argument("--pipeline-workers", default="1,2", help="comma list of --workers for the pipeline runs (default 1,2)")
    p.add_argument("--only-pipeline", action="store_true", help="skip the per-stage timings")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    set_threads(cores)
    rows: list[tuple[str, int, float, str]] = []
    if not args.only_pipeline:
        stages(args, cores, rows)
    pipeline(args, rows)
    print(f"CPU: {machine_description()}; {cores} cores; OpenCV threads {cores}")
    print(f"{'stage':38} {'frames':>7} {'frames/s':>10}  note")
    for stage, count, fps, note in rows:
        print(f"{stage:38} {count:>7} {fps:>10.2f}  {note}")


def stages(args: argparse.Namespace, cores: int, rows: list) -> None:
    """Decoding, resizing, writing and each flow algorithm on its own."""
    clips = sorted(args.videos.glob("*.mp4")) + sorted(args.videos.glob("*.mov"))
    decoded = []
    total_t, total_n = 0.0, 0
    for clip in clips:
        seconds, (frames, info) = timed(read_frames, clip, 25.0)
        total_t += seconds
        total_n += info.frame_count
        decoded.append(frames)
    rows.append(("decode + resample to 25 fps", total_n, total_n / total_t, f"{len(clips)} clips, source frames"))

    to_resize = [f for f in decoded if min(f.shape[1:3]) != 256]
    n = sum(len(f) for f in to_resize)
    seconds = sum(timed(resize_short_side, f, 256)[0] for f in to_resize)
    rows.append(("resize short side 256", n, n / seconds, "1280x720, 568x320, 50x50 sources"))

    arm = decoded[[c.name for c in clips].index("arm_wrestling.mp4")]
    with tempfile.TemporaryDirectory() as tmp:
        for dtype in ("float32", "uint8"):
            seconds, _ = timed(lambda: save_array_atomic(Path(tmp) / f"rgb-{dtype}.npy", encode_array(to_model_range(arm), dtype)))
            rows.append((f"RGB scale + write ({dtype})", len(arm), len(arm) / seconds, "256x340"))

    gray = rgb_to_gray(arm)
    for algorithm in ALGORITHMS:
        tvl1 = algorithm.startswith("tvl1")
        thread_counts = [cores, 1] if tvl1 and cores > 1 else [cores]
        for threads in thread_counts:
            set_threads(threads)
            extractor = FlowExtractor(algorithm, device="cpu", compile=False)
            pairs = args.tvl1_pairs if tvl1 else args.pairs
            extractor.pair(gray[0], gray[1])  # warm-up: allocations, thread pool
            seconds, _ = timed(extractor, gray[1 : pairs + 2])
            rows.append((f"flow {algorithm}, {threads} thread(s)", pairs, pairs / seconds, "256x340 pairs"))
    set_threads(cores)


def pipeline(args: argparse.Namespace, rows: list) -> None:
    """The whole pre-process.py run on four clips, OpenCV's TV-L1 and the PyTorch one interleaved."""
    workers_list = [int(w) for w in args.pipeline_workers.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        for i, name in enumerate(["arm_wrestling.mp4", "cleaning_pool.mp4"] * 2):
            (raw / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            shutil.copy(args.videos / name, raw / f"c{i % 2}" / f"{i}_{name}")
        times = {}
        # interleaved: OpenCV's TV-L1 (the pipeline before) and the PyTorch TV-L1, each with 1 and 2 workers
        for workers in workers_list:
            for flow in ("tvl1-opencv", "tvl1"):
                opts = Options(fps=args.pipeline_fps, size=args.pipeline_size, workers=workers, val_ratio=0, flow=flow,
                               flow_device="cpu", flow_compile=args.pipeline_compile)
                times[flow, workers], _ = timed(run, raw, Path(tmp) / f"out-{flow}-{workers}", opts, lambda m: None)
        frames = 4 * round(10 * args.pipeline_fps)
        for (flow, workers), seconds in times.items():
            rows.append((f"pipeline --flow {flow}, --workers {workers}", frames, frames / seconds,
                         f"4 clips, --size {args.pipeline_size} --fps {args.pipeline_fps:g}"))

    if 1 in workers_list and 2 in workers_list:
        rows.append(("speed-up --workers 2 over 1 (tvl1-opencv)", 0, times["tvl1-opencv", 1] / times["tvl1-opencv", 2], "ratio"))
    best = min(times["tvl1-opencv", w] for w in workers_list)
    for w in workers_list:
        rows.append((f"--flow tvl1 over best tvl1-opencv, -w {w}", 0, best / times["tvl1", w], "ratio"))


if __name__ == "__main__":
    main()
