"""The fast path's guard: a precision is trusted on a device only after its logits matched the plain model's.

The first time a job would run the fast path at a precision on a device (per device, driver, torch and triton
versions: src/guard.py), the model it is about to run computes the logits of one synthetic 16-frame 224x224 clip
(a smooth moving texture) both ways, plain float32 and fast. An exception, a non-finite logit or a difference above
the precision's bound (`fast_bound`) fails the check, and the job runs the next path: a reduced precision -> the
fp32 fast path -> the plain float32 model.
"""
from __future__ import annotations

import copy
import time

import cv2
import numpy as np
import torch

from src.guard import cached_verdict, device_facts, in_worker, notice, store_verdict
from src.inference.fast import auto_precision, optimize_for_inference

# max |logit difference| against the plain float32 model: fp32 measured 1.6e-5 to 3.1e-5 on the CPU, bf16 0.15 to
# 0.22 (docs/inference.md); on CUDA both models run TF32 convolutions by default (10-bit mantissas), like bf16's 8
FAST_PATH_BOUNDS = {"fp32": 1e-4, "bf16": 0.25, "fp16": 0.25}
TF32_BOUND = 0.25
CHECK_CLIP = (16, 224)  # frames, pixels: the recipe's size (at 112 px the fp32 path strays 1.4e-4 on real clips)


def fast_bound(precision: str, device: torch.device) -> float:
    """The largest |logit difference| the fast path at `precision` may show against the plain model on `device`."""
    if precision == "fp32" and device.type == "cuda" and torch.backends.cudnn.allow_tf32:
        return TF32_BOUND
    return FAST_PATH_BOUNDS[precision]


def texture_clip(channels: int = 3, frames: int | None = None, size: int | None = None, seed: int = 0
                 ) -> torch.Tensor:
    """(1, channels, frames, size, size) in [-1, 1] (default CHECK_CLIP): a smooth random texture moving 1 px down,
    2 px right a frame."""
    frames, size = frames or CHECK_CLIP[0], size or CHECK_CLIP[1]
    rng = np.random.default_rng(seed)
    pad = 2 * frames + 8
    big = cv2.GaussianBlur(rng.uniform(0, 255, (size + pad, size + pad, 3)).astype(np.float32), (0, 0), 2.0)
    big = (big - big.mean()) / big.std() * 30 + 128
    clip = np.stack([big[4 + t:4 + t + size, 4 + 2 * t:4 + 2 * t + size] for t in range(frames)])
    x = torch.from_numpy(np.clip(clip, 0, 255).astype(np.uint8)).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
    return x[:, :channels] if channels <= 3 else x[:, :1].expand(1, channels, frames, size, size).contiguous()


def compare_logits(plain: torch.nn.Module, fast: torch.nn.Module, x: torch.Tensor) -> dict:
    """max |logit difference|, top-1 agreement and the fast model's seconds on one input."""
    with torch.no_grad():
        expected = plain(x).float().cpu()
        start = time.perf_counter()
        got = fast(x).float().cpu()
        if x.device.type == "cuda":
            torch.cuda.synchronize(x.device)
        seconds = time.perf_counter() - start
    finite = bool(torch.isfinite(got).all())
    diff = float((got - expected).abs().max()) if finite else float("inf")
    return {"max_dlogit": diff, "top1_agree": bool((got.argmax(1) == expected.argmax(1)).all()),
            "finite": finite, "seconds": round(seconds, 3)}


def check_fast_path(model: torch.nn.Module, device: torch.device, precision: str) -> tuple[bool, str, dict]:
    """(passed, why, figures) of the fast path at a concrete precision against the plain float32 model."""
    try:
        plain = copy.deepcopy(model).float().eval().to(device)  # the caller's model stays where it is
        fast = optimize_for_inference(plain, device, precision)
        figures = compare_logits(plain, fast, texture_clip(plain.in_channels).to(device))
    except Exception as exc:  # a kernel, a driver or a dtype the device lacks: the path is not to be trusted
        return False, f"{type(exc).__name__}: {' '.join(str(exc).split())[:200]}", {}
    bound = fast_bound(precision, device)
    figures["bound"] = bound
    ok = figures["max_dlogit"] <= bound
    what = f"max |dlogit| {figures['max_dlogit']:.3g} against the plain float32 model"
    return ok, what + ("" if ok else f" (bound {bound:g})"), figures


def verdict(model: torch.nn.Module, device: torch.device, precision: str) -> dict:
    """The cached verdict of the fast path at `precision` on `device`, checked now on `model` if there is none."""
    facts = device_facts(device)
    key = f"fast-{precision}@{device}"
    entry = cached_verdict(key, facts)
    if entry is not None:
        return entry
    if in_worker():
        return {"ok": True, "detail": "not checked in a worker process"}
    ok, detail, figures = check_fast_path(model, device, precision)
    return store_verdict(key, facts, ok, detail, figures)


def concrete(device: torch.device) -> torch.device:
    """`cuda` -> `cuda:N` (the current device), so that verdicts name the card."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", torch.cuda.current_device())
    return device


def guarded_fast_path(model: torch.nn.Module, device: str | torch.device, precision: str, compile: bool = False
                      ) -> tuple[torch.nn.Module, str]:
    """(the runner, a line saying which) for `model`: the fast path at `precision` ('auto' resolved here) if it
    passes its check on this device, else fp32's fast path, else the plain float32 model."""
    device = concrete(torch.device(device))
    chosen = auto_precision(str(device))[0] if precision == "auto" else precision
    for candidate in dict.fromkeys([chosen, "fp32"]):
        entry = verdict(model, device, candidate)
        if entry["ok"]:
            fast = optimize_for_inference(model, device, precision if candidate == chosen else "fp32", compile)
            return fast, str(fast.path)
        following = "the fp32 fast path" if candidate != "fp32" else "the plain float32 model"
        notice(f"the {candidate} fast path", device, entry["detail"], following)
    return model.float().eval().to(device), "plain float32 model (eager; the fast path failed its check here)"


def accelerate(models: dict[str, torch.nn.Module], device: torch.device, precision: str | None,
               compile: bool = False) -> tuple[dict[str, torch.nn.Module], str]:
    """The fast inference path of each stream (None: the plain eager model), checked on this device before it is
    trusted, and a line saying which runs."""
    if precision is None:
        return {s: m.to(device).eval() for s, m in models.items()}, "plain float32 model (eager)"
    runners, lines = {}, []
    for stream, model in models.items():
        runners[stream], line = guarded_fast_path(model, device, precision, compile)
        lines.append(line)
    return runners, lines[0] if len(set(lines)) == 1 else "; ".join(f"{s}: {ln}" for s, ln in zip(models, lines))
