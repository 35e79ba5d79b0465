"""The Triton TV-L1 (src/flow/triton_kernels.py, triton_tvl1.py) and the refilling schedule (src/flow/schedule.py).

Without a GPU the kernels run in Triton's interpreter (numpy, IEEE float32, no contraction) and must equal the
PyTorch building blocks of src/flow/tvl1.py bit for bit on real frames; the PTX that the real compiler makes for
sm_80 and sm_90 is checked for what the interpreter cannot show (approximate division or square root, multiply-adds
contracted, spills). I3D_FLOW_TEST_DEVICE=cuda (bench/flow_gpu_check.sh) runs the same tests on the GPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from src.flow.schedule import Schedule, TorchOps, new_level, schedule_flows
from src.flow.tvl1 import TVL1, TVL1Params

REPO = Path(__file__).resolve().parent.parent
DEVICE = os.environ.get("I3D_FLOW_TEST_DEVICE", "cpu")


def _import_kernels():
    """The Triton modules, interpreted on a CPU (TRITON_INTERPRET=1 from before triton is imported)."""
    if DEVICE == "cpu":
        if "src.flow.triton_kernels" in sys.modules and not sys.modules["src.flow.triton_kernels"].interpreting():
            pytest.skip("src.flow.triton_kernels was imported without TRITON_INTERPRET=1 in this process")
        # set for the rest of the process: Triton's own library functions (tl.sum) read it when called
        os.environ["TRITON_INTERPRET"] = "1"
    pytest.importorskip("triton", reason="triton is not installed (pip install -r requirements.txt on Linux x86_64)")
    from src.flow import triton_kernels, triton_tvl1

    return triton_kernels, triton_tvl1


@pytest.fixture(scope="module")
def kernels():
    return _import_kernels()


def _gray(shared, name: str, frames: int, size: tuple[int, int], start: int = 0) -> np.ndarray:
    """Consecutive frames of a shared clip at 25 fps, resized to size = (H, W) (INTER_AREA), grayscale uint8."""
    from src.flow import rgb_to_gray
    from src.media.video import read_frames

    rgb, _ = read_frames(shared / "videos" / name, 25.0)
    gray = rgb_to_gray(rgb[start:start + frames])
    return np.stack([cv2.resize(g, size[::-1], interpolation=cv2.INTER_AREA) for g in gray])


def _level_state(shared, size: tuple[int, int], chunks: int):
    """A level batch of 3 slots holding real state: two real pairs (arm wrestling, cleaning pool) after `chunks`
    chunks of 10 iterations from OpenCV's flow, their duals and warp constants; slot 2 empty (not running).
    Made on the CPU by TorchOps, i.e. tvl1.py."""
    p = TVL1Params()
    h, w = size
    lb = new_level(3, h, w, torch.device("cpu"), p)
    ops = TorchOps(p)
    for slot, clip in enumerate(("arm_wrestling.mp4", "cleaning_pool.mp4")):
        g = _gray(shared, clip, 2, size, start=10)
        if hasattr(cv2, "optflow"):
            flow = cv2.optflow.DualTVL1OpticalFlow_create().calc(g[0], g[1], None)
        else:  # a GPU image's OpenCV without contrib: the port's flow (OpenCV's on the CPU)
            flow = TVL1()(torch.from_numpy(g[:1]), torch.from_numpy(g[1:]))[0].numpy()
        from src.flow.tvl1 import centered_gradient

        i1 = torch.from_numpy(g[1]).float()[None]
        i1x, i1y = centered_gradient(i1)
        lb.img[:, slot] = torch.stack([torch.from_numpy(g[0]).float(), i1[0], i1x[0], i1y[0]])
        lb.state[:2, slot] = torch.from_numpy(flow).permute(2, 0, 1)
    slots = torch.tensor([0, 1])
    ops.warp(lb, slots)
    lb.active[slots] = 1
    for _ in range(chunks):
        ops.median(lb)
        for _ in range(10):
            ops.step(lb)
    lb.active[:2] = 1  # keep both running for the comparison even if one has converged
    return lb


def _copy(lb):
    from dataclasses import replace

    return replace(lb, img=lb.img.clone(), const=lb.const.clone(), state=lb.state.clone(), par=lb.par.clone(),
                   it=lb.it.clone(), active=lb.active.clone(), err=lb.err.clone(), scratch={})


def _to(lb, device: str):
    from dataclasses import replace

    return replace(lb, img=lb.img.to(device), const=lb.const.to(device), state=lb.state.to(device),
                   par=lb.par.to(device), it=lb.it.to(device), active=lb.active.to(device), err=lb.err.to(device),
                   scratch={})


def _same(a, b, what: str) -> None:
    a, b = a.cpu(), b.cpu()
    bad = (a.view(torch.int32) != b.view(torch.int32)) if a.dtype == torch.float32 else a != b
    assert not bad.any(), f"{what}: {int(bad.sum())} of {bad.numel()} values differ"


# (45, 61): odd, and with 16 x 32 tiles every kind of seam (tiles cut at the right and the bottom)
SIZES = [((45, 61), (16, 32))]


@pytest.mark.parametrize(("size", "tile"), SIZES)
def test_resize_kernel_bit_identical(kernels, shared, size, tile):
    from src.flow.tvl1 import resize_linear

    K, _ = kernels
    g = torch.from_numpy(_gray(shared, "arm_wrestling.mp4", 2, size)).float()
    down = K.resize(g.to(DEVICE), (36, 49), (1.25, 1.25), None, tile)
    _same(down, resize_linear(g, (36, 49), (1.25, 1.25)), "pyramid resize")
    flow = torch.from_numpy(np.random.default_rng(0).normal(0, 3, (2, 36, 49)).astype(np.float32))
    up = K.resize(flow.to(DEVICE), size, (36 / 45, 49 / 61), 1.25, tile)
    _same(up, resize_linear(flow, size, (36 / 45, 49 / 61)) * 1.25, "flow up-scaling")


@pytest.mark.parametrize(("size", "tile"), SIZES)
def test_warp_median_step_kernels_bit_identical(kernels, shared, size, tile):
    """On real state: the warp (bicubic remap + constants), the median and an iteration (at the first step of an
    outer iteration, which reads the median, and at the next) equal TorchOps, i.e. tvl1.py, bit for bit; the
    empty slot is skipped (left as it was)."""
    _, T = kernels
    lb = _level_state(shared, size, chunks=3)
    assert int(lb.it[0]) == 30 and lb.state[:2, 0].abs().max() > 1  # an outer iteration begins, real motion
    ref_ops, ops = TorchOps(), T.TritonOps(tile=tile)
    ref, got = _copy(lb), _to(lb, DEVICE)
    slots = torch.tensor([1, 0])
    ref_ops.warp(ref, slots)
    ops.warp(got, slots.to(DEVICE))
    _same(got.const, ref.const, "warp constants")
    for k in range(2):
        ref_ops.median(ref)
        ops.median(got)
        _same(got.state, ref.state, f"median, step {k}")
        ref_ops.step(ref)
        ops.step(got)
        for name in ("state", "par", "it", "active"):
            _same(getattr(got, name), getattr(ref, name), f"{name} after step {k}")
        # float64 sums of the same non-negative terms in another order (per-tile partials against torch's vectorised
        # reduction, whose order depends on the CPU's vector width): within n * eps relative for n terms
        terms = ref.state[0, 0].numel()
        np.testing.assert_allclose(got.err.cpu().numpy()[:2], ref.err.numpy()[:2],
                                   rtol=terms * np.finfo(np.float64).eps)
    assert got.it.tolist() == [32, 32, 0]


@pytest.mark.slow
def test_triton_flow_equals_opencv(kernels, shared):
    """A whole small real flow through the Triton path (pyramid, warps, schedule) is OpenCV's, bit for bit."""
    if not hasattr(cv2, "optflow"):
        pytest.skip("this OpenCV has no contrib module (bench/flow_gpu.py checks against saved flows instead)")
    _, T = kernels
    g = _gray(shared, "arm_wrestling.mp4", 2, (32, 43), start=55)  # 257 iterations: the interpreter is slow
    ref = cv2.optflow.DualTVL1OpticalFlow_create().calc(g[0], g[1], None)
    assert np.abs(ref).max() > 1
    tv = T.TritonTVL1(capacity=1, tile=(32, 64) if DEVICE == "cpu" else (8, 32))
    got = tv(torch.from_numpy(g[:1]).to(DEVICE), torch.from_numpy(g[1:]).to(DEVICE))[0].cpu().numpy()
    assert np.array_equal(got.view(np.int32), ref.view(np.int32)), f"max difference {np.abs(got - ref).max()} px"


def test_schedule_equals_single_pair_flows(shared):
    """The schedule (refill, skip, chunks) with the PyTorch building blocks on the CPU gives each pair the flow
    tvl1.TVL1 gives it alone: 5 real pairs through 2 slots per level, so pairs join and leave mid-way."""
    from src.jobs.workers import set_threads

    set_threads(1)  # oversubscribed threads on a shared CI box only slow things down
    gray = np.concatenate([_gray(shared, "arm_wrestling.mp4", 4, (32, 43)), _gray(shared, "cleaning_pool.mp4", 3, (32, 43))])
    prev, nxt = np.delete(gray[:-1], 3, axis=0), np.delete(gray[1:], 3, axis=0)  # no pair across the two clips
    sched = Schedule(TorchOps(), 32, 43, torch.device("cpu"), capacity=2, chunk=10)
    got = schedule_flows(sched, prev, nxt)
    tv = TVL1()
    for i in range(len(prev)):
        want = tv(torch.from_numpy(prev[i:i + 1]), torch.from_numpy(nxt[i:i + 1]))[0]
        _same(got[i], want, f"pair {i}")
    assert all(o is None for lb in sched.levels for o in lb.owner)
    assert sched.refills == 3  # each pair after the first two replaced a finished one while the other ran on


def test_schedule_rejects_a_chunk_that_does_not_divide_the_outer_iteration():
    with pytest.raises(ValueError, match="must divide"):
        Schedule(TorchOps(), 32, 43, torch.device("cpu"), chunk=7)


_PTX_SCRIPT = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
from src.flow.triton_ptx import compile_report
print(json.dumps({str(arch): compile_report(arch) for arch in (80, 90)}))
"""


@pytest.fixture(scope="module")
def ptx_reports():
    """triton_ptx.compile_report for sm_80 and sm_90, made by a process without TRITON_INTERPRET."""
    pytest.importorskip("triton", reason="triton is not installed (pip install -r requirements.txt on Linux x86_64)")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", _PTX_SCRIPT, str(REPO)], env=env, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ["80", "90"])
def test_ptx_is_exact_and_does_not_spill(ptx_reports, arch):
    """Compiled for sm_80 / sm_90 without a GPU (Triton's bundled ptxas): IEEE division and square roots only, no
    multiply-add contracted where OpenCV rounds twice, fused ones exactly where it fuses, no spills."""
    report = ptx_reports[arch]
    for name, r in report.items():
        ops = r["ops"]
        assert not any(op.startswith(("div.full", "div.approx", "sqrt.approx", "rcp.approx", "rsqrt", "ex2", "lg2"))
                       for op in ops), (name, ops)
        assert not any(op.startswith("mad") and op.endswith(("f32", "f64")) for op in ops), (name, ops)
        assert r["spill_bytes"] == 0 and r["stack_bytes"] == 0 and not r["local"], (name, r)
        fused = sum(n for op, n in ops.items() if op.startswith("fma"))
        assert fused == r["fma_sites"] * r["pixels_per_thread"], (name, fused, r)
    assert report["step"]["ops"].get("div.rn.f32", 0) > 0 and report["step"]["ops"].get("sqrt.rn.f64", 0) > 0
    assert report["resize_emulated"]["ops"].get("fma.rn.f32", 0) == 0


def test_extractor_picks_triton_on_cuda_only():
    """FlowExtractor's choice: the Triton kernels on CUDA where triton imports, the PyTorch port elsewhere."""
    from src.flow import FlowExtractor, tvl1_backend

    assert tvl1_backend("cpu")[0] == "PyTorch" and tvl1_backend("mps")[0] == "PyTorch"
    try:
        import triton  # noqa: F401
        assert tvl1_backend("cuda") == ("Triton", "CUDA with triton installed")
    except ImportError:
        assert tvl1_backend("cuda") == ("PyTorch", "triton is not installed")
    extractor = FlowExtractor("tvl1", device="cpu", compile=False)
    assert extractor.backend == "PyTorch" and extractor.describe().startswith("tvl1 (PyTorch TV-L1 on cpu")
