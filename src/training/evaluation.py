"""Testing a finished run: multi-clip x multi-crop views of every item of a split, softmax scores averaged
(sigmoid probabilities for multi-label runs)."""
from __future__ import annotations

import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from src.clips import TEST_CROPS
from src.dataset import ClipDataset, View, drop_nonfinite_items, read_classes, scan_split
from src.device import pick_device
from src.inference import accelerate
from src.training.metrics import EvalResult, summarize, summarize_multilabel
from src.training.runs import TrainingError, load_run, read_thresholds

log = logging.getLogger("evaluate")


def evaluate_run(run_dir: str | Path, data: str | None = None, split: str = "val", clips: int = 1, crops: int = 1,
                 device: torch.device | None = None, precision: str | None = "auto", compile: bool = False,
                 skip_bad_items: bool = False) -> tuple[EvalResult, list[str]]:
    """Multi-clip x multi-crop testing of a run's best model: softmax scores averaged over the views.

    Multi-label runs average sigmoid probabilities instead and report mAP, per-class AP and F1 at the
    run's thresholds. `precision` picks the fast inference path (src.inference; None runs the plain model).
    An array holding NaN/inf stops it with an error naming the file, or with `skip_bad_items` the item is
    left out and named once in the log.
    """
    if clips < 1:
        raise TrainingError(f"--clips {clips}: must be 1 or more")
    if crops not in TEST_CROPS:
        raise TrainingError(f"--crops {crops}: choose 1 (centre) or 3 (along the frame)")
    device = device or pick_device()
    cfg, plain = load_run(run_dir)
    models, path = accelerate(dict(plain.items()), device, precision, compile)
    log.info("inference: %s", path)
    data_dir = Path(data or cfg.data)
    classes = read_classes(data_dir)
    if classes != cfg.classes:
        raise TrainingError(f"{data_dir / 'classes.txt'} lists {classes}, but the run was trained on {cfg.classes}")
    items = scan_split(data_dir, split, classes, cfg.modality, cfg.sample_rate)
    if skip_bad_items:
        items, dropped = drop_nonfinite_items(items)
        for line in dropped:
            log.warning("%s", line)
    if not items:
        raise TrainingError(f"{data_dir / split}: no items to evaluate")
    dataset = ClipDataset(items, cfg.modality, cfg.clip_len, cfg.crop, train=False)
    starts = [0.5] if clips == 1 else [i / (clips - 1) for i in range(clips)]
    corners = TEST_CROPS[crops]
    scores, labels, loss_sum = [], [], 0.0
    with torch.inference_mode():
        for item in tqdm(items, desc=f"evaluating {split}"):
            probs, logits_sum = 0, 0
            squash = torch.sigmoid if cfg.multi_label else (lambda x: x.softmax(0))
            for start in starts:
                for top, left in corners:
                    view = View(start, top, left, False)
                    logits = sum(model(dataset.load(item, stream, view)[None].to(device))
                                 for stream, model in models.items()).float().cpu()[0]
                    probs = probs + squash(logits)
                    logits_sum = logits_sum + logits
            n = len(starts) * len(corners)
            scores.append(probs / n)
            if cfg.multi_label:
                target = torch.zeros(len(classes))
                target[list(item.label_set())] = 1.0
                loss_sum += F.binary_cross_entropy_with_logits(logits_sum / n, target).item()
                labels.append(target)
            else:
                loss_sum += F.cross_entropy((logits_sum / n)[None], torch.tensor([item.label])).item()
                labels.append(item.label)
    if cfg.multi_label:
        return summarize_multilabel(torch.stack(scores), torch.stack(labels), loss_sum,
                                    read_thresholds(run_dir, classes)), classes
    return summarize(torch.stack(scores), torch.tensor(labels), len(classes), loss_sum), classes
