"""Peak memory of fine-tuning steps with frozen blocks: no cache vs a feature cache, fp32 vs bf16 autocast.

"No cache": the frozen blocks run under no_grad every step on the clips. "Cache": only the trained
blocks run, on stored outputs of the last frozen block. Each row runs one SGD step in a fresh process.
Example:

    python bench/memory.py                      # batch 8 x 64 frames, 15 frozen blocks (+ 13 = up to Mixed_4f)
    python bench/memory.py --batch 2 --frames 16 --frozen 15
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from src.measure.memory import measure  # noqa: E402
from src.measure.speed import load_average  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8, help="clips per step")
    parser.add_argument("--frames", type=int, default=64, help="frames per clip (224x224)")
    parser.add_argument("--frozen", type=int, nargs="+", default=[15, 13],
                        help="numbers of frozen leading blocks (of 20) to measure")
    parser.add_argument("--precisions", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"],
                        help="fp32, and/or bf16 autocast")
    parser.add_argument("--no-uncached", action="store_true", help="skip the (slow) no-cache rows")
    args = parser.parse_args()
    print(f"# batch {args.batch} x {args.frames} frames 224x224; {load_average()}")
    print("| frozen | input to the trained part | precision | trained-step input | peak RSS MB | "
          "step MB (peak - before) | step s |")
    print("|---|---|---|---|---|---|---|")
    for frozen in args.frozen:
        for cached in ([True] if args.no_uncached else [False, True]):
            for precision in args.precisions:
                r = measure(args.batch, args.frames, frozen, cached, precision)
                print(f"| {frozen} | {r.label} | {precision} | {tuple(r.input_shape)} | {r.peak_mb:.0f} | "
                      f"{r.step_mb:.0f} | {r.seconds:.1f} |", flush=True)


if __name__ == "__main__":
    main()
