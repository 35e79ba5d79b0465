"""FVD against independent references, without TensorFlow: TF1's resize_bilinear output on real frames
(tests/fixtures/make_tf_resize_fixture.py), TF-GAN's Fréchet distance (make_tfgan_frechet_fixture.py), the
reference's own example (133.908), a published TF-Hub dump of its logits, closed forms and scipy."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn.functional as F

from src.clips import InputError
from src.fvd import (Embedding, Protocol, activation_statistics, frechet_distance, load_statistics,
                     resize_bilinear_tf1, save_statistics, video_activations)
from src.fvd.clips import clip_starts, read_clips
from src.fvd.inputs import open_set
from src.fvd.pipeline import ClipReaders
from src.fvd.resize import to_network_input

FIXTURES = Path(__file__).resolve().parent / "fixtures"
REFERENCE_FVD = 133.908  # frechet_video_distance.py's example: 16 videos of 15 frames 64x64, zeros vs 255
# The TF-Hub module's RGB/inception_i3d/Mean for all-zero frames, as printed by a user of the reference
# (github.com/zhanganny/cal_FVD, my_suc.py): the first three and last three of the 400 values.
TF_HUB_ZEROS_HEAD = [0.7422105, 2.829727, 0.39993525]
TF_HUB_ZEROS_TAIL = [-0.38092658, 0.65539014, -1.4021297]


# ---------------------------------------------------------------------------------------------- resizing


def test_resize_is_tf1_resize_bilinear_bit_for_bit() -> None:
    with np.load(FIXTURES / "tf_resize_bilinear.npz") as z:
        names = list(z["names"])
        cases = [(z[f"input_{i}"], z[f"output_{i}"]) for i in range(len(names))]
    assert len(cases) == 6
    for name, (frame, expected) in zip(names, cases):
        got = resize_bilinear_tf1(torch.from_numpy(frame), expected.shape[:2]).numpy()
        assert got.dtype == np.float32 and got.shape == expected.shape, name
        assert np.array_equal(got, expected), f"{name}: max |diff| {np.abs(got - expected).max()}"
        # a batch of frames (T, H, W, C) gives each frame the same result
        twice = resize_bilinear_tf1(torch.from_numpy(np.stack([frame, frame])), expected.shape[:2]).numpy()
        assert np.array_equal(twice[1], expected)
    # the fixture tells the conventions apart: half-pixel bilinear (torch, OpenCV, TF2) is another image
    frame, expected = cases[0]
    half_pixel = F.interpolate(torch.from_numpy(frame).permute(2, 0, 1)[None].float(), size=(224, 224),
                               mode="bilinear", align_corners=False)[0].permute(1, 2, 0).numpy()
    assert np.abs(half_pixel - expected).max() > 10


def test_resize_of_a_224_frame_is_the_frame() -> None:
    frame = torch.randint(0, 256, (2, 224, 224, 3), dtype=torch.uint8)
    assert torch.equal(resize_bilinear_tf1(frame), frame.float())


@pytest.mark.parametrize("size", [(256, 340), (224, 224)])
def test_network_input_is_2x_over_255_minus_1_of_the_resized_frames_and_leaves_the_clip_alone(size) -> None:
    clip = torch.rand((3, *size, 3), dtype=torch.float32) * 255  # float32: at 224x224 the resize is the clip itself
    kept = clip.clone()
    expected = (2.0 * resize_bilinear_tf1(clip) / 255.0 - 1.0).permute(3, 0, 1, 2)
    got = to_network_input(clip)
    assert torch.equal(got, expected) and got.shape == (3, 3, 224, 224)
    assert torch.equal(clip, kept)


# ---------------------------------------------------------------------------------------------- the Fréchet distance


EPS64 = np.finfo(np.float64).eps
# The Fréchet distance cancels tr(S1) + tr(S2) + |m1 - m2|^2 against 2 tr(sqrt(S1 S2)). LAPACK's SVD is backward
# stable, so on any BLAS kernel (AVX2, AVX-512, AMX) the result moves by a few d * eps (d <= 400: ~1e-13) of those
# magnitudes, and the square root can amplify that for the smallest singular values. 1e-9 of them is four orders
# above what any kernel was seen to give (1.4e-10 on 152.7 on an AMX CPU; 3e-13 on AVX-512) and seven below what an
# implementation difference makes (1/N against 1/(N - 1) moves FVD by about 1 / N, percent level).
FD_REL = 1e-9


def tolerance(a, b) -> float:
    """The absolute tolerance of a float64 Fréchet distance between statistics a and b (see FD_REL)."""
    return float(FD_REL * (np.trace(a.covariance) + np.trace(b.covariance) + np.sum((a.mean - b.mean) ** 2)))


def stats(x: np.ndarray):
    return activation_statistics(x, Protocol())


def scipy_frechet(a, b) -> float:
    root = scipy.linalg.sqrtm(a.covariance @ b.covariance)
    return float(np.sum((a.mean - b.mean) ** 2) + np.trace(a.covariance) + np.trace(b.covariance)
                 - 2 * np.trace(root).real)


def test_statistics_are_float64_with_n_minus_1() -> None:
    x = np.random.default_rng(0).standard_normal((50, 7)).astype(np.float32)
    s = stats(x)
    assert s.mean.dtype == s.covariance.dtype == np.float64 and s.n == 50
    # two float64 sums in different orders: each entry within a few n * eps of the largest variance, on any BLAS
    reference = np.cov(x.astype(np.float64), rowvar=False, ddof=1)
    np.testing.assert_allclose(s.covariance, reference, rtol=0, atol=50 * x.shape[0] * EPS64 * np.abs(reference).max())
    with pytest.raises(InputError, match="at least 2"):
        stats(x[:1])


def test_frechet_distance_equals_tf_gan() -> None:
    with np.load(FIXTURES / "tfgan_frechet.npz") as z:
        names = list(z["names"])
        for i, name in enumerate(names):
            a, b = stats(z[f"a_{i}"]), stats(z[f"b_{i}"])
            value = frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
            assert value == pytest.approx(float(z[f"fd_{i}"]), abs=tolerance(a, b)), name
    assert any("rank-deficient" in n for n in names)


def test_frechet_distance_of_diagonal_gaussians_is_the_closed_form() -> None:
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal(150), rng.standard_normal(150)
    v1, v2 = rng.uniform(0.1, 4, 150), rng.uniform(0.1, 4, 150)
    expected = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    d1, d2 = np.diag(v1), np.diag(v2)
    assert frechet_distance(m1, d1, m2, d2) == pytest.approx(expected, abs=float(FD_REL * (v1.sum() + v2.sum())))
    # a variance of zero in one set (rank-deficient): the same formula
    v1[:50] = 0
    expected = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    assert frechet_distance(m1, np.diag(v1), m2, np.diag(v2)) == pytest.approx(expected,
                                                                              abs=float(FD_REL * (v1.sum() + v2.sum())))


@pytest.mark.parametrize("n1, n2, d", [(300, 320, 200), (120, 100, 64), (40, 56, 400), (12, 30, 400)])
def test_frechet_distance_equals_scipy_sqrtm(n1: int, n2: int, d: int) -> None:
    rng = np.random.default_rng(n1)
    mix = rng.standard_normal((d, d)) / np.sqrt(d)
    a = stats(rng.standard_normal((n1, d)) @ mix * 2.0)
    b = stats(rng.standard_normal((n2, d)) @ mix + 0.1)
    assert np.linalg.matrix_rank(a.covariance) == min(n1 - 1, d)
    with np.errstate(all="ignore"):
        reference = scipy_frechet(a, b)
    assert frechet_distance(a.mean, a.covariance, b.mean, b.covariance) == pytest.approx(reference, rel=1e-6)


@pytest.mark.parametrize("n, d", [(300, 200), (40, 400)])
def test_identical_sets_give_zero(n: int, d: int) -> None:
    rng = np.random.default_rng(n)
    a = stats(rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d)))
    value = frechet_distance(a.mean, a.covariance, a.mean, a.covariance)
    assert abs(value) < 1e-7 * np.trace(a.covariance)


def test_statistics_saved_and_reloaded_give_the_same_fvd(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    protocol = Protocol(frames=12, clips_per_video=2, stride=5)
    a = activation_statistics(rng.standard_normal((30, 400)), protocol, "abc")
    b = activation_statistics(rng.standard_normal((20, 400)) + 0.5, protocol, "abc")
    save_statistics(a, tmp_path / "a.npz", source="set A")
    again = load_statistics(tmp_path / "a.npz")
    assert again.n == 30 and again.protocol == protocol and again.weights_sha256 == "abc"
    assert again.meta["source"] == "set A" and again.meta["toolkit_version"]
    assert frechet_distance(again.mean, again.covariance, b.mean, b.covariance) == \
        frechet_distance(a.mean, a.covariance, b.mean, b.covariance)
    assert not list(tmp_path.glob("*.part"))
    with pytest.raises(InputError, match=r"a.npz: statistics computed under another protocol \(frames 12 vs 16"):
        again.check_protocol(Protocol(clips_per_video=2, stride=5), "a.npz")


# ---------------------------------------------------------------------------------------------- clips


def test_clip_starts() -> None:
    assert clip_starts(100, Protocol(frames=16, clips_per_video=3), 0, "v") == [0, 16, 32]
    assert clip_starts(100, Protocol(frames=16, clips_per_video=3, start=4, stride=8), 0, "v") == [4, 12, 20]
    assert clip_starts(36, Protocol(frames=16, clips_per_video=2, start=4), 0, "v") == [4, 20]
    random = Protocol(frames=16, clips_per_video=4, start=None, seed=7)
    starts = clip_starts(100, random, 3, "v")
    assert starts == clip_starts(100, random, 3, "v") != clip_starts(100, random, 4, "v")
    assert all(0 <= s <= 84 for s in starts)
    with pytest.raises(InputError, match=r"^v: 35 frames; --frames 16 --clips-per-video 2 --stride 16 --start 4 "
                                         r"needs 36 \(clips are never padded or shrunk"):
        clip_starts(35, Protocol(frames=16, clips_per_video=2, start=4), 0, "v")
    with pytest.raises(InputError, match="v: 8 frames; FVD needs clips of at least 9 frames"):
        clip_starts(8, Protocol(frames=None), 0, "v")
    for bad in (dict(frames=8), dict(seed=3), dict(start=None), dict(stride=4), dict(frames=None, clips_per_video=2)):
        with pytest.raises(ValueError):
            Protocol(**bad)


def test_clips_from_worker_processes_equal_clips_read_here(tmp_path: Path, shared: Path) -> None:
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    (videos / "b.mp4").symlink_to(shared / "videos" / "arm_wrestling.mp4")
    (videos / "sub" / "a.mp4").symlink_to(shared / "videos" / "cleaning_pool.mp4")
    np.save(videos / "c.npy", np.random.default_rng(0).integers(0, 256, (20, 40, 30, 3), dtype=np.uint8))
    video_set = open_set(str(videos))
    assert [i.path.name for i in video_set.items] == ["b.mp4", "c.npy", "a.mp4"]  # natural order of the paths
    protocol = Protocol(frames=10, clips_per_video=2, start=3, stride=5)
    here = [c for i, item in enumerate(video_set.items) for c in read_clips(item, protocol, i)]
    decoders = ClipReaders(2)
    try:
        there = list(decoders.clips(video_set, protocol))
    finally:
        decoders.close()
    assert len(here) == len(there) == 6
    assert all(np.array_equal(x, y) for x, y in zip(here, there))
    assert here[0].shape == (10, 256, 340, 3) and here[2].shape == (10, 40, 30, 3)
    np.testing.assert_array_equal(here[3], np.load(videos / "c.npy")[8:18])


def test_sets_from_lists_frame_folders_and_arrays(tmp_path: Path, shared: Path) -> None:
    import cv2

    frames = np.random.default_rng(1).integers(0, 256, (12, 20, 24, 3), dtype=np.uint8)
    folder = tmp_path / "set" / "clip10"
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"img_{i}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    (tmp_path / "set" / "clip2").mkdir()
    cv2.imwrite(str(tmp_path / "set" / "clip2" / "a.png"), frames[0])
    (tmp_path / "set" / "notes.txt").write_text("not a video")
    video_set = open_set(str(tmp_path / "set"), max_videos=5)
    assert [i.path.name for i in video_set.items] == ["clip2", "clip10"]  # frame folders, natural order
    clip = read_clips(video_set.items[1], Protocol(frames=10, start=2), 1)
    np.testing.assert_array_equal(clip[0], frames[2:12])  # PNG is lossless: the frames themselves
    listing = tmp_path / "list.txt"
    listing.write_text(f"# two videos\nset/clip10\n\n{shared / 'videos' / 'arm_wrestling.mp4'}\n")
    assert [i.path.name for i in open_set(str(listing)).items] == ["clip10", "arm_wrestling.mp4"]
    listing.write_text("set/missing.mp4\n")
    with pytest.raises(InputError, match=r"list.txt:1: set/missing.mp4: no such file"):
        open_set(str(listing))
    np.savez(tmp_path / "videos.npz", videos=np.zeros((3, 9, 8, 8, 3), np.uint8))
    arrays = open_set(str(tmp_path / "videos.npz"), max_videos=2)
    assert len(arrays.items) == 2 and arrays.skipped == 1 and arrays.items[1].name.endswith("videos.npz[1]")
    np.savez(tmp_path / "two.npz", a=np.zeros(3), b=np.zeros(3))
    with pytest.raises(InputError, match="two.npz: holds arrays a, b; expected one"):
        open_set(str(tmp_path / "two.npz"))


def test_float_values_outside_0_255_are_refused(tmp_path: Path) -> None:
    np.save(tmp_path / "unit.npy", np.random.default_rng(0).random((2, 10, 8, 8, 3), dtype=np.float32))
    video_set = open_set(str(tmp_path / "unit.npy"))
    with pytest.raises(InputError, match=r"unit.npy\[0\]: values span .* looks like \[0, 1\]"):
        read_clips(video_set.items[0], Protocol(frames=None), 0, video_set.array)
    np.save(tmp_path / "wide.npy", np.full((2, 10, 8, 8, 3), 300.0, np.float32))
    video_set = open_set(str(tmp_path / "wide.npy"))
    with pytest.raises(InputError, match=r"wide.npy\[0\]: values span \[300, 300\]; FVD takes pixels in \[0, 255\]"):
        read_clips(video_set.items[0], Protocol(frames=None), 0, video_set.array)


# ---------------------------------------------------------------------------------------------- the network


@pytest.fixture(scope="module")
def reference_logits() -> dict[str, np.ndarray]:
    """The activations of the reference example's two videos, by the library, and the plain model's logits
    averaged over time computed block by block here."""
    embedding = Embedding("cpu")
    videos = np.stack([np.zeros((15, 64, 64, 3), np.uint8), np.full((15, 64, 64, 3), 255, np.uint8)])
    model = embedding.model
    # the reference's preprocessing: every frame of 64x64 constant is 224x224 of the same constant
    x = torch.from_numpy(np.where(videos == 255, 1.0, -1.0).astype(np.float32)).expand(2, 15, 64, 64, 3)
    x = x[:, :, :1, :1].expand(2, 15, 224, 224, 3).permute(0, 4, 1, 2, 3).contiguous()
    with torch.no_grad():
        pooled = model.avg_pool(model.forward_features(x))
        per_time = model.conv3d_0c_1x1(pooled)  # (2, 400, T', 1, 1) logits per remaining time step
        assert per_time.shape[2:] == (1, 1, 1) or per_time.shape[3:] == (1, 1)
        expected = per_time.mean(dim=(2, 3, 4)).numpy()
    return {"library": video_activations(videos, embedding), "plain": expected, "embedding": embedding}


@pytest.mark.slow
def test_activations_of_the_reference_example(reference_logits: dict) -> None:
    got, expected = reference_logits["library"], reference_logits["plain"]
    assert got.shape == (2, 400) and got.dtype == np.float32
    assert np.abs(got - expected).max() <= 1e-5
    # the TF-Hub module's own values for all-zero frames
    np.testing.assert_allclose(got[0, :3], TF_HUB_ZEROS_HEAD, atol=2e-5)
    np.testing.assert_allclose(got[0, -3:], TF_HUB_ZEROS_TAIL, atol=2e-5)
    with pytest.raises(ValueError, match="clips of 8 frames; FVD needs at least 9"):  # never a shrunk pool
        reference_logits["embedding"].logits(torch.zeros(1, 3, 8, 224, 224))


@pytest.mark.slow
def test_fvd_of_the_reference_example(reference_logits: dict) -> None:
    zeros, ones = reference_logits["library"]
    # 16 identical videos per set, as the example: identical videos have identical activations
    a, b = stats(np.repeat(zeros[None], 16, 0)), stats(np.repeat(ones[None], 16, 0))
    assert not a.covariance.any() and not b.covariance.any()
    assert frechet_distance(a.mean, a.covariance, b.mean, b.covariance) == pytest.approx(REFERENCE_FVD, abs=0.01)


# ---------------------------------------------------------------------------------------------- the command


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    """fvd.py in this process (no fresh interpreter per call)."""
    import fvd

    argv = sys.argv
    sys.argv = ["fvd.py", "--quiet", "--workers", "0", *args]
    try:
        code = fvd.main()
    except SystemExit as exc:
        code = exc.code
    finally:
        sys.argv = argv
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_cli_reference_example_through_saved_statistics(tmp_path: Path, capsys) -> None:
    np.save(tmp_path / "zeros.npy", np.zeros((2, 15, 64, 64, 3), np.uint8))
    np.save(tmp_path / "ones.npy", np.full((2, 15, 64, 64, 3), 255, np.uint8))
    stats_file = str(tmp_path / "zeros_stats.npz")
    code, out, err = run_cli(capsys, str(tmp_path / "zeros.npy"), "--frames", "all", "--save-stats", stats_file,
                             "--json")
    assert code == 0, err
    assert json.loads(out)["n_a"] == 2 and load_statistics(stats_file).n == 2
    code, out, err = run_cli(capsys, stats_file, str(tmp_path / "ones.npy"), "--frames", "all", "--json")
    assert code == 0, err
    result = json.loads(out)
    assert result["fvd"] == pytest.approx(REFERENCE_FVD, abs=0.01)
    assert (result["n_a"], result["n_b"], result["frames"], result["protocol"]) == (2, 2, "all", "tf")
    assert result["videos_a"] is None and result["videos_b"] == 2
    # statistics of another protocol are refused, naming the file and the difference, before any decoding
    code, out, err = run_cli(capsys, stats_file, str(tmp_path / "ones.npy"), "--frames", "12")
    assert code == 1 and err.count("\n") == 1
    assert f"error: {stats_file}: statistics computed under another protocol (frames all vs 12 here)" in err
    code, out, err = run_cli(capsys, str(tmp_path / "zeros.npy"), "--frames", "all", "--save-stats", stats_file)
    assert code == 1 and "--overwrite" in err


@pytest.mark.parametrize("make, args, message", [
    ("short", ("--frames", "all"), r"short.npy\[0\]: 8 frames; FVD needs clips of at least 9 frames"),
    ("short", (), r"short.npy\[0\]: 8 frames; --frames 16 needs 16"),
    ("missing", (), r"nothing.npy: no such file or folder"),
    ("unknown", (), r"data.bin: not a folder of videos, a video, a .npy/.npz array"),
    ("short", ("--frames", "8"), r"--frames 8 is too short: FVD needs clips of at least 9 frames"),
    ("short", ("--seed", "3"), r"--seed applies only to --start random"),
    ("short", ("--precision", "bf16"), r"--precision bf16: FVD under protocol tf is computed in float32"),
    ("empty", (), r"empty: no videos, frame folders or .npy clips found"),
])
def test_cli_errors_are_one_line(tmp_path: Path, capsys, make: str, args: tuple, message: str) -> None:
    np.save(tmp_path / "short.npy", np.zeros((2, 8, 32, 32, 3), np.uint8))
    (tmp_path / "data.bin").write_bytes(b"\0" * 10)
    (tmp_path / "empty").mkdir()
    spec = {"short": "short.npy", "missing": "nothing.npy", "unknown": "data.bin", "empty": "empty"}[make]
    code, out, err = run_cli(capsys, str(tmp_path / spec), str(tmp_path / "short.npy"), *args)
    assert code == 1 and out == ""
    assert err.startswith("error: ") and err.count("\n") == 1, err
    import re
    assert re.search(message, err), err


def test_cli_refuses_a_too_short_video_file_by_name(tmp_path: Path, shared: Path, capsys) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "video_0.mov").symlink_to(shared / "videos" / "video_0.mov")
    (tmp_path / "a" / "unordered.mov").symlink_to(shared / "videos" / "unordered.mov")
    code, _, err = run_cli(capsys, str(tmp_path / "a"), str(tmp_path / "a"), "--frames", "all")
    assert code == 1 and err.count("\n") == 1
    assert "unordered.mov: 4 frames; FVD needs clips of at least 9 frames" in err
