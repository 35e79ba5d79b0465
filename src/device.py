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
