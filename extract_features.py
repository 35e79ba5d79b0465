"""I3D features: of a whole dataset (--out-dir), as sliding windows per video, or of one clip (--out).

Dataset form: one array per video and stream, (T', 1024) from windows of --window frames every --stride
frames (Mixed_5c averaged over time and space), plus DIR/features.csv and the window start times.

Examples:
    python extract_features.py videos/ --out-dir feats/                                  # RGB, 16 every 16, 25 fps
    python extract_features.py videos/ --out-dir feats/ --streams rgb,flow --concat --fps native --stride 4
    python extract_features.py list.txt --out-dir feats/ --crops 10 --shard 2/8          # one of 8 machines
    python extract_features.py data/videos/pre-processed --out-dir feats/ --per-frame --window 21
    python extract_features.py ../shared/data/videos/arm_wrestling.mp4 --endpoint Mixed_5c --out feats.npy
    python extract_features.py clip.npy --endpoint Mixed_4f --weights model/model_rgb.pth --out f.npy

Dataset outputs: DIR/<path relative to INPUT, without extension>_<rgb|flow|rgb+flow>.npy, shape (T', C)
or (T', crops, C) (crops: centre, top-left, top-right, bottom-left, bottom-right, then the same flipped),
and _times.npy (T',) in seconds. T' = (T - window) // stride + 1 (1 for a clip shorter than a window;
T with --per-frame). Finished videos are skipped on a rerun; broken inputs are logged and skipped.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import torch

from src.cli import Parser, add_inference_arguments, chosen_precision, one_line, parse_fps
from src.clips import InputError, clip_to_tensor, load_clip
from src.device import pick_device
from src.extraction import ExtractionError, FeatureConfig, prepare_out_dir, run
from src.inference import optimize_for_inference
from src.jobs import parse_shard, save_array_atomic, shard_from_env
from src.model import ENDPOINTS
from src.weights import FLOW_RECIPE, RGB_RECIPE, WeightsUnavailable, i3d


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="+", help="videos, frame folders, folders searched recursively for videos, "
                                            "text files listing videos (one a line), or pre-processed dataset folders "
                                            "(one .npy clip in [-1, 1] with --out)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", type=Path, help="dataset form: folder for the per-video feature arrays")
    out.add_argument("--out", type=Path, help="one-clip form: output .npy of the endpoint, (C, T, H, W)")
    p.add_argument("--endpoint", default="Mixed_5c", choices=ENDPOINTS, help="DeepMind endpoint (default: %(default)s)")
    p.add_argument("--weights", default="rgb_scratch", help="RGB registry name or weights file (default: %(default)s)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out, or redo every video in --out-dir (also when the recipe changed)")
    p.add_argument("--resize", action="store_true", help="resize + crop even frames already 224x224")
    one = p.add_argument_group("one-clip form (--out)")
    one.add_argument("--frames", type=int, default=None, help="use only the N central frames (default: all)")
    ds = p.add_argument_group("dataset form (--out-dir)")
    ds.add_argument("--window", type=int, default=16, help="frames per window (default: %(default)s)")
    ds.add_argument("--stride", type=int, default=16, help="frames between window starts (default: %(default)s)")
    ds.add_argument("--fps", type=parse_fps, default=argparse.SUPPRESS,
                    help="resample to this rate, or 'native' (default: 25, the recipe; a --checkpoint run's own)")
    ds.add_argument("--streams", default="rgb", help="rgb, flow or rgb,flow (default: %(default)s)")
    ds.add_argument("--concat", action="store_true", help="one (T', 2048) rgb+flow array per video, RGB first")
    ds.add_argument("--per-frame", action="store_true",
                    help="one row per frame, from a window centred on it (T' = T; --stride is ignored)")
    ds.add_argument("--pad", choices=("edge", "zero"), default="edge",
                    help="--per-frame windows past the ends: repeat the end frame or zeros (default: %(default)s)")
    ds.add_argument("--crops", type=int, choices=(1, 5, 10), default=1,
                    help="centre; + 4 corners; + their flips, kept as an axis (T', crops, C) (default: %(default)s)")
    ds.add_argument("--no-pool", dest="pool", action="store_false",
                    help="keep the endpoint's (C, t, h, w) maps instead of averaging them to a vector")
    ds.add_argument("--flow-weights", default="flow_scratch", help="flow registry name or file (default: %(default)s)")
    ds.add_argument("--checkpoint", default=None, help="a fine-tuned train.py run folder (its streams and recipe)")
    ds.add_argument("--batch", type=int, default=8, help="clips per forward pass, across videos (default: %(default)s)")
    ds.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype (default: %(default)s)")
    ds.add_argument("--workers", type=int, default=1,
                    help="decoding (and flow) processes beside the model; 0 decodes in-process (default: %(default)s)")
    ds.add_argument("--shard", default=None,
                    help="i/n: this job's share of the videos (default: from SLURM_ARRAY_TASK_ID/COUNT, else 1/1)")
    add_inference_arguments(p, precision="fp32")  # fp32 keeps features faithful; auto/bf16 is faster
    return p


def main() -> int:
    args = build_parser().parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        if args.out_dir is not None:
            return extract_dataset(args)
        return extract_one(args)
    except (InputError, WeightsUnavailable, FileNotFoundError, KeyError, ValueError, RuntimeError) as exc:
        if type(exc) is RuntimeError:  # torch and other bugs keep their traceback
            raise
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return 1


def extract_dataset(args: argparse.Namespace) -> int:
    """The --out-dir form."""
    if args.frames is not None:
        raise ExtractionError("--frames belongs to the one-clip form (--out); use --window/--stride with --out-dir")
    try:
        shard = parse_shard(args.shard) if args.shard else (shard_from_env() or (1, 1))
    except ValueError as exc:
        raise ExtractionError(str(exc)) from None
    cfg = FeatureConfig(
        window=args.window, stride=args.stride, fps=getattr(args, "fps", "recipe"),
        streams=tuple(s.strip() for s in args.streams.split(",") if s.strip()), concat=args.concat,
        per_frame=args.per_frame, pad=args.pad, crops=args.crops, endpoint=args.endpoint, pool=args.pool,
        weights=args.weights, flow_weights=args.flow_weights, checkpoint=args.checkpoint, batch=args.batch,
        dtype=args.dtype, precision=chosen_precision(args), compile=args.compile, device=args.device,
        workers=args.workers, overwrite=args.overwrite, shard=shard, force_resize=args.resize)
    summary = run(args.input, args.out_dir, cfg)
    return 1 if summary.failed else 0


def extract_one(args: argparse.Namespace) -> int:
    """The one-clip --out form: the endpoint tensor (C, T, H, W)."""
    if len(args.input) != 1:
        raise ExtractionError(f"--out takes one input, got {len(args.input)}; use --out-dir for many")
    if args.frames is not None and args.frames < 1:
        raise ExtractionError(f"--frames must be 1 or more, got {args.frames}")
    out = args.out
    if out.exists() and not args.overwrite:
        raise ExtractionError(f"{out} exists; pass --overwrite to replace it")
    prepare_out_dir(out.parent)
    model = i3d(weights=args.weights).eval()
    recipe = FLOW_RECIPE if model.in_channels == 2 else RGB_RECIPE
    clip = load_clip(args.input[0], recipe, frames=args.frames, force_resize=args.resize)
    device = pick_device(args.device)
    runner = model.to(device) if args.plain else optimize_for_inference(model, device, args.precision, args.compile)
    with torch.inference_mode():
        features = runner.forward_features(clip_to_tensor(clip).to(device), args.endpoint)[0]
    save_array_atomic(out, features.float().cpu().numpy())
    print(f"{out}: {args.endpoint} of shape (C, T, H, W) = {tuple(features.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
