"""Classification metrics of one evaluation pass: loss, top-1, top-5, per-class accuracy, confusion."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EvalResult:
    """Validation metrics of one pass."""

    loss: float
    top1: float
    top5: float
    mean_class_acc: float
    per_class: list[float]
    confusion: np.ndarray
    scores: np.ndarray | None = None


def summarize(scores: torch.Tensor, labels: torch.Tensor, num_classes: int, loss_sum: float) -> EvalResult:
    """Metrics from per-item class scores (logits or probabilities) and labels."""
    n = max(len(labels), 1)
    pred = scores.argmax(1)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (labels.numpy(), pred.numpy()), 1)
    top5 = scores.topk(min(5, num_classes), dim=1).indices.eq(labels[:, None]).any(1).float().sum().item()
    totals = confusion.sum(1)
    per_class = [float(confusion[c, c] / totals[c]) if totals[c] else float("nan") for c in range(num_classes)]
    present = [a for a in per_class if not math.isnan(a)]
    return EvalResult(loss_sum / n, float((pred == labels).float().sum()) / n, top5 / n,
                      float(np.mean(present)) if present else 0.0, per_class, confusion, scores.numpy())
