"""TV-L1 speed and fidelity: the PyTorch port (src/tvl1.py) against OpenCV's DualTVL1OpticalFlow, timed
interleaved in one run on real 256x340 frame pairs of ../shared/data/videos.

Each row is one round: OpenCV computes the round's pairs (one after another, --threads threads), then the
PyTorch port computes the same pairs in batches of B on --device; the ratio is of the two pairs/s measured
back to back, so load from other processes affects both. Compile time (torch.compile of the inner
iteration and the median) is timed separately, on a warm-up batch, and is not in pairs/s.

Examples (from the repository root):
    python3 bench/flow.py --quick                       # CPU: batch 1 and 8, 1 thread and all, eager
    python3 bench/flow.py                               # CPU: batch 1, 8, 32; 1 thread and all; eager, compiled
    python3 bench/flow.py --device cuda --quick --fidelity 16   # GPU table + EPE vs OpenCV on 16 pairs

On CUDA with triton installed it also prints the Triton kernels' rows (pairs/s at batch 32, 128, 512 with the
device name) against the memory-bandwidth roofline of a fused inner iteration (--bandwidth overrides the table).
"""
from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from src.device import machine_description, pick_device  # noqa: E402
from src.flow.tvl1 import TVL1  # noqa: E402
from src.jobs.workers import set_threads  # noqa: E402
from src.media.transforms import decode_array, encode_array, resize_short_side  # noqa: E402
from src.media.video import read_frames  # noqa: E402

VIDEOS = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "videos"
# The roofline of a fused inner iteration: it reads 40 and writes 24 bytes per pixel (u1, u2, four duals and four
# warp constants in, six fields out); a 256x340 pair is 215,941 pixels over its pyramid, and OpenCV's early
# stopping gave ~66.7 M pixel-iterations per pair on real clips (5 warps x 300 iterations at most: 324 M).
BYTES_PER_PIXEL_ITERATION = 40 + 24
PYRAMID_PIXELS = 215_941
PIXEL_ITERATIONS = 66.7e6
BANDWIDTH_TBS = {"H200": 4.8, "H100": 3.35, "A100": 2.0, "L40S": 0.864, "L4": 0.3}  # memory bandwidth, TB/s


def device_bandwidth(name: str, override: float | None = None) -> float | None:
    """Memory bandwidth in TB/s of a GPU by (a part of) its name, or the override."""
    if override:
        return override
    return next((bw for key, bw in BANDWIDTH_TBS.items() if key.lower() in name.lower()), None)


def roofline(bandwidth_tbs: float) -> tuple[float, float]:
    """(pairs/s with OpenCV's early stopping, pairs/s running every warp to 300 iterations) at the bandwidth."""
    per_pair = BYTES_PER_PIXEL_ITERATION * PIXEL_ITERATIONS
    full = BYTES_PER_PIXEL_ITERATION * PYRAMID_PIXELS * 5 * 300
    return bandwidth_tbs * 1e12 / per_pair, bandwidth_tbs * 1e12 / full


def triton_rows(prev: np.ndarray, nxt: np.ndarray, batches: list[int], device: torch.device,
                bandwidth: float | None = None) -> None:
    """Pairs/s of the Triton TV-L1 at each batch (pairs in flight), 2 x batch pairs per run, against the roofline."""
    from src.flow.triton_tvl1 import TritonTVL1

    name = torch.cuda.get_device_name(device)
    bw = device_bandwidth(name, bandwidth)
    print(f"\nTriton TV-L1 on {name}: {prev.shape[1]}x{prev.shape[2]} pairs")
    if bw:
        stop, full = roofline(bw)
        print(f"roofline at {bw} TB/s: {BYTES_PER_PIXEL_ITERATION} B/pixel-iteration x {PIXEL_ITERATIONS / 1e6:.1f} M "
              f"pixel-iterations/pair = {BYTES_PER_PIXEL_ITERATION * PIXEL_ITERATIONS / 1e9:.2f} GB/pair: "
              f"{stop:.0f} pairs/s ({full:.0f} pairs/s without early stopping)")
    print("| device | batch | pairs/s | % of roofline | first run (compile, graphs) s | peak MiB |\n|---|---|---|---|---|---|")
    for batch in batches:
        n = 2 * batch
        reps = -(-n // len(prev))
        a, b = np.concatenate([prev] * reps)[:n], np.concatenate([nxt] * reps)[:n]
        tv = TritonTVL1(capacity=batch)
        start = time.perf_counter()
        run_torch(tv, a[:batch], b[:batch], batch, device)  # compiles, captures the graphs
        sync(device)
        first = time.perf_counter() - start
        torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        run_torch(tv, a, b, n, device)
        sync(device)
        rate = n / (time.perf_counter() - start)
        pct = f"{100 * rate / roofline(bw)[0]:.0f}%" if bw else "?"
        print(f"| {name} | {batch} | {rate:.1f} | {pct} | {first:.1f} | "
              f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} |", flush=True)
        del tv
        torch.cuda.empty_cache()


def load_pairs(videos: Path, n: int, size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """n consecutive grayscale pairs (uint8, short side `size`), alternating between the shared clips."""
    clips = [videos / "arm_wrestling.mp4", videos / "cleaning_pool.mp4"]
    grays = []
    for clip in clips:
        frames, _ = read_frames(clip, 25.0)
        frames = resize_short_side(frames[: n // len(clips) + 2], size)
        grays.append(np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]))
    prev, nxt = [], []
    for i in range(n):
        g = grays[i % len(grays)]
        j = i // len(grays)
        prev.append(g[j])
        nxt.append(g[j + 1])
    return np.stack(prev), np.stack(nxt)


def sync(device: torch.device) -> None:
    """Wait for queued device work (benchmarks only)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def run_torch(tv: TVL1, prev: np.ndarray, nxt: np.ndarray, batch: int, device: torch.device) -> np.ndarray:
    """Flow of all pairs, `batch` at a time, uploaded from and returned to host memory as in pre-processing."""
    out = []
    for s in range(0, len(prev), batch):
        a = torch.from_numpy(prev[s:s + batch]).to(device)
        b = torch.from_numpy(nxt[s:s + batch]).to(device)
        out.append(tv(a, b).cpu().numpy())
    return np.concatenate(out)


def peak_memory(device: torch.device) -> str:
    """Peak device memory of torch (CUDA) or the process's peak RSS (CPU), in MiB."""
    if device.type == "cuda":
        return f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB"
    return f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MiB RSS"


def epe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Endpoint error per pixel of (..., 2) flows."""
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])


def main() -> None:
    """Measure and print the tables."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--quick", action="store_true", help="fewer configurations: CPU batch 1 and 8, eager; GPU batch 32 and 64")
    p.add_argument("--batches", default=None, help="comma list of batch sizes (default 1,8,32; GPU 1,8,32,64)")
    p.add_argument("--threads", default=None, help="comma list of thread counts, 'all' = every core (default 1,all; GPU: 1, OpenCV's)")
    p.add_argument("--modes", default=None, help="eager,compiled (default both; --quick on a CPU: eager)")
    p.add_argument("--cv-pairs", type=int, default=4, help="pairs OpenCV computes per round (default 4)")
    p.add_argument("--min-pairs", type=int, default=4, help="pairs the PyTorch port computes per round, at least one batch (default 4)")
    p.add_argument("--fidelity", type=int, default=0, help="also compare N pairs with OpenCV: mean/max EPE per pair, and after uint8 storage")
    p.add_argument("--videos", type=Path, default=VIDEOS, help="folder with arm_wrestling.mp4 and cleaning_pool.mp4")
    p.add_argument("--triton-batches", default="32,128,512", help="batches of the Triton rows on CUDA (default 32,128,512)")
    p.add_argument("--triton-only", action="store_true", help="only the Triton rows (CUDA; no OpenCV contrib needed)")
    p.add_argument("--bandwidth", type=float, default=None, help="GPU memory bandwidth in TB/s for the roofline "
                   f"(default by device name: {', '.join(f'{k} {v}' for k, v in BANDWIDTH_TBS.items())})")
    p.add_argument("--calibrate", action="store_true",
                   help="measure OpenCV's, the eager and the compiled port's speed on one thread here (compiling "
                        "once) and keep them for --flow tvl1's choice of implementation (src/flow/choice.py), then exit")
    args = p.parse_args()
    if args.calibrate:
        from src.flow.choice import calibration_file, cpu_speeds

        print(f"CPU: {machine_description()}")
        print(f"{cpu_speeds(measure_compiled=True, fresh=True)}\nkept in {calibration_file()}")
        return

    device = pick_device(args.device)
    cores = os.cpu_count() or 1
    gpu = device.type != "cpu"
    batches = [int(b) for b in (args.batches or ("32,64" if args.quick and gpu else "1,8" if args.quick else
                                                  "1,8,32,64" if gpu else "1,8,32")).split(",")]
    threads = [cores if t == "all" else int(t) for t in (args.threads or ("1" if gpu else "1,all")).split(",")]
    threads = sorted(set(threads), key=threads.index)
    modes = (args.modes or ("eager" if args.quick and not gpu else "eager,compiled")).split(",")
    need = 16 if args.triton_only else max(max(batches), args.min_pairs, args.cv_pairs, args.fidelity)
    prev, nxt = load_pairs(args.videos, need)
    h, w = prev.shape[1:]
    print(f"CPU: {machine_description()}; {cores} cores (shared machine: compare ratios, not absolute numbers)")
    if device.type == "cuda":
        print(f"GPU: {torch.cuda.get_device_name(device)}")
    print(f"pairs: {h}x{w} grayscale from {args.videos}; OpenCV {cv2.__version__}, torch {torch.__version__}")

    if device.type == "cuda":
        from src.flow import tvl1_backend

        backend, why = tvl1_backend("cuda")
        if backend == "Triton":
            triton_rows(prev, nxt, [int(b) for b in args.triton_batches.split(",")], device, args.bandwidth)
        else:
            print(f"\n(no Triton rows: {why})")
    if args.triton_only:
        return
    of = cv2.optflow.DualTVL1OpticalFlow_create()
    if args.fidelity:
        set_threads(threads[0])
        tv = TVL1(compile="compiled" in modes)
        ref = np.stack([of.calc(a, b, None) for a, b in zip(prev[: args.fidelity], nxt[: args.fidelity])])
        got = run_torch(tv, prev[: args.fidelity], nxt[: args.fidelity], min(8, args.fidelity), device)
        e = epe(ref, got).reshape(len(ref), -1)
        bound = 20.0
        q = lambda f: decode_array(encode_array(np.clip(f, -bound, bound) / bound, "uint8")) * bound  # noqa: E731
        e8 = epe(q(ref), q(got)).reshape(len(ref), -1)
        print(f"\nfidelity on {device.type} ({'compiled' if tv.compile else 'eager'}), {len(ref)} pairs: EPE vs OpenCV mean {e.mean():.4f} px, worst pair "
              f"{e.mean(1).max():.4f} px, >1 px {100 * (e > 1).mean():.3f}% of pixels; after uint8 storage mean "
              f"{e8.mean():.4f}, worst pair {e8.mean(1).max():.4f}")
        for i, (m, mx) in enumerate(zip(e.mean(1), e.max(1))):
            print(f"  pair {i:2d}: mean {m:.4f} px, max {mx:.3f} px")

    print(f"\n{'device':7} {'threads':>7} {'mode':9} {'batch':>5} {'pairs/s':>8} {'OpenCV':>8} {'ratio':>6} "
          f"{'per core':>8}  peak memory")
    for mode in modes:
        tv = TVL1(compile=mode == "compiled")
        for t in threads:
            set_threads(t)
            for batch in batches:
                n = max(batch, args.min_pairs)
                if mode == "compiled":
                    start = time.perf_counter()
                    run_torch(tv, prev[:batch], nxt[:batch], batch, device)
                    sync(device)
                    print(f"  (compile + first batch of {batch}: {time.perf_counter() - start:.1f} s)")
                if device.type == "cuda":
                    torch.cuda.reset_peak_memory_stats(device)
                start = time.perf_counter()
                for a, b in zip(prev[: args.cv_pairs], nxt[: args.cv_pairs]):
                    of.calc(a, b, None)
                cv_rate = args.cv_pairs / (time.perf_counter() - start)
                sync(device)
                start = time.perf_counter()
                run_torch(tv, prev[:n], nxt[:n], batch, device)
                sync(device)
                rate = n / (time.perf_counter() - start)
                # OpenCV's TV-L1 runs on the CPU threads; per core compares the two on the same cores.
                print(f"{device.type:7} {t:>7} {mode:9} {batch:>5} {rate:8.3f} {cv_rate:8.3f} {rate / cv_rate:6.2f} "
                      f"{rate / cv_rate if not gpu else rate / (cv_rate / t):8.2f}  {peak_memory(device)}", flush=True)
    set_threads(cores)


if __name__ == "__main__":
    main()
