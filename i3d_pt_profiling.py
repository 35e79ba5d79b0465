"""Profile I3D block by block: time and share per block of the 20, FLOPs, activation sizes, peak memory, clips/s.

Examples:

    python i3d_pt_profiling.py --frame_nb 16
    python i3d_pt_profiling.py --frame_nb 64 --batch 2 --backward --json
    python i3d_pt_profiling.py --fast --precision bf16
    kernprof -lv i3d_pt_profiling.py --frame_nb 16     # line by line (kernprof: line_profiler, in requirements.txt)
"""
from __future__ import annotations

import argparse
import builtins
import json

import torch

from src.measure.profiling import profile_model, step
from src.model import I3D, InceptionBlock, MaxPool3dSame, Unit3D

LINE_PROFILED = (Unit3D.forward, MaxPool3dSame.forward, InceptionBlock.forward)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frame_nb", type=int, default=16, help="frames per clip (224x224) (default: %(default)s)")
    parser.add_argument("--batch", type=int, default=1, help="clips per batch (default: %(default)s)")
    parser.add_argument("--backward", action="store_true", help="also time the backward pass (training mode)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed passes after one warm-up; medians reported (default: %(default)s)")
    parser.add_argument("--fast", action="store_true", help="profile the inference fast path (src/inference/fast.py)")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                        help="fast path precision (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    # Under `kernprof -l`, line_profiler puts `profile` in builtins: profile the step function's lines.
    step_fn = step
    if hasattr(builtins, "profile"):
        step_fn = builtins.profile(step)
        for function in LINE_PROFILED:  # and the model's own forward lines (padding, conv, BN, ReLU)
            getattr(builtins.profile, "add_function", lambda f: None)(function)
    report = profile_model(I3D(), args.frame_nb, args.batch, args.backward, args.repeats, args.fast,
                           args.precision, step_fn)
    print(json.dumps(report.to_dict(), indent=1) if args.json else report.table())


if __name__ == "__main__":
    main()
