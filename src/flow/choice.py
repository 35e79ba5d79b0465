"""Which implementation computes TV-L1 on a CPU: OpenCV's own or the PyTorch port, eager or compiled.

The three give the same flow bit for bit on the CPU, so the choice is speed alone: per job and per
machine, the fastest for the job's pairs and frame size, compile time counted, and OpenCV unless another is
clearly faster (a wrong estimate must never make the default slower than OpenCV). Speeds are per thread,
relative to OpenCV: the eager port's is measured on this machine once (a second or two, then kept in the
cache folder); the compiled port's and its compile time come from the cache file when `bench/flow.py
--calibrate` measured them here, else from what was measured on CPUs of the same kind.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from src.jobs import write_text_atomic
from src.paths import cache_dir

IMPLEMENTATIONS = ("opencv", "eager", "compiled")
# measured per thread at 256x340 against OpenCV 5 (docs/optical-flow.md, bench/results_flow_cpu.md)
COMPILED_BY_KIND = {"avx512": 2.53, "avx2": 1.33, "other": 1.0}
COMPILE_SECONDS = 150.0  # inductor on a 2-core CPU, cold cache: 1 to 3 minutes
CALIBRATION_SIZE = (128, 170)  # big enough that the eager port's per-op overhead is not what is measured
MARGIN = 0.9  # another implementation must promise at most 90% of OpenCV's time to be chosen


def cpu_kind() -> str:
    """'avx512', 'avx2' or 'other': the vector width the CPU gives the port's kernels."""
    from src.device import cpu_flags  # torch: imported only where speeds are measured, never in decoding workers

    flags = cpu_flags()
    return "avx512" if "avx512f" in flags else ("avx2" if "avx2" in flags else "other")


@dataclass(frozen=True)
class CpuSpeeds:
    """Per-thread speed of the port relative to OpenCV's on this machine, OpenCV's own pace, and the compile time."""

    opencv_s_per_mpix: float  # OpenCV seconds per frame pair per megapixel, one thread
    eager: float  # OpenCV's time / the eager port's time
    compiled: float  # OpenCV's time / the compiled port's time (after compiling)
    compile_s: float
    source: str  # where the figures come from, for the log

    def seconds(self, implementation: str, pairs: float, pixels: int) -> float:
        """Expected seconds of one process computing `pairs` pairs of `pixels` pixels with `implementation`."""
        opencv = pairs * pixels / 1e6 * self.opencv_s_per_mpix
        if implementation == "opencv":
            return opencv
        if implementation == "eager":
            return opencv / self.eager
        return self.compile_s + opencv / self.compiled


def _calibration_pair(h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    """Two frames of a smooth random texture, the second moved by (1.6, -0.7) px: a pair TV-L1 works on for real."""
    import cv2

    rng = np.random.default_rng(0)
    big = cv2.GaussianBlur(rng.uniform(0, 255, (h + 8, w + 8)).astype(np.float32), (0, 0), 2.0)
    shift = np.float32([[1, 0, 1.6], [0, 1, -0.7]])
    moved = cv2.warpAffine(big, shift, (w + 8, h + 8), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    return (np.clip(big[4:-4, 4:-4], 0, 255).astype(np.uint8), np.clip(moved[4:-4, 4:-4], 0, 255).astype(np.uint8))


def measure_speeds(compiled: bool = False) -> CpuSpeeds:
    """Time OpenCV and the eager port (and, if asked, compile and time the compiled port) on one thread."""
    import cv2
    import torch

    from src.flow.tvl1 import TVL1

    threads = torch.get_num_threads(), cv2.getNumThreads()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    try:
        prev, nxt = _calibration_pair(*CALIBRATION_SIZE)
        start = time.perf_counter()
        cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None)
        opencv = time.perf_counter() - start
        pair = torch.from_numpy(prev)[None], torch.from_numpy(nxt)[None]
        start = time.perf_counter()
        TVL1(compile=False)(*pair)
        eager = time.perf_counter() - start
        kind = cpu_kind()
        speed, compile_s, how = COMPILED_BY_KIND[kind], COMPILE_SECONDS, f"compiled: as measured on {kind} CPUs"
        if compiled:
            port = TVL1(compile=True)
            start = time.perf_counter()
            port(*pair)
            first = time.perf_counter() - start
            start = time.perf_counter()
            port(*pair)
            again = time.perf_counter() - start
            speed, compile_s, how = opencv / again, max(0.0, first - again), "compiled: measured here"
    finally:
        torch.set_num_threads(threads[0])
        cv2.setNumThreads(threads[1])
    mpix = prev.size / 1e6
    return CpuSpeeds(opencv / mpix, opencv / eager, speed, compile_s, f"eager: measured here; {how}")


def calibration_file() -> Path:
    """Where this machine's measured speeds are kept (one file per CPU model, flags and torch version)."""
    import hashlib

    from src.device import machine_description

    key = hashlib.sha1(machine_description().encode()).hexdigest()[:12]
    return cache_dir() / f"tvl1-cpu-{key}.json"


def cpu_speeds(measure_compiled: bool = False, fresh: bool = False) -> CpuSpeeds:
    """This machine's speeds: the calibration file's (unless `fresh`), else measured now (and kept there)."""
    path = calibration_file()
    try:
        saved = CpuSpeeds(**json.loads(path.read_text()))
        if not fresh and (not measure_compiled or "compiled: measured" in saved.source):
            return saved
    except (OSError, ValueError, TypeError):
        pass
    speeds = measure_speeds(measure_compiled)
    try:
        write_text_atomic(path, json.dumps(asdict(speeds), indent=2) + "\n")
    except OSError:
        pass  # a read-only cache only costs the measurement again next time
    return speeds


@dataclass(frozen=True)
class CpuChoice:
    """The implementation a CPU job runs TV-L1 with, and why."""

    implementation: str
    reason: str


def choose_cpu_tvl1(pairs_per_process: float, pixels: int, speeds: CpuSpeeds) -> CpuChoice:
    """The fastest implementation for one process's share of a job; OpenCV unless another is clearly faster."""
    times = {impl: speeds.seconds(impl, pairs_per_process, pixels) for impl in IMPLEMENTATIONS}
    best = min(times, key=times.get)
    if times[best] > MARGIN * times["opencv"]:
        best = "opencv"
    estimates = ", ".join(f"{impl} ~{t:.0f} s" for impl, t in times.items())
    return CpuChoice(best, f"{pairs_per_process:.0f} pairs per process: {estimates} "
                           f"(compiling {speeds.compile_s:.0f} s; {speeds.source})")
