"""Optical flow between consecutive frames: TV-L1 (the official I3D recipe), Farneback or DIS.

"tvl1" is OpenCV's DualTVL1OpticalFlow with its defaults, computed on CUDA by the Triton kernels of
src/flow/triton_tvl1.py where triton is installed, else by the batched PyTorch port in src/flow/tvl1.py (any device;
bit-identical to OpenCV on the CPU); "tvl1-opencv" runs OpenCV's own implementation.
Convention (OpenCV's): flow[y, x] = (dx, dy) such that prev[y, x] ~ next[y + dy, x + dx], so content
moving right gives positive x-flow and moving down positive y-flow. Values are clipped to
[-bound, bound] pixels and divided by bound, giving float32 in [-1, 1]; T frames give T - 1 flows.
"""
from __future__ import annotations

from collections.abc import Callable

import cv2
import numpy as np

from src.flow.guard import forced_backend, guarded_tvl1
from src.guard import forced_flow_backend

ALGORITHMS = ("tvl1", "tvl1-opencv", "farneback", "dis")
SAME_FLOW = {"tvl1-opencv": "tvl1"}  # algorithms whose flow agrees (tested within 0.02 px): one recipe
# `auto` compiles only jobs with this many pairs: compiling takes ~1-3 min on a CPU and saves ~1 s per 256x340
# pair there (docs/optical-flow.md); on a GPU the saving per pair is small; inductor on MPS is not used.
COMPILE_MIN_PAIRS = {"cpu": 500, "cuda": 2000, "mps": 10**12}
TRITON_BATCH = 128  # pairs in flight on CUDA with the Triton kernels (slots per pyramid level)
GUARDED = {"Triton": "triton", "PyTorch": "pytorch"}  # the implementations src/flow/guard.py checks before use


def tvl1_backend(device_type: str) -> tuple[str, str]:
    """("Triton" or "PyTorch", why) for the TV-L1 of --flow tvl1 on a device type."""
    if device_type != "cuda":
        return "PyTorch", f"the Triton kernels run on CUDA only, not {device_type}"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "PyTorch", "triton is not installed"
    return "Triton", "CUDA with triton installed"


def recipe_name(algorithm: str) -> str:
    """The flow recipe an algorithm produces: 'tvl1-opencv' and 'tvl1' are one recipe."""
    return SAME_FLOW.get(algorithm, algorithm)


def rgb_to_gray(frames: np.ndarray) -> np.ndarray:
    """uint8 RGB (T, H, W, 3) or (H, W, 3) to uint8 grayscale (T, H, W) or (H, W)."""
    if frames.ndim == 3:
        return cv2.cvtColor(frames, cv2.COLOR_RGB2GRAY)
    return np.stack([cv2.cvtColor(f, cv2.COLOR_RGB2GRAY) for f in frames]) if len(frames) else frames[..., 0]


class FlowExtractor:
    """Reusable flow object; TV-L1 keeps OpenCV's defaults, which the official I3D flow used.

    device and batch_size apply to "tvl1": "auto" picks CUDA, then MPS, then the CPU. On CUDA with triton
    installed the Triton kernels run with batch_size pairs in flight (0: 128), finished pairs replaced at once;
    otherwise the PyTorch port computes pairs batch_size at a time (0: 1 on a CPU, where one pair's working set
    stays in cache and batching measured slower, 32 on a GPU). compile: True, False (the port, compiled or
    eager) or "auto": on a CPU the fastest of OpenCV's own TV-L1 and the port, eager or compiled, for
    `planned_pairs` pairs of `planned_pixels` pixels on this machine (src.flow.choice: bit-identical there);
    on a GPU the port is compiled only when `planned_pairs` pays for the compile; the Triton kernels always are.
    The Triton kernels and the port run only after their check against OpenCV passed on this device
    (src/flow/guard.py: once per machine, cached); else the next one runs. backend: "triton", "pytorch" or "opencv"
    forces that implementation unchecked (default: --flow-backend's, src/guard.py).
    """

    def __init__(self, algorithm: str = "tvl1", bound: float = 20.0, device: str = "auto", batch_size: int = 0,
                 compile: bool | str = "auto", planned_pairs: int = 0, planned_pixels: int = 256 * 340,
                 backend: str | None = None) -> None:
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unknown flow algorithm {algorithm!r}; choose one of {', '.join(ALGORITHMS)}")
        if bound <= 0:
            raise ValueError(f"flow bound must be positive, got {bound}")
        if batch_size < 0:
            raise ValueError(f"flow batch size must be 0 (auto) or more, got {batch_size}")
        self.algorithm = algorithm
        self.bound = float(bound)
        self.batch_size = int(batch_size)
        self.device = None
        self._tvl1 = None
        self._impl = None
        self.backend, self.backend_reason = "", ""
        if algorithm == "tvl1":
            from src.device import usable_device
            from src.flow.tvl1 import TVL1

            try:
                self.device = usable_device(device)
            except ValueError as exc:
                raise ValueError(f"flow {exc}") from None
            self.backend, self.backend_reason = tvl1_backend(self.device.type)
            forced = backend or forced_flow_backend()
            if forced:
                self.backend, self.backend_reason = forced_backend(forced, self.device.type), \
                    f"forced by --flow-backend {forced}"
            elif self.device.type == "cpu" and compile == "auto":
                # bit-identical on the CPU: OpenCV's own, the eager or the compiled port, whichever is fastest here
                from src.flow.choice import choose_cpu_tvl1, cpu_speeds

                choice = choose_cpu_tvl1(planned_pairs or 64, planned_pixels, cpu_speeds())
                self.backend_reason = f"the fastest here: {choice.reason}"
                if choice.implementation == "opencv":
                    self.backend = "OpenCV"
                compile = choice.implementation == "compiled"
            if not forced and self.backend in GUARDED:  # checked once per device against OpenCV (src/flow/guard.py)
                implementation = guarded_tvl1(self.device, GUARDED[self.backend])[0]
                if implementation != GUARDED[self.backend]:
                    self.backend_reason = f"the {self.backend} TV-L1 failed its check on {self.device} (see the warning)"
                    self.backend = {"pytorch": "PyTorch", "opencv": "OpenCV"}[implementation]
            if self.backend == "OpenCV":
                self._impl = cv2.optflow.DualTVL1OpticalFlow_create()
                if self.device.type != "cpu":  # fallen back from a GPU: the callers' calls keep their size
                    self.batch_size = self.batch_size or 32
            elif self.backend == "Triton":
                from src.flow.triton_tvl1 import TritonTVL1

                self.batch_size = self.batch_size or TRITON_BATCH
                self._tvl1 = TritonTVL1(capacity=self.batch_size)
            else:
                if compile == "auto":
                    compile = planned_pairs >= COMPILE_MIN_PAIRS.get(self.device.type, 10**9)
                self._tvl1 = TVL1(compile=bool(compile))
                if not self.batch_size:
                    self.batch_size = 1 if self.device.type == "cpu" else 32
        elif algorithm == "tvl1-opencv":
            # tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01: OpenCV's defaults.
            self._impl = cv2.optflow.DualTVL1OpticalFlow_create()
        elif algorithm == "dis":
            self._impl = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)

    @property
    def pairs_per_call(self) -> int:
        """How many pairs a caller should hand to one `batch` call: the Triton schedule refills a finished pair's
        slot from the pairs of the same call, so it gets several slots' worth; the port computes batch_size."""
        return self.batch_size * (4 if self.backend == "Triton" else 1)

    @property
    def compiled(self) -> bool:
        """Whether the PyTorch TV-L1 runs torch.compile'd (False for the Triton kernels)."""
        return self._tvl1 is not None and bool(getattr(self._tvl1, "compile", False))

    def describe(self) -> str:
        """Which implementation runs, e.g. 'tvl1 (PyTorch TV-L1 on cpu, eager, batch 8)'."""
        if self.backend == "OpenCV":
            return f"tvl1 (OpenCV's TV-L1 on cpu, {self.backend_reason})"
        if self.backend == "Triton":
            why = f"; {self.backend_reason}" if self.backend_reason.startswith("forced") else ""
            return f"tvl1 (Triton TV-L1 on {self.device}, {self.batch_size} pairs in flight{why})"
        if self._tvl1 is not None:
            how = "compiled" if self._tvl1.compile else "eager"
            why = f"; {self.backend_reason}" if self.backend_reason else ""
            return f"tvl1 (PyTorch TV-L1 on {self.device.type}, {how}, batch {self.batch_size}{why})"
        return f"{self.algorithm} (OpenCV)"

    @staticmethod
    def _check(prev: np.ndarray, nxt: np.ndarray, ndim: int) -> None:
        if prev.dtype != np.uint8 or nxt.dtype != np.uint8 or prev.ndim != ndim or prev.shape != nxt.shape:
            what = "two uint8 grayscale frames" if ndim == 2 else "two uint8 (N, H, W) grayscale stacks"
            raise ValueError(f"flow needs {what} of one size, got {prev.shape} {prev.dtype} and {nxt.shape} {nxt.dtype}")

    def raw_batch(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Unscaled flow in pixels (N, H, W, 2) float32 between uint8 (N, H, W) stacks, pair i = prev[i] -> nxt[i]."""
        self._check(prev, nxt, 3)
        if self._tvl1 is None:
            return np.stack([self._raw_opencv(a, b) for a, b in zip(prev, nxt)]) if len(prev) else \
                np.empty((0, *prev.shape[1:], 2), np.float32)
        import torch

        if self.backend == "Triton":  # all pairs through the schedule: a finished pair's slot takes the next one
            a, b = torch.from_numpy(np.ascontiguousarray(prev)), torch.from_numpy(np.ascontiguousarray(nxt))
            return self._tvl1(a.to(self.device), b.to(self.device)).cpu().numpy() if len(prev) else \
                np.empty((0, *prev.shape[1:], 2), np.float32)
        out = np.empty((*prev.shape, 2), np.float32)
        for s in range(0, len(prev), self.batch_size):
            a = torch.from_numpy(np.ascontiguousarray(prev[s:s + self.batch_size])).to(self.device)
            b = torch.from_numpy(np.ascontiguousarray(nxt[s:s + self.batch_size])).to(self.device)
            out[s:s + len(a)] = self._tvl1(a, b).cpu().numpy()
        return out

    def _raw_opencv(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        if self._impl is None:
            return cv2.calcOpticalFlowFarneback(prev, nxt, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        return self._impl.calc(prev, nxt, None)

    def raw(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Unscaled flow in pixels (H, W, 2) float32 between two uint8 grayscale frames."""
        self._check(prev, nxt, 2)
        if self._tvl1 is not None:
            return self.raw_batch(prev[None], nxt[None])[0]
        return self._raw_opencv(prev, nxt)

    def _scale(self, flow: np.ndarray) -> np.ndarray:
        np.clip(flow, -self.bound, self.bound, out=flow)
        flow /= self.bound
        return flow

    def pair(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow (H, W, 2) between two grayscale frames, clipped at +-bound and scaled to [-1, 1]."""
        return self._scale(self.raw(prev, nxt))

    def batch(self, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
        """Flow (N, H, W, 2) of N frame pairs (uint8 (N, H, W) each), clipped at +-bound and scaled to [-1, 1]."""
        return self._scale(self.raw_batch(prev, nxt))

    def __call__(self, gray_frames: np.ndarray, progress: Callable[[int], object] | None = None) -> np.ndarray:
        """Flow between consecutive frames of uint8 (T, H, W): float32 (T - 1, H, W, 2) in [-1, 1]."""
        t, h, w = gray_frames.shape
        out = np.empty((max(0, t - 1), h, w, 2), dtype=np.float32)
        step = self.batch_size if self._tvl1 is not None else 1
        if self.backend == "Triton":
            step = max(1, t - 1)  # the whole clip in one schedule, so that no pair waits for a slower one
        for s in range(0, t - 1, step):
            e = min(s + step, t - 1)
            out[s:e] = self.batch(gray_frames[s:e], gray_frames[s + 1:e + 1])
            if progress is not None:
                progress(e - s)
        return out
