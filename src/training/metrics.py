"""Metrics of one evaluation pass: single-label (loss, top-1, top-5, per-class accuracy, confusion) and
multi-label (average precision per class, mAP, per-class F1 thresholds)."""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class EvalResult:
    """Validation metrics of one pass; multi-label passes also have mAP, per-class AP and F1 thresholds."""

    loss: float
    top1: float
    top5: float
    mean_class_acc: float
    per_class: list[float]
    confusion: np.ndarray
    scores: np.ndarray | None = None
    map: float | None = None
    per_class_ap: list[float] | None = None
    thresholds: list[float] | None = None
    f1: float | None = None  # micro F1 of the decisions probability >= threshold


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


def _ranked(scores: np.ndarray, positives: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """True and false positives at each distinct score, highest first (tied scores enter together)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], positives[order].astype(np.float64)
    tp, fp = np.cumsum(y), np.cumsum(1 - y)
    ends = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]
    return s[ends], tp[ends], fp[ends]


def average_precision(scores: np.ndarray, positives: np.ndarray) -> float:
    """Area under the precision-recall curve as sum_n (R_n - R_{n-1}) P_n over descending thresholds.

    The same definition as scikit-learn's average_precision_score (no interpolation); NaN when
    there is no positive.
    """
    scores, positives = np.asarray(scores, np.float64), np.asarray(positives) > 0
    if not positives.any():
        return float("nan")
    _, tp, fp = _ranked(scores, positives)
    precision, recall = tp / (tp + fp), tp / tp[-1]
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def per_class_ap(scores: np.ndarray, targets: np.ndarray) -> list[float]:
    """AP of each column of (N, C) scores against (N, C) 0/1 targets (NaN for classes without positives)."""
    return [average_precision(scores[:, c], targets[:, c]) for c in range(scores.shape[1])]


def mean_ap(per_class: list[float]) -> float:
    """Mean of the per-class APs over the classes that have a positive (0 when none has)."""
    present = [a for a in per_class if not math.isnan(a)]
    return float(np.mean(present)) if present else 0.0


def best_thresholds(probs: np.ndarray, targets: np.ndarray, default: float = 0.5) -> list[float]:
    """Per class, the probability threshold that maximises F1 on (probs, targets).

    The threshold lies halfway between the lowest score called positive and the next lower score,
    so it does not sit on a validation example; classes without a positive get `default`.
    """
    out = []
    for c in range(probs.shape[1]):
        scores, positives = np.asarray(probs[:, c], np.float64), np.asarray(targets[:, c]) > 0
        if not positives.any():
            out.append(default)
            continue
        values, tp, fp = _ranked(scores, positives)
        f1 = 2 * tp / (2 * tp + fp + (positives.sum() - tp))
        k = int(np.argmax(f1))
        below = values[k + 1] if k + 1 < len(values) else 0.0
        out.append(float((values[k] + below) / 2))
    return out


def f1_at(probs: np.ndarray, targets: np.ndarray, thresholds: list[float]) -> float:
    """Micro-averaged F1 of the decisions probs >= threshold (per class) against the targets."""
    pred = probs >= np.asarray(thresholds)[None]
    truth = targets > 0
    tp = float(np.sum(pred & truth))
    return 2 * tp / max(float(pred.sum() + truth.sum()), 1.0)


def top1_hits(scores: torch.Tensor, y: torch.Tensor) -> int:
    """Items whose top-scoring class is right: the label, or one of the labels of a 0/1 label vector."""
    pred = scores.argmax(1)
    if y.ndim == 2:
        return int(y.gather(1, pred[:, None]).sum())
    return int((pred == y).sum())


def summarize_multilabel(probs: torch.Tensor, targets: torch.Tensor, loss_sum: float,
                         thresholds: list[float] | None = None) -> EvalResult:
    """Multi-label metrics from per-item class probabilities (N, C) and 0/1 targets (N, C).

    mAP averages the AP of the classes with a positive; `thresholds` (default: the ones maximising
    each class's F1 on these very items) decide the F1. top-1 / top-5 count items with a label among
    their 1 / 5 most probable classes; mean_class_acc and per_class carry the mAP and the APs.
    """
    p, t = probs.double().numpy(), targets.numpy()
    n = len(t)
    if n == 0:
        empty = [float("nan")] * probs.shape[1]
        return EvalResult(0.0, 0.0, 0.0, 0.0, empty, np.zeros((0, 0), np.int64), p, 0.0, empty,
                          thresholds or [0.5] * probs.shape[1], 0.0)
    aps = per_class_ap(p, t)
    chosen = best_thresholds(p, t) if thresholds is None else list(thresholds)
    top5 = np.take_along_axis(t, np.argsort(-p, 1)[:, :5], 1).sum(1) > 0
    return EvalResult(loss_sum / n, top1_hits(probs, targets) / n, float(top5.mean()), mean_ap(aps), aps,
                      np.zeros((0, 0), np.int64), p, mean_ap(aps), aps, chosen, f1_at(p, t, chosen))
