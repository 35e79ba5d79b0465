"""Save one clip's I3D endpoint tensor (e.g. Mixed_5c) as float32 (C, T, H, W).

Examples:
    python extract_features.py ../shared/data/videos/arm_wrestling.mp4 --endpoint Mixed_5c --out feats.npy
    python extract_features.py clip.npy --endpoint Mixed_4f --weights model/model_rgb.pth --out f.npy
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from src.arrays import save_array_atomic
from src.device import pick_device
from src.inference import add_inference_arguments, optimize_for_inference
from src.model import ENDPOINTS
from src.predict import InputError, clip_to_tensor, load_clip
from src.weights import FLOW_RECIPE, RGB_RECIPE, WeightsUnavailable, i3d


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="video file, folder of frames, GIF, or .npy clip in [-1, 1]")
    parser.add_argument("--endpoint", default="Mixed_5c", choices=ENDPOINTS, help="DeepMind endpoint (default: %(default)s)")
    parser.add_argument("--weights", default="rgb_scratch", help="registry name or weights file (default: %(default)s)")
    parser.add_argument("--out", required=True, help="output .npy file")
    parser.add_argument("--frames", type=int, default=None, help="use only the N central frames (default: all)")
    parser.add_argument("--resize", action="store_true", help="resize + crop even frames already 224x224")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    add_inference_arguments(parser, precision="fp32")  # features are float32 either way
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")

    out = Path(args.out)
    if out.exists() and not args.overwrite:
        print(f"error: {out} exists; pass --overwrite to replace it", file=sys.stderr)
        return 1
    try:
        model = i3d(weights=args.weights).eval()
        recipe = FLOW_RECIPE if model.in_channels == 2 else RGB_RECIPE
        clip = load_clip(args.input, recipe, frames=args.frames, force_resize=args.resize)
    except (InputError, WeightsUnavailable, FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    device = pick_device(args.device)
    runner = model.to(device) if args.plain else optimize_for_inference(model, device, args.precision, args.compile)
    with torch.inference_mode():
        features = runner.forward_features(clip_to_tensor(clip).to(device), args.endpoint)[0]
    save_array_atomic(out, features.float().cpu().numpy())
    print(f"{out}: {args.endpoint} of shape (C, T, H, W) = {tuple(features.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
