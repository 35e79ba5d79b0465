"""Analytic FLOP counts of I3D's convolutions, per top-level block, from the shapes of one forward pass."""
from __future__ import annotations

from collections import OrderedDict

import torch

from src.model import I3D, Unit3D


def conv_macs_per_block(model: I3D, shape: tuple[int, ...]) -> OrderedDict[str, int]:
    """Multiply-accumulates of every convolution, summed per block, for an (N, C, T, H, W) input.

    Runs the network on the meta device, so it costs no compute: MACs = output elements x C_in x kernel volume.
    """
    meta = I3D(model.num_classes, model.in_channels).to("meta").eval()
    macs: OrderedDict[str, int] = OrderedDict((name, 0) for name, _ in meta.named_children())
    owner = {}
    for name, block in meta.named_children():
        for module in block.modules():
            if isinstance(module, Unit3D):
                owner[module] = name

    def hook(module: Unit3D, inputs, output) -> None:
        kernel = module.kernel[0] * module.kernel[1] * module.kernel[2]
        macs[owner[module]] += output.numel() * module.conv.in_channels * kernel

    handles = [m.register_forward_hook(hook) for m in owner]
    with torch.no_grad():
        meta(torch.empty(shape, device="meta"))
    for handle in handles:
        handle.remove()
    return macs


def forward_flops(model: I3D, shape: tuple[int, ...]) -> int:
    """FLOPs (2 x MACs) of the convolutions of one forward pass."""
    return 2 * sum(conv_macs_per_block(model, shape).values())
