"""Classify a video, a folder of frames, a GIF or a model-ready .npy clip with I3D: pretrained
Kinetics weights, or a model you fine-tuned with train.py (its own classes and input recipe).

Examples:
    python predict.py ../shared/data/videos/arm_wrestling.mp4
    python predict.py clip.mp4 --weights rgb_scratch --top-k 10 --frames 64 --json
    python predict.py clip.npy --weights model/model_rgb.pth --logits-out logits.npy
    python predict.py clip.mp4 --checkpoint runs/20261125-101500-rgb
    python predict.py long.mp4 --checkpoint runs/... --timeline --window 64 --stride 32 --timeline-out t.csv
    python predict.py long.mp4 --timeline --window 32 --stride 8 --timeline-out t.png   # drawn

With a multi-label run (train.py --multi-label, or data whose items have several labels), every class
whose probability (sigmoid) reaches the threshold chosen on the validation split is listed, with its
probability, instead of the top k; --timeline lists them per window.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path

import numpy as np

from src.cli import add_inference_arguments, check_output, check_positive, chosen_precision
from src.clips import InputError
from src.dataset import DatasetError
from src.device import pick_device
from src.guard import add_guard_arguments, apply_guard_arguments
from src.inference import check_precision, check_trusted
from src.jobs.files import atomic_write, save_array_atomic
from src.predict import (exported_predictor, format_json, format_table, plot_timeline, predictor_from_run,
                         predictor_from_weights, timeline, top_k)
from src.training.runs import TrainingError
from src.weights import WeightsUnavailable


def write_timeline(rows: list[dict], out: str | None) -> None:
    """Timeline rows as JSON or CSV (by extension; a .png is drawn by plot_timeline), and a table on stdout."""
    if out and out.lower().endswith(".png"):
        pass  # drawn by plot_timeline, from every class's probabilities rather than these rows
    elif out and out.endswith(".csv"):
        with atomic_write(out, fsync=False) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    elif out:
        with atomic_write(out, fsync=False) as tmp:
            tmp.write_text(json.dumps({"timeline": rows}, indent=2))
    for r in rows:
        if "labels" in r:  # multi-label
            found = ", ".join(f"{lab} {p}" for lab, p in zip(r["labels"].split(";"), r["probs"].split(";")) if lab)
            print(f"{r['start_s']:8.2f}-{r['end_s']:<8.2f} {found or '(no class over its threshold)'}")
        else:
            print(f"{r['start_s']:8.2f}-{r['end_s']:<8.2f} {r['prob']:.3f}  {r['label']}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="video file, folder of frames, GIF, or .npy clip in [-1, 1] "
                                      "shaped (T, H, W, C) or (1, T, H, W, C) (used as-is)")
    parser.add_argument("--weights", default="rgb_scratch",
                        help="registry name (rgb_scratch, rgb_imagenet, ...) or a weights file (default: %(default)s)")
    parser.add_argument("--checkpoint", metavar="RUN_DIR", help="a fine-tuned train.py run (overrides --weights)")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: %(default)s; "
                                                              "multi-label runs show every class over its threshold)")
    parser.add_argument("--frames", type=int, default=None, help="use only the N central frames (default: all)")
    parser.add_argument("--resize", action="store_true",
                        help="resize + centre-crop even frames that are already crop-sized (taken as pre-cropped)")
    parser.add_argument("--json", action="store_true", help='print {"predictions": [{label, index, prob, logit}]}')
    parser.add_argument("--logits-out", metavar="FILE.npy", help="also save the raw logits")
    parser.add_argument("--timeline", action="store_true", help="label a long video window by window")
    parser.add_argument("--window", type=int, default=64, help="timeline window in frames (default: %(default)s)")
    parser.add_argument("--stride", type=int, default=32, help="timeline stride in frames (default: %(default)s)")
    parser.add_argument("--timeline-out", metavar="FILE",
                        help="write the timeline as .json or .csv, or draw it as .png (the --top-k classes' "
                             "probabilities over time)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --logits-out / --timeline-out")
    add_inference_arguments(parser)
    add_guard_arguments(parser)
    parser.add_argument("--model", metavar="FILE", help="run an exported model (.onnx, .pt2 or TorchScript .pt) "
                                                          "with --weights' labels and recipe")
    parser.add_argument("--trust-model", action="store_true",
                        help="allow a --model that can run code from the file: TorchScript and .pt2 (refused "
                             "without this; ONNX loads as data). Only for files you exported or trust")
    args = parser.parse_args()
    apply_guard_arguments(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    try:  # options and output paths first: a mistake should cost nothing, not the whole computation
        for option in ("top_k", "frames", "window", "stride"):
            check_positive(getattr(args, option), "--" + option.replace("_", "-"))
        if args.logits_out and not args.logits_out.endswith(".npy"):
            args.logits_out += ".npy"  # as np.save names it
        if args.logits_out:
            check_output(args.logits_out, "--logits-out", args.overwrite)
        if args.timeline_out:
            check_output(args.timeline_out, "--timeline-out", args.overwrite)
        if args.model:
            check_trusted(args.model, args.trust_model)
        device = pick_device(args.device)
        check_precision(chosen_precision(args), device)
    except (InputError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    try:
        precision = chosen_precision(args)
        predictor = (predictor_from_run(args.checkpoint, device, precision, args.compile) if args.checkpoint
                     else predictor_from_weights(args.weights, device, precision, args.compile))
        if args.model:
            predictor = exported_predictor(args.model, predictor, args.trust_model)
        clips = predictor.load(args.input, None if args.timeline else args.frames, args.resize)
    except (InputError, WeightsUnavailable, FileNotFoundError, KeyError, ValueError, TrainingError,
            DatasetError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.timeline:
        probabilities: list[np.ndarray] = []
        rows = timeline(predictor, clips, args.window, args.stride, device, predictor.frame_rate(args.input),
                        probabilities)
        write_timeline(rows, args.timeline_out)
        if args.timeline_out and args.timeline_out.lower().endswith(".png"):
            plot_timeline(rows, probabilities, predictor.categories, args.timeline_out, args.top_k,
                          f"{Path(args.input).name}: {predictor.name}, windows of {args.window} frames every "
                          f"{args.stride}")
            print(f"wrote {args.timeline_out}")
        return 0
    logits = predictor.logits(clips, device)
    predictions = predictor.decide(logits, args.top_k)
    if args.logits_out:
        save_array_atomic(args.logits_out, logits)
    if args.json:
        print(format_json(predictions))
    else:
        clip = next(iter(clips.values()))
        print(f"{args.input}: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]}, weights {predictor.name}; "
              f"{predictor.path}")
        if predictor.thresholds is not None:
            print("classes over their thresholds (sigmoid probabilities; thresholds chosen on validation):")
            if not predictions:
                best = top_k(logits, predictor.categories, 1)[0]
                print(f"  none; the most probable is {best.label} "
                      f"({1 / (1 + np.exp(-best.logit)):.4f}, threshold {predictor.thresholds[best.index]:.4f})")
                return 0
        print(format_table(predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
