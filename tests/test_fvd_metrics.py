"""The sampled FVD protocols' rules (src/fvd/recipes.py, sampling.py, metrics.py) on hand-derivable cases: which
frames each protocol picks from numbered-frame videos, biased vs unbiased covariance by hand, constant, shifted and
rank-deficient sets under each square root, and KVD and precision/recall against plain loops written from their
definitions here."""
from __future__ import annotations

import itertools

import cv2
import numpy as np
import pytest
import torch

import src.fvd.sampling as sampling
from src.clips import InputError
from src.fvd.inputs import open_set
from src.fvd.metrics import (compute_metrics, frechet, fvd, kvd, manifold_coverage, mean_covariance, parse_metrics,
                             summarise)
from src.fvd.preprocess import resize_for
from src.fvd.protocol import Protocol
from src.fvd.recipes import RECIPES, protocol_list, recipe
from src.fvd.runs import streams
from src.fvd.sampling import (Pick, clip_frames, offset_frames, pick_clips, read_pick, video_clips,
                              warn_if_few_windows)

SQRTMS = ("tf-gan", "scipy", "svd32")


def numbered(lengths: list[int]) -> np.ndarray:
    """Videos whose every pixel of frame t is t (so a clip's frames say which they are), padded with 255s."""
    videos = np.full((len(lengths), max(lengths), 4, 4, 3), 255, np.uint8)
    for i, n in enumerate(lengths):
        videos[i, :n] = np.arange(n, dtype=np.uint8)[:, None, None, None]
    return videos


def frames_read(tmp_path, lengths: list[int], picks: list[Pick]) -> list[list[int]]:
    """The frame numbers each pick reads from numbered videos of `lengths` frames (one .npy clip per video)."""
    for i, n in enumerate(lengths):
        np.save(tmp_path / f"v{i:02d}.npy", numbered([n])[0])
    video_set = open_set(str(tmp_path))
    return [read_pick(video_set.items[p.video], p.frames, None)[:, 0, 0, 0].tolist() for p in picks]


# ---------------------------------------------------------------------------------------------- which frames


def test_stylegan_v_real_clips_drop_short_videos_and_start_at_a_seeded_offset(tmp_path) -> None:
    lengths = [20, 10, 40, 16, 30]  # n = 4, s = 4: videos under 16 frames are dropped (video 1)
    r = recipe("stylegan-v")
    picks = pick_clips(5, lengths, r, "real", 4, 4, 3, seed=7)
    assert [p.video for p in picks] == [0, 2, 3]  # the first N = 3 long enough, in set order
    for pick, got in zip(picks, frames_read(tmp_path, lengths, picks)):
        offset = got[0]
        assert got == [offset, offset + 4, offset + 8, offset + 12]  # frames offset + k*s
        assert 0 <= offset <= lengths[pick.video] - 16 + 4 - 1  # [0, L - n*s + s - 1]
    assert picks == pick_clips(5, lengths, r, "real", 4, 4, 3, seed=7)  # seeded: repeatable
    offsets = {tuple(p.frames[0] for p in pick_clips(5, lengths, r, "real", 4, 4, 3, seed=s)) for s in range(8)}
    assert len(offsets) > 1  # and the seed matters
    # video 3 has exactly n*s = 16 frames: offsets 0..3 only; over many seeds each of them occurs
    seen = {pick_clips(5, lengths, r, "real", 4, 4, 3, seed=s)[2].frames[0] for s in range(60)}
    assert seen == {0, 1, 2, 3}


def test_stylegan_v_generated_clips_are_frames_0_s_2s(tmp_path) -> None:
    lengths = [40, 40, 40]
    picks = pick_clips(3, None, recipe("stylegan-v"), "generated", 4, 8, 2, seed=0)
    assert frames_read(tmp_path, lengths, picks) == [[0, 8, 16, 24], [0, 8, 16, 24]]  # the first N = 2 videos
    assert clip_frames(3, 16, 8)[-1] == 3 + 15 * 8  # fvd2048_128f_subsample8f: 16 frames spanning 121


def test_latte_draws_generated_videos_at_random_too() -> None:
    """Latte's compute_feature_stats_for_dataset draws N of the generated folder's videos as well (random.sample)."""
    r = recipe("latte")
    draws = {tuple(p.video for p in pick_clips(8, None, r, "generated", 4, 1, 3, seed=s)) for s in range(10)}
    assert len(draws) > 1 and all(len(set(d)) == 3 for d in draws)
    assert [p.video for p in pick_clips(8, None, recipe("stylegan-v"), "generated", 4, 1, 3, seed=5)] == [0, 1, 2]
    # so a set larger than N is not streamed as "its first N videos"; one no larger than N is
    protocol = Protocol("latte", 16, seed=0)
    assert not streams(protocol, r, "generated", 3, 8, (1, 1)) and streams(protocol, r, "generated", 3, 3, (1, 1))


def test_latte_draws_real_videos_at_random_with_step_3(tmp_path) -> None:
    lengths = [30] * 8
    r = recipe("latte")
    assert (r.subsample_real, r.subsample_generated) == (3, 1)
    picks = pick_clips(8, lengths, r, "real", 4, 3, 3, seed=1)
    chosen = [p.video for p in picks]
    assert len(set(chosen)) == 3 and chosen == sorted(chosen)
    others = {tuple(p.video for p in pick_clips(8, lengths, r, "real", 4, 3, 3, seed=s)) for s in range(10)}
    assert len(others) > 1  # not simply the first three
    for got in frames_read(tmp_path, lengths, picks):
        assert np.diff(got).tolist() == [3, 3, 3]
    assert [p.frames for p in pick_clips(8, None, r, "generated", 4, 1, 3, seed=1)] == [(0, 1, 2, 3)] * 3


@pytest.mark.parametrize("name", ["tats", "digan", "videogpt"])
def test_tats_digan_videogpt_draw_over_every_window_of_every_video(tmp_path, name: str) -> None:
    """Their real sets are torchvision VideoClips (one item per stride-1 window) drawn by a shuffled loader."""
    lengths = [10, 12]  # n = 9, s = 1: windows 0-1 of video 0 and 0-3 of video 1: six in all
    r = recipe(name)
    every = pick_clips(2, lengths, r, "real", 9, 1, 100, seed=0)  # N above the window count: every window once
    assert [(p.video, p.frames[0]) for p in every] == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (1, 3)]
    assert frames_read(tmp_path, lengths, every[1:2]) == [list(range(1, 10))]
    # long videos weigh more: over many seeds, video 1 (4 windows) is drawn about twice as often as video 0 (2)
    draws = [p.video for s in range(200) for p in pick_clips(2, lengths, r, "real", 9, 1, 1, seed=s)]
    assert 0.55 < np.mean(draws) < 0.78


def test_a_window_drawn_set_is_small_when_it_has_fewer_windows_than_n(caplog) -> None:
    """tats/digan/videogpt draw N windows, not N videos: 6 videos of 60 frames hold 6 * 45 = 270 windows of 16."""
    warn_if_few_windows("A/", [60] * 6, 16, 1, 256, "videogpt")
    assert not caplog.records
    warn_if_few_windows("A/", [60] * 6, 16, 1, 2048, "tats")
    assert caplog.messages == ["A/: 270 windows of 16 frames, fewer than protocol tats's N = 2048: every window is used"]


@pytest.mark.parametrize("name", ["stylegan-v", "tats", "digan", "videogpt", "latte"])
def test_every_sampled_protocol_reads_the_frames_its_recipe_names(tmp_path, name: str) -> None:
    r = recipe(name)
    lengths = [30, 25, 40, 33, 28]
    n = 5
    real = pick_clips(5, lengths, r, "real", n, r.subsample_real, 3, seed=r.seed)
    generated = pick_clips(5, lengths, r, "generated", n, r.subsample_generated, 3, seed=r.seed)
    got = frames_read(tmp_path, lengths, real + generated)
    for pick, frames in zip(real, got):
        step = r.subsample_real
        assert frames == list(range(frames[0], frames[0] + n * step, step))
        assert frames[-1] < lengths[pick.video]
    assert got[len(real):] == [list(range(0, n * r.subsample_generated, r.subsample_generated))] * 3
    videos = [p.video for p in real]
    if r.real_clip != "window":
        assert len(set(videos)) == 3
        if r.real_videos == "first":
            assert videos == [0, 1, 2]
    assert real == pick_clips(5, lengths, r, "real", n, r.subsample_real, 3, seed=r.seed)


@pytest.mark.parametrize("length, frames, step", [(9, 9, 1), (17, 4, 1), (40, 3, 3), (300, 4, 8)])
def test_one_pass_over_a_video_draws_the_offsets_the_plan_draws(tmp_path, length: int, frames: int, step: int) -> None:
    """video_clips reads a video once (a reservoir over its windows); pick_clips, given the length, must agree."""
    np.save(tmp_path / "v.npy", numbered([min(length, 255)])[0] if length <= 255 else
            np.broadcast_to((np.arange(length) % 256).astype(np.uint8)[:, None, None, None], (length, 4, 4, 3)))
    item = open_set(str(tmp_path / "v.npy")).items[0]
    seeds = [0, 1, 2, 3]
    picks, clips = video_clips(item, 4, None, "real", seeds, frames, step, (frames - 1) * step + 1, False, "offset")
    assert picks == [offset_frames(seed, "real", 4, length, frames, step) for seed in seeds]
    assert len(clips) == len(set(picks))
    for pick, clip in clips:
        assert clip[:, 0, 0, 0].tolist() == [t % 256 for t in pick]


def every_frame(path) -> np.ndarray:
    """Every frame of a video file as RGB, by OpenCV's read() and cvtColor (independent of src.media)."""
    cap, frames = cv2.VideoCapture(str(path), cv2.CAP_FFMPEG), []
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    cap.release()
    return np.stack(frames)


@pytest.mark.parametrize("name, frames, step, converted", [("cleaning_pool.mp4", 16, 1, 120),
                                                            ("corrupted.mp4", 4, 2, 28)])
def test_one_pass_over_a_real_video_takes_the_clips_cut_from_every_frame(shared, tmp_path, monkeypatch, name: str,
                                                                         frames: int, step: int, converted: int
                                                                         ) -> None:
    """video_clips converts to RGB only the frames of windows its draws can take, from the window a video of the
    header's length would end with (the rest are decoded, not converted): its picks and clips are those cut from
    every frame read whole. corrupted.mp4 declares 50 frames and decodes 28, so some draws end before the windows
    converted, and those clips are read again."""
    (tmp_path / name).symlink_to(shared / "videos" / name)
    item = open_set(str(tmp_path)).items[0]
    every = every_frame(tmp_path / name)
    seeds = list(range(8))
    conversions, second_reads = [], []
    real_cvt, real_read_pick = cv2.cvtColor, sampling.read_pick
    monkeypatch.setattr(cv2, "cvtColor", lambda *a, **k: conversions.append(1) or real_cvt(*a, **k))
    monkeypatch.setattr(sampling, "read_pick", lambda *a: second_reads.append(a[1]) or real_read_pick(*a))
    picks, clips = video_clips(item, 4, None, "real", seeds, frames, step, (frames - 1) * step + 1, False, "offset")
    assert picks == [offset_frames(seed, "real", 4, len(every), frames, step) for seed in seeds]
    assert sorted(p for p, _ in clips) == sorted(set(picks))
    for pick, clip in clips:
        assert clip.dtype == np.uint8
        np.testing.assert_array_equal(clip, every[list(pick)])
    assert len(conversions) - sum(len(p) for p in second_reads) <= converted  # of 300 (or 28) frames
    assert bool(second_reads) == (name == "corrupted.mp4")


def test_a_too_short_video_is_refused_by_name_unless_the_protocol_drops_it() -> None:
    with pytest.raises(InputError, match=r"^b.mp4: 8 frames, shorter than one clip of 9 frames"):
        pick_clips(2, [20, 8], recipe("tats"), "real", 9, 1, 4, seed=0, names=["a.mp4", "b.mp4"])
    assert [p.video for p in pick_clips(2, [20, 8], recipe("stylegan-v"), "real", 9, 1, 4, seed=0)] == [0]


def test_protocol_list_names_every_protocol_and_the_provenance_of_its_parameters() -> None:
    text = protocol_list()
    for name in ("tf", "stylegan-v", "tats", "digan", "videogpt", "latte"):
        assert f"\n{name}: " in f"\n{text}"
    assert "confirmed in source" in text and "inferred" in text
    for name in ("stylegan-v", "tats", "digan", "videogpt", "latte"):  # every project's own code was read
        sources = [where for _, where in RECIPES[name].provenance if where.startswith("confirmed in source")]
        assert len(sources) >= 3, name
        assert "from the issue text" not in RECIPES[name].describe()
    assert (RECIPES["digan"].trials, RECIPES["digan"].seed, RECIPES["videogpt"].videos) == (10, 42, 256)
    with pytest.raises(ValueError, match="unknown protocol 'fvd'"):
        recipe("fvd")


def test_tats_squashes_every_frame_to_224_with_half_pixel_bilinear() -> None:
    """TATS's fvd.py preprocess: F.interpolate to (224, 224), align_corners=False, no crop whatever the aspect ratio.
    A horizontal ramp (value = column) of width 112 lands at column j on clip((j + 0.5) / 2 - 0.5, 0, 111)."""
    assert recipe("tats").resize == "squash"
    ramp = np.broadcast_to(np.arange(112, dtype=np.float32)[None, None, :, None], (2, 50, 112, 3))
    out = resize_for("squash", torch.from_numpy(ramp.copy())).numpy()
    assert out.shape == (2, 224, 224, 3)
    expected = np.clip((np.arange(224) + 0.5) / 2 - 0.5, 0, 111)
    np.testing.assert_allclose(out, np.broadcast_to(expected[None, None, :, None], out.shape), atol=1e-4)


# ---------------------------------------------------------------------------------------------- statistics, distance


def test_svd32_takes_the_statistics_in_float32_as_the_videogpt_lineage_does() -> None:
    """VideoGPT/TATS/DIGAN's fvd.py computes mean and covariance of float32 logits in float32: the real set
    {2^24, 2^24 + 2} has the float32 mean 2^24 (2^24 + 1 is not a float32), so covariance (0^2 + 2^2) / 1 = 4, not 2.
    Against B = {2^24, 2^24 + 4} (mean 2^24 + 2, covariance 8): 2^2 + 4 + 8 - 2 sqrt(4 * 8), where float64
    statistics give 1 + 2 + 8 - 2 sqrt(2 * 8) = 3."""
    a = np.array([[2.0 ** 24], [2.0 ** 24 + 2]])
    b = np.array([[2.0 ** 24], [2.0 ** 24 + 4]])
    assert fvd(a, b, "unbiased", "svd32") == pytest.approx(16 - 2 * np.sqrt(32), rel=1e-6)
    assert fvd(a, b, "unbiased", "tf-gan") == pytest.approx(3.0, rel=1e-9)


def test_biased_and_unbiased_covariance_of_three_samples_by_hand() -> None:
    x = np.array([[1.0, 0.0], [3.0, 2.0], [5.0, 1.0]])  # mean (3, 1); centred (-2, -1), (0, 1), (2, 0)
    scatter = np.array([[8.0, 2.0], [2.0, 2.0]])  # the sum of the centred outer products
    mean, unbiased = mean_covariance(x, "unbiased")
    _, biased = mean_covariance(x, "biased")
    np.testing.assert_allclose(mean, [3.0, 1.0])
    np.testing.assert_allclose(unbiased, scatter / 2, rtol=1e-12)
    np.testing.assert_allclose(biased, scatter / 3, rtol=1e-12)
    # FVD of the set against itself shifted by (3, 4): 25 under either normalisation
    for covariance, sqrtm in itertools.product(("biased", "unbiased"), SQRTMS):
        assert fvd(x, x + [3.0, 4.0], covariance, sqrtm) == pytest.approx(25.0, rel=1e-5, abs=1e-4)
    # against a scaled copy the two normalisations differ by the factor n/(n-1) on the trace term
    values = {c: fvd(x, 2 * x, c) for c in ("biased", "unbiased")}
    mean_term = np.sum(mean ** 2)  # (2 m - m)^2
    trace_term = np.trace(scatter)  # tr(S + 4S - 2 * 2S) = tr(S)
    assert values["unbiased"] == pytest.approx(mean_term + trace_term / 2, rel=1e-9)
    assert values["biased"] == pytest.approx(mean_term + trace_term / 3, rel=1e-9)


@pytest.mark.parametrize("sqrtm", SQRTMS)
def test_constant_sets_give_the_squared_distance_of_their_values(sqrtm: str) -> None:
    a, b = np.full((5, 400), 0.5), np.full((7, 400), -1.5)
    assert fvd(a, b, "biased", sqrtm) == pytest.approx(400 * 4.0, rel=1e-6)
    assert fvd(a, a, "unbiased", sqrtm) == pytest.approx(0.0, abs=1e-9)


@pytest.mark.parametrize("sqrtm", SQRTMS)
def test_rank_deficient_diagonal_covariances_give_the_closed_form(sqrtm: str) -> None:
    rng = np.random.default_rng(0)
    m1, m2 = rng.standard_normal(40), rng.standard_normal(40)
    v1, v2 = rng.uniform(0.5, 2, 40), rng.uniform(0.5, 2, 40)
    v1[:15] = 0  # rank 25 of 40
    expected = np.sum((m1 - m2) ** 2) + np.sum(v1 + v2 - 2 * np.sqrt(v1 * v2))
    # float32: the zero eigenvalues come out of the SVD as ~1e-8, above TF-GAN's 1e-10 cut, and get square-rooted
    tolerance = 1e-3 if sqrtm == "svd32" else 1e-6
    assert frechet(m1, np.diag(v1), m2, np.diag(v2), sqrtm) == pytest.approx(expected, rel=tolerance)


def test_rank_deficient_sample_covariances_agree_across_square_roots() -> None:
    rng = np.random.default_rng(1)
    mix = rng.standard_normal((30, 30)) / 6
    a, b = rng.standard_normal((12, 30)) @ mix, rng.standard_normal((15, 30)) @ mix + 0.2  # n < d: singular
    assert np.linalg.matrix_rank(mean_covariance(a)[1]) == 11
    reference = fvd(a, b, "unbiased", "tf-gan")
    assert fvd(a, b, "unbiased", "scipy") == pytest.approx(reference, rel=1e-4)
    assert fvd(a, b, "unbiased", "svd32") == pytest.approx(reference, rel=1e-3)


# ---------------------------------------------------------------------------------------------- KVD, precision, recall


def kvd_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """The unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3, pair by pair, as written in its definition."""
    d = len(x[0])

    def k(u, v) -> float:
        return (sum(float(p) * float(q) for p, q in zip(u, v)) / d + 1.0) ** 3

    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kvd_equals_the_definition_pair_by_pair() -> None:
    rng = np.random.default_rng(2)
    x, y = rng.standard_normal((6, 5)), rng.standard_normal((8, 5)) * 1.5 + 0.3
    assert kvd(x, y) == pytest.approx(kvd_by_loops(x, y), rel=1e-10)
    # constant sets: MMD^2 = k(a, a) + k(b, b) - 2 k(a, b) = (1 + 1)^3 + (4 + 1)^3 - 2 (-2 + 1)^3 for a = 1, b = -2
    assert kvd(np.ones((3, 4)), np.full((4, 4), -2.0)) == pytest.approx(8 + 125 + 2, rel=1e-12)


def coverage_by_loops(support: np.ndarray, queries: np.ndarray, k: int = 3) -> float:
    """Kynkaanniemi et al.'s manifold membership, written with loops: the share of queries within some support
    point's distance to its k-th nearest other support point."""
    def dist(u, v) -> float:
        return float(np.sqrt(sum((float(p) - float(q)) ** 2 for p, q in zip(u, v))))

    radii = [sorted(dist(s, t) for j, t in enumerate(support) if j != i)[k - 1] for i, s in enumerate(support)]
    inside = [any(dist(q, s) <= r for s, r in zip(support, radii)) for q in queries]
    return sum(inside) / len(queries)


def test_precision_and_recall_by_hand_and_by_loops() -> None:
    real = np.array([[0.0], [1.0], [2.0], [3.0], [4.0]])  # 3rd-NN radii 3, 2, 2, 2, 3
    generated = np.array([[7.0], [7.5], [-3.0], [-3.1]])  # 7 and -3 at exactly the radius: inside
    assert manifold_coverage(real, generated) == 0.5
    metrics = compute_metrics(real, generated, ("precision", "recall"))
    assert metrics["precision"] == 0.5
    assert metrics["recall"] == coverage_by_loops(generated, real)
    rng = np.random.default_rng(3)
    a, b = rng.standard_normal((20, 6)), rng.standard_normal((25, 6)) * 1.3 + 0.4
    got = compute_metrics(a, b, ("precision", "recall"))
    assert got == {"precision": coverage_by_loops(a, b), "recall": coverage_by_loops(b, a)}
    with pytest.raises(InputError, match="k = 3 needs at least 4 clips per set, got 3"):
        manifold_coverage(real[:3], generated)


def test_trials_are_summarised_by_mean_and_population_std() -> None:
    out = summarise([{"fvd": 1.0, "kvd": 2.0}, {"fvd": 3.0, "kvd": 2.0}])
    assert out == {"fvd": 2.0, "fvd_std": 1.0, "kvd": 2.0, "kvd_std": 0.0}
    assert summarise([{"fvd": 5.0}]) == {"fvd": 5.0}
    assert parse_metrics("fvd, kvd,fvd") == ("fvd", "kvd")
    with pytest.raises(ValueError, match="unknown fid"):
        parse_metrics("fvd,fid")
