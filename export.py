"""Export an I3D to ONNX, a torch.export program (.pt2) or TorchScript (free batch, time and frame size),
then check it against PyTorch.

Examples:

    python export.py --weights rgb_scratch --format onnx --out model/rgb_scratch.onnx
    python export.py --weights rgb_scratch --format pt2 --out model/rgb_scratch.pt2
    python export.py runs/my_run --format pt2 --out my_run.pt2 --check-clip ../shared/data/videos/arm_wrestling.mp4

The check runs the exported file (onnxruntime for ONNX, torch.export.load for .pt2) and the PyTorch model
on a real clip and fails if any logit differs by more than --tolerance. Class names are written beside
the file (FILE.classes.txt). Exported models take clips of at least 9 frames of at least 193 x 193.
TorchScript (torch.jit) is deprecated in PyTorch; prefer pt2 or onnx. `predict.py --model FILE` runs an
.onnx as it is, a .pt2 or TorchScript file only with --trust-model: loading those can run code from the file.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from src.clips import InputError, load_clip_tensor
from src.export import (FORMATS, MIN_FRAMES, SUFFIXES, ExportError, check_export, check_output_name, export_model,
                        load_for_export)
from src.jobs.files import check_writable
from src.weights import WeightsUnavailable
from src.weights.checkpoint import CheckpointError

DEFAULT_CLIP = Path(__file__).resolve().parent.parent / "shared" / "data" / "samples" / "v_CricketShot_g04_c01_rgb.gif"


def fail(exc: Exception) -> int:
    """Print the error on one line (registry errors list their tries on several) and return exit code 1."""
    print("error: " + "; ".join(line.strip() for line in str(exc).splitlines() if line.strip()), file=sys.stderr)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", nargs="?", type=Path, default=None,
                        help="fine-tuning run folder (best.safetensors, classes.txt); or use --weights")
    parser.add_argument("--weights", default=None, help="registry name (e.g. rgb_scratch) or a weights file")
    parser.add_argument("--format", choices=FORMATS, default="onnx",
                        help="output format: " + ", ".join(f"{f} ({s})" for f, s in SUFFIXES.items())
                        + " (default: %(default)s)")
    parser.add_argument("--out", type=Path, required=True, help="file to write (.onnx, .pt2, .pt)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--frames", type=int, default=16,
                        help="frames of the example clip used for tracing (default: %(default)s)")
    parser.add_argument("--check-clip", default=str(DEFAULT_CLIP),
                        help="video/GIF/npy to compare the export against PyTorch on ('' to skip; default: the cricket "
                             "GIF in ../shared/data/samples)")
    parser.add_argument("--check-frames", type=int, default=32,
                        help="middle frames of the check clip (default: %(default)s)")
    parser.add_argument("--tolerance", type=float, default=1e-3,
                        help="max allowed |logit difference| (default: %(default)s)")
    args = parser.parse_args()
    if (args.run_dir is None) == (args.weights is None):
        parser.error("give either a run folder or --weights NAME|FILE")
    try:
        # everything a user can get wrong is checked before the (minutes of) export work
        check_output_name(args.out, args.format)
        if args.out.exists() and not args.overwrite:
            raise ExportError(f"--out {args.out} exists; pass --overwrite to replace it")
        check_writable(args.out)
        if args.check_frames < MIN_FRAMES:
            raise ExportError(f"--check-frames {args.check_frames}: exported models need at least {MIN_FRAMES} frames")
        model = load_for_export(args.weights, args.run_dir)
        clip = None
        if args.check_clip:
            clip = load_clip_tensor(args.check_clip, args.check_frames)
            if clip.shape[2] < MIN_FRAMES:
                raise ExportError(f"--check-clip {args.check_clip}: {clip.shape[2]} frames; the check needs at least "
                                  f"{MIN_FRAMES} (pass another clip, or '' to skip the check)")
    except (ExportError, CheckpointError, InputError, WeightsUnavailable, OSError, ValueError) as exc:
        return fail(exc)
    try:
        path = export_model(model, args.out, args.format, args.frames)
    except (ExportError, ImportError, OSError) as exc:  # a missing exporter package, a full disk
        return fail(exc)
    print(f"wrote {path} ({path.stat().st_size / 2**20:.1f} MB, {args.format}, dynamic batch/time/height/width)")
    if clip is None:
        return 0
    if clip.shape[1] != model.in_channels:
        print(f"skipping the check: {args.check_clip} has {clip.shape[1]} channels, "
              f"the model takes {model.in_channels}")
        return 0
    delta = check_export(path, model, clip)
    print(f"max |logit difference| vs PyTorch on {Path(args.check_clip).name} ({tuple(clip.shape)}): {delta:.2e}")
    if delta > args.tolerance:
        print(f"error: export check failed: {delta:.2e} > tolerance {args.tolerance:g}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
