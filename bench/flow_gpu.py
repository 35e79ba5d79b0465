"""TV-L1 on a GPU: pairs/s at batch 1 to 128 (the Triton kernels, the PyTorch port eager and compiled), peak
memory, and the flows against OpenCV's saved by bench/flow_reference.py (so OpenCV's contrib module is not needed
here): endpoint error, and how many pairs are bit-identical to OpenCV's (the Triton kernels' goal: all).

    python3 bench/flow_gpu.py flow_ref.npz [--device cuda] [--modes triton,compiled] [--batches 32,64,128]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.flow import epe, run_torch, sync  # noqa: E402
from bench.flow_reference import QUANTUM  # noqa: E402
from src.device import pick_device  # noqa: E402
from src.flow.tvl1 import TVL1  # noqa: E402


def main() -> None:
    """Print the fidelity line and the speed table of each mode."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("reference", type=Path, help="the .npz of bench/flow_reference.py")
    p.add_argument("--device", default="cuda")
    p.add_argument("--modes", default="triton,eager,compiled")
    p.add_argument("--batches", default="1,8,32,64,128")
    args = p.parse_args()
    ref = np.load(args.reference)
    prev, nxt, want = ref["prev"], ref["nxt"], ref["flow_q"].astype(np.float32) / QUANTUM
    exact = ref["flow"] if "flow" in ref.files else None
    cv_rate = float(ref["cv_rate_1thread"])
    device = pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    print(f"{name}, torch {torch.__version__}; {len(prev)} pairs {prev.shape[1:]}; OpenCV on 1 CPU thread where the "
          f"reference was made: {cv_rate:.3f} pairs/s")
    for mode in args.modes.split(","):
        if mode == "triton":
            from src.flow.triton_tvl1 import TritonTVL1

            tv = TritonTVL1(capacity=len(prev))
        else:
            tv = TVL1(compile=mode == "compiled")
        start = time.perf_counter()
        got = run_torch(tv, prev, nxt, len(prev), device)
        sync(device)
        e = epe(got, want).reshape(len(prev), -1)
        same = "" if exact is None else f"; bit-identical to OpenCV: {sum(np.array_equal(g.view(np.int32), x.view(np.int32)) for g, x in zip(got, exact))} of {len(prev)} pairs"
        print(f"\n[{mode}] first batch of {len(prev)}: {time.perf_counter() - start:.1f} s; EPE vs OpenCV mean "
              f"{e.mean():.4f} px, worst pair {e.mean(1).max():.4f} px, >1 px {100 * (e > 1).mean():.3f}%{same}")
        if mode == "triton":
            tv = TritonTVL1  # below: one schedule per batch size (capacity = batch)
        print("| mode | batch | pairs/s | x OpenCV 1 thread | peak MiB |\n|---|---|---|---|---|")
        for batch in (int(b) for b in args.batches.split(",")):
            run = tv(capacity=batch) if mode == "triton" else tv
            n = max(batch, len(prev))
            reps = -(-n // len(prev))
            a, b = np.concatenate([prev] * reps)[:n], np.concatenate([nxt] * reps)[:n]
            run_torch(run, a[:batch], b[:batch], batch, device)  # warm up this shape
            sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            start = time.perf_counter()
            run_torch(run, a, b, n if mode == "triton" else batch, device)  # Triton: all pairs, batch in flight
            sync(device)
            rate = n / (time.perf_counter() - start)
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")
            print(f"| {mode} | {batch} | {rate:.1f} | {rate / cv_rate:.0f}x | {peak:.0f} |", flush=True)


if __name__ == "__main__":
    main()
