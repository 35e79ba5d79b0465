"""Test a fine-tuned run: multi-clip x multi-crop (softmax scores averaged), top-1, top-5, mean class
accuracy and the confusion matrix, printed as a table and written as JSON (and a PNG).
Multi-label runs: sigmoid probabilities averaged, mAP, per-class AP, and micro F1 at the run's
per-class thresholds (chosen on val, so F1 on val is optimistic), plus a per-class AP chart.

With --weights it scores pretrained weights on their Kinetics labels instead: over the videos of a
Kinetics-style list (clips found by <youtube_id>_<start>_<end>.mp4 or <youtube_id>.mp4 anywhere under
RAW_DIR, used as they are), or over a split of a pre-processed folder, by the official test recipe
(25 fps, short side 256, centre 224 crop, the whole clip). It is resumable (OUT/records.jsonl); missing
and broken videos are counted and named, never fatal. DeepMind's own figures: docs/kinetics-accuracy.md.

Examples:
    python evaluate.py runs/20261125-101500-rgb
    python evaluate.py runs/20261125-101500-rgb --clips 5 --crops 3 --split test
    python evaluate.py --weights rgb_imagenet --annotations kinetics400/val.csv kinetics400/val_videos --json
    python evaluate.py --weights rgb_scratch kinetics-pre-processed --split val --out-dir eval/scratch
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
from pathlib import Path

from src.cli import Parser, add_inference_arguments, check_positive, chosen_precision
from src.clips import InputError
from src.dataset import DatasetError
from src.device import pick_device
from src.guard import add_guard_arguments, apply_guard_arguments
from src.inference import check_precision
from src.jobs import write_text_atomic
from src.kinetics_eval import PER_CLASS, RECORDS, SUMMARY, EvaluationError, evaluate_weights
from src.training.evaluation import evaluate_run
from src.training.runs import TrainingError, plot_ap, plot_confusion
from src.weights import WeightsUnavailable


def main() -> int:
    parser = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="RUN_DIR", help="a train.py run folder (config.json, best.safetensors); "
                        "with --weights, RAW_DIR (the videos of --annotations) or a pre-processed DATA_DIR")
    parser.add_argument("--data", help="pre-processed dataset (default: the run's)")
    parser.add_argument("--split", default="val", help="split to test (default: %(default)s)")
    parser.add_argument("--clips", type=int, default=1, help="clips per video, evenly spaced in time (default: 1)")
    parser.add_argument("--crops", type=int, choices=(1, 3), default=1,
                        help="1 centre crop or 3 crops along the frame (default: %(default)s)")
    parser.add_argument("--out", help="JSON file (default: RUN_DIR/evaluation-<split>.json)")
    parser.add_argument("--skip-bad-items", action="store_true",
                        help="leave out items whose arrays hold NaN or infinite values (each named once) instead of "
                             "stopping with an error naming the file")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    kinetics = parser.add_argument_group("pretrained weights on Kinetics labels")
    kinetics.add_argument("--weights", help="score these weights instead of a run: a registry name, a file, or "
                                            "RGB+FLOW (e.g. rgb_imagenet+flow_imagenet) for the two-stream model")
    kinetics.add_argument("--annotations", metavar="LIST", help="a Kinetics-style list "
                          "(label,youtube_id,time_start,time_end,split) of the videos under RAW_DIR")
    kinetics.add_argument("--frames", type=int, help="frames per clip (default: the whole clip, the official test; "
                                                     "--clips N needs it)")
    kinetics.add_argument("--out-dir", help="records, per-class CSV and summary (default: "
                                            "evaluations/<weights>-<list or folder name>)")
    kinetics.add_argument("--overwrite", action="store_true", help="start again in an --out-dir that holds results "
                                                                   "of other settings")
    add_inference_arguments(parser)
    add_guard_arguments(parser)
    args = parser.parse_args()
    apply_guard_arguments(args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        check_positive(args.clips, "--clips")
        check_positive(args.frames, "--frames")
        if args.annotations and not args.weights:
            raise InputError("--annotations lists videos for --weights (pretrained weights); a run is evaluated on "
                             "its pre-processed data")
        check_precision(chosen_precision(args), pick_device(args.device))
    except (InputError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.weights:
        return report_weights(args)
    try:
        result, classes = evaluate_run(args.target, args.data, args.split, args.clips, args.crops,
                                       pick_device(args.device), chosen_precision(args), args.compile,
                                       args.skip_bad_items)
    except (TrainingError, DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    out = Path(args.out or Path(args.target) / f"evaluation-{args.split}.json")
    if result.map is not None:
        return report_multilabel(result, classes, args, out)
    report = {"split": args.split, "clips": args.clips, "crops": args.crops, "items": int(result.confusion.sum()),
              "top1": result.top1, "top5": result.top5, "mean_class_accuracy": result.mean_class_acc,
              "loss": result.loss, "per_class": dict(zip(classes, result.per_class)),
              "classes": classes, "confusion_matrix": result.confusion.tolist()}
    write_text_atomic(out, json.dumps(report, indent=2))
    plot_confusion(result.confusion, classes, out.with_suffix(".png"))
    if args.json:
        print(json.dumps(report))
        return 0
    width = max(len(c) for c in classes + ["mean class accuracy"])
    print(f"{'top-1':<{width}}  {result.top1:.4f}\n{'top-5':<{width}}  {result.top5:.4f}\n"
          f"{'mean class accuracy':<{width}}  {result.mean_class_acc:.4f}")
    for name, acc in zip(classes, result.per_class):
        print(f"{name:<{width}}  {acc:.4f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


def report_weights(args: argparse.Namespace) -> int:
    """Score pretrained weights over a list or a pre-processed folder; print the summary (or it as JSON)."""
    try:
        summary = evaluate_weights(args.weights, args.target, args.annotations, args.out_dir, args.split, args.clips,
                                   args.crops, args.frames, pick_device(args.device), chosen_precision(args),
                                   args.compile, args.overwrite)
    except (EvaluationError, WeightsUnavailable, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc.args[0] if isinstance(exc, KeyError) else exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the videos scored so far are kept; run the same command to go on", file=sys.stderr)
        return 130
    if args.json:
        print(json.dumps(summary))
        return 0
    fmt = (lambda v: "n/a" if v is None else f"{v:.4f}")
    print(f"top-1                {fmt(summary['top1'])}\ntop-5                {fmt(summary['top5'])}\n"
          f"mean class accuracy  {fmt(summary['mean_class_accuracy'])} ({summary['classes']} classes)\n"
          f"videos scored        {summary['n']} of {summary['listed']} listed ({summary['missing']} missing, "
          f"{summary['broken']} broken, {summary['unusable']} unusable rows)")
    out = Path(summary["out_dir"])
    print(f"wrote {out / SUMMARY}, {out / PER_CLASS} and {out / RECORDS}; DeepMind's figures: docs/kinetics-accuracy.md")
    return 0


def report_multilabel(result, classes: list[str], args: argparse.Namespace, out: Path) -> int:
    """Print and write a multi-label run's mAP, per-class AP and thresholded F1."""
    report = {"split": args.split, "clips": args.clips, "crops": args.crops, "items": len(result.scores),
              "map": result.map, "f1_at_thresholds": result.f1, "top1": result.top1, "loss": result.loss,
              "per_class_ap": {c: (None if math.isnan(a) else a) for c, a in zip(classes, result.per_class_ap)},
              "thresholds": dict(zip(classes, result.thresholds)), "classes": classes}
    write_text_atomic(out, json.dumps(report, indent=2))
    plot_ap(result.per_class_ap, classes, out.with_suffix(".png"))
    summary = {"mAP": result.map, "F1 at the run's thresholds": result.f1, "top-1 (a label ranked first)": result.top1}
    width = max(len(c) for c in classes + list(summary))
    for name, value in summary.items():
        print(f"{name:<{width}}  {value:.4f}")
    print(f"{'class':<{width}}  AP      threshold")
    for name, ap, thr in zip(classes, result.per_class_ap, result.thresholds):
        print(f"{name:<{width}}  {'  n/a ' if math.isnan(ap) else f'{ap:.4f}'}  {thr:.4f}")
    print(f"wrote {out} and {out.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
