"""The streams being fine-tuned: pretrained I3Ds whose first K blocks are frozen (and run on the fast
inference path, or read from the feature cache) and whose remaining blocks train."""
from __future__ import annotations

import logging

import torch
from torch import nn

from src.dataset import streams
from src.inference import optimize_for_inference
from src.model import ENDPOINTS, I3D
from src.training.config import RunConfig
from src.training.frozen_cache import FrozenFeatureCache
from src.weights import WeightsUnavailable, i3d

log = logging.getLogger("train")


def freeze(model: I3D, k: int) -> None:
    """Stop gradients in the first k blocks; `train_mode` keeps their batch norm in eval mode."""
    for block in list(model.children())[:k]:
        for p in block.parameters():
            p.requires_grad_(False)


def train_mode(model: I3D, k: int) -> None:
    """model.train(), except the first k blocks, whose batch-norm statistics must never move."""
    model.train()
    for block in list(model.children())[:k]:
        block.eval()


def build_streams(cfg: RunConfig, num_classes: int) -> nn.ModuleDict:
    """One I3D per stream ('rgb', 'flow'), pretrained, with a new classifier and the first K blocks frozen."""
    models = nn.ModuleDict()
    for stream in streams(cfg.modality):
        if stream == "rgb":
            model = i3d(cfg.weights, num_classes=num_classes, in_channels=3, dropout=cfg.dropout)
        else:
            model = None
            candidates = [cfg.flow_weights] if cfg.flow_weights else ["flow_scratch", "flow_imagenet"]
            for name in candidates:
                try:
                    model = i3d(name, num_classes=num_classes, in_channels=2, dropout=cfg.dropout)
                    break
                except (WeightsUnavailable, FileNotFoundError) as exc:
                    if cfg.flow_weights:
                        raise
                    log.info("flow weights %s unavailable: %s", name,
                             exc.summary() if isinstance(exc, WeightsUnavailable) else exc)
            if model is None:
                log.info("no flow checkpoint: initialising the flow stream from %s by cross-modality averaging "
                         "of the first convolution over its colour channels", cfg.weights)
                model = i3d(cfg.weights, num_classes=num_classes, in_channels=2, dropout=cfg.dropout)
        freeze(model, cfg.freeze)
        for module in model.modules():
            if isinstance(module, nn.BatchNorm3d):
                # Few steps on a small dataset: running statistics must follow the new data quickly,
                # or evaluation (running stats) disagrees with training (batch stats).
                module.momentum = cfg.bn_momentum
        models[stream] = model
    return models


class FrozenPart:
    """The first k blocks of one stream, run without gradients, on the fast inference path unless 'plain'.

    Frozen blocks never change (weights, and batch norm in eval mode), so the fast path (batch norm
    folded, channels-last, bf16 where the hardware makes it faster) is built once for the whole run.
    """

    def __init__(self, model: I3D, k: int, device: torch.device, precision: str):
        self.model, self.k, self.fast = model, k, None
        if precision != "plain" and 0 < k <= len(ENDPOINTS):
            self.fast = optimize_for_inference(model, device, precision)
        self.precision = self.fast.path.precision if self.fast else "plain"  # as resolved, for the cache
        self.path = str(self.fast.path) if self.fast else "plain model"

    def __call__(self, clips: torch.Tensor) -> torch.Tensor:
        if self.fast is not None:
            return self.fast.forward_features(clips, ENDPOINTS[self.k - 1]).contiguous()
        with torch.no_grad():
            return self.model.forward_blocks(clips, 0, self.k)


def frozen_features(frozen: dict[str, FrozenPart], inputs: list, device: torch.device, cache: FrozenFeatureCache | None,
                    split: str, indices: list[int], views: list[int]) -> list[torch.Tensor]:
    """Per stream, the batch's output of the frozen blocks: read from the cache or computed (and cached)."""
    batches = []
    for s, (stream, run_frozen) in enumerate(frozen.items()):
        features = [sample[s][1] if sample[s][0] == "features" else None for sample in inputs]
        raw = [i for i, f in enumerate(features) if f is None]
        if raw:
            computed = run_frozen(torch.stack([inputs[i][s][1] for i in raw]).to(device))
            for j, i in enumerate(raw):
                features[i] = computed[j]
                if cache is not None:
                    cache.put(split, stream, indices[i], views[i], computed[j])
                    # train on what the cache keeps, so a resumed run (reading it) matches an uninterrupted one
                    features[i] = cache.stored(computed[j])
        batches.append(torch.stack([f.to(device) for f in features]))
    return batches


class Tail(nn.Module):
    """The trainable blocks K..20 of every stream; the streams' logits are summed (late fusion)."""

    def __init__(self, models: nn.ModuleDict, k: int):
        super().__init__()
        self.models, self.k = models, k

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        return sum(model.forward_blocks(f, self.k) for model, f in zip(self.models.values(), features))
