"""FVD's inputs when they are hostile or wrong: .npz/.npy headers declaring more than the file holds, zip bombs,
truncated archives, statistics that are not a Gaussian's, metadata that is not JSON, unit slips in pixel values,
options a statistics file cannot honour, clips that need only part of a long video, and Ctrl-C.

Every hostile file is made here from code (the bad-input campaign of issue 27 made the same ones)."""
from __future__ import annotations

import io
import json
import os
import signal
import struct
import subprocess
import sys
import time
import tracemalloc
import zipfile
from pathlib import Path

import numpy as np
import pytest

from src.clips import InputError
from src.fvd import Protocol, activation_statistics, frechet_distance, load_statistics, save_statistics
from src.fvd.clips import clip_starts, read_clips
from src.fvd.inputs import VideoEntry, open_set
from tests.conftest import REPO, call_main

SHA = "ab" * 32


def npy_header(shape: tuple, descr: str) -> bytes:
    """A version 1.0 .npy header declaring `shape` and `descr`, padded as numpy pads it."""
    text = "{'descr': '%s', 'fortran_order': False, 'shape': %r, }" % (descr, tuple(shape))
    text += " " * ((64 - (10 + len(text) + 1) % 64) % 64) + "\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(text)) + text.encode("latin1")


def npy_bytes(array: np.ndarray) -> bytes:
    """An array as the bytes of an .npy file."""
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def stats_file(path: Path, mean: np.ndarray | bytes, covariance: np.ndarray | bytes, meta: str | dict | None = None,
               deflated: bool = False) -> Path:
    """A statistics .npz written member by member (arrays, or raw member bytes)."""
    if meta is None or isinstance(meta, dict):
        meta = json.dumps({"format": 1, "n": 10, "protocol": Protocol().as_dict(), "weights": "rgb_scratch",
                           "weights_sha256": SHA, **(meta or {})})
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if deflated else zipfile.ZIP_STORED) as archive:
        for name, value in (("mean", mean), ("covariance", covariance), ("fvd_meta", np.array(meta))):
            archive.writestr(name + ".npy", value if isinstance(value, bytes) else npy_bytes(value))
    return path


def good_stats(rng: np.random.Generator, d: int = 400) -> tuple[np.ndarray, np.ndarray]:
    """A mean and a proper covariance of d dimensions."""
    x = rng.standard_normal((30, d))
    return x.mean(0), np.cov(x, rowvar=False)


# ---------------------------------------------------------------------------------------------- array files


def test_npz_members_declaring_more_than_they_hold_are_refused_from_the_header(tmp_path: Path) -> None:
    petabytes = tmp_path / "huge5d.npz"  # 26.6 PiB declared in a 1 KB member: numpy allocated first, then failed
    with zipfile.ZipFile(petabytes, "w") as archive:
        archive.writestr("videos.npy", npy_header((100000, 100000, 1000, 1000, 3), "|u1") + b"\0" * 1024)
    with pytest.raises(InputError, match=r"huge5d.npz: array 'videos' declares shape \(100000, 100000, 1000, 1000, 3\) "
                                         r"uint8 \(30,000,000,000,000,000 bytes\) but holds 1,024 bytes"):
        open_set(str(petabytes))
    mean, _ = good_stats(np.random.default_rng(0))
    huge_cov = stats_file(tmp_path / "huge_cov.npz", mean, npy_header((1000000, 1000000), "<f8") + b"\0" * 64)
    with pytest.raises(InputError, match=r"huge_cov.npz: array 'covariance' declares shape \(1000000, 1000000\) "
                                         r"float64 \(8,000,000,000,000 bytes\) but holds 64 bytes"):
        load_statistics(huge_cov)
    claims = stats_file(tmp_path / "claims.npz", mean, npy_header((400, 400), "<f8") + b"\0" * 64)
    with pytest.raises(InputError, match=r"claims.npz: array 'covariance' declares shape \(400, 400\) float64 "
                                         r"\(1,280,000 bytes\) but holds 64 bytes"):
        load_statistics(claims)


def test_a_zip_bombed_covariance_is_refused_before_it_is_decompressed(tmp_path: Path) -> None:
    mean, _ = good_stats(np.random.default_rng(1))
    bomb = stats_file(tmp_path / "bomb.npz", mean, np.zeros((4000, 4000)), deflated=True)  # 128 MB in ~130 KB
    assert bomb.stat().st_size < 1_000_000
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=r"bomb.npz: array 'covariance' has shape \(4000, 4000\); "
                                             r"expected \(400, 400\)"):
            load_statistics(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16_000_000, f"{peak:,} bytes allocated while refusing it"


def test_truncated_and_non_zip_archives_are_one_line_errors(tmp_path: Path) -> None:
    mean, covariance = good_stats(np.random.default_rng(2))
    whole = stats_file(tmp_path / "whole.npz", mean, covariance)
    data = whole.read_bytes()
    (tmp_path / "half.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=r"half.npz: not a readable .npz \(zip\) file \(BadZipFile"):
        load_statistics(tmp_path / "half.npz")
    np.savez(tmp_path / "videos.npz", videos=np.zeros((2, 9, 8, 8, 3), np.uint8))
    data = (tmp_path / "videos.npz").read_bytes()
    (tmp_path / "cut.npz").write_bytes(data[:len(data) // 2])
    with pytest.raises(InputError, match=r"cut.npz: not a readable .npz \(zip\) file"):
        open_set(str(tmp_path / "cut.npz"))
    # a member whose data stops early (the zip directory intact)
    with zipfile.ZipFile(tmp_path / "short.npz", "w") as archive:
        archive.writestr("videos.npy", npy_header((2, 16, 64, 64, 3), "|u1") + b"\0" * 100)
    with pytest.raises(InputError, match=r"short.npz: array 'videos' declares shape \(2, 16, 64, 64, 3\)"):
        open_set(str(tmp_path / "short.npz"))


# ---------------------------------------------------------------------------------------------- statistics


def test_statistics_that_are_not_a_gaussians_are_refused_by_name(tmp_path: Path) -> None:
    mean, covariance = good_stats(np.random.default_rng(3))
    nan_mean = mean.copy()
    nan_mean[3] = np.nan
    inf_cov = covariance.copy()
    inf_cov[0, 0] = np.inf
    skew = covariance.copy()
    skew[0, 1] += 1.0
    cases = {"nan_mean": (nan_mean, covariance, r"the mean holds 1 non-finite value"),
             "inf_cov": (mean, inf_cov, r"the covariance holds 1 non-finite value"),
             "negative": (mean, -1000 * np.eye(400),
                          r"the covariance is not positive semi-definite \(eigenvalue -1000"),
             "skew": (mean, skew, r"the covariance is not symmetric")}
    for name, (m, c, message) in cases.items():
        path = stats_file(tmp_path / f"{name}.npz", m, c)
        with pytest.raises(InputError, match=rf"{name}.npz: {message}"):
            load_statistics(path)
    # a proper one, rank-deficient as every covariance of fewer clips than 400 is, loads
    assert load_statistics(stats_file(tmp_path / "fine.npz", mean, covariance)).n == 10


def test_the_distance_refuses_non_finite_statistics_and_results() -> None:
    mean, covariance = good_stats(np.random.default_rng(4), d=5)
    with pytest.raises(ValueError, match="the second mean holds NaN or infinite values"):
        frechet_distance(mean, covariance, np.full(5, np.nan), covariance)
    with pytest.raises(ValueError, match="came out inf"):
        frechet_distance(mean, covariance, mean + 1e200, covariance)  # the squared difference overflows


@pytest.mark.parametrize("meta, message", [
    (json.dumps({"n": 10, "protocol": {**Protocol().as_dict(), "frames": 16}}).replace("16", "Infinity"),
     r"fvd_meta is not valid JSON \(ValueError: Infinity is not a JSON number\)"),
    ('{"n": 1e400, "protocol": %s}' % json.dumps(Protocol().as_dict()),
     r"not a readable FVD statistics file \(OverflowError"),
    ("[" * 100000 + "]" * 100000, r"array 'fvd_meta' of shape \(\) <U200000 is 800,000 bytes, more than the"),
    ("[" * 30000 + "]" * 30000, r"fvd_meta is not valid JSON \(RecursionError"),
    ("[1, 2]", r"fvd_meta is a JSON list, not an object"),
])
def test_metadata_that_is_not_bounded_json_is_one_line(tmp_path: Path, meta: str, message: str) -> None:
    mean, covariance = good_stats(np.random.default_rng(5))
    path = stats_file(tmp_path / "meta.npz", mean, covariance, meta)
    with pytest.raises(InputError, match=rf"meta.npz: {message}"):
        load_statistics(path)


# ---------------------------------------------------------------------------------------------- fvd.py options


def saved_pair(tmp_path: Path, protocol: Protocol) -> tuple[str, str]:
    """Two statistics files saved under `protocol` with the same weights."""
    rng = np.random.default_rng(6)
    paths = []
    for name, shift in (("a.npz", 0.0), ("b.npz", 0.5)):
        stats = activation_statistics(rng.standard_normal((20, 400)) + shift, protocol, SHA)
        save_statistics(stats, tmp_path / name)
        paths.append(str(tmp_path / name))
    return paths[0], paths[1]


def test_options_two_statistics_files_cannot_honour_are_refused(tmp_path: Path, monkeypatch, capsys) -> None:
    a, b = saved_pair(tmp_path, Protocol(frames=16))
    code, out, err = call_main("fvd.py", [a, b, "--frames", "32", "--clips-per-video", "3"], monkeypatch, capsys)
    assert code == 1 and out == "" and err.count("\n") == 1
    assert "a.npz and " in err and "are statistics files: --clips-per-video 3, --frames 32 cannot apply" in err
    code, out, err = call_main("fvd.py", [a, b, "--max-videos", "5"], monkeypatch, capsys)
    assert code == 1 and "--max-videos 5 cannot apply" in err
    # an option recording what the files were made under is accepted
    code, out, err = call_main("fvd.py", [a, b, "--frames", "16", "--json"], monkeypatch, capsys)
    assert code == 0, err
    assert json.loads(out)["frames"] == 16 and json.loads(out)["fvd"] > 0


def test_save_stats_refuses_one_file_twice_and_other_suffixes(tmp_path: Path, monkeypatch, capsys) -> None:
    np.save(tmp_path / "a.npy", np.zeros((2, 9, 8, 8, 3), np.uint8))
    a = str(tmp_path / "a.npy")
    same = str(tmp_path / "x.npz")
    code, out, err = call_main("fvd.py", [a, a, "--save-stats", same, os.path.join(tmp_path, ".", "x.npz")],
                               monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "one file for both sets; B's statistics would replace A's" in err
    code, out, err = call_main("fvd.py", [a, "--save-stats", str(tmp_path / "out.stats")], monkeypatch, capsys)
    assert code == 1 and "out.stats: statistics are saved as .npz" in err and "out.npz" in err
    assert not list(tmp_path.glob("*.npz")) and not list(tmp_path.glob("*.stats"))


# ---------------------------------------------------------------------------------------------- pixel values


def test_unit_slips_in_pixel_values_are_refused_early_or_warned(tmp_path: Path, monkeypatch, capsys, caplog) -> None:
    rng = np.random.default_rng(7)
    real = rng.integers(0, 256, (2, 9, 16, 16, 3), dtype=np.uint8)
    np.save(tmp_path / "real.npy", real)
    np.save(tmp_path / "overshoot.npy", (real / 255 * 1.05 - 0.02).astype(np.float32))  # [-0.02, 1.03]
    np.save(tmp_path / "binary.npy", np.round(real / 255).astype(np.uint8))  # [0, 1] cast without x255

    def no_network(*args, **kwargs):
        raise AssertionError("a set went through the network before the values were checked")

    with monkeypatch.context() as patch:
        patch.setattr("src.fvd.pipeline.Embedding", no_network)
        code, out, err = call_main("fvd.py", [str(tmp_path / "real.npy"), str(tmp_path / "overshoot.npy"),
                                              "--frames", "all", "--workers", "0"], monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1, err
    assert "overshoot.npy[0]: values span [-0.02, 1.03], which looks like [0, 1] or [-1, 1]" in err
    code, out, err = call_main("fvd.py", [str(tmp_path / "real.npy"), str(tmp_path / "binary.npy"), "--frames",
                                          "all", "--workers", "0", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "binary.npy: every value of its 2 clips lies in [0, 1] (uint8)" in w], warnings
    assert not [w for w in warnings if "real.npy" in w]
    caplog.clear()  # the sampled protocols' job warns the same
    code, out, err = call_main("fvd.py", [str(tmp_path / "real.npy"), str(tmp_path / "binary.npy"), "--protocol",
                                          "stylegan-v", "--frames", "9", "--workers", "0", "--quiet"], monkeypatch, capsys)
    assert code == 0, err
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert [w for w in warnings if "binary.npy: every value of its 2 clips lies in [0, 1] (uint8)" in w], warnings
    assert not [w for w in warnings if "real.npy: every value" in w]


# ---------------------------------------------------------------------------------------------- bounded work


def test_random_clips_keep_only_the_frames_they_use(tmp_path: Path) -> None:
    import cv2

    rng = np.random.default_rng(8)
    frames = rng.integers(0, 256, (150, 240, 320, 3), dtype=np.uint8)
    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(frames):  # PNG: lossless, so the clips must be the frames themselves
        cv2.imwrite(str(folder / f"{i:04d}.png"), frame[..., ::-1], [cv2.IMWRITE_PNG_COMPRESSION, 0])
    protocol = Protocol(frames=16, clips_per_video=2, start=None, seed=3)
    tracemalloc.start()
    try:
        clips = read_clips(VideoEntry(folder), protocol, 5)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    starts = clip_starts(150, protocol, 5, "v")
    assert clips.shape == (2, 16, 240, 320, 3)
    for clip, start in zip(clips, starts):
        np.testing.assert_array_equal(clip, frames[start:start + 16])
    # the video is 34.6 MB decoded; two clips' frames (at most 32 kept plus the stacked clips) take 14.7 MB
    assert peak < 20_000_000, f"{peak:,} bytes: more frames were kept than the clips use"


def test_clips_per_video_is_bounded_by_the_distinct_starts_before_drawing() -> None:
    protocol = Protocol(frames=16, clips_per_video=10**12, start=None, seed=0)
    with pytest.raises(InputError, match=r"^v.mp4: 100 frames allow at most 85 distinct clip starts of --frames 16; "
                                         r"--clips-per-video 1000000000000 asks for more"):
        clip_starts(100, protocol, 0, "v.mp4")
    assert len(clip_starts(100, Protocol(frames=16, clips_per_video=85, start=None, seed=0), 0, "v")) == 85


def test_ctrl_c_prints_one_line_and_exits_130(tmp_path: Path, shared: Path) -> None:
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(8):
        (videos / f"v{i}.mp4").symlink_to(shared / "videos" / "arm_wrestling.mp4")
    saved = [tmp_path / "a.npz", tmp_path / "b.npz"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "fvd.py", str(videos), str(videos), "--workers", "2",
                                "--save-stats", *map(str, saved)], cwd=REPO, env=env, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    os.set_blocking(process.stderr.fileno(), False)
    seen, deadline = b"", time.monotonic() + 120
    while b"0/8" not in seen and time.monotonic() < deadline and process.poll() is None:
        seen += process.stderr.read() or b""
        time.sleep(0.05)
    time.sleep(1.0)  # the workers are decoding (and importing) now
    os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in a terminal does: the whole process group
    os.set_blocking(process.stderr.fileno(), True)
    out, err = process.communicate(timeout=120)
    text = (seen + err).decode()
    assert process.returncode == 130, text
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip() and "clip" not in line]
    assert lines == ["interrupted: nothing half-written (statistics and activations files already saved are complete)"], lines
    assert not any(p.exists() for p in saved) and not list(tmp_path.glob("*.part*"))


def test_a_folder_in_codepoint_order_as_stylegan_v_lists_it(tmp_path: Path) -> None:
    """StyleGAN-V and Latte take the first N videos in Python's sorted() order of their paths, not natural order."""
    for name in ("v2.npy", "v10.npy", "V3.npy"):
        np.save(tmp_path / name, np.zeros((9, 4, 4, 3), np.uint8))
    names = {order: [item.path.name for item in open_set(str(tmp_path), order=order).items]
             for order in ("natural", "codepoint")}
    assert names["codepoint"] == ["V3.npy", "v10.npy", "v2.npy"]
    assert names["natural"].index("v2.npy") < names["natural"].index("v10.npy")
