"""Export I3D to ONNX, a torch.export program (.pt2) or TorchScript with a free batch, time, height and width.

The plain model works out TF 'SAME' padding in Python from the input size, which a traced graph would
freeze. Here the same padding is written with static pads plus one size-dependent slice: for a
stride-2 window of odd size k, TF pads (k-1)/2 before an odd input and one less before an even one,
so we pad (k-1)/2 before (and enough after) always, then drop the first element when the input is
even. Stride-1 layers have odd kernels and so symmetric, size-independent padding.

torch.export reasons about sizes symbolically and refuses any branch on them that it cannot prove
for every size allowed. Two ops branch: a slice checks whether it is a no-op, and avg_pool3d / conv3d
check whether an output is a single element. So the .pt2 program drops the first element with
`index_select` and computes the logits pool (the mean over all (2, 7, 7) windows) as one weighted sum,
each position weighted by the number of windows that cover it. Sizes are also written with floor
division only (ceil(n / 2) as (n + 1) // 2), so that every size can be bounded from the minimum clip.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from src.inference.fast import FusedConv
from src.jobs.files import atomic_write
from src.model import MIN_FRAMES, MIN_SIZE, I3D, InceptionBlock, LogitsPool, MaxPool3dSame, Unit3D

FORMATS = ("onnx", "pt2", "torchscript")
SUFFIXES = {"onnx": ".onnx", "pt2": ".pt2", "torchscript": ".pt"}


class ExportError(ValueError):
    """A model, file or option that cannot be exported, with a one-line reason."""


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int],
              value: float, select: bool = False) -> tuple[torch.Tensor, list[int]]:
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
        if select:
            # torch.export: no slice (its no-op check branches on the size), and the length written without `%`,
            # so that the symbolic size stays within what its range analysis can bound (n + n % 2 is not).
            n = size - added
            length = 2 * ((n + 1) // 2) + added - 1
            x = x.index_select(2 + d, torch.arange(length, device=x.device) + start)
        else:
            x = x[(slice(None),) * (2 + d) + (slice(start, None),)]
    return x, op_padding


class ExportConv(nn.Module):
    """Conv3d with batch norm folded in, ReLU, and size-independent 'SAME' padding."""

    def __init__(self, unit: Unit3D, select: bool = False):
        super().__init__()
        fused = FusedConv.from_units([unit], onednn=False)
        self.weight, self.bias = nn.Parameter(fused.weight), nn.Parameter(fused.bias)
        self.kernel, self.stride, self.relu, self.select = unit.kernel, unit.stride, unit.relu, select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, self.kernel, self.stride, 0.0, self.select)
        x = F.conv3d(x, self.weight, self.bias, self.stride, padding)
        return F.relu(x) if self.relu else x


class ExportPool(nn.Module):
    """'SAME' max pool with size-independent padding (-inf explicit, or the pool's own implicit -inf)."""

    def __init__(self, pool: MaxPool3dSame, select: bool = False):
        super().__init__()
        self.kernel, self.stride, self.select = pool.kernel, pool.stride, select

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, padding = _pad_same(x, self.kernel, self.stride, float("-inf"), self.select)
        return F.max_pool3d(x, self.kernel, self.stride, padding)


class ExportInception(nn.Module):
    """Inception block of export units."""

    def __init__(self, block: InceptionBlock, select: bool = False):
        super().__init__()
        self.b0, self.b1a, self.b1b = (ExportConv(block.b0, select), ExportConv(block.b1a, select),
                                       ExportConv(block.b1b, select))
        self.b2a, self.b2b = ExportConv(block.b2a, select), ExportConv(block.b2b, select)
        self.b3a, self.b3b = ExportPool(block.b3a, select), ExportConv(block.b3b, select)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


def _coverage(n: int, k: int, device: torch.device) -> torch.Tensor:
    """How many stride-1 windows of size k cover each of n positions (n >= k): min(i + 1, n - i, k, n - k + 1)."""
    i = torch.arange(n, device=device)
    return torch.minimum(torch.minimum(i + 1, n - i), torch.minimum(torch.full_like(i, k), n - k + 1 + 0 * i))


class ExportI3D(nn.Module):
    """Eval-mode I3D, clip (N, C, T, H, W) -> logits (N, classes), traceable with dynamic sizes.

    `symbolic=True` builds the variant for torch.export (see the module docstring); same results.
    """

    def __init__(self, model: I3D, symbolic: bool = False):
        super().__init__()
        self.symbolic = symbolic
        layers = []
        for name, block in list(model.named_children())[:16]:
            if isinstance(block, Unit3D):
                layers.append(ExportConv(block, symbolic))
            elif isinstance(block, MaxPool3dSame):
                layers.append(ExportPool(block, symbolic))
            else:
                layers.append(ExportInception(block, symbolic))
        self.features = nn.Sequential(*layers)
        assert isinstance(model.avg_pool, LogitsPool)
        self.pool_kernel = model.avg_pool.kernel
        logits = model.conv3d_0c_1x1.conv
        self.logits = nn.Linear(logits.in_channels, logits.out_channels)
        self.logits.weight.data.copy_(logits.weight.detach().flatten(1))
        self.logits.bias.data.copy_(logits.bias.detach())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)
        if not self.symbolic:
            x = F.avg_pool3d(x, self.pool_kernel, stride=1)
            return self.logits(x.mean(dim=(2, 3, 4)))  # 1x1x1 conv then mean == linear on the mean
        # The mean of all window averages, as one sum: each position counts once per window covering it.
        (kt, kh, kw), (t, h, w) = self.pool_kernel, x.shape[2:]
        weight = (_coverage(t, kt, x.device)[:, None, None] * _coverage(h, kh, x.device)[:, None]
                  * _coverage(w, kw, x.device)).to(x.dtype)
        windows = (t - kt + 1) * (h - kh + 1) * (w - kw + 1) * kt * kh * kw
        return self.logits((x * weight).sum(dim=(2, 3, 4)) / windows)


def _dynamic_shapes(name: str = "x") -> dict[str, dict[int, torch.export.Dim]]:
    """torch.export's free axes: batch, and time / height / width down to the smallest clip that I3D can pool."""
    dim = torch.export.Dim
    return {name: {0: dim("batch", min=1, max=4096), 2: dim("time", min=MIN_FRAMES),
                   3: dim("height", min=MIN_SIZE), 4: dim("width", min=MIN_SIZE)}}


def check_output_name(out: str | Path, fmt: str) -> None:
    """Raise ExportError when `out`'s suffix says another format than `fmt` (the file would be loaded wrongly)."""
    suffix = Path(out).suffix
    if fmt in ("onnx", "pt2") and suffix != SUFFIXES[fmt]:
        raise ExportError(f"--out {out}: a {fmt} file must end in {SUFFIXES[fmt]}")
    if fmt == "torchscript" and suffix in (".onnx", ".pt2"):
        raise ExportError(f"--out {out}: a TorchScript file must not end in {suffix} (use .pt)")


def export_model(model: I3D, out: str | Path, fmt: str, frames: int = 16, size: int = 224) -> Path:
    """Write `model` (eval mode) as ONNX (opset 17), a .pt2 program or TorchScript, free batch/time/height/width."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    out = Path(out)
    check_output_name(out, fmt)
    module = ExportI3D(model.float().eval().cpu(), symbolic=fmt == "pt2").eval()
    # batch 2: torch.export would take an example batch of 1 as a constant
    example = torch.zeros(2 if fmt == "pt2" else 1, model.in_channels, max(frames, MIN_FRAMES),
                          max(size, MIN_SIZE), max(size, MIN_SIZE))
    with atomic_write(out) as tmp, torch.no_grad():
        if fmt == "pt2":
            program = torch.export.export(module, (example,), dynamic_shapes=_dynamic_shapes())
            program.example_inputs = None  # else the all-zero example clip is stored too (+19 MB)
            with open(tmp, "wb") as f:  # a file object: torch.export wants a path ending in .pt2
                torch.export.save(program, f)
        elif fmt == "torchscript":
            traced = torch.jit.trace(module, example, check_trace=False)
            traced.save(str(tmp))
        else:
            torch.onnx.export(module, (example,), str(tmp), dynamo=False, opset_version=17,
                              input_names=["clip"], output_names=["logits"],
                              dynamic_axes={"clip": {0: "batch", 2: "time", 3: "height", 4: "width"},
                                            "logits": {0: "batch"}})
    categories = getattr(model, "categories", None)
    if categories:
        with atomic_write(out.with_suffix(out.suffix + ".classes.txt"), fsync=False) as tmp:
            tmp.write_text("\n".join(categories) + "\n")
    return out


def _check_single_stream(checkpoint: Path) -> None:
    """Raise ExportError for an unreadable file or a joint run's weights (keys under 'rgb.' and 'flow.')."""
    from safetensors import safe_open

    try:
        with safe_open(str(checkpoint), "pt") as f:
            keys = list(f.keys())
    except Exception as e:  # safetensors raises its own error types for truncated or foreign files
        raise ExportError(f"{checkpoint}: not a readable .safetensors file ({str(e).splitlines()[0]})") from None
    if any(k.startswith(("rgb.", "flow.")) for k in keys):
        raise ExportError(f"{checkpoint}: a joint (rgb + flow) run; export exports one stream, and joint runs "
                          "cannot be split here yet")


def load_for_export(weights: str | None = None, run_dir: str | Path | None = None) -> I3D:
    """A model from a registry name/file (`weights`) or a fine-tuning run folder (best.safetensors + classes.txt)."""
    from src.weights import i3d, read_label_file

    if run_dir is None:
        return i3d(weights=weights).eval()
    run_dir = Path(run_dir)
    checkpoint = run_dir / "best.safetensors"
    if not checkpoint.is_file():
        what = "has no best.safetensors" if run_dir.is_dir() else "is not a folder"
        raise ExportError(f"{run_dir} {what}; pass a fine-tuning run folder, or --weights NAME|FILE")
    from src.weights.checkpoint import load_any

    _check_single_stream(checkpoint)
    state_dict = load_any(checkpoint, source="state-dict")
    in_channels = state_dict["conv3d_1a_7x7.conv.weight"].shape[1]
    model = I3D(state_dict["conv3d_0c_1x1.conv.weight"].shape[0], in_channels)
    model.load_state_dict(state_dict)
    model.weights = None
    classes = run_dir / "classes.txt"
    model.categories = read_label_file(classes) if classes.exists() else None
    config = run_dir / "config.json"
    model.config = json.loads(config.read_text()) if config.exists() else {}
    return model.eval()


def check_export(path: str | Path, model: I3D, clip: torch.Tensor) -> float:
    """Max |logit difference| between the exported file and the PyTorch model on `clip`."""
    from src.inference.exported import load_exported

    with torch.no_grad():
        want = model.eval()(clip)
    got = load_exported(path, trust=True)(clip)  # the file this process just wrote
    return (got - want).abs().max().item()
