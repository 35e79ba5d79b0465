"""Speed measurements of the plain model and its faster options, as ratios taken within one run.

Every configuration is timed interleaved (plain, option 1, option 2, plain, option 1, ...) and
reported as medians, so a shared, noisy machine slows all of them alike.
"""
from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from src.device import machine_description
from src.inference import auto_precision, cpu_bf16_unsupported, optimize_for_inference
from src.measure.flops import forward_flops
from src.model import I3D
from src.training.frozen import FrozenPart, freeze, train_mode

CL = torch.channels_last_3d
FROZEN_BLOCKS = 15


def load_average() -> str:
    """The 1-minute load average and the core count, e.g. 'load 1.23 on 2 cores'."""
    try:
        load = f"{os.getloadavg()[0]:.2f}"
    except OSError:
        load = "?"
    return f"load {load} on {os.cpu_count()} cores, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                warmup: int = 1) -> dict[str, float]:
    """Median seconds of each callable, timed round-robin `repeats` times after `warmup` rounds."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for round_ in range(warmup + repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def peak_conv(dtype: torch.dtype, device: torch.device) -> tuple[Callable[[], object], int]:
    """A large channels-last 3x3x3 conv (128->128 on 8x56x56) as (callable, FLOPs): this machine's conv peak."""
    x = torch.randn(1, 128, 8, 56, 56, device=device).to(dtype=dtype, memory_format=CL)
    w = torch.randn(128, 128, 3, 3, 3, device=device, dtype=dtype)

    def conv():
        with torch.no_grad():
            return F.conv3d(x, w, None, 1, 1)
    return conv, 2 * x.numel() * 128 * 27


@dataclass
class Row:
    """One timed option of one configuration."""

    mode: str
    frames: int
    batch: int
    option: str
    seconds: float
    ratio: float
    gflops: float

    peak: float = 0.0  # fp32 conv peak GFLOP/s measured in the same rounds

    def format(self) -> str:
        """A Markdown table row."""
        return (f"| {self.mode} | {self.frames} | {self.batch} | {self.option} | {self.seconds * 1e3:.0f} | "
                f"{self.batch / self.seconds:.2f} | {self.ratio:.2f}x | {self.gflops:.0f} | "
                f"{100 * self.gflops / self.peak:.0f}% |")


def eval_options(model: I3D, x: torch.Tensor, device: torch.device, compile: bool) -> dict[str, Callable]:
    """Forward-only options: plain (eager, contiguous fp32), channels_last_3d, bf16 autocast, fast paths."""
    model.eval()  # the model is shared with the training modes, which leave it in train mode
    cl_model = I3D(model.num_classes, model.in_channels).to(device).eval()
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=CL)
    x_cl = x.to(memory_format=CL)
    autocast_dtype = torch.bfloat16

    def plain():
        with torch.no_grad():
            return model(x)

    def channels_last():
        with torch.no_grad():
            return cl_model(x_cl)

    def autocast():
        with torch.no_grad(), torch.autocast(device.type, dtype=autocast_dtype):
            return cl_model(x_cl)

    options = {"plain fp32": plain, "channels_last_3d": channels_last, "bf16 autocast + CL": autocast}
    fast32 = optimize_for_inference(model, device, "fp32")
    options["fast fp32"] = lambda: fast32(x)
    if not (device.type == "cpu" and cpu_bf16_unsupported()):  # oneDNN refuses bf16 convolutions on such CPUs
        fast16 = optimize_for_inference(model, device, "bf16")
        options["fast bf16"] = lambda: fast16(x)
    chosen, _ = auto_precision(str(device))
    options[f"fast auto (={chosen})"] = options[f"fast {chosen}"]
    if compile:
        compiled = optimize_for_inference(model, device, chosen, compile=True)
        compiled(x)  # compile outside the timing
        options[f"fast {chosen} + compile"] = lambda: compiled(x)
    return options


def train_options(model: I3D, x: torch.Tensor, device: torch.device, frozen: int) -> dict[str, Callable]:
    """Forward+backward options; the first `frozen` blocks are frozen and run exactly as training runs them."""
    labels = torch.zeros(x.shape[0], dtype=torch.long, device=device)
    cl_model = I3D(model.num_classes, model.in_channels).to(device)
    cl_model.load_state_dict(model.state_dict())
    cl_model = cl_model.to(memory_format=CL)
    x_cl = x.to(memory_format=CL)
    for net in (model, cl_model):
        net.requires_grad_(True)  # the model is shared with other modes; freeze() only turns gradients off
        freeze(net, frozen)

    def step(net: I3D, clip: torch.Tensor, part: FrozenPart | None, dtype: torch.dtype | None = None) -> None:
        train_mode(net, frozen)
        with torch.autocast(device.type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            h = part(clip) if part is not None else clip
            loss = F.cross_entropy(net.forward_blocks(h, frozen).float(), labels)
        loss.backward()
        net.zero_grad(set_to_none=True)

    plain_part = FrozenPart(model, frozen, device, "plain") if frozen else None
    cl_part = FrozenPart(cl_model, frozen, device, "plain") if frozen else None
    options = {"plain fp32": lambda: step(model, x, plain_part),
               "channels_last_3d": lambda: step(cl_model, x_cl, cl_part),
               "bf16 autocast + CL": lambda: step(cl_model, x_cl, cl_part, torch.bfloat16)}
    if frozen == FROZEN_BLOCKS:
        chosen, _ = auto_precision(str(device))
        fast = FrozenPart(cl_model, frozen, device, chosen)
        options[f"frozen part fast {chosen}"] = lambda: step(cl_model, x_cl, fast)
    return options


def run_benchmarks(frames: list[int], batches: list[int], modes: list[str], repeats: int, device: torch.device,
        compile: bool = False, log: Callable[[str], None] = print) -> list[Row]:
    """Time every option of every (mode, frames, batch) against the plain model; log table rows as they come.

    The fp32 and bf16 peak convolutions are timed in the same interleaved rounds as each configuration.
    """
    model = I3D().to(device).eval()
    peaks = {"fp32": peak_conv(torch.float32, device), "bf16": peak_conv(torch.bfloat16, device)}
    log(f"# {machine_description()}")
    log(f"# {load_average()}; {auto_precision(str(device))[1]}")
    log("| mode | frames | batch | option | ms | clips/s | vs plain | GFLOP/s | of fp32 peak |")
    log("|---|---|---|---|---|---|---|---|---|")
    rows: list[Row] = []
    for mode in modes:
        for t in frames:
            for n in batches:
                x = torch.randn(n, 3, t, 224, 224, device=device)
                flops = forward_flops(model, tuple(x.shape))
                if mode == "eval":
                    options = eval_options(model, x, device, compile)
                else:
                    frozen = FROZEN_BLOCKS if mode.startswith("train-frozen") else 0
                    options = train_options(model, x, device, frozen)
                    flops = flops * (1 + 2 * _trained_fraction(model, tuple(x.shape), frozen))  # bwd ~ 2x fwd
                timed = interleaved({**options, **{f"peak {k}": fn for k, (fn, _) in peaks.items()}},
                                    repeats, device)
                peak = {k: peaks[k][1] / timed.pop(f"peak {k}") / 1e9 for k in peaks}
                base = timed["plain fp32"]
                for option, seconds in timed.items():
                    row = Row(mode, t, n, option, seconds, base / seconds, flops / seconds / 1e9, peak["fp32"])
                    rows.append(row)
                    log(row.format())
                log(f"|  |  |  | conv peak fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f} GFLOP/s; "
                    f"{load_average()} |  |  |  |  |  |")
    return rows


def _trained_fraction(model: I3D, shape: tuple[int, ...], frozen: int) -> float:
    """Share of the forward conv MACs in the blocks that get gradients."""
    from src.measure.flops import conv_macs_per_block

    macs = list(conv_macs_per_block(model, shape).values())
    return sum(macs[frozen:]) / sum(macs)
