"""Save real 256x340 frame pairs with OpenCV's TV-L1 flow of each, for checking the PyTorch TV-L1 on a machine
whose OpenCV lacks the contrib module (GPU images often ship opencv-python without `cv2.optflow`).

    python3 bench/flow_reference.py --pairs 16 --out flow_ref.npz      # here, with opencv-contrib
    python3 bench/flow_gpu.py flow_ref.npz                              # there, on the GPU
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import cv2
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flow import VIDEOS, load_pairs  # noqa: E402

QUANTUM = 1024  # flows are stored as int16 in 1/1024 px: exact to 0.0005 px within +-32 px


def main() -> None:
    """Compute and save the pairs and OpenCV's flows."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=int, default=16, help="consecutive pairs, alternating between two shared clips")
    p.add_argument("--videos", type=Path, default=VIDEOS, help="folder with arm_wrestling.mp4 and cleaning_pool.mp4")
    p.add_argument("--out", type=Path, default=Path("flow_ref.npz"))
    args = p.parse_args()
    prev, nxt = load_pairs(args.videos, args.pairs)
    cv2.setNumThreads(1)
    of = cv2.optflow.DualTVL1OpticalFlow_create()
    start = time.perf_counter()
    flows = np.stack([of.calc(a, b, None) for a, b in zip(prev, nxt)])
    rate = len(prev) / (time.perf_counter() - start)
    if np.abs(flows).max() * QUANTUM > 32767:
        sys.exit(f"flow of {np.abs(flows).max():.1f} px does not fit the int16 storage")
    # flow: the exact float32 flows, for the bit-exactness check of the Triton kernels (16 pairs: 11 MB)
    np.savez(args.out, prev=prev, nxt=nxt, flow_q=np.round(flows * QUANTUM).astype(np.int16), flow=flows,
             cv_rate_1thread=rate)
    print(f"{args.out}: {len(prev)} pairs {prev.shape[1:]}; OpenCV TV-L1 on 1 thread {rate:.3f} pairs/s here")


if __name__ == "__main__":
    main()
