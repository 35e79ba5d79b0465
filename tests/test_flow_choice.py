"""The CPU's TV-L1 implementation chosen per job: the fastest of OpenCV's and the port's (bit-identical), compile
time counted, OpenCV unless another is clearly faster."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from src.flow.choice import CpuSpeeds, _calibration_pair, choose_cpu_tvl1, cpu_speeds
from src.flow.tvl1 import TVL1

SPEEDS = CpuSpeeds(opencv_s_per_mpix=1.0, eager=0.8, compiled=2.0, compile_s=100.0, source="by hand")


@pytest.mark.parametrize("pairs, expected", [
    (10, "opencv"),      # OpenCV 10 s; eager 12.5 s; compiled 100 + 5 s
    (150, "opencv"),     # OpenCV 150 s; compiled 175 s
    (300, "compiled"),   # OpenCV 300 s; compiled 250 s = 83% of it
    (10_000, "compiled"),
])
def test_the_fastest_implementation_counts_the_compile_time(pairs, expected):
    choice = choose_cpu_tvl1(pairs, 1_000_000, SPEEDS)
    assert choice.implementation == expected
    assert f"{pairs} pairs per process" in choice.reason and "compiling 100 s" in choice.reason


def test_another_implementation_must_be_clearly_faster_than_opencv():
    faster_eager = CpuSpeeds(1.0, 1.2, 1.0, 100.0, "by hand")  # eager 83% of OpenCV: chosen
    assert choose_cpu_tvl1(10, 1_000_000, faster_eager).implementation == "eager"
    barely = CpuSpeeds(1.0, 1.05, 1.0, 100.0, "by hand")  # eager 95%: within the margin of a wrong estimate
    assert choose_cpu_tvl1(10, 1_000_000, barely).implementation == "opencv"


def test_the_calibration_pair_is_real_work_and_both_implementations_agree(tmp_path, monkeypatch):
    prev, nxt = _calibration_pair(48, 64)
    opencv = cv2.optflow.DualTVL1OpticalFlow_create().calc(prev, nxt, None)
    port = TVL1()(torch.from_numpy(prev)[None], torch.from_numpy(nxt)[None])[0].numpy()
    assert np.array_equal(opencv, port)  # bit-identical on the CPU, so the choice is about speed alone
    inner = (slice(8, -8), slice(8, -8))
    assert abs(np.median(opencv[inner][..., 0]) - 1.6) < 0.2 and abs(np.median(opencv[inner][..., 1]) + 0.7) < 0.2
    monkeypatch.setenv("I3D_CACHE_DIR", str(tmp_path))
    first = cpu_speeds()
    assert first.opencv_s_per_mpix > 0 and first.eager > 0 and list(tmp_path.glob("tvl1-cpu-*.json"))
    assert cpu_speeds() == first  # measured once per machine, then read back
