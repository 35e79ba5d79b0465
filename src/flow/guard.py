"""The TV-L1 guard: an accelerated implementation is trusted on a device only after its flow matched OpenCV's.

The first time a job would run the Triton kernels or the PyTorch port on a device (per device, driver, torch and
triton versions: src/guard.py), it computes the flow of two small moving-texture pairs with it and with the
reference, OpenCV's own DualTVL1 (or, where OpenCV lacks its contrib module, the PyTorch port on the CPU, which is
OpenCV's bit for bit there). An exception, or a mean endpoint error above BOUND_PX, fails the check, and the job
runs the next implementation: Triton -> the PyTorch port on the same device -> OpenCV on the CPU.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from src.guard import cached_verdict, device_facts, forced_flow_backend, in_worker, notice, store_verdict, \
    triton_version

BOUND_PX = 0.02  # mean endpoint error against OpenCV's flow; the goal is 0 (bit-exact)
CHECK_SIZE = (64, 80)  # two levels of pyramid and every kernel, ~0.1 s per pair for the eager port on a CPU
NAMES = {"triton": "Triton TV-L1", "pytorch": "PyTorch TV-L1", "pytorch-compiled": "compiled PyTorch TV-L1",
         "opencv": "OpenCV's TV-L1"}


def texture_pairs(count: int = 2, size: tuple[int, int] = CHECK_SIZE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`count` uint8 (N, H, W) pairs of a smooth random texture, each moved by its own sub-pixel shift."""
    h, w = size
    rng = np.random.default_rng(seed)
    prev, nxt = [], []
    for i in range(count):
        big = cv2.GaussianBlur(rng.uniform(0, 255, (h + 8, w + 8)).astype(np.float32), (0, 0), 2.0)
        shift = np.float32([[1, 0, 1.6 - i * 0.9], [0, 1, -0.7 + i * 1.3]])
        moved = cv2.warpAffine(big, shift, (w + 8, h + 8), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
        prev.append(np.clip(big[4:-4, 4:-4], 0, 255).astype(np.uint8))
        nxt.append(np.clip(moved[4:-4, 4:-4], 0, 255).astype(np.uint8))
    return np.stack(prev), np.stack(nxt)


def run_tvl1(implementation: str, device, prev: np.ndarray, nxt: np.ndarray) -> np.ndarray:
    """Raw flow (N, H, W, 2) in pixels of uint8 (N, H, W) stacks by one implementation on a device."""
    if implementation == "opencv":
        tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
        return np.stack([tvl1.calc(a, b, None) for a, b in zip(prev, nxt)])
    import torch

    a, b = torch.from_numpy(np.ascontiguousarray(prev)).to(device), torch.from_numpy(np.ascontiguousarray(nxt)).to(device)
    if implementation == "triton":
        from src.flow.triton_tvl1 import TritonTVL1

        return TritonTVL1(capacity=len(prev))(a, b).cpu().numpy()
    from src.flow.tvl1 import TVL1

    return TVL1(compile=implementation == "pytorch-compiled")(a, b).cpu().numpy()


def reference_flows(prev: np.ndarray, nxt: np.ndarray) -> tuple[np.ndarray, str]:
    """OpenCV's flows of the pairs, and what computed them (the CPU port where OpenCV has no optflow module)."""
    if hasattr(cv2, "optflow"):
        return run_tvl1("opencv", "cpu", prev, nxt), "OpenCV"
    import torch

    return run_tvl1("pytorch", torch.device("cpu"), prev, nxt), "the PyTorch port on the CPU (no cv2.optflow here)"


def endpoint_errors(flow: np.ndarray, reference: np.ndarray) -> dict:
    """Max and mean endpoint error in pixels, and whether the flows are equal bit for bit."""
    epe = np.hypot(*(flow.astype(np.float64) - reference).transpose(3, 0, 1, 2))
    exact = flow.shape == reference.shape and bool(np.array_equal(flow.view(np.uint32), reference.view(np.uint32)))
    return {"max_epe": float(epe.max()) if epe.size else 0.0, "mean_epe": float(epe.mean()) if epe.size else 0.0,
            "bit_exact": exact}


@dataclass
class FlowCheck:
    """One implementation against the reference: passed or not, why, the figures."""

    ok: bool
    detail: str
    figures: dict = field(default_factory=dict)


def check_tvl1(implementation: str, device, prev: np.ndarray | None = None, nxt: np.ndarray | None = None,
               reference: tuple[np.ndarray, str] | None = None) -> FlowCheck:
    """Compute the pairs' flow with `implementation` on `device` and compare it with the reference's."""
    if prev is None:
        prev, nxt = texture_pairs()
    flows_ref, source = reference or reference_flows(prev, nxt)
    start = time.perf_counter()
    try:
        flow = run_tvl1(implementation, device, prev, nxt)
    except Exception as exc:  # any failure of a kernel, a compiler or a driver: the path is not to be trusted
        return FlowCheck(False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}")
    seconds = time.perf_counter() - start
    figures = endpoint_errors(flow, flows_ref)
    figures.update(pairs=len(prev), size=list(prev.shape[1:]), seconds=round(seconds, 3), reference=source)
    ok = bool(np.isfinite(figures["mean_epe"])) and figures["mean_epe"] <= BOUND_PX
    what = "bit-exact" if figures["bit_exact"] else f"mean endpoint error {figures['mean_epe']:.3g} px, max " \
                                                     f"{figures['max_epe']:.3g} px"
    return FlowCheck(ok, f"{what} against {source}" + ("" if ok else f" (bound {BOUND_PX} px)"), figures)


def verdict(implementation: str, device) -> dict:
    """The cached verdict of an implementation on a device, checked now if there is none (main process only)."""
    facts = device_facts(device)
    key = f"tvl1-{implementation}@{device}"
    entry = cached_verdict(key, facts)
    if entry is not None:
        return entry
    if in_worker():  # decoding workers never check: the job's main process did, or the path runs unchecked
        return {"ok": True, "detail": "not checked in a worker process"}
    result = check_tvl1(implementation, device)
    return store_verdict(key, facts, result.ok, result.detail, result.figures)


def forced_backend(name: str, device_type: str) -> str:
    """The backend --flow-backend NAME asks for ("Triton", "PyTorch" or "OpenCV"); ValueError where it cannot run."""
    if name == "triton":
        if device_type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            raise ValueError(f"--flow-backend triton: the Triton kernels run on CUDA only, not {device_type}")
        if triton_version() is None:
            raise ValueError("--flow-backend triton: triton is not installed")
    return {"triton": "Triton", "pytorch": "PyTorch", "opencv": "OpenCV"}[name]


def fallbacks(implementation: str) -> tuple[str, ...]:
    """The implementations to try in order, starting with `implementation`."""
    order = ("triton", "pytorch", "opencv")
    return order[order.index(implementation):]


def guarded_tvl1(device, preferred: str) -> tuple[str, str]:
    """(the implementation to run, a note) for a device: `preferred` if it passes its check, else the next that
    does; OpenCV on the CPU, the reference, always does. A forced --flow-backend is taken as it is."""
    import torch

    forced = forced_flow_backend()
    device, note = torch.device(device), ""
    if forced:
        forced_backend(forced, device.type)
        return forced, f"forced by --flow-backend {forced}"
    chain = fallbacks(preferred)
    for implementation, following in zip(chain, chain[1:]):
        entry = verdict(implementation, device)
        if entry["ok"]:
            return implementation, note
        instead = NAMES[following] + (" on the CPU" if following == "opencv" else f" on {device}")
        note = notice(NAMES[implementation], device, entry["detail"], instead)
    return "opencv", note
