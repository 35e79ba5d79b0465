"""I3D features: of a whole dataset (--out-dir), as sliding windows per video, or of one clip (--out).

Dataset form: one array per video and stream, (T', 1024) from windows of --window frames every --stride
frames (Mixed_5c averaged over time and space), plus DIR/features.csv and the window start times.
--preset NAME sets the options of a published feature convention (--preset list; docs/feature-presets.md).

Examples:
    python extract_features.py videos/ --out-dir feats/                                  # RGB, 16 every 16, 25 fps
    python extract_features.py videos/ --out-dir feats/ --preset thumos14-cmcs           # ActionFormer's THUMOS-14
    python extract_features.py videos/ --out-dir feats/ --preset ms-tcn --weights w.pth --flow-weights f.pth
    python extract_features.py videos/ --out-dir feats/ --preset ucf-crime-10crop --streams rgb   # (10, T', 1024)
    python extract_features.py videos/ --out-dir feats/ --preset deepmil-10crop          # NAME__0..9.npy
    python extract_features.py --print-config actionformer feats/                       # its dataset settings
    python extract_features.py --compare feats/video_test_0000004_rgb+flow.npy released/video_test_0000004.npy
    python extract_features.py videos/ --out-dir feats/ --streams rgb,flow --concat --fps native --stride 4
    python extract_features.py list.txt --out-dir feats/ --crops 10 --shard 2/8          # one of 8 machines
    python extract_features.py data/videos/pre-processed --out-dir feats/ --per-frame --window 21
    python extract_features.py ../shared/data/videos/arm_wrestling.mp4 --endpoint Mixed_5c --out feats.npy
    python extract_features.py clip.npy --endpoint Mixed_4f --weights model/model_rgb.pth --out f.npy

Dataset outputs: DIR/<path relative to INPUT, without extension>_<rgb|flow|rgb+flow>.npy, shape (T', C)
or (T', crops, C) (crops: centre, top-left, top-right, bottom-left, bottom-right, then the same flipped;
--crops-first (crops, T', C), --per-crop-files one NAME__k.npy per crop), and _times.npy (T',) in seconds
(--time-files video-features: _fps.npy and _timestamps_ms.npy). T' = (T - window) // stride + 1 (1 for a clip
shorter than a window; T with --per-frame; --tail repeat-last or loop keeps the last, incomplete window).
Finished videos are skipped on a rerun; broken inputs are logged and skipped.
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
from src.extraction import (MODELS, PRESETS, ExtractionError, FeatureConfig, describe_presets, model_config,
                            prepare_feature_dir, preset_options, run)
from src.extraction.compare import compare_files
from src.extraction.config import ALIGNS, CROP_ORDERS, FLIP_FLOWS, PADS, POOLS, SHORT_VIDEOS, TAILS, TIME_FILES
from src.guard import add_guard_arguments, apply_guard_arguments
from src.inference import check_precision, guarded_fast_path
from src.media.transforms import RESIZE_FILTERS
from src.jobs import parse_shard, save_array_atomic, shard_from_env
from src.model import ENDPOINTS
from src.weights import FLOW_RECIPE, RGB_RECIPE, WeightsUnavailable, i3d


class PresetAction(argparse.Action):
    """--preset NAME; --preset list prints the presets and exits (before the other arguments are required)."""

    def __call__(self, parser, namespace, value, option_string=None):
        if value == "list":
            print(describe_presets())
            parser.exit(0)
        if value not in PRESETS:
            parser.error(f"--preset {value}: unknown; choose one of {', '.join(PRESETS)} or list")
        namespace.preset = value


class CompareAction(argparse.Action):
    """--compare MINE THEIRS: shapes, T' and per-row cosine similarity of two feature files, then exit."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            report = compare_files(*values)
        except (OSError, ValueError) as exc:
            parser.exit(1, f"error: {one_line(exc)}\n")
        print(report.text())
        parser.exit(0 if report.comparable else 1)


class PrintConfigAction(argparse.Action):
    """--print-config MODEL DIR: the dataset settings MODEL needs for the features in DIR, as YAML, then exit."""

    def __call__(self, parser, namespace, values, option_string=None):
        try:
            print(model_config(values[1], values[0]))
        except (OSError, ValueError) as exc:
            parser.exit(1, f"error: {one_line(exc)}\n")
        parser.exit(0)


def parse_size(text: str) -> tuple[int, int]:
    """'340x256' -> (340, 256) (argparse type)."""
    width, sep, height = text.lower().partition("x")
    if not (sep and width.isdigit() and height.isdigit()):
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, e.g. 340x256, got {text!r}")
    return int(width), int(height)


def parse_streams(text: str) -> tuple[str, ...]:
    """'rgb,flow' -> ('rgb', 'flow') (argparse type)."""
    return tuple(s.strip() for s in text.split(",") if s.strip())


# FeatureConfig fields a preset may set: their options default to the preset's (absent unless given)
PRESET_FIELDS = ("window", "stride", "fps", "streams", "concat", "per_frame", "pad", "crops", "pool", "weights",
                 "flow_weights", "resize_to", "rgb_jpeg", "flow_jpeg", "align", "crop_order", "flip_flow",
                 "short_videos", "tail", "resize_filter", "crops_first", "per_crop_files", "time_files")


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    keep = argparse.SUPPRESS  # preset options: absent unless given, so a preset can fill them in
    on_off = argparse.BooleanOptionalAction
    p = Parser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("input", nargs="+", help="videos, frame folders, folders searched recursively for videos, "
                                            "text files listing videos (one a line), or pre-processed dataset folders "
                                            "(one .npy clip in [-1, 1] with --out)")
    out = p.add_mutually_exclusive_group(required=True)
    out.add_argument("--out-dir", type=Path, help="dataset form: folder for the per-video feature arrays")
    out.add_argument("--out", type=Path, help="one-clip form: output .npy of the endpoint, (C, T, H, W)")
    p.add_argument("--preset", action=PresetAction, default="i3d",
                   help="a named feature convention (i3d, thumos14-cmcs, ms-tcn, ucf-crime-10crop, deepmil-10crop, "
                        "xd-violence-5crop, video-features, anet-cmcs, wtalc): its options, each overridden by "
                        "an explicit flag; 'list' shows them with their provenance (default: %(default)s)")
    p.add_argument("--compare", nargs=2, metavar=("MINE", "THEIRS"), action=CompareAction,
                   help="compare two feature files (.npy/.npz): shapes, T', per-row cosine similarity; then exit")
    p.add_argument("--print-config", nargs=2, metavar=("MODEL", "DIR"), action=PrintConfigAction,
                   help=f"print the dataset settings {' or '.join(MODELS)} needs for the features in DIR (YAML: "
                        "feat_stride, num_frames, default_fps, input_dim, file_ext); then exit")
    p.add_argument("--endpoint", default="Mixed_5c", choices=ENDPOINTS, help="DeepMind endpoint (default: %(default)s)")
    p.add_argument("--weights", default=keep,
                   help="RGB registry name or weights file (default: the preset's; rgb_scratch)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out, or redo every video in --out-dir (also when the recipe changed)")
    p.add_argument("--resize", action="store_true", help="resize + crop even frames already 224x224")
    one = p.add_argument_group("one-clip form (--out)")
    one.add_argument("--frames", type=int, default=None, help="use only the N central frames (default: all)")
    ds = p.add_argument_group("dataset form (--out-dir); the defaults are the i3d preset's")
    ds.add_argument("--window", type=int, default=keep, help="frames per window (default: 16)")
    ds.add_argument("--stride", type=int, default=keep, help="frames between window starts (default: 16)")
    ds.add_argument("--fps", type=parse_fps, default=keep,
                    help="resample to this rate, or 'native' (default: 25, the recipe; a --checkpoint run's own)")
    ds.add_argument("--streams", type=parse_streams, default=keep, help="rgb, flow or rgb,flow (default: rgb)")
    ds.add_argument("--concat", action=on_off, default=keep,
                    help="one (T', 2048) rgb+flow array per video, RGB first")
    ds.add_argument("--per-frame", action=on_off, default=keep,
                    help="one row per frame, from a window centred on it (T' = T; --stride is ignored)")
    ds.add_argument("--pad", choices=PADS, default=keep,
                    help="--per-frame windows past the ends: repeat the end frame, zeros, or 'still' (the end frame "
                         "repeated, no motion: zero flow) (default: edge)")
    ds.add_argument("--crops", type=int, choices=(1, 5, 10), default=keep,
                    help="centre; + 4 corners; + their flips, kept as an axis (T', crops, C) (default: 1)")
    ds.add_argument("--crop-order", choices=CROP_ORDERS, default=keep,
                    help="centre-first: C, TL, TR, BL, BR, then each mirrored; cmcs: TL, TR, C, BL, BR, then the same "
                         "boxes of the mirrored frame; torchvision (TenCrop): TL, TR, BL, BR, C, then the same of the "
                         "mirrored frame (default: centre-first)")
    ds.add_argument("--flip-flow", choices=FLIP_FLOWS, default=keep,
                    help="flipped crops' x flow: negate (mirrored motion) or keep (as CMCS) (default: negate)")
    ds.add_argument("--pool", choices=POOLS, default=keep,
                    help="mean over (t, h, w); head: the classifier's (2, 7, 7) average pool then the mean, as "
                         "pytorch-i3d / TF extractors did; none: the (C, t, h, w) maps (default: mean)")
    ds.add_argument("--no-pool", dest="pool", action="store_const", const="none", default=keep,
                    help="the same as --pool none")
    ds.add_argument("--resize-to", type=parse_size, default=keep, metavar="WxH",
                    help="resize frames to exactly WxH, not keeping the aspect (e.g. 340x256), then crop 224 "
                         "(default: short side 256)")
    ds.add_argument("--rgb-jpeg", action=on_off, default=keep,
                    help="RGB frames through OpenCV's JPEG at quality 95, as stored frame files are (default: no)")
    ds.add_argument("--flow-jpeg", action=on_off, default=keep,
                    help="flow quantised to 8 bits (bound 20) and stored as JPEG as dense_flow does, read back "
                         "v * 2 / 255 - 1 (default: no)")
    ds.add_argument("--align", choices=ALIGNS, default=keep,
                    help="repeat-last: T frames, the last flow repeated; drop-first: as dense_flow's files, frames "
                         "2..T each with the flow into it (T - 1 rows of each); drop-last: as video_features, frames "
                         "1..T-1 each with the flow out of it (default: repeat-last)")
    ds.add_argument("--short-videos", choices=SHORT_VIDEOS, default=keep,
                    help="a video of at most --window frames: one window of all of it; reject it (CMCS); or drop: "
                         "refuse one with fewer than --window (no full window, video_features) (default: one-window)")
    # issue 24's conventions (anomaly-detection and localisation presets)
    ds.add_argument("--tail", choices=TAILS, default=keep,
                    help="the last window when the frames run out: drop it (T' = (T - W) // S + 1), or complete it "
                         "by repeating the last frame or looping to the first (T' = ceil((T - W) / S) + 1) "
                         "(default: drop)")
    ds.add_argument("--resize-filter", choices=RESIZE_FILTERS, default=keep,
                    help="OpenCV's bilinear resize, or Pillow's Image.resize with BILINEAR or LANCZOS on the uint8 "
                         "RGB frames, as PIL-based extractors; to a short side, Pillow's truncates the long side "
                         "as torchvision and video_features do (default: bilinear)")
    ds.add_argument("--crops-first", action=on_off, default=keep,
                    help="crops before time: (crops, T', C) per file, as UR-DMU's UCF-Crime extractor (default: no)")
    ds.add_argument("--per-crop-files", action=on_off, default=keep,
                    help="one (T', C) file per crop, NAME__k.npy for k = 0..crops-1 (NAME_STREAM__k.npy with two "
                         "streams), DeepMIL's and XD-Violence's naming (default: no)")
    ds.add_argument("--time-files", choices=TIME_FILES, default=keep,
                    help="seconds: NAME_times.npy, each window's start; video-features: NAME_fps.npy and "
                         "NAME_timestamps_ms.npy, each window's end in ms, as video_features (default: seconds)")
    ds.add_argument("--flow-weights", default=keep, help="flow registry name or file (default: the preset's; flow_scratch)")
    ds.add_argument("--checkpoint", default=None, help="a fine-tuned train.py run folder (its streams and recipe)")
    ds.add_argument("--batch", type=int, default=8, help="clips per forward pass, across videos (default: %(default)s)")
    ds.add_argument("--dtype", choices=("float32", "float16"), default="float32", help="stored dtype (default: %(default)s)")
    ds.add_argument("--flow-device", default=None,
                    help="device of the flow stream's TV-L1 (default: --device); on a GPU the decoders send frames and "
                         "the flow of every video in flight is computed here in large batches (Triton where installed)")
    ds.add_argument("--flow-batch", type=int, default=0,
                    help="flow pairs per call when flow is computed here (default 0: the device's choice; N > 0 also "
                         "computes it here on a CPU)")
    ds.add_argument("--workers", type=int, default=1,
                    help="decoding (and flow) processes beside the model; 0 decodes in-process (default: %(default)s)")
    ds.add_argument("--shard", default=None,
                    help="i/n: this job's share of the videos (default: from SLURM_ARRAY_TASK_ID/COUNT, else 1/1)")
    add_inference_arguments(p, precision="fp32")  # fp32 keeps features faithful; auto/bf16 is faster
    add_guard_arguments(p)
    return p


def main() -> int:
    args = build_parser().parse_args()
    apply_guard_arguments(args)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        check_precision(chosen_precision(args), pick_device(args.device))  # a precision this machine lacks: before any work
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
    explicit = {name: getattr(args, name) for name in PRESET_FIELDS if hasattr(args, name)}
    cfg = FeatureConfig(
        **preset_options(args.preset, explicit), endpoint=args.endpoint, checkpoint=args.checkpoint,
        batch=args.batch, dtype=args.dtype, precision=chosen_precision(args), compile=args.compile,
        device=args.device, workers=args.workers, overwrite=args.overwrite, shard=shard, force_resize=args.resize,
        flow_device=args.flow_device, flow_batch=args.flow_batch)
    summary = run(args.input, args.out_dir, cfg)
    return 1 if summary.failed else 0


def extract_one(args: argparse.Namespace) -> int:
    """The one-clip --out form: the endpoint tensor (C, T, H, W)."""
    if len(args.input) != 1:
        raise ExtractionError(f"--out takes one input, got {len(args.input)}; use --out-dir for many")
    dataset_only = sorted({f"--{n.replace('_', '-')}" for n in PRESET_FIELDS if hasattr(args, n)} - {"--weights"})
    if args.preset != "i3d" or dataset_only:
        raise ExtractionError(f"{'--preset' if args.preset != 'i3d' else dataset_only[0]} belongs to the dataset form "
                              "(--out-dir); --out takes --weights, --endpoint, --frames and --resize")
    if args.frames is not None and args.frames < 1:
        raise ExtractionError(f"--frames must be 1 or more, got {args.frames}")
    out = args.out
    if out.exists() and not args.overwrite:
        raise ExtractionError(f"{out} exists; pass --overwrite to replace it")
    prepare_feature_dir(out.parent)
    model = i3d(weights=getattr(args, "weights", "rgb_scratch")).eval()
    recipe = FLOW_RECIPE if model.in_channels == 2 else RGB_RECIPE
    clip = load_clip(args.input[0], recipe, frames=args.frames, force_resize=args.resize)
    device = pick_device(args.device)
    runner = model.to(device) if args.plain else guarded_fast_path(model, device, args.precision, args.compile)[0]
    with torch.inference_mode():
        features = runner.forward_features(clip_to_tensor(clip).to(device), args.endpoint)[0]
    save_array_atomic(out, features.float().cpu().numpy())
    print(f"{out}: {args.endpoint} of shape (C, T, H, W) = {tuple(features.shape)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
