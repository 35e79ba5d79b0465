"""Fast inference: an eval-only transformation of a trained I3D that computes the same function faster.

`optimize_for_inference(model)` returns a `FastI3D` computing the same function as `model.eval()`:
batch norm folded into the convolutions, ReLU fused into them (oneDNN post-op on CPU), tensors kept
channels_last_3d end to end, TF 'SAME' padding worked out once per input shape, the three 1x1
convolutions of each Inception block that read the same input merged into one, and optionally
bf16/fp16 weights and activations. The plain model is left untouched.
"""
from __future__ import annotations

import copy
import functools
import math
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from src.device import cpu_flags
from src.model import ENDPOINTS, I3D, InceptionBlock, LogitsPool, MaxPool3dSame, Unit3D, split_same_padding

CL = torch.channels_last_3d
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
PRECISION_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@functools.lru_cache(maxsize=None)
def cpu_bf16_unsupported() -> str | None:
    """Why this CPU cannot run the fast path's bf16 convolutions, or None where it can (decided once per process).

    One tiny trial convolution, then oneDNN's own check: its bf16 kernels need more than the CPU flags
    suggest (AVX-512 BW/VL/DQ or AVX-NE-CONVERT on x86).
    """
    if not (torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")):
        return "this PyTorch has no oneDNN convolutions"
    x = torch.zeros(1, 4, 2, 4, 4, dtype=torch.bfloat16).to(memory_format=CL)
    w = torch.zeros(4, 4, 1, 1, 1, dtype=torch.bfloat16)
    try:  # oneDNN's error says what the CPU lacks
        with torch.inference_mode():
            torch.ops.mkldnn._convolution_pointwise(x, w, None, [0, 0, 0], [1, 1, 1], [1, 1, 1], 1, "none", [None], "")
    except RuntimeError as exc:
        return " ".join(str(exc).split())
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    if check is not None and not check():
        return "oneDNN reports no bf16 support on this CPU"
    return None


def cpu_has_bf16() -> bool:
    """True where the CPU runs bf16 convolutions natively (AVX512-BF16 or AMX-BF16 on x86; elsewhere oneDNN's view)."""
    if cpu_bf16_unsupported() is not None:
        return False
    flags = cpu_flags()
    if "avx512_bf16" in flags or "amx_bf16" in flags:
        return True
    # x86 without bf16 instructions (AVX-512 F/BW only): oneDNN emulates bf16, slower than fp32
    return "avx2" not in flags and "avx512f" not in flags


def check_precision(precision: str | None, device: str | torch.device = "cpu") -> None:
    """Raise ValueError (one line) where an explicit `precision` cannot run on `device`; None (the plain model),
    'auto' and 'fp32' run anywhere. Cheap: call it before loading anything."""
    device = torch.device(device)
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("--precision fp16: runs on CUDA only; use --precision fp32 or auto on this device")
    if precision == "bf16" and device.type == "cpu" and (why := cpu_bf16_unsupported()):
        # bf16 another way (autocast on the plain model, or the fast path on ATen convolutions) runs on such a
        # CPU but was 30x-120x slower than fp32 on an AVX2 one, for the same top-1: not worth offering
        raise ValueError(f"--precision bf16: this CPU cannot run bf16 convolutions ({why}); "
                         "use --precision fp32 or auto")


def _time_conv(device: torch.device, dtype: torch.dtype, repeats: int = 3) -> float:
    """Median seconds of a mid-network-sized 3x3x3 channels-last convolution."""
    x = torch.randn(1, 128, 4, 28, 28, device=device).to(dtype=dtype, memory_format=CL)
    w = torch.randn(192, 128, 3, 3, 3, device=device, dtype=dtype)
    times = []
    with torch.inference_mode():
        for _ in range(repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            F.conv3d(x, w, None, 1, 1)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


@functools.lru_cache(maxsize=None)
def auto_precision(device_str: str = "cpu") -> tuple[str, str]:
    """Pick the fastest precision for a device once per process; returns (precision, reason).

    A reduced precision is a candidate only where the hardware has it (bf16 instructions on CPU,
    tensor cores on CUDA); it is chosen only if a timed convolution (well under a second) confirms
    it is at least 1.3x faster than fp32.
    """
    device = torch.device(device_str)
    if device.type == "cpu":
        if not cpu_has_bf16():
            return "fp32", "no bf16 instructions on this CPU"
        candidate = "bf16"
    elif device.type == "cuda":
        major, _ = torch.cuda.get_device_capability(device)
        if major >= 8:
            candidate = "bf16"
        elif major >= 7:
            candidate = "fp16"
        else:
            return "fp32", f"CUDA compute capability {major}.x has no tensor cores"
    else:
        return "fp32", f"no reduced-precision check for device type {device.type}"
    fp32 = _time_conv(device, torch.float32)
    reduced = _time_conv(device, PRECISION_DTYPES[candidate])
    speedup = fp32 / reduced
    if speedup >= 1.3:
        return candidate, f"auto: {candidate} conv {speedup:.1f}x faster than fp32"
    return "fp32", f"auto: {candidate} conv only {speedup:.1f}x faster than fp32"


class FusedConv(nn.Module):
    """Conv3d with batch norm folded in and optional ReLU; TF 'SAME' padding cached per input shape."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, kernel: tuple[int, int, int],
                 stride: tuple[int, int, int], relu: bool, onednn: bool):
        super().__init__()
        self.register_buffer("weight", weight.detach().clone())
        self.register_buffer("bias", bias.detach().clone())
        self.kernel, self.stride, self.relu, self.onednn = kernel, stride, relu, onednn
        self._padding: dict[tuple[int, ...], tuple[tuple[int, int, int], tuple[int, ...]]] = {}

    @classmethod
    def from_units(cls, units: list[Unit3D], onednn: bool) -> "FusedConv":
        """Fold each unit's eval-mode batch norm into its conv, then stack their outputs on channels."""
        weights, biases = [], []
        for unit in units:
            w = unit.conv.weight.detach().double()
            b = unit.conv.bias.detach().double() if unit.conv.bias is not None else torch.zeros(w.shape[0],
                                                                                                 dtype=torch.float64,
                                                                                                 device=w.device)
            if unit.bn is not None:
                bn = unit.bn
                inv_std = (bn.running_var.double() + bn.eps).rsqrt()
                scale = inv_std if bn.weight is None else inv_std * bn.weight.double()
                w = w * scale.view(-1, 1, 1, 1, 1)
                b = (b - bn.running_mean.double()) * scale + bn.bias.double()
            weights.append(w)
            biases.append(b)
        first = units[0]
        assert all(u.kernel == first.kernel and u.stride == first.stride and u.relu == first.relu for u in units)
        dtype = first.conv.weight.dtype
        return cls(torch.cat(weights).to(dtype), torch.cat(biases).to(dtype), first.kernel, first.stride,
                   first.relu, onednn)

    def padding(self, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], tuple[int, ...]]:
        """(symmetric padding for the conv, extra trailing F.pad or ()) for a (T, H, W) input size."""
        if shape not in self._padding:
            symmetric, extra = split_same_padding(shape, self.kernel, self.stride)
            self._padding[shape] = (symmetric, extra if any(extra) else ())
        return self._padding[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        symmetric, extra = self.padding(tuple(x.shape[2:]))
        if extra:  # only TF's one extra trailing row/col; the symmetric part is the conv's own padding
            x = F.pad(x, extra)
        if self.onednn:
            return torch.ops.mkldnn._convolution_pointwise(
                x, self.weight, self.bias, list(symmetric), list(self.stride), [1, 1, 1], 1,
                "relu" if self.relu else "none", [None], "")
        x = F.conv3d(x, self.weight, self.bias, self.stride, symmetric)
        return F.relu_(x) if self.relu else x


class SamePool(nn.Module):
    """Max pool with TF 'SAME' padding, with the extra trailing -inf padding done by ceil_mode, not a copy."""

    def __init__(self, kernel: tuple[int, int, int], stride: tuple[int, int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self._plan: dict[tuple[int, ...], tuple[tuple[int, int, int], bool, tuple[int, ...]]] = {}

    def plan(self, shape: tuple[int, ...]) -> tuple[tuple[int, int, int], bool, tuple[int, ...]]:
        """(symmetric padding, ceil_mode, explicit -inf pad or ()) for a (T, H, W) input size."""
        if shape not in self._plan:
            symmetric, extra = split_same_padding(shape, self.kernel, self.stride)
            if not any(extra):
                self._plan[shape] = (symmetric, False, ())
            else:
                # ceil_mode adds the last, partial window: exactly TF's extra trailing row when stride > 1
                # (PyTorch drops a last window that would start in the padding).
                def ceil_out(n: int, k: int, s: int, p: int) -> int:
                    out = -(-(n + 2 * p - k) // s) + 1
                    return out - 1 if (out - 1) * s >= n + p else out
                ok = all(ceil_out(n, k, s, p) == -(-n // s)
                         for n, k, s, p in zip(shape, self.kernel, self.stride, symmetric))
                self._plan[shape] = (symmetric, True, ()) if ok else (symmetric, False, extra)
        return self._plan[shape]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        symmetric, ceil_mode, extra = self.plan(tuple(x.shape[2:]))
        if extra:
            x = F.pad(x, extra, value=-math.inf)
        return F.max_pool3d(x, self.kernel, self.stride, symmetric, ceil_mode=ceil_mode)


class FastInception(nn.Module):
    """Inception block with its three 1x1 convs on the block input merged into one convolution."""

    def __init__(self, block: InceptionBlock, onednn: bool):
        super().__init__()
        self.split = [block.b0.conv.out_channels, block.b1a.conv.out_channels, block.b2a.conv.out_channels]
        self.reduce = FusedConv.from_units([block.b0, block.b1a, block.b2a], onednn)
        self.b1b = FusedConv.from_units([block.b1b], onednn)
        self.b2b = FusedConv.from_units([block.b2b], onednn)
        self.pool = SamePool(block.b3a.kernel, block.b3a.stride)
        self.b3b = FusedConv.from_units([block.b3b], onednn)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y0, y1, y2 = torch.split(self.reduce(x), self.split, dim=1)
        # the 3x3 convs want dense channels-last input; a channel slice of NDHWC is strided
        y1 = self.b1b(y1.contiguous(memory_format=CL))
        y2 = self.b2b(y2.contiguous(memory_format=CL))
        return torch.cat([y0, y1, y2, self.b3b(self.pool(x))], 1)


@dataclass
class FastPath:
    """Which inference path runs, printable in one line."""

    precision: str
    device: str
    backend: str
    compiled: bool
    reason: str = ""

    def __str__(self) -> str:
        what = f"{self.precision} fast path (BN folded, ReLU fused, channels_last_3d, 1x1 convs merged, {self.backend}"
        what += ", torch.compile)" if self.compiled else ")"
        return what + (f" on {self.device}" if self.device != "cpu" else "") + (f"; {self.reason}" if self.reason else "")


class FastI3D(nn.Module):
    """Inference-only I3D: same `forward(x) -> logits` and `forward_features(x, endpoint)` as the model."""

    def __init__(self, model: I3D, device: torch.device, precision: str, backend: str, path: FastPath):
        super().__init__()
        onednn = backend == "oneDNN"
        self.num_classes, self.in_channels = model.num_classes, model.in_channels
        self.categories = getattr(model, "categories", None)
        self.weights = getattr(model, "weights", None)
        self.dtype = PRECISION_DTYPES[precision]
        self.path = path
        self.blocks = nn.ModuleDict()
        for name, block in list(model.named_children())[:16]:  # up to Mixed_5c; the head is below
            if isinstance(block, Unit3D):
                self.blocks[name] = FusedConv.from_units([block], onednn)
            elif isinstance(block, MaxPool3dSame):
                self.blocks[name] = SamePool(block.kernel, block.stride)
            elif isinstance(block, InceptionBlock):
                self.blocks[name] = FastInception(block, onednn)
            else:
                raise TypeError(f"unexpected block {name}: {type(block).__name__}")
        assert isinstance(model.avg_pool, LogitsPool)
        self.avg_pool = model.avg_pool
        logits = model.conv3d_0c_1x1.conv
        self.register_buffer("logits_weight", logits.weight.detach().clone().flatten(1))
        self.register_buffer("logits_bias", logits.bias.detach().clone())
        self.to(device)
        for name, block in self.blocks.items():  # activations in reduced precision; the head stays fp32
            block.to(self.dtype)
        self._check_input = model.check_input
        self._features = torch.compile(self._run_blocks, dynamic=False) if path.compiled else self._run_blocks

    def _run_blocks(self, x: torch.Tensor, last: str) -> torch.Tensor:
        x = x.to(dtype=self.dtype, memory_format=CL)
        for name, block in self.blocks.items():
            x = block(x)
            if name == last:
                break
        return x

    @torch.no_grad()  # not inference_mode: the features may feed a trained head (frozen-backbone training)
    def forward_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Features at one of DeepMind's endpoints, (N, C, T, H, W) float32 (channels_last_3d strides)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}")
        self._check_input(x)
        with torch.autocast(x.device.type, enabled=False):  # the path sets its own dtypes; autocast would clash
            return self._features(x, endpoint[0].lower() + endpoint[1:]).float()

    @torch.no_grad()
    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Mixed_5c features -> logits, in fp32 (the pool and a 1024 x classes matrix are cheap)."""
        with torch.autocast(features.device.type, enabled=False):
            pooled = self.avg_pool(features.float())  # (N, 1024, T', H', W')
            # the 1x1x1 conv then a mean over positions = a linear layer on the position-mean (it is linear)
            return F.linear(pooled.mean(dim=(2, 3, 4)), self.logits_weight, self.logits_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def __repr__(self) -> str:
        return f"FastI3D({self.path})"


def optimize_for_inference(model: I3D, device: str | torch.device = "cpu", precision: str = "auto",
                           compile: bool = False) -> FastI3D:
    """An inference-only copy of `model` (left unchanged) on `device` with the fastest path for it.

    precision: 'auto' (bf16/fp16 where the hardware makes it faster, checked once per process),
    'fp32', 'bf16' (CUDA, and CPUs whose oneDNN runs bf16 convolutions), 'fp16' (CUDA only);
    a precision the device cannot run is a ValueError (`check_precision`).
    compile: wrap the blocks in torch.compile; pays off only over many clips of one shape.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    device = torch.device(device)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    check_precision(precision, device)
    reason = ""
    if precision == "auto":
        precision, reason = auto_precision(str(device))
    onednn = device.type == "cpu" and torch.backends.mkldnn.is_available() and \
        hasattr(torch.ops.mkldnn, "_convolution_pointwise")
    backend = "oneDNN" if onednn else ("cuDNN" if device.type == "cuda" else "aten")
    path = FastPath(precision, str(device), backend, compile, reason)
    # fold from a float copy so a model already moved to another dtype/device is not modified
    plain = copy.deepcopy(model).float().eval()
    return FastI3D(plain, device, precision, backend, path).eval()
