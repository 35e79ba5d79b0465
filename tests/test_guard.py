"""The guards of the accelerated paths (src/guard.py, src/flow/guard.py, src/inference/guard.py): injected faults
(a Triton launch that raises, a kernel result a pixel off, a fast path with wrong logits, a corrupt or foreign cache)
must make the job fall back with one line, keep the verdict, and give the fallback implementation's output."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import src.flow.extractor as extractor_module
import src.flow.guard as flow_guard
import src.guard as guard
import src.inference.guard as inference_guard
from src.flow import FlowExtractor
from src.flow.triton_tvl1 import TritonTVL1
from src.flow.tvl1 import TVL1
from src.inference import FastI3D, accelerate, cpu_bf16_unsupported
from src.model import I3D
from tests.conftest import SHARED, call_main

REPORT = "attach the output of `python selfcheck.py --json` to a bug report"


@pytest.fixture(autouse=True)
def fresh_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty cache folder, no forced backend, no --recheck, no notice printed yet."""
    monkeypatch.setenv("I3D_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv(guard.FLOW_BACKEND_ENV, raising=False)
    monkeypatch.setitem(guard._settings, "recheck", False)
    monkeypatch.setattr(guard, "_told", set())
    monkeypatch.setattr(guard, "_rechecked", set())
    return tmp_path / "cache" / "guard.json"


def real_frames() -> np.ndarray:
    """Three consecutive grayscale frames of a real clip at 64x80 (a moving texture without ../shared)."""
    if (SHARED / "videos" / "cleaning_pool.mp4").exists():
        cap = cv2.VideoCapture(str(SHARED / "videos" / "cleaning_pool.mp4"))
        frames = [cv2.resize(cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2GRAY), (80, 64), interpolation=cv2.INTER_AREA)
                  for _ in range(3)]
        return np.stack(frames)
    prev, nxt = flow_guard.texture_pairs(2, (64, 80), seed=5)
    return np.stack([prev[0], nxt[0], prev[1]])


def port_flow(self, prev: torch.Tensor, nxt: torch.Tensor) -> torch.Tensor:
    """What a correct Triton kernel gives on a CPU: the port's flow (OpenCV's bit for bit there)."""
    return TVL1()(prev, nxt)


def on_triton(monkeypatch: pytest.MonkeyPatch, call) -> None:
    """Make --flow tvl1 pick the Triton kernels on the CPU, running `call` in place of TritonTVL1.__call__."""
    monkeypatch.setattr(extractor_module, "tvl1_backend", lambda device_type: ("Triton", "as on CUDA"))
    monkeypatch.setattr(TritonTVL1, "__call__", call)


def opencv_flow(frames: np.ndarray) -> np.ndarray:
    return FlowExtractor("tvl1-opencv")(frames)


def test_a_triton_launch_that_raises_falls_back_to_the_port(monkeypatch, capsys, fresh_cache) -> None:
    def launch_fails(self, prev, nxt):
        raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")

    on_triton(monkeypatch, launch_fails)
    flow = FlowExtractor("tvl1", device="cpu", compile=False)
    err = capsys.readouterr().err
    assert flow.backend == "PyTorch" and flow._tvl1 is not None
    assert err == ("warning: Triton TV-L1 on cpu failed its check (RuntimeError: Triton Error [CUDA]: an illegal "
                   f"memory access was encountered); running PyTorch TV-L1 on cpu instead; {REPORT}\n")
    frames = real_frames()
    assert np.array_equal(flow(frames), opencv_flow(frames))  # the port's flow: OpenCV's bit for bit on the CPU
    cache = json.loads(fresh_cache.read_text())
    assert cache["tvl1-triton@cpu"]["ok"] is False and "illegal memory access" in cache["tvl1-triton@cpu"]["detail"]
    assert cache["tvl1-pytorch@cpu"]["ok"] is True and cache["tvl1-pytorch@cpu"]["figures"]["bit_exact"] is True
    assert cache["tvl1-pytorch@cpu"]["facts"]["torch"] == torch.__version__
    # the verdict is kept: a second job says it again (one line) without running the check again
    monkeypatch.setattr(flow_guard, "check_tvl1", lambda *a, **k: pytest.fail("checked again"))
    monkeypatch.setattr(guard, "_told", set())
    assert FlowExtractor("tvl1", device="cpu", compile=False).backend == "PyTorch"
    assert capsys.readouterr().err.count("\n") == 1


def test_a_kernel_result_a_pixel_off_falls_back_and_both_failing_reach_opencv(monkeypatch, capsys,
                                                                              fresh_cache) -> None:
    def shifted(self, prev, nxt):
        flow = port_flow(self, prev, nxt)
        flow[..., 0] += 1
        return flow

    on_triton(monkeypatch, shifted)
    flow = FlowExtractor("tvl1", device="cpu", compile=False)
    assert flow.backend == "PyTorch"
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Triton TV-L1 on cpu failed its check (mean endpoint error 1 px, max 1 px " \
                                     "against OpenCV (bound 0.02 px)); running PyTorch TV-L1 on cpu instead" in err
    assert json.loads(fresh_cache.read_text())["tvl1-triton@cpu"]["figures"]["mean_epe"] == pytest.approx(1)
    # the port a pixel off as well: OpenCV on the CPU, one line for each
    monkeypatch.setattr(TVL1, "__call__", lambda self, prev, nxt: torch.ones(*prev.shape, 2))
    guard.configure(recheck=True)
    flow = FlowExtractor("tvl1", device="cpu", compile=False)
    err = capsys.readouterr().err.splitlines()
    assert flow.backend == "OpenCV" and flow._tvl1 is None and len(err) == 2
    assert "PyTorch TV-L1 on cpu failed its check" in err[1] and "running OpenCV's TV-L1 on the CPU instead" in err[1]
    frames = real_frames()
    assert np.array_equal(flow(frames), opencv_flow(frames))
    assert "OpenCV's TV-L1 on cpu" in flow.describe()


def test_a_corrupt_or_foreign_cache_is_redone_and_a_worker_never_checks(monkeypatch, fresh_cache) -> None:
    checks = []
    real_check = flow_guard.check_tvl1
    monkeypatch.setattr(flow_guard, "check_tvl1", lambda *a, **k: checks.append(a) or real_check(*a, **k))
    fresh_cache.parent.mkdir(parents=True, exist_ok=True)
    fresh_cache.write_text('{"tvl1-pytorch@cpu": {"ok": tr')  # a write cut short
    assert flow_guard.guarded_tvl1("cpu", "pytorch") == ("pytorch", "")
    assert len(checks) == 1 and json.loads(fresh_cache.read_text())["tvl1-pytorch@cpu"]["ok"] is True
    # a verdict made on another machine (a failed one, so that trusting it would show) is ignored and replaced
    data = json.loads(fresh_cache.read_text())
    data["tvl1-pytorch@cpu"].update(ok=False, detail="made elsewhere")
    data["tvl1-pytorch@cpu"]["facts"]["cpu"] = "Some other CPU; flags: avx2"
    fresh_cache.write_text(json.dumps(data))
    assert flow_guard.guarded_tvl1("cpu", "pytorch") == ("pytorch", "")
    assert len(checks) == 2 and json.loads(fresh_cache.read_text())["tvl1-pytorch@cpu"]["ok"] is True
    # cached: no check; --recheck: one check in this process, then the new verdict
    assert flow_guard.guarded_tvl1("cpu", "pytorch")[0] == "pytorch" and len(checks) == 2
    guard.configure(recheck=True)
    flow_guard.guarded_tvl1("cpu", "pytorch")
    flow_guard.guarded_tvl1("cpu", "pytorch")
    assert len(checks) == 3
    # a decoding worker with no verdict cached runs the path unchecked
    fresh_cache.unlink()
    monkeypatch.setattr(flow_guard, "in_worker", lambda: True)
    assert flow_guard.guarded_tvl1("cpu", "pytorch")[0] == "pytorch" and len(checks) == 3
    assert not fresh_cache.exists()


def test_flow_backend_forces_an_implementation_unchecked(monkeypatch, capsys) -> None:
    monkeypatch.setattr(flow_guard, "check_tvl1", lambda *a, **k: pytest.fail("a forced backend is not checked"))
    guard.configure(flow_backend="opencv")
    flow = FlowExtractor("tvl1", device="cpu")
    assert flow.backend == "OpenCV" and "forced by --flow-backend opencv" in flow.describe()
    guard.configure(flow_backend="pytorch")
    flow = FlowExtractor("tvl1", device="cpu", compile=False)
    assert flow.backend == "PyTorch" and flow._tvl1 is not None
    guard.configure()
    assert guard.forced_flow_backend() is None
    code, out, err = call_main("evaluate.py", ["run", "--flow-backend", "cuda"], monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1 and "--flow-backend: invalid choice: 'cuda'" in err


def small_model(monkeypatch: pytest.MonkeyPatch) -> I3D:
    """A random-init I3D, and the guard's check clip made small (8 frames of 96x96): the function is the same."""
    monkeypatch.setattr(inference_guard, "CHECK_CLIP", (8, 96))
    torch.manual_seed(0)
    return I3D(num_classes=7).eval()


def test_a_fast_path_with_wrong_logits_falls_back_to_the_plain_model(monkeypatch, capsys, fresh_cache) -> None:
    model = small_model(monkeypatch)
    real_head = FastI3D.forward_head
    monkeypatch.setattr(FastI3D, "forward_head", lambda self, f: real_head(self, f) + 0.5)
    runners, line = accelerate({"rgb": model}, torch.device("cpu"), "fp32")
    err = capsys.readouterr().err
    assert line == "plain float32 model (eager; the fast path failed its check here)"
    assert err == ("warning: the fp32 fast path on cpu failed its check (max |dlogit| 0.5 against the plain float32 "
                   f"model (bound 0.0001)); running the plain float32 model instead; {REPORT}\n")
    x = torch.rand(1, 3, 8, 64, 64) * 2 - 1
    with torch.no_grad():
        assert torch.equal(runners["rgb"](x), model(x))
    entry = json.loads(fresh_cache.read_text())["fast-fp32@cpu"]
    assert entry["ok"] is False and entry["figures"]["max_dlogit"] == pytest.approx(0.5, abs=1e-3)


def test_a_bf16_path_with_wrong_logits_falls_back_to_fp32(monkeypatch, capsys, fresh_cache) -> None:
    if cpu_bf16_unsupported():
        pytest.skip(f"this CPU runs no bf16 convolutions: {cpu_bf16_unsupported()}")
    model = small_model(monkeypatch)
    real_head = FastI3D.forward_head
    monkeypatch.setattr(FastI3D, "forward_head",
                        lambda self, f: real_head(self, f) + (3.0 if self.dtype == torch.bfloat16 else 0.0))
    runners, line = accelerate({"rgb": model}, torch.device("cpu"), "bf16")
    assert line.startswith("fp32 fast path")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "the bf16 fast path on cpu failed its check (max |dlogit| 3" in err
    assert "(bound 0.25)); running the fp32 fast path instead" in err
    cache = json.loads(fresh_cache.read_text())
    assert cache["fast-bf16@cpu"]["ok"] is False and cache["fast-fp32@cpu"]["ok"] is True
    assert cache["fast-fp32@cpu"]["figures"]["max_dlogit"] <= 1e-4


def test_pre_processing_checks_the_port_before_its_workers_use_it(monkeypatch, capsys, tmp_path) -> None:
    raw = tmp_path / "raw" / "pan"
    raw.mkdir(parents=True)
    writer = cv2.VideoWriter(str(raw / "clip.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 25, (64, 48))
    prev, _ = flow_guard.texture_pairs(1, (48, 90), seed=3)
    for t in range(6):
        writer.write(cv2.cvtColor(np.ascontiguousarray(prev[0][:, 3 * t:3 * t + 64]), cv2.COLOR_GRAY2BGR))
    writer.release()
    common = [str(tmp_path / "raw"), "--modalities", "flow", "--size", "48", "--workers", "1", "--no-disk-check"]
    monkeypatch.setattr(TVL1, "__call__", lambda self, prev, nxt: torch.zeros(*prev.shape, 2))  # a broken port
    code, out, err = call_main("pre-process.py", [*common[:1], str(tmp_path / "out"), *common[1:], "--flow-compile",
                                                  "no"], monkeypatch, capsys)
    assert code == 0, err
    assert "warning: PyTorch TV-L1 on cpu failed its check (mean endpoint error" in err
    assert "running OpenCV's TV-L1 on the CPU instead" in err
    assert "flow: tvl1 (OpenCV's TV-L1, a pair at a time in each of 1 process(es)): the PyTorch port failed" in out + err
    code, _, err = call_main("pre-process.py", [*common[:1], str(tmp_path / "opencv"), *common[1:], "--flow",
                                                "tvl1-opencv"], monkeypatch, capsys)
    assert code == 0, err
    got, want = (sorted((tmp_path / name).rglob("flow-*.npy")) for name in ("out", "opencv"))
    assert len(got) == len(want) == 1 and np.array_equal(np.load(got[0]), np.load(want[0]))
    assert np.abs(np.load(got[0])).max() > 0.01  # real motion, not the broken port's zeros
