"""Average precision, mAP and F1 thresholds against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from src.training.metrics import average_precision, best_thresholds, f1_at, mean_ap, per_class_ap


def test_average_precision_hand_computed():
    # ranked: + - + - + : precision 1, 2/3, 3/5 at recall 1/3, 2/3, 1 -> (1 + 2/3 + 3/5) / 3 = 34/45
    assert average_precision(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, 0, 1, 0, 1])) == pytest.approx(34 / 45)
    # tied scores enter together: thresholds 0.9 (P 0, R 0), 0.5 (P 1/3, R 1/2), 0.1 (P 1/2, R 1)
    assert average_precision(np.array([0.9, 0.5, 0.5, 0.1]), np.array([0, 1, 0, 1])) == pytest.approx(5 / 12)
    assert average_precision(np.array([0.2, 0.1]), np.array([1, 0])) == 1.0
    assert math.isnan(average_precision(np.array([0.2, 0.1]), np.array([0, 0])))


def test_map_skips_classes_without_positives():
    scores = np.array([[0.9, 0.1, 0.5], [0.2, 0.8, 0.4], [0.3, 0.7, 0.6]])
    targets = np.array([[1, 0, 0], [0, 0, 0], [0, 1, 0]])
    aps = per_class_ap(scores, targets)
    assert aps[0] == 1.0 and aps[1] == pytest.approx(1 / 2) and math.isnan(aps[2])
    assert mean_ap(aps) == pytest.approx(0.75)


def test_thresholds_maximise_f1_halfway_to_the_next_score():
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.3], [0.2, 0.4]])
    targets = np.array([[1, 0], [1, 0], [0, 0], [0, 0]])
    thresholds = best_thresholds(probs, targets)
    assert thresholds == pytest.approx([0.55, 0.5])   # class 1 has no positive: the default
    assert f1_at(probs, targets, thresholds) == 1.0


def test_summarize_multilabel_by_hand():
    import torch

    from src.training.metrics import summarize_multilabel
    probs = torch.tensor([[0.9, 0.2, 0.6], [0.3, 0.8, 0.1], [0.4, 0.7, 0.2]])
    targets = torch.tensor([[1.0, 0, 1], [0, 1, 0], [0, 0, 0]])
    r = summarize_multilabel(probs, targets, loss_sum=1.5)
    # class 0: + ranked first -> AP 1; class 1: ranked 0.8 (+), 0.7 (-) -> AP 1; class 2: one positive, ranked first -> 1
    assert r.per_class_ap == [1.0, 1.0, 1.0] and r.map == 1.0 and r.loss == 0.5
    assert r.top1 == pytest.approx(2 / 3)          # item 3 has no label, so its top class cannot be one
    assert r.thresholds == pytest.approx([0.65, 0.75, 0.4]) and r.f1 == 1.0
    given = summarize_multilabel(probs, targets, 1.5, thresholds=[0.95, 0.5, 0.5])
    # decisions: item 1 -> {2}, item 2 -> {1}, item 3 -> {1}: tp 2, predicted 3, true 3 -> F1 4/6
    assert given.f1 == pytest.approx(4 / 6) and given.thresholds == [0.95, 0.5, 0.5]
