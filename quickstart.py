"""The whole toolkit in a few minutes on a CPU, through the same scripts a user runs:

    1. python i3d_tf_to_pt.py --rgb --checkpoint scratch      Kinetics-400 weights -> model/model_rgb.pth
    2. python make_synthetic_dataset.py data/quickstart/raw   4 motion classes x 16 clips
    3. python3 pre-process.py ... --modalities rgb             official RGB recipe -> .npy arrays
    4. python train.py ...                                     fine-tune, 15 of 20 blocks frozen, feature cache
    5. python evaluate.py RUN --clips 3                        multi-clip testing
    6. python predict.py CLIP --checkpoint RUN                 one new clip with the fine-tuned model

Run it again to repeat the training into a new run folder (data and weights are reused).

`python quickstart.py --multi-label` does the same with several labels per item: long recordings
cut into segments by an annotation CSV (pre-process.py --annotations), each segment showing a pan
and/or a zoom or a brightening at once, a multi-label run (sigmoid, mAP, per-class thresholds),
and a timeline of a new recording.
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def step(title: str, *args: str) -> None:
    """Run one of the repository's scripts, stopping the quickstart if it fails."""
    print(f"\n=== {title}\n$ python {' '.join(args)}", flush=True)
    started = time.time()
    if subprocess.run([sys.executable, *args], cwd=ROOT).returncode != 0:
        sys.exit(f"quickstart stopped: `python {' '.join(args)}` failed")
    print(f"({time.time() - started:.0f} s)", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="data/quickstart", help="where the dataset goes (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs (default: %(default)s)")
    parser.add_argument("--runs", default="runs", help="where the run folder goes (default: %(default)s)")
    parser.add_argument("--multi-label", action="store_true",
                        help="the multi-label variant: annotated segments of long recordings, two motions at once")
    args = parser.parse_args()
    if args.multi_label:
        return multi_label(Path(args.data + "-multilabel" if args.data == "data/quickstart" else args.data),
                           args.epochs, Path(args.runs))
    data = Path(args.data)
    run = Path(args.runs) / f"quickstart-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    step("1/6 fetch and convert the Kinetics-400 RGB weights", "i3d_tf_to_pt.py", "--rgb", "--checkpoint", "scratch")
    step("2/6 generate a small dataset that only motion can tell apart", "make_synthetic_dataset.py",
         str(data / "raw"), "--per-class", "16", "--frames", "50")
    step("3/6 pre-process it with the official RGB recipe (short side 128 here, for speed)", "pre-process.py",
         str(data / "raw"), str(data / "pre-processed"), "--modalities", "rgb", "--size", "128", "--dtype", "uint8",
         "--val-ratio", "0.25")
    step("4/6 fine-tune I3D (first 15 of 20 blocks frozen and cached)", "train.py", "--data",
         str(data / "pre-processed"), "--out", str(run), "--epochs", str(args.epochs), "--clip-len", "32",
         "--crop", "112", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.001", "--no-flip",
         "--cache-views", "2")
    step("5/6 evaluate (3 clips per video)", "evaluate.py", str(run), "--clips", "3")
    step("6/6 predict a new clip (its texture panning up)", "make_synthetic_dataset.py", str(data / "new"),
         "--per-class", "1", "--classes", "pan_up", "--seed", "99")
    step("6/6 ... with the fine-tuned model", "predict.py", str(data / "new" / "pan_up" / "clip_000.mp4"),
         "--checkpoint", str(run), "--top-k", "4")
    print(f"\nDone in {time.time() - started:.0f} s. Where everything went:\n"
          f"  weights        model/model_rgb.pth, model/rgb_scratch.safetensors\n"
          f"  raw videos     {data / 'raw'}\n"
          f"  arrays         {data / 'pre-processed'} (classes.txt, train/, val/, manifest.csv)\n"
          f"  run            {run} (config.json, best.safetensors, last.pt, metrics.json, curves.png,\n"
          f"                 confusion_matrix.png, evaluation-val.json, train.log)")
    return 0


def multi_label(data: Path, epochs: int, runs: Path) -> int:
    """The multi-label walk-through: annotated segments, sigmoid outputs, mAP, thresholds, a timeline."""
    run = runs / f"quickstart-multilabel-{time.strftime('%Y%m%d-%H%M%S')}"
    started = time.time()
    step("1/6 fetch and convert the Kinetics-400 RGB weights", "i3d_tf_to_pt.py", "--rgb", "--checkpoint", "scratch")
    step("2/6 generate 6 long recordings and annotations.csv (video,label,start,end; labels split by ';')",
         "make_synthetic_dataset.py", str(data / "raw"), "--multi-label", "--recordings", "6")
    step("3/6 cut the annotated segments and pre-process them (one decode per recording)", "pre-process.py",
         "--annotations", str(data / "raw" / "annotations.csv"), str(data / "raw"), str(data / "pre-processed"),
         "--modalities", "rgb", "--size", "128", "--dtype", "uint8", "--val-ratio", "0.25")
    step("4/6 fine-tune a multi-label I3D (chosen automatically: some segments have two labels)", "train.py",
         "--data", str(data / "pre-processed"), "--out", str(run), "--epochs", str(epochs), "--clip-len", "32",
         "--crop", "112", "--batch-size", "4", "--optimizer", "adamw", "--lr", "0.003", "--no-flip",
         "--cache-views", "2")
    step("5/6 evaluate: mAP and per-class AP", "evaluate.py", str(run))
    step("6/6 a new recording", "make_synthetic_dataset.py", str(data / "new"), "--multi-label", "--recordings", "1",
         "--seed", "99")
    step("6/6 ... labelled every 2 s: every class over its threshold", "predict.py",
         str(data / "new" / "recording_00.mp4"), "--checkpoint", str(run), "--timeline", "--window", "50",
         "--stride", "50")
    print(f"\nDone in {time.time() - started:.0f} s. The true segments are in {data / 'new' / 'annotations.csv'};\n"
          f"  run {run} (thresholds.json, metrics.json, ap_per_class.png, evaluation-val.json, ...)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
