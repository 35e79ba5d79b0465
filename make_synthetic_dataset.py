"""Write a small video dataset whose classes differ only in motion (textures panning left, right, up,
down), to smoke-test your set-up end to end: pre-process it, train on it, predict on it.

Examples:
    python make_synthetic_dataset.py data/videos/raw                  # 4 classes x 8 clips, 2 s each
    python make_synthetic_dataset.py /tmp/motion --per-class 20 --frames 75 --size 256x320
    python3 pre-process.py /tmp/motion /tmp/motion-pre --modalities rgb && python train.py --data /tmp/motion-pre --no-flip
    python make_synthetic_dataset.py /tmp/rec --multi-label --recordings 4  # long videos + annotations.csv
    python3 pre-process.py --annotations /tmp/rec/annotations.csv /tmp/rec /tmp/rec-pre --modalities rgb

Appearance carries no label (every clip is a new random texture), so a model that learns these
classes uses motion. Left/right classes swap under horizontal flips: train with --no-flip.

--multi-label writes long recordings instead: each a run of 2-second segments (at the default
--frames 50) showing a pan left/right and/or a zoom in or a brightening at the same time, and
ROOT/annotations.csv (video,label,start,end; labels separated by ';') describing the segments.
"""
from __future__ import annotations

import argparse
import sys

from src.synthetic import MOTIONS, MULTI_COMBOS, make_recordings, make_videos


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", help="output folder: ROOT/<class>/clip_<i>.mp4")
    parser.add_argument("--per-class", type=int, default=8, help="clips per class (default: %(default)s)")
    parser.add_argument("--frames", type=int, default=50, help="frames per clip (default: %(default)s)")
    parser.add_argument("--size", default="128x160", help="HEIGHTxWIDTH of the clips (default: %(default)s)")
    parser.add_argument("--fps", type=float, default=25.0, help="frame rate (default: %(default)s)")
    parser.add_argument("--speed", type=float, default=2.0, help="motion in pixels per frame (default: %(default)s)")
    parser.add_argument("--classes", default=",".join(MOTIONS), help="comma list from: " + ", ".join(MOTIONS) + " (default: all of them)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--multi-label", action="store_true",
                        help="long recordings of segments with two simultaneous motions, and annotations.csv")
    parser.add_argument("--recordings", type=int, default=4,

                                            help=f"with --multi-label: recordings, each with all {len(MULTI_COMBOS)} combinations (default: %(default)s)")
    args = parser.parse_args()
    try:
        height, width = (int(v) for v in args.size.lower().split("x"))
    except ValueError:
        parser.error(f"--size must be HEIGHTxWIDTH, e.g. 128x160, got {args.size!r}")
    if args.multi_label:
        annotations = make_recordings(args.root, args.recordings, args.frames, height, width, args.fps, args.seed)
        print(f"{args.recordings} recordings of {len(MULTI_COMBOS)} segments x {args.frames} frames "
              f"({width}x{height}, {args.fps:g} fps) in {args.root}; segments listed in {annotations}")
        return 0
    classes = tuple(c.strip() for c in args.classes.split(","))
    unknown = [c for c in classes if c not in MOTIONS]
    if unknown:
        parser.error(f"unknown classes {unknown}; choose from {', '.join(MOTIONS)}")
    paths = make_videos(args.root, args.per_class, args.frames, height, width, args.fps, args.speed, args.seed, classes)
    print(f"{len(paths)} clips of {args.frames} frames ({width}x{height}, {args.fps:g} fps) in {args.root}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
