"""The Inception-v1 I3D network, computing exactly what DeepMind's Sonnet graph computes.

Layout is PyTorch's (N, C, T, H, W). Every convolution and max-pool uses TensorFlow's 'SAME'
padding, worked out from the actual input size at run time: the symmetric part goes to the
operator's own padding and only TF's one extra trailing row/column (when the total is odd) is
padded explicitly. Batch norm has no learned scale (Sonnet `scale=False`) and epsilon 1e-3.

The 20 top-level blocks of the original toolkit are the model's children, in order, so
"freeze the first K of 20" is `list(model.children())[:K]`.
"""
from __future__ import annotations

import math
from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import nn

# DeepMind's endpoint names, in graph order; each is also a block (first letter lower-cased).
ENDPOINTS = (
    "Conv3d_1a_7x7", "MaxPool3d_2a_3x3", "Conv3d_2b_1x1", "Conv3d_2c_3x3", "MaxPool3d_3a_3x3",
    "Mixed_3b", "Mixed_3c", "MaxPool3d_4a_3x3", "Mixed_4b", "Mixed_4c", "Mixed_4d", "Mixed_4e",
    "Mixed_4f", "MaxPool3d_5a_2x2", "Mixed_5b", "Mixed_5c",
)

# Inception blocks: input channels, then (branch 0 1x1, branch 1 1x1 -> 3x3, branch 2 1x1 -> 3x3,
# branch 3 pool -> 1x1) output channels, as in DeepMind's i3d.py.
INCEPTION_CHANNELS: dict[str, tuple[int, tuple[int, int, int, int, int, int]]] = {
    "mixed_3b": (192, (64, 96, 128, 16, 32, 32)),
    "mixed_3c": (256, (128, 128, 192, 32, 96, 64)),
    "mixed_4b": (480, (192, 96, 208, 16, 48, 64)),
    "mixed_4c": (512, (160, 112, 224, 24, 64, 64)),
    "mixed_4d": (512, (128, 128, 256, 24, 64, 64)),
    "mixed_4e": (512, (112, 144, 288, 32, 64, 64)),
    "mixed_4f": (528, (256, 160, 320, 32, 128, 128)),
    "mixed_5b": (832, (256, 160, 320, 32, 128, 128)),
    "mixed_5c": (832, (384, 192, 384, 48, 128, 128)),
}

# The 20 blocks of the original toolkit, in order. Entries: (name, kind, arguments).
BLOCKS: tuple[tuple[str, str, tuple], ...] = (
    ("conv3d_1a_7x7", "unit", (64, 7, 2)),
    ("maxPool3d_2a_3x3", "maxpool", ((1, 3, 3), (1, 2, 2))),
    ("conv3d_2b_1x1", "unit", (64, 1, 1)),
    ("conv3d_2c_3x3", "unit", (192, 3, 1)),
    ("maxPool3d_3a_3x3", "maxpool", ((1, 3, 3), (1, 2, 2))),
    ("mixed_3b", "inception", ()),
    ("mixed_3c", "inception", ()),
    ("maxPool3d_4a_3x3", "maxpool", ((3, 3, 3), (2, 2, 2))),
    ("mixed_4b", "inception", ()),
    ("mixed_4c", "inception", ()),
    ("mixed_4d", "inception", ()),
    ("mixed_4e", "inception", ()),
    ("mixed_4f", "inception", ()),
    ("maxPool3d_5a_2x2", "maxpool", ((2, 2, 2), (2, 2, 2))),
    ("mixed_5b", "inception", ()),
    ("mixed_5c", "inception", ()),
    ("avg_pool", "avgpool", ((2, 7, 7),)),
    ("dropout", "dropout", ()),
    ("conv3d_0c_1x1", "logits", ()),
    ("softmax", "softmax", ()),
)
BLOCK_NAMES = tuple(name for name, _, _ in BLOCKS)
FEATURE_CHANNELS = 1024
# The smallest input on which the logits pool is DeepMind's (2, 7, 7) VALID window, as in TF (which refuses
# anything smaller): 2 time steps at Mixed_5c (ceil(T / 8)) and 7 x 7 positions (ceil(H / 32)).
MIN_FRAMES = 9
MIN_SIZE = 193


def _triple(v: int | tuple[int, int, int]) -> tuple[int, int, int]:
    return (v, v, v) if isinstance(v, int) else tuple(v)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow 'SAME' padding (before, after) for one dimension: output is ceil(size / stride)."""
    out = -(-size // stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def split_same_padding(sizes: tuple[int, ...], kernel: tuple[int, ...], stride: tuple[int, ...]
                       ) -> tuple[tuple[int, int, int], tuple[int, ...]]:
    """'SAME' padding split into the symmetric part (T, H, W) and F.pad's extra trailing part."""
    pads = [same_padding(n, k, s) for n, k, s in zip(sizes, kernel, stride)]
    symmetric = tuple(before for before, _ in pads)
    extra = [after - before for before, after in pads]
    return symmetric, (0, extra[2], 0, extra[1], 0, extra[0])  # F.pad lists W first


class BatchNormNoScale(nn.BatchNorm3d):
    """Batch norm with a learned offset and no learned scale, as Sonnet's `BatchNorm(scale=False)`."""

    def __init__(self, channels: int, eps: float = 1e-3, momentum: float = 0.1):
        super().__init__(channels, eps=eps, momentum=momentum, affine=False)
        self.bias = nn.Parameter(torch.zeros(channels))
        # CUDA's batch-norm backward fails with weight=None ("tensor does not have a device", torch 2.11):
        # pass a constant scale of 1 instead, neither a parameter nor in the state dict.
        self.register_buffer("unit_scale", torch.ones(channels), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            self.num_batches_tracked.add_(1)
        return F.batch_norm(x, self.running_mean, self.running_var, self.unit_scale, self.bias, self.training,
                            self.momentum, self.eps)


class Unit3D(nn.Module):
    """Conv3d ('SAME') -> batch norm -> ReLU, Sonnet's Unit3D; the logits unit has a bias and neither."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple = 1, stride: int | tuple = 1,
                 batch_norm: bool = True, relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = _triple(kernel), _triple(stride), relu
        self.conv = nn.Conv3d(in_channels, out_channels, self.kernel, self.stride, bias=bias)
        self.bn = BatchNormNoScale(out_channels) if batch_norm else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        symmetric, extra = split_same_padding(x.shape[2:], self.kernel, self.stride)
        if any(extra):
            x = F.pad(x, extra)
        if x.device.type == "cpu" and torch.is_grad_enabled() and torch.is_autocast_enabled("cpu") and \
                any(n < k for n, k in zip(x.shape[2:], self.kernel)):
            # oneDNN's bf16 weight gradient is garbage when the input is shorter than the kernel (torch 2.13
            # CPU, e.g. T = 2 under 3x3x3: Mixed_5c of a 16-frame clip), so these small convs train in fp32
            with torch.autocast("cpu", enabled=False):
                x = F.conv3d(x.float(), self.conv.weight, self.conv.bias, self.stride, symmetric)
        else:
            x = F.conv3d(x, self.conv.weight, self.conv.bias, self.stride, symmetric)
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPool3dSame(nn.Module):
    """Max pool with TF 'SAME' padding; padding is -inf so it never wins a max."""

    def __init__(self, kernel: int | tuple, stride: int | tuple):
        super().__init__()
        self.kernel, self.stride = _triple(kernel), _triple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        symmetric, extra = split_same_padding(x.shape[2:], self.kernel, self.stride)
        if any(extra):
            x = F.pad(x, extra, value=-math.inf)
        return F.max_pool3d(x, self.kernel, self.stride, symmetric)


class InceptionBlock(nn.Module):
    """Four parallel branches (1x1; 1x1 -> 3x3; 1x1 -> 3x3; 3x3 max-pool -> 1x1) concatenated on channels."""

    def __init__(self, in_channels: int, channels: tuple[int, int, int, int, int, int]):
        super().__init__()
        c0, c1a, c1b, c2a, c2b, c3b = channels
        self.b0 = Unit3D(in_channels, c0)
        self.b1a, self.b1b = Unit3D(in_channels, c1a), Unit3D(c1a, c1b, 3)
        self.b2a, self.b2b = Unit3D(in_channels, c2a), Unit3D(c2a, c2b, 3)
        self.b3a, self.b3b = MaxPool3dSame(3, 1), Unit3D(in_channels, c3b)
        self.out_channels = c0 + c1b + c2b + c3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], 1)


class LogitsPool(nn.Module):
    """DeepMind's average pool (2, 7, 7), stride 1, VALID.

    On inputs smaller than the window (clips under 8 frames reach Mixed_5c with one time step;
    frames under 194 pixels reach it smaller than 7x7) the window shrinks to the input, i.e. a
    global average over that dimension, instead of failing.
    """

    def __init__(self, kernel: tuple[int, int, int]):
        super().__init__()
        self.kernel = kernel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(min(k, n) for k, n in zip(self.kernel, x.shape[2:]))
        return F.avg_pool3d(x, kernel, stride=1)


class I3D(nn.Module):
    """Inception-v1 I3D; `forward` maps (N, C, T, H, W) clips in [-1, 1] to (N, num_classes) logits."""

    def __init__(self, num_classes: int = 400, in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        self.num_classes, self.in_channels = num_classes, in_channels
        channels = in_channels
        for name, kind, args in BLOCKS:
            if kind == "unit":
                out, kernel, stride = args
                block, channels = Unit3D(channels, out, kernel, stride), out
            elif kind == "maxpool":
                block = MaxPool3dSame(*args)
            elif kind == "inception":
                in_c, branch_channels = INCEPTION_CHANNELS[name]
                assert in_c == channels, f"{name}: channel table expects {in_c} inputs, got {channels}"
                block = InceptionBlock(in_c, branch_channels)
                channels = block.out_channels
            elif kind == "avgpool":
                block = LogitsPool(*args)
            elif kind == "dropout":
                block = nn.Dropout(dropout)
            elif kind == "logits":
                block = Unit3D(channels, num_classes, batch_norm=False, relu=False, bias=True)
            else:
                block = nn.Softmax(dim=1)
            self.add_module(name, block)

    @property
    def blocks(self) -> OrderedDict[str, nn.Module]:
        """The 20 top-level blocks by name, in order."""
        return OrderedDict(self.named_children())

    def check_input(self, x: torch.Tensor) -> None:
        """Raise a clear ValueError for input the network cannot take."""
        if x.dim() != 5:
            raise ValueError(f"I3D expects a 5-D clip (N, C, T, H, W), got shape {tuple(x.shape)}")
        if x.shape[1] != self.in_channels:
            raise ValueError(f"I3D built for {self.in_channels} input channels got {x.shape[1]} "
                             f"(shape {tuple(x.shape)}; RGB clips have 3, flow clips 2, on dim 1)")
        if min(x.shape[2:]) < 1:
            raise ValueError(f"clip of shape {tuple(x.shape)} is empty: I3D needs at least 1 frame of 1x1 pixels "
                             "(8+ frames and 224x224 to use the logits pool as trained)")

    def forward_features(self, x: torch.Tensor, endpoint: str = "Mixed_5c") -> torch.Tensor:
        """Run the network up to one of DeepMind's endpoints and return it as (N, C, T, H, W)."""
        if endpoint not in ENDPOINTS:
            raise ValueError(f"unknown endpoint {endpoint!r}; choose one of {', '.join(ENDPOINTS)}")
        self.check_input(x)
        last = endpoint[0].lower() + endpoint[1:]
        for name, block in self.named_children():
            x = block(x)
            if name == last:
                return x
        raise AssertionError("unreachable")

    def forward_head(self, features: torch.Tensor) -> torch.Tensor:
        """Mixed_5c features -> logits: average pool, dropout, 1x1x1 conv, mean over time and space."""
        return self.forward_blocks(features, BLOCK_NAMES.index("avg_pool"))

    def forward_blocks(self, x: torch.Tensor, start: int = 0, stop: int | None = None) -> torch.Tensor:
        """Run blocks [start, stop) of the 20; past the logits conv the result is (N, classes) logits.

        The final `softmax` block is never applied here: training and prediction work on logits.
        """
        for name, block in list(self.named_children())[start:stop]:
            if name == "softmax":
                break
            x = block(x)
            if name == "conv3d_0c_1x1":
                x = x.mean(dim=(2, 3, 4))
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def replace_logits(self, num_classes: int) -> None:
        """Swap the classifier for a freshly initialised one with `num_classes` outputs."""
        old = self.conv3d_0c_1x1.conv
        self.conv3d_0c_1x1 = Unit3D(old.in_channels, num_classes, batch_norm=False, relu=False, bias=True).to(
            device=old.weight.device, dtype=old.weight.dtype)
        # Assigning to an existing child keeps its position, so the block order is unchanged.
        self.num_classes = num_classes

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """As nn.Module's, but batch-norm step counters absent from foreign checkpoints are not required."""
        state_dict = dict(state_dict)
        for key, value in self.state_dict().items():
            if key.endswith("num_batches_tracked") and key not in state_dict:
                state_dict[key] = torch.zeros_like(value)
        return super().load_state_dict(state_dict, strict=strict, assign=assign)


def flow_from_rgb(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Cross-modality initialisation: average the first conv over colour channels, replicate to 2."""
    state_dict = dict(state_dict)
    w = state_dict["conv3d_1a_7x7.conv.weight"]
    state_dict["conv3d_1a_7x7.conv.weight"] = w.mean(dim=1, keepdim=True).repeat(1, 2, 1, 1, 1)
    return state_dict
