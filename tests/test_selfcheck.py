"""selfcheck.py (src/selfcheck/): run on this CPU, its figures are the known facts of this toolkit there; a failing
check makes the exit status 1."""
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

import src.selfcheck.run as run_module
from src.selfcheck import Check
from src.selfcheck.report import opencv_ffmpeg
from tests.conftest import REPO, call_main


@pytest.fixture(scope="module")
def report(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """`python selfcheck.py --json` on this machine, with an empty cache folder."""
    env = {**os.environ, "I3D_CACHE_DIR": str(tmp_path_factory.mktemp("cache"))}
    done = subprocess.run([sys.executable, "selfcheck.py", "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    return json.loads(done.stdout)


def by_name(report: dict) -> dict[str, dict]:
    return {c["name"]: c for c in report["checks"]}


def test_the_report_states_this_machine(report: dict) -> None:
    v = report["versions"]
    assert (v["torch"], v["opencv"], v["numpy"]) == (torch.__version__, cv2.__version__, np.__version__)
    assert v["opencv_contrib_optflow"] is True and v["opencv_ffmpeg"].startswith("YES")
    assert report["devices"][0]["device"] == "cpu" and report["devices"][0]["cores"] == os.cpu_count()
    jobs = {row["job"]: row for row in report["plan"]}
    assert jobs["inference --precision auto on cpu"]["runs"] in ("fp32", "bf16")
    assert jobs["--flow tvl1 on cpu"]["runs"].split()[0] in ("opencv", "eager", "compiled")
    assert report["ok"] is True and report["full"] is False


def test_tvl1_is_bit_exact_and_the_fp32_fast_path_within_1e_4_on_the_cpu(report: dict) -> None:
    checks = by_name(report)
    port = checks["tvl1 pytorch on cpu"]
    assert port["status"] == "PASS" and port["figures"]["bit_exact"] is True
    assert port["figures"]["max_epe"] == 0 and port["figures"]["pairs_per_s"] > 0
    fp32 = checks["fast path fp32 on cpu"]
    assert fp32["status"] == "PASS" and fp32["figures"]["max_dlogit"] <= 1e-4 and fp32["figures"]["top1_agree"]
    assert fp32["figures"]["clips_per_s"] > 0 and fp32["figures"]["plain_clips_per_s"] > 0
    assert checks["fast path fp16 on cpu"]["status"] == "SKIPPED"
    assert checks["decoding"]["status"] == "PASS" and checks["decoding"]["figures"]["frames"] > 0
    # the slow ones are left to --full on a CPU, saying so
    assert checks["tvl1 pytorch-compiled on cpu"]["status"] == "SKIPPED"
    assert "--full" in checks["fvd reference example on cpu"]["detail"]
    assert all(c["status"] in ("PASS", "SKIPPED") for c in report["checks"])


def test_a_failing_check_is_a_fail_line_and_exit_status_1(monkeypatch, capsys, tmp_path: Path) -> None:
    monkeypatch.setenv("I3D_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(run_module, "check_decoding", lambda: Check("decoding", "PASS", "fine"))
    monkeypatch.setattr(run_module, "tvl1_checks", lambda devices, full: [
        Check("tvl1 pytorch on cpu", "FAIL", "mean endpoint error 1 px")])
    monkeypatch.setattr(run_module, "fast_path_checks", lambda devices: 1 / 0)  # a check that breaks
    monkeypatch.setattr(run_module, "fvd_check", lambda devices, full: [Check("fvd", "SKIPPED", "--full")])
    code, out, err = call_main("selfcheck.py", [], monkeypatch, capsys)
    assert code == 1
    assert "\nFAIL     tvl1 pytorch on cpu: mean endpoint error 1 px\n" in out
    assert "\nFAIL     fast path: ZeroDivisionError: division by zero\n" in out
    assert "\nSKIPPED  fvd: --full\n" in out and "2 check(s) FAILED" in out


def test_opencv_ffmpeg_is_read_from_the_build_information(monkeypatch) -> None:
    info = "  Video I/O:\n    FFMPEG:                      YES\n      avcodec:                   YES (62.28.101)\n" \
           "      avformat:                  YES (62.12.101)\n"
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: info)
    assert opencv_ffmpeg() == "YES (avcodec 62.28.101, avformat 62.12.101)"
    monkeypatch.setattr(cv2, "getBuildInformation", lambda: "  Video I/O:\n    FFMPEG:   NO\n")
    assert opencv_ffmpeg() == "NO"
