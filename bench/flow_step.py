"""What limits the compiled TV-L1 inner iteration on this CPU: its exact arithmetic or its memory traffic.

The inner iteration (src/flow/tvl1.py:tvl1_step) is compiled as shipped and in variants that each drop one piece
of OpenCV-exact arithmetic (results differ from OpenCV's: this is a measurement, never a flow to use): the float64
sum of the squared updates, the exact hypot, the true division by 1 + taut * |grad u|. A compiled pass that reads
the same 10 planes and writes the same 6 gives the memory speed one thread reaches here; the step moving its
planes far slower than that is bound by arithmetic, not by memory passes. Times are medians of --rounds rounds,
interleaved, on one thread at 256x340 (a pyramid's finest level).

    python3 bench/flow_step.py
"""
from __future__ import annotations

import argparse
import inspect
import statistics
import sys
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

import src.flow.tvl1 as tvl1  # noqa: E402
from src.device import machine_description  # noqa: E402

HYPOT = ("torch.hypot(u1x, u1y)", "torch.sqrt(u1x * u1x + u1y * u1y)"), \
        ("torch.hypot(u2x, u2y)", "torch.sqrt(u2x * u2x + u2y * u2y)")
DIVIDE = ("(p11 + taut * u1x) / ng1, (p12 + taut * u1y) / ng1", "(p11 + taut * u1x) * (1 / ng1), (p12 + taut * u1y) * (1 / ng1)"), \
         ("(p21 + taut * u2x) / ng2, (p22 + taut * u2y) / ng2", "(p21 + taut * u2x) * (1 / ng2), (p22 + taut * u2y) * (1 / ng2)")
SUM = (("else torch.float64", "else torch.float32"),)


def variant(edits: tuple[tuple[str, str], ...]):
    """tvl1_step with its source edited (each edit must apply), compiled."""
    code = textwrap.dedent(inspect.getsource(tvl1.tvl1_step))
    for old, new in edits:
        if old not in code:
            raise SystemExit(f"src/flow/tvl1.py:tvl1_step no longer contains {old!r}; update bench/flow_step.py")
        code = code.replace(old, new)
    namespace = dict(vars(tvl1))
    exec(code, namespace)  # noqa: S102 - this repository's own function, edited for the measurement
    return torch.compile(namespace["tvl1_step"], dynamic=False)


def planes_pass(a, b, c, d, e, f, g, h, i, j, *_):
    """Read the step's 10 input planes, write 6: its minimum memory traffic."""
    s = a + b + c + d + e + f + g + h + i + j
    return s, s + 1, s + 2, s + 3, s + 4, s + 5


def main() -> None:
    """Measure and print the table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="256x340", help="HxW of the planes (default: %(default)s)")
    p.add_argument("--reps", type=int, default=200, help="iterations per timing (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default: %(default)s)")
    args = p.parse_args()
    h, w = map(int, args.size.split("x"))
    torch.set_num_threads(1)
    gen = torch.Generator().manual_seed(0)
    planes = [torch.randn(1, h, w, generator=gen) * 0.5 for _ in range(10)]
    planes[8] = planes[8].abs() + 0.01  # |grad I1|
    consts = (0.15 * 0.3, 0.3, 0.25 / 0.3)  # l_t = lambda * theta, theta, taut = tau / theta
    kernels = {"exact (as shipped)": variant(()), "float32 error sum": variant(SUM), "sqrt(x*x + y*y)": variant(HYPOT),
               "x * (1 / ng)": variant(DIVIDE), "all three": variant(SUM + HYPOT + DIVIDE),
               "10-in/6-out pass": torch.compile(planes_pass, dynamic=False)}
    times: dict[str, list[float]] = {name: [] for name in kernels}
    for fn in kernels.values():
        for _ in range(5):
            fn(*planes, *consts)  # compile and warm up
    for _ in range(args.rounds):
        for name, fn in kernels.items():
            start = time.perf_counter()
            for _ in range(args.reps):
                fn(*planes, *consts)
            times[name].append((time.perf_counter() - start) / args.reps)
    print(machine_description())
    print(f"1 thread, {h}x{w}, median of {args.rounds} interleaved rounds of {args.reps} iterations")
    moved = 16 * 4 * h * w  # bytes of the 10 planes read and 6 written
    exact = statistics.median(times["exact (as shipped)"])
    print("| variant | ms / iteration | speed vs exact | GB/s of its 16 planes |\n|---|---|---|---|")
    for name, ts in times.items():
        t = statistics.median(ts)
        print(f"| {name} | {t * 1e3:.3f} | {exact / t:.2f}x | {moved / t / 1e9:.1f} |")


if __name__ == "__main__":
    main()
