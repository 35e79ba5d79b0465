"""Animated GIFs of I3D: first-layer filters, endpoint activations, and Grad-CAM saliency for a class.

Examples:

    python visualize.py filters --weights rgb_scratch --out docs/img/filters_rgb.gif
    python visualize.py activations ../shared/data/videos/arm_wrestling.mp4 --endpoint Mixed_3c --out act.gif
    python visualize.py saliency ../shared/data/videos/arm_wrestling.mp4 --class "arm wrestling" --out sal.gif
"""
from __future__ import annotations

import argparse
from pathlib import Path

from src.clips import load_clip_tensor
from src.model import ENDPOINTS
from src.visualize import activation_frames, filter_frames, resolve_class, saliency_frames, save_gif
from src.weights import i3d


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["filters", "activations", "saliency"], help="what to draw")
    parser.add_argument("input", nargs="?", type=Path, default=None,
                        help="video, GIF or .npy clip (activations and saliency)")
    parser.add_argument("--weights", default="rgb_scratch", help="registry name or weights file (default: %(default)s)")
    parser.add_argument("--in-channels", type=int, default=None, help="2 to draw a flow stream (from RGB weights)")
    parser.add_argument("--out", type=Path, required=True, help="GIF to write")
    parser.add_argument("--endpoint", default=None, choices=ENDPOINTS,
                        help="activations: layer to show (default Mixed_3c); saliency: Grad-CAM layer (Mixed_4f)")
    parser.add_argument("--class", dest="label", default=None,
                        help="saliency: class name or index (default: the predicted class)")
    parser.add_argument("--frames", type=int, default=32,
                        help="middle frames of the input to use (default: %(default)s)")
    parser.add_argument("--channels", type=int, default=16,
                        help="activations: channels shown (most active first) (default: %(default)s)")
    parser.add_argument("--size", type=int, default=160, help="height in pixels of each panel (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=8.0, help="GIF frame rate (default: %(default)s)")
    args = parser.parse_args()
    model = i3d(weights=args.weights, in_channels=args.in_channels).eval()
    print(f"weights {args.weights}: {model.in_channels} input channels, {model.num_classes} classes")
    if args.what == "filters":
        frames = filter_frames(model)
        save_gif(frames, args.out, fps=3)
    else:
        if args.input is None:
            parser.error(f"{args.what} needs an INPUT clip")
        clip = load_clip_tensor(args.input, args.frames)
        if args.what == "activations":
            frames = activation_frames(model, clip, args.endpoint or "Mixed_3c", args.channels, args.size)
        else:
            target = resolve_class(args.label, model.categories)
            frames, target, logits = saliency_frames(model, clip, target, args.endpoint or "Mixed_4f", args.size)
            name = model.categories[target] if model.categories else str(target)
            print(f"Grad-CAM for class {target} {name!r} (logit {logits[target]:.2f}; "
                  f"predicted {int(logits.argmax())})")
        save_gif(frames, args.out, args.fps)
    print(f"wrote {args.out}: {len(frames)} frames of {frames[0].shape[1]}x{frames[0].shape[0]}, "
          f"{args.out.stat().st_size / 1024:.0f} KB")


if __name__ == "__main__":
    main()
