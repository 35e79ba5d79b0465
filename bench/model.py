"""Latency and clips/s of I3D forward (eval) and forward+backward (train), plain model vs the faster options.

Ratios are against the plain fp32 model (eager, contiguous) timed interleaved in the same run; GFLOP/s
are set against this machine's convolution peak, measured first. Example:

    python bench/model.py --quick
    python bench/model.py --frames 16 64 --batch 1 4 --repeats 3 --out bench/results.md
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from src.measure.speed import run_benchmarks  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, nargs="+", default=[16, 64], help="clip lengths to time")
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 4], help="batch sizes to time")
    parser.add_argument("--modes", nargs="+", default=["eval", "train-all", "train-frozen15"],
                        choices=["eval", "train-all", "train-frozen15"],
                        help="forward only; forward+backward of all layers; with the first 15 blocks frozen")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds per configuration (median)")
    parser.add_argument("--quick", action="store_true", help="reduced grid: 16 frames, batch 1, 3 repeats")
    parser.add_argument("--compile", action="store_true", help="also time the fast path under torch.compile")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", type=Path, default=None, help="also write the table to this Markdown file")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quick:
        args.frames, args.batch, args.repeats = [16], [1], 3
    lines: list[str] = []

    def log(line: str) -> None:
        print(line, flush=True)
        lines.append(line)

    run_benchmarks(args.frames, args.batch, args.modes, args.repeats, torch.device(args.device), args.compile, log)
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
