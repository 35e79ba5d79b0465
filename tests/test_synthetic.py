"""The synthetic motion dataset really moves the way its class says."""
from __future__ import annotations

import numpy as np
import pytest

from src.synthetic import MOTIONS, make_videos, panning_clip


@pytest.mark.parametrize("name", list(MOTIONS))
def test_texture_moves_by_speed_pixels_per_frame(name):
    dx, dy = MOTIONS[name]
    clip = panning_clip(np.random.default_rng(1), (dx, dy), frames=5, height=40, width=50, speed=2.0)
    assert clip.shape == (5, 40, 50, 3) and clip.dtype == np.uint8
    for t in range(4):
        # What is at (y, x) in frame t is at (y + 2dy, x + 2dx) in frame t + 1.
        a = clip[t, max(0, -2 * dy):40 - max(0, 2 * dy), max(0, -2 * dx):50 - max(0, 2 * dx)]
        b = clip[t + 1, max(0, 2 * dy):40 - max(0, -2 * dy), max(0, 2 * dx):50 - max(0, -2 * dx)]
        np.testing.assert_array_equal(a, b)
    assert clip[0].std() > 20  # a textured picture, not a flat colour


def test_videos_decode_with_the_repository_reader(tmp_path):
    from src.video import read_frames
    paths = make_videos(tmp_path, per_class=1, frames=10, height=32, width=48, classes=("pan_left",))
    frames, info = read_frames(paths[0], fps=25.0)
    assert frames.shape == (10, 32, 48, 3) and info.fps == pytest.approx(25.0)
