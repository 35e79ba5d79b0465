"""visualize.py: filters, activations and Grad-CAM GIFs on the ../shared clips."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageSequence

from src.clips import load_clip_tensor
from src.model import I3D
from src.visualize import activation_frames, filter_frames, grad_cam, resolve_class, save_gif
from src.weights import i3d

REPO = Path(__file__).resolve().parent.parent


def gif_frames(path: Path) -> list[np.ndarray]:
    with Image.open(path) as gif:
        return [np.asarray(f.convert("RGB")) for f in ImageSequence.Iterator(gif)]


@pytest.fixture(scope="module")
def scratch() -> I3D:
    return i3d(weights="rgb_scratch").eval()


def test_filters_gif_rgb_and_flow(scratch: I3D, tmp_path: Path) -> None:
    frames = gif_frames(save_gif(filter_frames(scratch), tmp_path / "f.gif"))
    assert len(frames) == 7  # kernel time steps
    assert frames[0].shape == (8 * (56 + 2) + 2,) * 2 + (3,)  # 8x8 grid of 7x7 filters at 8x
    assert not np.array_equal(frames[0], frames[3])
    flow = filter_frames(i3d(weights="rgb_scratch", in_channels=2))
    tile = flow[3][2:58, 2:58]
    assert np.all(tile[..., 2] == 0) and tile[..., :2].std() > 0  # x -> red, y -> green, no blue


def test_activations_gif(scratch: I3D, shared, tmp_path: Path) -> None:
    clip = load_clip_tensor(shared / "videos" / "arm_wrestling.mp4", frames=8)
    frames = activation_frames(scratch, clip, "Mixed_3b", channels=9, size=96)
    path = save_gif(frames, tmp_path / "a.gif")
    read = gif_frames(path)
    assert len(read) == 8
    height, width, _ = read[0].shape
    assert width > 2 * height - 10  # input panel beside a square grid
    with pytest.raises(ValueError, match="endpoint"):
        activation_frames(scratch, clip, "Mixed_9z")


def test_saliency_depends_on_class(scratch: I3D, shared) -> None:
    clip = load_clip_tensor(shared / "videos" / "arm_wrestling.mp4", frames=16)
    cam_pred, target, logits = grad_cam(scratch, clip)
    assert scratch.categories[target] == "arm wrestling"
    other = resolve_class("cleaning pool", scratch.categories)
    cam_other, _, _ = grad_cam(scratch, clip, other)
    assert cam_pred.shape == clip.shape[2:] and float(cam_pred.max()) == pytest.approx(1.0)
    assert (cam_pred - cam_other).abs().mean().item() > 0.05
    with torch.no_grad():
        assert torch.allclose(logits, scratch(clip)[0], atol=1e-4)


def test_script_writes_small_gif(shared, tmp_path: Path) -> None:
    out = tmp_path / "s.gif"
    result = subprocess.run([sys.executable, "visualize.py", "saliency", str(shared / "samples" /
                             "v_CricketShot_g04_c01_rgb.gif"), "--frames", "8", "--size", "96", "--class", "cricket", "--out", str(out)],
                            cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "'playing cricket'" in result.stdout  # resolved from a unique substring
    frames = gif_frames(out)
    assert len(frames) == 8 and frames[0].shape == (96, 196, 3)
