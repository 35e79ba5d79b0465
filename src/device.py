"""Choosing the compute device: CUDA, then Apple's MPS, then the CPU."""
from __future__ import annotations

import torch


def pick_device(name: str | None = None) -> torch.device:
    """The named device, or the best one available when `name` is None or 'auto'."""
    if name not in (None, "auto"):
        return torch.device(name)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def usable_device(name: str | None = None) -> torch.device:
    """`pick_device(name)`, checked by allocating on it; ValueError in one line when it cannot be used here."""
    try:
        device = pick_device(name)
        torch.empty(1, device=device)
    except (RuntimeError, AssertionError) as exc:
        raise ValueError(f"device {name!r} is not usable here: {str(exc).splitlines()[0]}") from None
    return device


def cpu_flags() -> list[str]:
    """The CPU's SIMD flags that decide convolution speed (from /proc/cpuinfo where available)."""
    import re
    from pathlib import Path

    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return [torch.backends.cpu.get_cpu_capability()]
    match = re.search(r"^flags\s*:(.*)$", text, re.M)
    flags = set(match.group(1).split()) if match else set()
    wanted = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_tile")
    return [f for f in wanted if f in flags]


def machine_description() -> str:
    """CPU model, SIMD flags and torch's chosen CPU capability, in one line (for benchmark reports)."""
    import platform

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return (f"{model}; flags: {' '.join(cpu_flags())}; torch {torch.__version__} "
            f"capability {torch.backends.cpu.get_cpu_capability()}")
