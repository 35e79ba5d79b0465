"""Where I3D spends its time and memory: per-block forward (and backward) time, FLOPs and activation size."""
from __future__ import annotations

import resource
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch

from src.device import machine_description
from src.measure.flops import conv_macs_per_block
from src.measure.speed import load_average
from src.model import BLOCK_NAMES, I3D


@dataclass
class BlockStats:
    """Median timings of one of the 20 blocks."""

    name: str
    forward_ms: float
    backward_ms: float
    gflops: float  # forward convolution FLOPs (2 x MACs)
    output_shape: list[int]
    output_mb: float

    @property
    def total_ms(self) -> float:
        """Forward plus backward milliseconds."""
        return self.forward_ms + self.backward_ms


@dataclass
class Report:
    """A profile of one configuration."""

    frames: int
    batch: int
    backward: bool
    model: str
    blocks: list[BlockStats] = field(default_factory=list)
    total_ms: float = 0.0
    clips_per_s: float = 0.0
    peak_rss_mb: float = 0.0
    activations_mb: float = 0.0
    machine: str = ""
    load: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict."""
        return asdict(self)

    def table(self) -> str:
        """A fixed-width text table, one line per block, then totals."""
        lines = [f"# {self.model}, {self.batch} x {self.frames} frames 224x224, "
                 f"{'forward+backward' if self.backward else 'forward'}; {self.machine}; {self.load}",
                 f"{'block':<18}{'fwd ms':>9}{'bwd ms':>9}{'share':>8}{'GFLOP':>8}{'GFLOP/s':>9}  "
                 f"{'output (N,C,T,H,W)':<26}{'MB':>8}"]
        for b in self.blocks:
            rate = b.gflops * (3 if self.backward else 1) / (b.total_ms / 1e3) if b.total_ms > 0 and b.gflops else 0
            lines.append(f"{b.name:<18}{b.forward_ms:>9.1f}{b.backward_ms:>9.1f}"
                         f"{100 * b.total_ms / self.total_ms:>7.1f}%{b.gflops:>8.2f}{rate:>9.0f}  "
                         f"{str(tuple(b.output_shape)):<26}{b.output_mb:>8.1f}")
        gflops = sum(b.gflops for b in self.blocks)
        lines.append(f"total {self.total_ms:.0f} ms, {gflops:.1f} GFLOP forward, {self.clips_per_s:.2f} clips/s; "
                     f"activations {self.activations_mb:.0f} MB; peak RSS {self.peak_rss_mb:.0f} MB")
        return "\n".join(lines)


def peak_rss_mb() -> float:
    """This process's peak resident memory so far, in MB (ru_maxrss is KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def step(blocks: list[tuple[str, torch.nn.Module]], x: torch.Tensor, backward: bool,
         timer: Callable[[], float] = time.perf_counter) -> tuple[list[float], list[float], list[torch.Tensor]]:
    """One forward (and backward) pass block by block; returns per-block forward s, backward s, outputs.

    For the backward pass every block's input is a detached leaf, so each block's backward is timed alone.
    """
    forward_s, inputs, outputs = [], [], []
    h = x
    for _, block in blocks:
        if backward:
            h = h.detach().requires_grad_(h.is_floating_point())
        inputs.append(h)
        start = timer()
        with torch.set_grad_enabled(backward):
            h = block(h)
        forward_s.append(timer() - start)
        outputs.append(h)
    backward_s = [0.0] * len(blocks)
    if backward:
        grad = torch.ones_like(h) / h.numel()  # d(mean)/d(output): the loss itself costs nothing to profile
        for i in range(len(blocks) - 1, -1, -1):
            start = timer()
            if outputs[i].requires_grad:
                outputs[i].backward(grad)
            backward_s[i] = timer() - start
            grad = inputs[i].grad
            if grad is None:
                break
    return forward_s, backward_s, outputs


def model_blocks(model: I3D, fast: bool = False, precision: str = "fp32") -> list[tuple[str, torch.nn.Module]]:
    """The 20 blocks as (name, callable module); with `fast`, the fast path's blocks then its head."""
    if not fast:
        return list(model.named_children())
    from src.inference import optimize_for_inference

    fast_model = optimize_for_inference(model, "cpu", precision)
    dtype = fast_model.dtype

    class ToFast(torch.nn.Module):
        def __init__(self, block: torch.nn.Module, first: bool):
            super().__init__()
            self.block, self.first = block, first

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if self.first:
                x = x.to(dtype=dtype, memory_format=torch.channels_last_3d)
            return self.block(x)

    blocks = [(name, ToFast(b, i == 0)) for i, (name, b) in enumerate(fast_model.blocks.items())]
    return blocks + [("head (4 blocks)", _Head(fast_model))]


class _Head(torch.nn.Module):
    def __init__(self, fast_model: torch.nn.Module):
        super().__init__()
        self.fast_model = fast_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fast_model.forward_head(x)


def profile_model(model: I3D, frames: int = 16, batch: int = 1, backward: bool = False, repeats: int = 3,
                  fast: bool = False, precision: str = "fp32",
                  step_fn: Callable = step) -> Report:
    """Median per-block times over `repeats` passes (after one warm-up), FLOPs per block, memory."""
    if fast and backward:
        raise ValueError("the fast path is inference-only; profile --backward on the plain model")
    model.train(backward)
    x = torch.randn(batch, model.in_channels, frames, 224, 224)
    blocks = model_blocks(model, fast, precision)
    macs = conv_macs_per_block(model, tuple(x.shape))
    runs = []
    for i in range(repeats + 1):
        forward_s, backward_s, outputs = step_fn(blocks, x, backward)
        if i:
            runs.append((forward_s, backward_s))
    med = lambda values: sorted(values)[len(values) // 2]  # noqa: E731
    names = [name for name, _ in blocks]
    label = f"fast path {precision}" if fast else "plain model fp32"
    report = Report(frames, batch, backward, label, machine=machine_description(), load=load_average())
    for j, name in enumerate(names):
        out = outputs[j]
        flops = 2 * (macs.get(name, 0) if not fast or j < 16 else sum(macs[n] for n in BLOCK_NAMES[16:]))
        report.blocks.append(BlockStats(name, 1e3 * med([r[0][j] for r in runs]), 1e3 * med([r[1][j] for r in runs]),
                                        flops / 1e9, list(out.shape),
                                        out.numel() * out.element_size() / 2**20))
    report.total_ms = sum(b.total_ms for b in report.blocks)
    report.clips_per_s = batch / (report.total_ms / 1e3)
    report.activations_mb = sum(b.output_mb for b in report.blocks)
    report.peak_rss_mb = peak_rss_mb()
    return report
