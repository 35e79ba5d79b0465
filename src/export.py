"""Export I3D to ONNX or TorchScript with a free time axis (and batch, height, width).

The plain model works out TF 'SAME' padding in Python from the input size, which a traced graph would
freeze. Here the same padding is written with static pads plus one size-dependent slice: for a
stride-2 window of odd size k, TF pads (k-1)/2 before an odd input and one less before an even one,
so we pad (k-1)/2 before (and enough after) always, then drop the first element when the input is
even. Stride-1 layers have odd kernels and so symmetric, size-independent padding.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.inference import FusedConv
from src.model import I3D, InceptionBlock, LogitsPool, MaxPool3dSame, Unit3D

FORMATS = ("onnx", "torchscript")
MIN_FRAMES = 9  # the (2, 7, 7) logits pool needs 2 time steps at Mixed_5c; shorter clips are not exported


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
              value: float) -> tuple[torch.Tensor, list[int]]:
    """TF 'SAME' padding valid for any input size: explicit pads for stride-2 dims, op padding for stride-1 ones."""
    pads, op_padding, parity_dims = [0] * 6, [0, 0, 0], []
    for d, (k, s) in enumerate(zip(kernel, stride)):
        if s == 1:
            assert k % 2 == 1, "even kernels with stride 1 need size-dependent padding"
            op_padding[d] = (k - 1) // 2
        else:
            assert s == 2, "only strides 1 and 2 occur in I3D"
            before = (k - 1) // 2
            after = max((k - 2) - (k - 2) // 2, (k - 1) - (k - 1) // 2)
            pads[4 - 2 * d], pads[5 - 2 * d] = before, after  # F.pad lists W first
            if k % 2:
                parity_dims.append((d, before + after))
    if any(pads):
        x = F.pad(x, pads, value=value)
    for d, added in parity_dims:
        size = x.shape[2 + d]
        start = 1 - (size - added) % 2  # 1 for an even input: TF pads one less before it
        x = x[(slice(None),) * (2 + d) + (slice(start, None),)]
    return x, op_padding


class ExportConv(nn.Module):
    """Conv3d with batch norm folded in, ReLU, and size-independent 'SAME' padding."""

    def __init__(self, unit: Unit3D):
        super().__init__()
        fused = FusedConv.from_units([unit], onednn=False)
        self.weight, self.bias = nn.Parameter(fused.weight), nn.Parameter(fused.bias)
        self.kernel, self.stride, self.relu = unit.kernel, unit.stride, unit.relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, self.kernel, self.stride, 0.0)
        x = F.conv3d(x, self.weight, self.bias, self.stride, padding)
        return F.relu(x) if self.relu else x


class ExportPool(nn.Module):
    """'SAME' max pool with size-independent padding (-inf explicit, or the pool's own implicit -inf)."""

    def __init__(self, pool: MaxPool3dSame):
        super().__init__()
        self.kernel, self.stride = pool.kernel, pool.stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, self.kernel, self.stride, float("-inf"))
        return F.max_pool3d(x, self.kernel, self.stride, padding)


class ExportInception(nn.Module):
    """Inception block of export units."""

    def __init__(self, block: InceptionBlock):
        super().__init__()
        self.b0, self.b1a, self.b1b = ExportConv(block.b0), ExportConv(block.b1a), ExportConv(block.b1b)
        self.b2a, self.b2b = ExportConv(block.b2a), ExportConv(block.b2b)
        self.b3a, self.b3b = ExportPool(block.b3a), ExportConv(block.b3b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class ExportI3D(nn.Module):
    """Eval-mode I3D, clip (N, C, T, H, W) -> logits (N, classes), traceable with dynamic sizes."""

    def __init__(self, model: I3D):
        super().__init__()
        layers = []
        for name, block in list(model.named_children())[:16]:
            if isinstance(block, Unit3D):
                layers.append(ExportConv(block))
            elif isinstance(block, MaxPool3dSame):
                layers.append(ExportPool(block))
            else:
                layers.append(ExportInception(block))
        self.features = nn.Sequential(*layers)
        assert isinstance(model.avg_pool, LogitsPool)
        self.pool_kernel = model.avg_pool.kernel
        logits = model.conv3d_0c_1x1.conv
        self.logits = nn.Linear(logits.in_channels, logits.out_channels)
        self.logits.weight.data.copy_(logits.weight.detach().flatten(1))
        self.logits.bias.data.copy_(logits.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.avg_pool3d(self.features(x), self.pool_kernel, stride=1)
        return self.logits(x.mean(dim=(2, 3, 4)))  # 1x1x1 conv then mean == linear on the mean


def export_model(model: I3D, out: str | Path, fmt: str, frames: int = 16, size: int = 224) -> Path:
    """Write `model` (eval mode) as ONNX (opset 17) or TorchScript with dynamic batch, time, height, width."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    module = ExportI3D(model.float().eval().cpu()).eval()
    example = torch.zeros(1, model.in_channels, max(frames, MIN_FRAMES), size, size)
    with torch.no_grad():
        if fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(out))
        else:
            torch.onnx.export(module, (example,), str(out), dynamo=False, opset_version=17,
                              input_names=["clip"], output_names=["logits"],
                              dynamic_axes={"clip": {0: "batch", 2: "time", 3: "height", 4: "width"},
                                            "logits": {0: "batch"}})
    categories = getattr(model, "categories", None)
    if categories:
        out.with_suffix(out.suffix + ".classes.txt").write_text("\n".join(categories) + "\n")
    return out


def load_for_export(weights: str | None = None, run_dir: str | Path | None = None) -> I3D:
    """A model from a registry name/file (`weights`) or a fine-tuning run folder (best.safetensors + classes.txt)."""
    from src.weights import i3d, read_labels

    if run_dir is None:
        return i3d(weights=weights).eval()
    run_dir = Path(run_dir)
    checkpoint = run_dir / "best.safetensors"
    if not checkpoint.exists():
        raise FileNotFoundError(f"{run_dir}: no best.safetensors; pass a fine-tuning run folder or --weights NAME|FILE")
    from safetensors.torch import load_file

    state_dict = load_file(checkpoint)
    in_channels = state_dict["conv3d_1a_7x7.conv.weight"].shape[1]
    model = I3D(state_dict["conv3d_0c_1x1.conv.weight"].shape[0], in_channels)
    model.load_state_dict(state_dict)
    model.weights = None
    classes = run_dir / "classes.txt"
    model.categories = read_labels(classes) if classes.exists() else None
    config = run_dir / "config.json"
    model.config = json.loads(config.read_text()) if config.exists() else {}
    return model.eval()


def check_export(path: str | Path, model: I3D, clip: torch.Tensor) -> float:
    """Max |logit difference| between the exported file and the PyTorch model on `clip`."""
    from src.inference import load_exported

    with torch.no_grad():
        want = model.eval()(clip)
    got = load_exported(path)(clip)
    return (got - want).abs().max().item()
