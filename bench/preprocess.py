"""Pre-processing speed per stage (frames/s), the --workers 2 over 1 speed-up, and the whole pipeline with
OpenCV's TV-L1 (--flow tvl1-opencv, the pipeline before the PyTorch port) against --flow tvl1, on
../shared/data/videos.

Example (from the repository root):
    python3 bench/preprocess.py                       # full-size stages, small pipeline runs
    python3 bench/preprocess.py --tvl1-pairs 2 --pipeline-size 32
    python3 bench/preprocess.py --pipeline-size 256 --pipeline-fps 2   # end to end at the recipe's size
    python3 bench/preprocess.py --jobs 2,20           # `python3 pre-process.py RAW OUT` as a user runs it, default
                                                      # --flow tvl1 against --flow tvl1-opencv, on jobs of 2 and 20 clips
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
    p.add_argument("--jobs", default=None, help="comma list of clip counts: time the pre-process.py command itself on a "
                   "job of that many short clips (2.5 s cut from the shared clips), default flow against tvl1-opencv")
    p.add_argument("--job-size", type=int, default=256, help="--size of the --jobs runs (default 256, the recipe's)")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    set_threads(cores)
    rows: list[tuple[str, int, float, str]] = []
    if args.jobs:
        print(f"CPU: {machine_description()}; {cores} cores")
        for count in (int(c) for c in args.jobs.split(",")):
            whole_jobs(args, count)
        return
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


def short_clips(videos: Path, folder: Path, count: int) -> None:
    """`count` clips of 2.5 s (about 62 flow pairs at 25 fps), cut in turn from the shared clips into two classes."""
    import cv2

    sources = [read_frames(videos / name, None) for name in ("arm_wrestling.mp4", "cleaning_pool.mp4")]
    for i in range(count):
        frames, info = sources[i % 2]
        length = round(2.5 * info.fps)
        start = (i // 2 * length) % max(1, len(frames) - length)
        (folder / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
        out = cv2.VideoWriter(str(folder / f"c{i % 2}" / f"clip{i:02d}.mp4"), cv2.VideoWriter_fourcc(*"mp4v"),
                              info.fps, (frames.shape[2], frames.shape[1]))
        for frame in frames[start:start + length]:
            out.write(cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        out.release()


def whole_jobs(args: argparse.Namespace, count: int) -> None:
    """pre-process.py on `count` short clips: the default (--flow tvl1: the fastest bit-identical implementation
    here) and --flow tvl1-opencv, each run whole as a user runs it (start-up and any compile counted)."""
    import subprocess

    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw"
        short_clips(args.videos, raw, count)
        seconds, chosen = {}, ""
        for flow in ("tvl1-opencv", "tvl1"):
            cmd = [sys.executable, str(Path(__file__).resolve().parent.parent / "pre-process.py"), str(raw),
                   str(Path(tmp) / f"out-{flow}"), "--flow", flow, "--size", str(args.job_size), "--val-ratio", "0"]
            start = time.perf_counter()
            result = subprocess.run(cmd, capture_output=True, text=True)
            seconds[flow] = time.perf_counter() - start
            if result.returncode:
                raise SystemExit(f"{' '.join(cmd)} failed:\n{result.stderr[-2000:]}")
            lines = (result.stdout + result.stderr).replace("\r", "\n").splitlines()
            chosen = next((line for line in lines if line.startswith("flow: ")), chosen)
        print(f"job of {count} clips at --size {args.job_size}: tvl1-opencv {seconds['tvl1-opencv']:.0f} s, "
              f"default {seconds['tvl1']:.0f} s: {seconds['tvl1-opencv'] / seconds['tvl1']:.2f}x\n  {chosen}")


if __name__ == "__main__":
    main()
