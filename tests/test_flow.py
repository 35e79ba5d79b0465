"""Flow sign convention and scaling on synthetic textures with a known shift, for every algorithm."""
from __future__ import annotations

import cv2
import numpy as np
import pytest

from src.flow import ALGORITHMS, FlowExtractor, rgb_to_gray

SIZE = 96
MARGIN = 16


def _texture(seed: int = 0) -> np.ndarray:
    """Smooth random uint8 texture larger than the frames cut from it."""
    rng = np.random.default_rng(seed)
    noise = rng.uniform(0, 255, (SIZE + 2 * MARGIN, SIZE + 2 * MARGIN)).astype(np.float32)
    return np.clip(cv2.GaussianBlur(noise, (0, 0), 2.0) * 3 - 255, 0, 255).astype(np.uint8)


def _shifted_pair(dx: int, dy: int) -> np.ndarray:
    """Two frames where the content of the first moves dx pixels right and dy pixels down."""
    tex = _texture()
    first = tex[MARGIN : MARGIN + SIZE, MARGIN : MARGIN + SIZE]
    second = tex[MARGIN - dy : MARGIN - dy + SIZE, MARGIN - dx : MARGIN - dx + SIZE]
    assert np.array_equal(second[dy + 5, dx + 7], first[5, 7])  # the shift is what we claim
    return np.stack([first, second])


def _interior_mean(flow: np.ndarray) -> np.ndarray:
    return flow[:, 12:-12, 12:-12].reshape(-1, 2).mean(axis=0)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize(("dx", "dy"), [(3, 0), (0, 3), (-2, 0)])
def test_shift_sign_and_scale(algorithm, dx, dy):
    flow = FlowExtractor(algorithm, bound=20.0)(_shifted_pair(dx, dy))
    assert flow.shape == (1, SIZE, SIZE, 2) and flow.dtype == np.float32
    assert np.abs(flow).max() <= 1.0
    mean = _interior_mean(flow)
    # Within 0.25 px of the true shift, in units of the 20 px bound.
    np.testing.assert_allclose(mean, [dx / 20, dy / 20], atol=0.25 / 20)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_clipped_at_bound(algorithm):
    flow = FlowExtractor(algorithm, bound=1.0)(_shifted_pair(3, 0))
    assert flow.max() == 1.0 and flow.min() >= -1.0
    assert _interior_mean(flow)[0] > 0.9  # a 3 px motion saturates a 1 px bound


def test_t_frames_give_t_minus_1_flows():
    frames = np.stack([_texture(0)[:32, :40]] * 4)
    flow = FlowExtractor("farneback")(frames)
    assert flow.shape == (3, 32, 40, 2)
    assert np.abs(flow).mean() < 1e-3 and np.abs(flow).max() < 0.02  # no motion (below 0.4 px anywhere)


def test_rgb_to_gray_matches_luma():
    rgb = np.zeros((2, 4, 4, 3), np.uint8)
    rgb[..., 0] = 255  # pure red: luma 0.299 * 255
    gray = rgb_to_gray(rgb)
    assert gray.shape == (2, 4, 4) and gray.dtype == np.uint8
    assert int(gray[0, 0, 0]) == round(0.299 * 255)


def test_unknown_algorithm_is_rejected():
    with pytest.raises(ValueError, match="tvl1"):
        FlowExtractor("lucas-kanade")
