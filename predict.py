"""Classify a video, a folder of frames, a GIF or a model-ready .npy clip with I3D.

Examples:
    python predict.py ../shared/data/videos/arm_wrestling.mp4
    python predict.py clip.mp4 --weights rgb_scratch --top-k 10 --frames 64 --json
    python predict.py clip.npy --weights model/model_rgb.pth --logits-out logits.npy
"""
from __future__ import annotations

import argparse
import logging
import sys

import numpy as np
import torch

from src.device import pick_device
from src.predict import (InputError, clip_to_tensor, default_categories, format_json, format_table, load_clip,
                         top_k)
from src.weights import RGB_RECIPE, FLOW_RECIPE, WeightsUnavailable, i3d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="video file, folder of frames, GIF, or .npy clip in [-1, 1] "
                                      "shaped (T, H, W, C) or (1, T, H, W, C) (used as-is)")
    parser.add_argument("--weights", default="rgb_scratch",
                        help="registry name (rgb_scratch, rgb_imagenet, ...) or a weights file (default: %(default)s)")
    parser.add_argument("--top-k", type=int, default=5, help="how many classes to show (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=None, help="use only the N central frames (default: all)")
    parser.add_argument("--resize", action="store_true",
                        help="resize + centre-crop even frames that are already 224x224 (taken as pre-cropped otherwise)")
    parser.add_argument("--json", action="store_true", help='print {"predictions": [{label, index, prob, logit}]}')
    parser.add_argument("--logits-out", metavar="FILE.npy", help="also save the raw logits")
    parser.add_argument("--device", default=None, help="cpu, cuda, mps (default: best available)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    try:
        model = i3d(weights=args.weights).eval()
        recipe = FLOW_RECIPE if model.in_channels == 2 else RGB_RECIPE
        clip = load_clip(args.input, recipe, frames=args.frames, force_resize=args.resize)
    except (InputError, WeightsUnavailable, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device = pick_device(args.device)
    with torch.inference_mode():
        logits = model.to(device)(clip_to_tensor(clip).to(device))[0].float().cpu().numpy()
    categories = model.categories or default_categories(len(logits))
    predictions = top_k(logits, categories, args.top_k)
    if args.logits_out:
        np.save(args.logits_out, logits)
    if args.json:
        print(format_json(predictions))
    else:
        name = model.weights.name if model.weights else args.weights
        print(f"{args.input}: {len(clip)} frames of {clip.shape[2]}x{clip.shape[1]}, weights {name}")
        print(format_table(predictions))
    return 0


if __name__ == "__main__":
    sys.exit(main())
