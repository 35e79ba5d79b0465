"""Peak memory of one fine-tuning step with frozen blocks, with and without a feature cache.

Each configuration runs in a fresh process (peak RSS cannot be reset within one), which reports its
ru_maxrss high-water mark and its resident size just before the step (interpreter, torch, model).
"""
from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.model import BLOCK_NAMES, I3D
from src.training.frozen import FrozenPart, freeze, train_mode


@dataclass
class MemoryResult:
    """Peak memory of one configuration."""

    label: str
    frozen: int
    cached: bool
    precision: str
    input_shape: tuple[int, ...]
    peak_mb: float
    baseline_mb: float
    seconds: float

    @property
    def step_mb(self) -> float:
        """Peak minus the resident size before the step: what the step itself needed."""
        return self.peak_mb - self.baseline_mb


def _rss_mb() -> float:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096 / 2**20


def _train_step(batch: int, frames: int, frozen: int, cached: bool, precision: str) -> tuple[tuple[int, ...], float, float]:
    """One SGD step; returns (input shape, resident MB before the step, seconds)."""
    torch.manual_seed(0)
    model = I3D()
    freeze(model, frozen)
    train_mode(model, frozen)
    trained = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trained, lr=0.01, momentum=0.9)
    labels = torch.zeros(batch, dtype=torch.long)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")
    if cached:
        # what a cache would hold: the frozen part's output, stored in the training precision
        with torch.no_grad():
            shape = I3D().to("meta").forward_features(torch.empty(batch, 3, frames, 224, 224, device="meta"),
                                                      _endpoint(frozen)).shape
        x = torch.randn(shape, dtype=torch.bfloat16 if precision == "bf16" else torch.float32)
    else:
        x = torch.randn(batch, 3, frames, 224, 224)
    baseline = _rss_mb()
    start = time.perf_counter()
    with autocast:
        # the frozen part as training runs it on the plain model (no_grad), then the trained blocks to the logits
        h = x if cached else FrozenPart(model, frozen, torch.device("cpu"), "plain")(x)
        loss = F.cross_entropy(model.forward_blocks(h, frozen).float(), labels)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return tuple(x.shape), baseline, time.perf_counter() - start


def _endpoint(frozen: int) -> str:
    """The endpoint whose output feeds block `frozen` (the cached tensor)."""
    name = BLOCK_NAMES[frozen - 1]
    return name[0].upper() + name[1:]


def _child(queue: mp.Queue, args: tuple) -> None:
    import resource

    shape, baseline, seconds = _train_step(*args)
    queue.put((shape, baseline, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, seconds))


def measure(batch: int, frames: int, frozen: int, cached: bool, precision: str) -> MemoryResult:
    """Peak RSS of one training step in a fresh process."""
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_child, args=(queue, (batch, frames, frozen, cached, precision)))
    process.start()
    shape, baseline, peak, seconds = queue.get()
    process.join()
    label = f"{'cache of ' + _endpoint(frozen) if cached else 'no cache (frozen part under no_grad)'}"
    return MemoryResult(label, frozen, cached, precision, shape, peak, baseline, seconds)
