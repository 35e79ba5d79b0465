"""The batch pipeline on real clips: layout, recipe values, storage, split, resume, failures, shards, CLI."""
from __future__ import annotations

import csv
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from src.dataset import load_array
from src.jobs.files import save_array_atomic
from src.media.transforms import decode_array, encode_array
from src.preprocess import Options, PreprocessError, RawItem, assign_splits, discover, run

REPO = Path(__file__).resolve().parent.parent
FAST = dict(size=64, flow="dis", workers=1, disk_check=True)


def _raw(tmp_path: Path, shared: Path, layout: dict[str, list[str]]) -> Path:
    raw = tmp_path / "raw"
    for cls, files in layout.items():
        (raw / cls).mkdir(parents=True)
        for f in files:
            src, _, dest = f.partition(":")
            shutil.copy(shared / "videos" / src, raw / cls / (dest or src))
    return raw


def _manifest(path: Path) -> dict[str, dict[str, str]]:
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f)}


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*") if p.is_file())


def test_layout_shapes_and_values(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"wrestling": ["arm_wrestling.mp4", "video_0.mov"], "pool": ["video_90.mov", "unordered.mov"]})
    out = tmp_path / "out"
    assert run(raw, out, Options(val_ratio=0.5, **FAST), log=lambda m: None) == 0
    assert (out / "classes.txt").read_text() == "pool\nwrestling\n"
    rows = _manifest(out / "manifest.csv")
    assert set(rows) == {"arm_wrestling", "video_0", "video_90", "unordered"}
    arm = rows["arm_wrestling"]
    folder = out / arm["split"] / "wrestling" / "arm_wrestling"
    rgb, flow = np.load(folder / "rgb-SampleRate_1.npy"), np.load(folder / "flow-SampleRate_1.npy")
    assert rgb.shape == (250, 64, 85, 3) and flow.shape == (249, 64, 85, 2)
    assert rgb.dtype == np.float32 and -1 <= rgb.min() and rgb.max() <= 1 and np.abs(flow).max() <= 1
    assert arm["frames_written"] == "250" and arm["rgb_shape"] == "250x64x85x3" and arm["source_fps"] == "28.000"
    # First frame, computed here straight from OpenCV: bilinear resize to short side 64, x/255*2-1.
    cap = cv2.VideoCapture(str(shared / "videos" / "arm_wrestling.mp4"))
    first = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
    expected = cv2.resize(first, (85, 64), interpolation=cv2.INTER_LINEAR) / 255 * 2 - 1
    np.testing.assert_allclose(rgb[0], expected, atol=1e-6)
    upright = np.load(out / rows["video_90"]["split"] / "pool" / "video_90" / "rgb-SampleRate_1.npy")
    assert upright.shape == (3, round(568 * 64 / 320), 64, 3)  # portrait: 320 wide x 568 high, short side 64
    assert not list(out.rglob("*.part"))


def test_crop_sample_rate_uint8(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["arm_wrestling.mp4"], "b": ["cleaning_pool.mp4"]})
    out = tmp_path / "out"
    opts = Options(crop=56, sample_rate=2, dtype="uint8", modalities=("rgb", "flow"), **FAST)
    assert run(raw, out, opts, log=lambda m: None) == 0
    folder = out / "train" / "a" / "arm_wrestling"
    stored = np.load(folder / "rgb-SampleRate_2.npy")
    assert stored.dtype == np.uint8 and stored.shape == (125, 56, 56, 3)
    assert np.load(folder / "flow-SampleRate_2.npy").shape == (124, 56, 56, 2)
    rgb = load_array(folder / "rgb-SampleRate_2.npy")
    assert rgb.dtype == np.float32 and rgb.min() >= -1 and rgb.max() <= 1
    cap = cv2.VideoCapture(str(shared / "videos" / "arm_wrestling.mp4"))
    frames = [cap.read()[1] for _ in range(3)]
    # Kept frame 1 is 25-fps frame 2, i.e. source frame 2 (2 * 28 / 25 = 2.24 rounds to 2).
    small = cv2.resize(cv2.cvtColor(frames[2], cv2.COLOR_BGR2RGB), (85, 64), interpolation=cv2.INTER_LINEAR)
    top, left = (64 - 56) // 2, (85 - 56) // 2
    np.testing.assert_allclose(rgb[1], small[top : top + 56, left : left + 56] / 255 * 2 - 1, atol=1e-6)


def test_uint8_storage_round_trip():
    pixels = np.arange(256, dtype=np.uint8)
    x = pixels / 255 * 2 - 1
    assert np.array_equal(encode_array(x, "uint8"), pixels)  # RGB is lossless
    assert np.array_equal(encode_array(x.astype(np.float32), "uint8"), pixels)
    np.testing.assert_allclose(decode_array(pixels), x, atol=1e-7)
    flow = np.random.default_rng(0).uniform(-1, 1, 100_000).astype(np.float32)
    err = np.abs(decode_array(encode_array(flow, "uint8")) - flow)
    assert err.max() <= 1 / 255 + 1e-6 and err.max() > 0.9 / 255  # half a step of 2/255
    assert np.abs(decode_array(encode_array(flow, "float16")) - flow).max() <= 2**-11
    with pytest.raises(ValueError, match="dtype"):
        encode_array(flow, "int8")


def test_save_array_atomic_and_load(tmp_path):
    target = tmp_path / "a" / "rgb-SampleRate_1.npy"
    save_array_atomic(target, np.full((2, 3), 255, np.uint8))
    assert np.array_equal(load_array(target), np.ones((2, 3), np.float32)) and os.listdir(target.parent) == [target.name]
    (tmp_path / "bad.npy").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.npy"):
        load_array(tmp_path / "bad.npy")


def _fake_items(counts: dict[str, int]) -> list[RawItem]:
    return [RawItem(Path(f"/raw/{c}/clip{i}.mp4"), c, f"clip{i}") for c, n in counts.items() for i in range(n)]


def test_split_is_deterministic_and_stratified():
    counts = {"a": 10, "b": 5, "c": 1, "d": 2}
    first, second, other = _fake_items(counts), _fake_items(counts), _fake_items(counts)
    assign_splits(first, 0.2, seed=7)
    assign_splits(list(reversed(second)), 0.2, seed=7)  # order of discovery must not matter
    assign_splits(other, 0.2, seed=8)
    assert [i.split for i in first] == [i.split for i in second]
    assert [i.split for i in first] != [i.split for i in other]
    val = {c: sum(1 for i in first if i.cls == c and i.split == "val") for c in counts}
    # round(n * 0.2), at least one where a class has two items (round(0.4) is 0), one train item always kept
    assert val == {"a": 2, "b": 1, "c": 0, "d": 1}
    note = assign_splits(_fake_items({"a": 10, "d": 2, "e": 2, "f": 1}), 0.2, seed=7)
    assert note == "2 class(es) too small for --val-ratio 0.2 to give a val item got one each (d, e)"
    assert assign_splits(_fake_items({"d": 2}), 0.0, seed=7) == ""  # --val-ratio 0 still means no val
    big = _fake_items({"a": 3})
    assign_splits(big, 0.9, seed=0)
    assert sum(i.split == "train" for i in big) == 1


def test_existing_split_is_kept_and_media_filtered(shared, tmp_path):
    raw = tmp_path / "raw"
    for split, cls, clip in [("train", "x", "video_0.mov"), ("val", "x", "unordered.mov"), ("test", "y", "video_90.mov"), ("train", "y", "video_0.mov")]:
        (raw / split / cls).mkdir(parents=True, exist_ok=True)
        shutil.copy(shared / "videos" / clip, raw / split / cls / clip)
    (raw / "train" / "x" / "notes.txt").write_text("hello")
    (raw / "train" / "x" / ".hidden.mp4").write_bytes(b"")
    (raw / "train" / "x" / "empty_folder").mkdir()
    found = discover(raw)
    assert {(i.split, i.cls, i.name) for i in found.items} == {
        ("train", "x", "video_0"), ("val", "x", "unordered"), ("test", "y", "video_90"), ("train", "y", "video_0")}
    assert found.presplit and found.classes == ["x", "y"]
    notes = "\n".join(found.notes)
    assert "notes.txt" in notes and ".hidden.mp4" in notes and "empty_folder" in notes
    out = tmp_path / "out"
    assert run(raw, out, Options(**FAST), log=lambda m: None) == 0
    assert (out / "test" / "y" / "video_90" / "rgb-SampleRate_1.npy").exists()
    (raw / "val").rename(raw / "validation")
    with pytest.raises(PreprocessError, match="no val/"):
        discover(raw)


def test_frame_folders_in_natural_order(shared, tmp_path):
    cap = cv2.VideoCapture(str(shared / "videos" / "arm_wrestling.mp4"))
    series = tmp_path / "raw" / "cls" / "Series1"
    series.mkdir(parents=True)
    frames = []
    for i in range(12):
        frame = cap.read()[1][::4, ::4]  # 64 high, 85 wide: already the output size
        frames.append(frame)
        cv2.imwrite(str(series / f"pic{i + 1}.{'png' if i % 2 else 'bmp'}"), frame)
    shutil.copy(shared / "videos" / "video_0.mov", tmp_path / "raw" / "cls" / "clip.mov")
    out = tmp_path / "out"
    assert run(tmp_path / "raw", out, Options(val_ratio=0, **FAST), log=lambda m: None) == 0
    rgb = load_array(out / "train" / "cls" / "Series1" / "rgb-SampleRate_1.npy")
    assert rgb.shape == (12, 64, 85, 3)
    expected = np.stack([cv2.cvtColor(f, cv2.COLOR_BGR2RGB) for f in frames]) / 255 * 2 - 1
    np.testing.assert_allclose(rgb, expected, atol=1e-6)  # pic2 before pic10


def test_corrupted_and_unreadable_inputs_are_reported(shared, tmp_path, capsys):
    raw = _raw(tmp_path, shared, {"a": ["corrupted.mp4", "video_0.mov"], "b": ["video_90.mov"]})
    (raw / "b" / "broken.avi").write_bytes(b"\x00" * 5000)
    (raw / "b" / "empty.mp4").write_bytes(b"")
    out = tmp_path / "out"
    failed = run(raw, out, Options(val_ratio=0, **FAST), log=print)
    assert failed == 2
    rows = _manifest(out / "manifest.csv")
    assert rows["corrupted"]["status"] == "done" and "28 of the 50" in rows["corrupted"]["message"]
    assert rows["corrupted"]["frames_written"] == "70"
    for name in ("broken", "empty"):
        assert rows[name]["status"] == "failed" and f"{name}." in rows[name]["message"]
        assert not (out / "train" / "b" / name).exists()
    assert rows["video_0"]["status"] == rows["video_90"]["status"] == "done"
    printed = capsys.readouterr()
    assert "FAILED" in printed.out + printed.err and "broken.avi" in printed.out + printed.err


def test_too_short_item_fails_cleanly(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov", "arm_wrestling.mp4"]})
    out = tmp_path / "out"
    assert run(raw, out, Options(val_ratio=0, fps=5, **FAST), log=lambda m: None) == 1
    assert "too short" in _manifest(out / "manifest.csv")["video_0"]["message"]


def test_resume_skips_finished_and_removes_stale_temp_files(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov", "unordered.mov"], "b": ["video_90.mov"]})
    out = tmp_path / "out"
    opts = Options(val_ratio=0, **FAST)
    assert run(raw, out, opts, log=lambda m: None) == 0
    done = out / "train" / "a" / "video_0" / "rgb-SampleRate_1.npy"
    stamp = done.stat().st_mtime_ns
    # Simulate a run killed while writing: one item lost its flow, a stale temp file is left over.
    unfinished = out / "train" / "b" / "video_90"
    (unfinished / "flow-SampleRate_1.npy").unlink()
    (unfinished / "flow-SampleRate_1.npy.part").write_bytes(b"half written")
    (out / "train" / "a" / "video_0" / "rgb-SampleRate_1.npy.part").write_bytes(b"stale")
    messages: list[str] = []
    assert run(raw, out, opts, log=messages.append) == 0
    assert any("2 already done, 1 to do" in m for m in messages)
    assert done.stat().st_mtime_ns == stamp
    assert np.load(unfinished / "flow-SampleRate_1.npy").shape == (2, round(568 * 64 / 320), 64, 2)
    assert not list(out.rglob("*.part"))
    assert len(_manifest(out / "manifest.csv")) == 3
    assert run(raw, out, Options(val_ratio=0, overwrite=True, **FAST), log=lambda m: None) == 0
    assert done.stat().st_mtime_ns != stamp


@pytest.mark.slow
def test_resume_after_killed_process(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["arm_wrestling.mp4:a1.mp4", "arm_wrestling.mp4:a2.mp4"], "b": ["cleaning_pool.mp4:b1.mp4"]})
    out = tmp_path / "out"
    cmd = [sys.executable, str(REPO / "pre-process.py"), str(raw), str(out), "--size", "32", "--fps", "1",
           "--val-ratio", "0", "--workers", "1", "--flow-compile", "no"]  # the eager TV-L1 port: killed mid-item
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.time() + 120
        while time.time() < deadline and len(list(out.rglob("flow-SampleRate_1.npy"))) < 1:
            time.sleep(0.1)
        finished = list(out.rglob("flow-SampleRate_1.npy"))
        assert finished, "the first item never finished"
        time.sleep(0.5)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    first_dir = finished[0].parent
    stamps = {p: p.stat().st_mtime_ns for p in first_dir.iterdir()}
    messages: list[str] = []
    assert run(raw, out, Options(fps=1, size=32, val_ratio=0, workers=1), log=messages.append) == 0
    assert {p: p.stat().st_mtime_ns for p in first_dir.iterdir()} == stamps
    assert any("1 already done, 2 to do" in m or "2 already done, 1 to do" in m for m in messages)
    assert len(list(out.rglob("*.npy"))) == 6 and not list(out.rglob("*.part"))


def _splits(manifest: Path) -> dict[tuple[str, str], str]:
    with open(manifest, newline="") as f:
        return {(r["class"], r["name"]): r["split"] for r in csv.DictReader(f)}


def test_shards_partition_items(shared, tmp_path):
    clips = ["video_0.mov:c1.mov", "video_90.mov:c2.mov", "unordered.mov:c3.mov", "video_0.mov:c4.mov"]
    raw = _raw(tmp_path, shared, {"a": clips, "b": clips[:3]})
    out = tmp_path / "out"
    opts = dict(FAST, modalities=("rgb",))
    splits = {}
    for i in (1, 2, 3):
        assert run(raw, out, Options(shard=(i, 3), **opts), log=lambda m: None) == 0
        splits[i] = _splits(out / f"manifest-shard{i}of3.csv")
    keys = [set(s) for s in splits.values()]
    assert sum(len(k) for k in keys) == 7 and len(set.union(*keys)) == 7
    assert len(list(out.rglob("rgb-SampleRate_1.npy"))) == 7
    assert (out / "classes.txt").read_text() == "a\nb\n"
    whole = tmp_path / "whole"
    run(raw, whole, Options(**opts), log=lambda m: None)
    merged = {k: v for s in splits.values() for k, v in s.items()}
    assert merged == _splits(whole / "manifest.csv")
    assert _splits(out / "manifest.csv") == merged  # each shard merged the shard manifests present


def test_bad_jobs_are_refused(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"]})
    with pytest.raises(PreprocessError, match="inside"):
        run(raw, raw / "out", Options(**FAST), log=lambda m: None)
    out = tmp_path / "out"
    out.mkdir()
    (out / "classes.txt").write_text("something else\n")
    with pytest.raises(PreprocessError, match="classes.txt"):
        run(raw, out, Options(**FAST), log=lambda m: None)
    with pytest.raises(PreprocessError, match="crop"):
        run(raw, out, Options(crop=300, **FAST), log=lambda m: None)


def test_cli_help_default_layout_and_tvl1(shared, tmp_path):
    script = str(REPO / "pre-process.py")
    help_text = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, check=True).stdout
    assert "--val-ratio" in help_text and "pre-process.py my_raw my_out" in help_text and "0.078" in help_text
    empty = subprocess.run([sys.executable, script], cwd=tmp_path, capture_output=True, text=True)
    assert empty.returncode == 1 and "data/videos/raw" in empty.stderr
    raw = tmp_path / "data" / "videos" / "raw" / "keys"
    raw.mkdir(parents=True)
    for clip in ("video_0.mov", "video_90.mov"):
        shutil.copy(shared / "videos" / clip, raw / clip)
    done = subprocess.run([sys.executable, script, "--size", "32", "--workers", "2"], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    out = tmp_path / "data" / "videos" / "pre-processed"
    rows = _manifest(out / "manifest.csv")
    assert {r["flow_algorithm"] for r in rows.values()} == {"tvl1"}
    flow = np.load(out / "train" / "keys" / "video_0" / "flow-SampleRate_1.npy")
    assert flow.shape == (2, 32, 57, 2) and np.abs(flow).max() <= 1


def test_rerun_with_another_recipe_is_refused_not_skipped(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"], "b": ["video_90.mov"]})
    out = tmp_path / "out"
    assert run(raw, out, Options(val_ratio=0, **FAST), log=lambda m: None) == 0
    before = {p: p.stat().st_mtime_ns for p in _outputs(out)}
    with pytest.raises(PreprocessError, match=r"--flow dis \(now farneback\).*--overwrite"):
        run(raw, out, Options(val_ratio=0, **{**FAST, "flow": "farneback"}), log=lambda m: None)
    with pytest.raises(PreprocessError, match=r"--size 64 \(now 96\)"):
        run(raw, out, Options(val_ratio=0, **{**FAST, "size": 96}), log=lambda m: None)
    assert {p: p.stat().st_mtime_ns for p in _outputs(out)} == before  # nothing touched
    # another sample rate writes other files beside these, and leaving out flow is no conflict
    assert run(raw, out, Options(val_ratio=0, sample_rate=2, **FAST), log=lambda m: None) == 0
    assert run(raw, out, Options(val_ratio=0, modalities=("rgb",), **FAST), log=lambda m: None) == 0
    assert run(raw, out, Options(val_ratio=0, overwrite=True, **{**FAST, "flow": "farneback"}), log=lambda m: None) == 0
    assert {r["flow_algorithm"] for r in _manifest(out / "manifest.csv").values()} == {"farneback"}


# --- issue 12: one-line errors, locks, concurrent shards, killed runs, full disks, the seed layout ---

SCRIPT = str(REPO / "pre-process.py")


def _cli(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=300, **kw)


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> str:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def test_unwritable_out_dir_is_one_line(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"]})
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _cli(str(raw), str(blocker / "out"), "--modalities", "rgb", "--size", "32")
    _one_line_error(result, str(blocker / "out"), "cannot be written")


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_out_dir_is_one_line(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"]})
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = _cli(str(raw), str(locked / "out"), "--modalities", "rgb", "--size", "32")
    _one_line_error(result, "Permission denied")


def test_empty_class_folder_is_noted(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"], "b": ["video_90.mov"]})
    (raw / "nothing_here").mkdir()
    (raw / "only_junk").mkdir()
    (raw / "only_junk" / "readme.txt").write_text("no media")
    messages: list[str] = []
    assert run(raw, tmp_path / "out", Options(val_ratio=0, **{**FAST, "modalities": ("rgb",)}), log=messages.append) == 0
    notes = [m for m in messages if "empty class folder" in m]
    assert len(notes) == 2 and any("nothing_here" in m for m in notes) and any("only_junk" in m for m in notes)
    assert (tmp_path / "out" / "classes.txt").read_text() == "a\nb\n"


def test_second_run_into_a_locked_out_dir_is_refused(shared, tmp_path):
    from src.jobs.lock import FolderLock
    from src.preprocess.options import JOB, TOOL

    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"], "b": ["video_90.mov"]})
    out = tmp_path / "out"
    out.mkdir()
    with FolderLock(out, (1, 1), JOB, TOOL):  # stands for a run in progress, held by this process
        result = _cli(str(raw), str(out), "--modalities", "rgb", "--size", "32")
        _one_line_error(result, f"pid {os.getpid()}", "another pre-process.py")
        shard = _cli(str(raw), str(out), "--modalities", "rgb", "--size", "32", "--shard", "1/2")
        _one_line_error(shard, f"pid {os.getpid()}")
        assert not list(out.rglob("*.npy"))
    with FolderLock(out, (2, 2), JOB, TOOL):  # a shard of 2 leaves shard 1/2 free, but not another split or a whole run
        with pytest.raises(PreprocessError, match=rf"shard 2/2, pid {os.getpid()}"):
            run(raw, out, Options(shard=(1, 3), **{**FAST, "modalities": ("rgb",)}), log=lambda m: None)
        assert run(raw, out, Options(shard=(1, 2), val_ratio=0, **{**FAST, "modalities": ("rgb",)}), log=lambda m: None) == 0
    # A killed run leaves its lock file and temporary files behind: they are taken over / removed.
    (out / ".preprocess-shard1of1.lock").write_text("999999999\n")
    (out / "classes.txt.part").write_text("old-style leftover")
    (out / "manifest.csv.999999999.0a1b2c3d.part").write_text("a dead run's")
    with FolderLock(out, (1, 2), JOB, TOOL):  # while another run is on the folder, its temporary files are left alone
        assert run(raw, out, Options(shard=(2, 2), val_ratio=0, **{**FAST, "modalities": ("rgb",)}), log=lambda m: None) == 0
        assert len(list(out.glob("*.part"))) == 2
    assert run(raw, out, Options(val_ratio=0, **{**FAST, "modalities": ("rgb",)}), log=lambda m: None) == 0
    assert not list(out.glob("*.part")) and not (out / ".preprocess-shard1of1.lock").exists()
    assert (out / "classes.txt").stat().st_mode & 0o044 == 0o044  # readable by others, unlike a mkstemp file


def test_concurrent_shards_merge_into_one_manifest(shared, tmp_path):
    clips = ["video_0.mov:c1.mov", "video_90.mov:c2.mov", "unordered.mov:c3.mov"]
    raw = _raw(tmp_path, shared, {"a": clips, "b": clips})
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, str(raw), str(out), "--size", "32", "--flow", "farneback", "--workers", "1"]
    procs = [subprocess.Popen([*cmd, "--shard", f"{i}/2"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True) for i in (1, 2)]
    results = [p.communicate(timeout=300) for p in procs]
    for proc, (_, err) in zip(procs, results):
        assert proc.returncode == 0, err
    rows = _manifest(out / "manifest.csv")
    with open(out / "manifest.csv", newline="") as f:
        keys = {(r["class"], r["name"]) for r in csv.DictReader(f) if r["status"] == "done"}
    assert keys == {(c, n) for c in "ab" for n in ("c1", "c2", "c3")}
    assert len(list(out.rglob("rgb-SampleRate_1.npy"))) == len(list(out.rglob("flow-SampleRate_1.npy"))) == 6
    assert not list(out.rglob("*.part")) and not list(out.glob(".preprocess-shard*.lock"))
    assert {r["flow_algorithm"] for r in rows.values()} == {"farneback"}
    from src.dataset import read_classes, scan_split
    found = [it for s in ("train", "val") if (out / s).is_dir() for it in scan_split(out, s, read_classes(out), "joint")]
    assert len(found) == 6


def _children(pid: int) -> list[int]:
    """Live processes whose parent is `pid` (from /proc)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_workers_end_when_the_parent_is_killed(shared, tmp_path):
    raw = _raw(tmp_path, shared, {"a": ["arm_wrestling.mp4"], "b": ["cleaning_pool.mp4"]})
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, str(raw), str(out), "--size", "64", "--workers", "2", "--val-ratio", "0",
           "--flow-compile", "no"]  # the eager TV-L1 port: slow enough to be killed while computing
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    workers: list[int] = []
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            workers = [k for k in _children(proc.pid) if b"spawn_main" in Path(f"/proc/{k}/cmdline").read_bytes()]
            if len(workers) == 2:
                break
            time.sleep(0.2)
        assert len(workers) == 2, "the two workers never started"
        time.sleep(2)  # let them get into decoding / TV-L1
        assert all(_alive(w) for w in workers)
        proc.kill()  # SIGKILL to the parent only, as `kill -9 PID`
        proc.wait()
        deadline = time.time() + 5
        while time.time() < deadline and any(_alive(w) for w in workers):
            time.sleep(0.1)
        assert not any(_alive(w) for w in workers), "workers outlived their killed parent"
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    # The killed run's lock went with it: a rerun is not refused and finishes the job.
    assert run(raw, out, Options(size=64, val_ratio=0, flow="farneback", workers=1, overwrite=True), log=lambda m: None) == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
@pytest.mark.parametrize("writer", ["tofile", "save"])
def test_full_disk_is_reported_as_such(shared, tmp_path, monkeypatch, writer):
    import src.preprocess.item as pre

    def write_to_full_disk(path, arr):  # the kernel's own ENOSPC; numpy's tofile reports it without errno
        with open("/dev/full", "wb", buffering=0 if writer == "save" else -1) as f:
            arr.tofile(f) if writer == "tofile" else np.save(f, arr)

    monkeypatch.setattr(pre, "save_array_atomic", write_to_full_disk)
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov", "unordered.mov"]})
    out = tmp_path / "out"
    with pytest.raises(PreprocessError) as caught:
        run(raw, out, Options(val_ratio=0, **{**FAST, "modalities": ("rgb",), "disk_check": False}), log=lambda m: None)
    message = str(caught.value)
    assert message.startswith("disk full while writing ") and "rgb-SampleRate_1.npy" in message
    assert "\n" not in message and "unexpected" not in message and "rerun" in message
    rows = _manifest(out / "manifest.csv")
    assert len(rows) == 1 and next(iter(rows.values()))["message"].startswith("disk full while writing")
# ---------------------------------------------------------------- annotation files: segments of long recordings

def _annotated(tmp_path: Path, shared: Path, csv_text: str) -> tuple[Path, Path]:
    raw = tmp_path / "raw"
    raw.mkdir()
    for name in ("arm_wrestling.mp4", "cleaning_pool.mp4"):
        shutil.copy(shared / "videos" / name, raw / name)
    ann = tmp_path / "ann.csv"
    ann.write_text(csv_text)
    return raw, ann


def test_segments_are_the_same_frames_as_the_whole_video_decoded_once(shared, tmp_path, monkeypatch):
    import src.preprocess.item as pp
    # arm_wrestling.mp4: 280 frames at 28 fps = 10 s, i.e. 250 frames at 25 fps
    raw, ann = _annotated(tmp_path, shared, "video,label,start,end,split\n"
                                            "arm_wrestling.mp4,wrestle,2.0,4.0,train\n"
                                            "arm_wrestling.mp4,wrestle;arms,0.1,0.3,train\n"
                                            "arm_wrestling.mp4,arms,9.5,10.0,val\n"
                                            "cleaning_pool.mp4,pool,,,train\n")
    decodes = []

    class Counting(pp.FrameStream):
        def __iter__(self):
            decodes.append(self.path.name)
            return super().__iter__()

    monkeypatch.setattr(pp, "FrameStream", Counting)
    out = tmp_path / "out"
    assert run(raw, out, Options(**FAST), log=lambda m: None, annotations=ann) == 0
    assert sorted(decodes) == ["arm_wrestling.mp4", "cleaning_pool.mp4"]   # one decode per video
    assert (out / "classes.txt").read_text() == "arms\npool\nwrestle\n"

    whole_raw = _raw(tmp_path / "w", shared, {"c": ["arm_wrestling.mp4"]})
    assert run(whole_raw, tmp_path / "whole", Options(val_ratio=0, **FAST), log=lambda m: None) == 0
    whole = tmp_path / "whole" / "train" / "c" / "arm_wrestling"
    rgb, flow = np.load(whole / "rgb-SampleRate_1.npy"), np.load(whole / "flow-SampleRate_1.npy")
    assert len(rgb) == 250
    for split, cls, name, first, count in [("train", "wrestle", "arm_wrestling_2000-4000ms", 50, 50),
                                           ("train", "wrestle", "arm_wrestling_100-300ms", 3, 5),
                                           ("val", "arms", "arm_wrestling_9500-10000ms", 238, 12)]:
        folder = out / split / cls / name
        cut_rgb, cut_flow = np.load(folder / "rgb-SampleRate_1.npy"), np.load(folder / "flow-SampleRate_1.npy")
        assert len(cut_rgb) == count and len(cut_flow) == count - 1
        np.testing.assert_array_equal(cut_rgb, rgb[first:first + count])
        np.testing.assert_array_equal(cut_flow, flow[first:first + count - 1])
    assert (out / "train" / "wrestle" / "arm_wrestling_100-300ms" / "labels.txt").read_text() == "wrestle\narms\n"
    assert not (out / "train" / "wrestle" / "arm_wrestling_2000-4000ms" / "labels.txt").exists()
    assert np.load(out / "train" / "pool" / "cleaning_pool" / "rgb-SampleRate_1.npy").shape[0] == 250
    rows = _manifest(out / "manifest.csv")
    assert rows["arm_wrestling_100-300ms"]["labels"] == "wrestle;arms"
    assert (rows["arm_wrestling_2000-4000ms"]["start"], rows["arm_wrestling_2000-4000ms"]["end"]) == ("2.000", "4.000")

    messages = []   # a rerun finds everything done
    decodes.clear()
    assert run(raw, out, Options(**FAST), log=messages.append, annotations=ann) == 0
    assert decodes == [] and any("4 already done, 0 to do" in m for m in messages)


def test_bad_annotation_rows_are_one_line_each_and_the_rest_goes_on(shared, tmp_path):
    raw, ann = _annotated(tmp_path, shared, "video,label,start,end,split\n"
                                            "missing.mp4,pool,0,1,train\n"
                                            "arm_wrestling.mp4,wrestle,11,12,train\n"
                                            "arm_wrestling.mp4,wrestle,0,1,holdout\n"
                                            "arm_wrestling.mp4,,0,1,train\n"
                                            "arm_wrestling.mp4,wrestle,9,12,train\n"
                                            "cleaning_pool.mp4,pool,1,2,train\n")
    messages: list[str] = []
    out = tmp_path / "out"
    assert run(raw, out, Options(**FAST), log=messages.append, annotations=ann) == 4
    failed = [m for m in messages if m.startswith("FAILED")]
    assert len(failed) == 3   # the parse-time ones; the segment outside the video is reported by the bar
    assert any(f"{ann}:2:" in m and "missing.mp4: no such video" in m for m in failed)
    assert any(f"{ann}:4:" in m and "unknown split 'holdout'" in m for m in failed)
    assert any(f"{ann}:5: empty label" in m for m in failed)
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    status = {(r["name"], r["start"]): (r["status"], r["message"]) for r in rows}
    assert len(rows) == 6
    outside = status[("arm_wrestling_11000-12000ms", "11.000")]
    assert outside[0] == "failed" and f"{ann}:3: segment [11, 12) s is outside" in outside[1]
    clipped = status[("arm_wrestling_9000-12000ms", "9.000")]
    assert clipped[0] == "done" and "cut to [9, 10.00) s" in clipped[1]
    assert np.load(out / "train" / "wrestle" / "arm_wrestling_9000-12000ms" / "rgb-SampleRate_1.npy").shape[0] == 25
    assert status[("cleaning_pool_1000-2000ms", "1.000")][0] == "done"


def test_recordings_are_split_whole():
    from src.preprocess import assign_splits_by_source
    items = [RawItem(Path(f"rec{r}.mp4"), "a" if s % 2 else "b", f"rec{r}_{s}") for r in range(10) for s in range(4)]
    note = assign_splits_by_source(items, 0.2, seed=0)
    by_source: dict[Path, set] = {}
    for it in items:
        by_source.setdefault(it.source, set()).add(it.split)
    assert all(len(s) == 1 for s in by_source.values()) and "10 recordings" in note
    assert sum(s == {"val"} for s in by_source.values()) == 2


def test_cli_annotations_with_workers_and_clear_errors(shared, tmp_path):
    raw, ann = _annotated(tmp_path, shared, "video,label,start,end\n"
                                            "arm_wrestling.mp4,wrestle,1,2\n"
                                            "arm_wrestling.mp4,wrestle;arms,3,4\n"
                                            "cleaning_pool.mp4,pool,0,1\n"
                                            "cleaning_pool.mp4,pool,5,6\n"
                                            "nothing.mp4,pool,0,1\n")
    script = str(REPO / "pre-process.py")
    common = ["--size", "32", "--flow", "dis", "--workers", "2", "--val-ratio", "0.5"]
    done = subprocess.run([sys.executable, script, "--annotations", str(ann), str(raw), str(tmp_path / "out"), *common],
                          capture_output=True, text=True)
    assert done.returncode == 1, done.stderr                 # one row failed, the four others are done
    assert f"FAILED {ann}:6: " in done.stdout + done.stderr
    rows = _manifest(tmp_path / "out" / "manifest.csv")
    assert sum(r["status"] == "done" for r in rows.values()) == 4
    assert {r["split"] for r in rows.values() if r["status"] == "done"} == {"train", "val"}   # two recordings
    for name, frames in [("arm_wrestling_1000-2000ms", 25), ("cleaning_pool_5000-6000ms", 25)]:
        assert rows[name]["frames_written"] == str(frames)
    missing = subprocess.run([sys.executable, script, "--annotations", str(tmp_path / "no.csv"), str(raw),
                              str(tmp_path / "o2")], capture_output=True, text=True)
    assert missing.returncode != 0 and missing.stderr.count("\n") == 1 and "no.csv: no such file" in missing.stderr


def test_annotation_shards_keep_each_recording_in_one_shard(shared, tmp_path):
    raw, ann = _annotated(tmp_path, shared, "video,label,start,end,split\n"
                                            "arm_wrestling.mp4,wrestle,0,1,train\n"
                                            "arm_wrestling.mp4,wrestle,2,3,val\n"
                                            "cleaning_pool.mp4,pool,0,1,train\n"
                                            "cleaning_pool.mp4,pool,4,5,val\n")
    out = tmp_path / "out"
    sources = []
    for i in (1, 2):
        assert run(raw, out, Options(shard=(i, 2), size=32, flow="dis", workers=1), log=lambda m: None,
                   annotations=ann) == 0
        with open(out / f"manifest-shard{i}of2.csv", newline="") as f:
            rows = list(csv.DictReader(f))
        assert len(rows) == 2 and len({r["source"] for r in rows}) == 1   # both segments of one recording
        sources.append(rows[0]["source"])
    assert sorted(Path(s).name for s in sources) == ["arm_wrestling.mp4", "cleaning_pool.mp4"]
    assert len(_manifest(out / "manifest.csv")) == 4                          # merged by the last shard


def test_batched_tvl1_pipeline_matches_opencv_tvl1(shared, tmp_path):
    """--flow tvl1: workers decode, the parent computes flow in batches spanning items of different frame
    sizes; each stored flow agrees with OpenCV's TV-L1 on the same frames, and the recipe equals tvl1-opencv's."""
    from src.flow import FlowExtractor, rgb_to_gray
    from src.media.transforms import resize_short_side
    from src.media.video import read_frames

    raw = _raw(tmp_path, shared, {"a": ["video_0.mov", "unordered.mov"], "b": ["video_90.mov"]})
    out = tmp_path / "out"
    opts = Options(val_ratio=0, size=48, flow="tvl1", workers=1, flow_device="cpu", flow_batch=3, dtype="uint8")
    assert run(raw, out, opts, log=lambda m: None) == 0
    rows = _manifest(out / "manifest.csv")
    assert {r["status"] for r in rows.values()} == {"done"} and {r["flow_algorithm"] for r in rows.values()} == {"tvl1"}
    opencv = FlowExtractor("tvl1-opencv")
    for cls, name, suffix in [("a", "video_0", ".mov"), ("a", "unordered", ".mov"), ("b", "video_90", ".mov")]:
        frames, _ = read_frames(raw / cls / (name + suffix), 25.0)
        ref = opencv(rgb_to_gray(resize_short_side(frames, 48)))
        got = load_array(out / "train" / cls / name / "flow-SampleRate_1.npy")
        assert got.shape == ref.shape
        ref8 = decode_array(encode_array(ref, "uint8"))
        # error of the stored arrays against OpenCV's exact flow, in px: the PyTorch one adds at most 0.05 px
        # (the two uint8 arrays themselves differ by a step where flow ~ 0: see test_flow's uint8 test)
        err = [np.hypot(*(20 * (a - ref)).transpose(3, 0, 1, 2)).reshape(len(a), -1).mean(axis=1) for a in (got, ref8)]
        assert (err[0] - err[1]).max() <= 0.05, (name, err)
    # the same recipe: a rerun with OpenCV's TV-L1 is no conflict (everything is already done)
    assert run(raw, out, Options(val_ratio=0, size=48, flow="tvl1-opencv", workers=1, dtype="uint8"), log=lambda m: None) == 0
    with pytest.raises(PreprocessError, match=r"--flow tvl1 \(now farneback\)"):
        run(raw, out, Options(val_ratio=0, size=48, flow="farneback", workers=1, dtype="uint8"), log=lambda m: None)


def test_unusable_flow_device_is_one_clear_error(shared, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    raw = _raw(tmp_path, shared, {"a": ["video_0.mov"]})
    result = subprocess.run([sys.executable, str(REPO / "pre-process.py"), str(raw), str(tmp_path / "out"),
                             "--flow-device", "cuda", "--size", "32"], capture_output=True, text=True)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: --flow-device cuda:") and "Traceback" not in result.stderr
