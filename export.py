"""Export an I3D to ONNX or TorchScript (free batch, time and frame size), then check it against PyTorch.

Examples:

    python export.py --weights rgb_scratch --format onnx --out model/rgb_scratch.onnx
    python export.py runs/my_run --format torchscript --out my_run.pt --check-clip ../shared/data/videos/arm_wrestling.mp4

The check runs the exported file (onnxruntime for ONNX) and the PyTorch model on a real clip and fails
if any logit differs by more than --tolerance. Class names are written beside the file (FILE.classes.txt).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.predict import load_clip_tensor
from src.export import FORMATS, check_export, export_model, load_for_export

DEFAULT_CLIP = Path(__file__).resolve().parent.parent / "shared" / "data" / "samples" / "v_CricketShot_g04_c01_rgb.gif"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, default=None,
                        help="fine-tuning run folder (best.safetensors, classes.txt); or use --weights")
    parser.add_argument("--weights", default=None, help="registry name (e.g. rgb_scratch) or a weights file")
    parser.add_argument("--format", choices=FORMATS, default="onnx", help="output format")
    parser.add_argument("--out", type=Path, required=True, help="file to write (.onnx, .pt)")
    parser.add_argument("--frames", type=int, default=16, help="frames of the example clip used for tracing")
    parser.add_argument("--check-clip", type=Path, default=DEFAULT_CLIP,
                        help="video/GIF/npy to compare the export against PyTorch on ('' to skip)")
    parser.add_argument("--check-frames", type=int, default=32, help="middle frames of the check clip")
    parser.add_argument("--tolerance", type=float, default=1e-3, help="max allowed |logit difference|")
    args = parser.parse_args()
    if (args.run_dir is None) == (args.weights is None):
        parser.error("give either a run folder or --weights NAME|FILE")
    model = load_for_export(args.weights, args.run_dir)
    path = export_model(model, args.out, args.format, args.frames)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {args.format}, dynamic batch/time/height/width)")
    if str(args.check_clip):
        clip = load_clip_tensor(args.check_clip, args.check_frames)
        if clip.shape[1] != model.in_channels:
            print(f"skipping the check: {args.check_clip} has {clip.shape[1]} channels, the model takes "
                  f"{model.in_channels}")
            return
        delta = check_export(path, model, clip)
        print(f"max |logit difference| vs PyTorch on {args.check_clip.name} ({tuple(clip.shape)}): {delta:.2e}")
        if delta > args.tolerance:
            sys.exit(f"export check failed: {delta:.2e} > tolerance {args.tolerance:g}")


if __name__ == "__main__":
    main()
