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
    from src.media.video import read_frames
    paths = make_videos(tmp_path, per_class=1, frames=10, height=32, width=48, classes=("pan_left",))
    frames, info = read_frames(paths[0], fps=25.0)
    assert frames.shape == (10, 32, 48, 3) and info.fps == pytest.approx(25.0)


def test_multi_label_clips_show_each_motion():
    import cv2

    from src.synthetic import MULTI_COMBOS, motion_clip
    assert len(MULTI_COMBOS) == 8 and sum(len(c) == 2 for c in MULTI_COMBOS) == 4
    rng = np.random.default_rng(3)
    pan = motion_clip(rng, ("pan_right",), 4, 40, 50).astype(int)
    np.testing.assert_array_equal(pan[1][:, 2:], pan[0][:, :-2])           # 2 px per frame to the right
    bright = motion_clip(rng, ("brighten",), 5, 40, 50).astype(float)
    means = bright.mean(axis=(1, 2, 3))
    assert np.all(np.diff(means) > 0) and means[-1] / means[0] == pytest.approx(1 / 0.4, rel=0.05)
    zoom = motion_clip(rng, ("zoom_in",), 11, 60, 60)
    scale = 1.03 ** 10                                                   # the centre crop of frame 0, enlarged
    side = 60 / scale
    lo = (60 - side) / 2
    m = np.float32([[side / 60, 0, lo], [0, side / 60, lo]])
    enlarged = cv2.warpAffine(zoom[0], m, (60, 60), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    inner = (slice(5, 55), slice(5, 55))
    assert np.corrcoef(enlarged[inner].ravel(), zoom[10][inner].ravel())[0, 1] > 0.98
    assert np.corrcoef(zoom[0][inner].ravel(), zoom[10][inner].ravel())[0, 1] < 0.95   # it did change
