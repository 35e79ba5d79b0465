"""Feature extraction under faults (issue 17): non-finite options, a killed parent, shards of different recipes,
damaged records, symlink loops, NaN arrays and names that cannot be paths; each a one-line error or a right result."""
from __future__ import annotations

import csv
import math
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

from src.extraction import ExtractionError, FeatureConfig, find_inputs, run
from tests.conftest import REPO


def cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "extract_features.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def fast(**kw) -> FeatureConfig:
    """In-process, small windows: a 4-frame folder makes one window."""
    return FeatureConfig(**{"precision": "fp32", "workers": 0, "batch": 4, "window": 4, "stride": 4, **kw})


def rows(out_dir: Path) -> dict[str, dict[str, str]]:
    with open(out_dir / "features.csv", newline="") as f:
        return {r["name"]: r for r in csv.DictReader(f)}


def frame_folders(root: Path, names: list[str], frames: int = 4) -> Path:
    """Frame folders of 224x224 PNGs cut from cleaning_pool.mp4 (different frames for each)."""
    cap = cv2.VideoCapture(str(REPO.parent / "shared" / "data" / "videos" / "cleaning_pool.mp4"))
    for name in names:
        folder = root / name
        folder.mkdir(parents=True)
        for i in range(frames):
            ok, frame = cap.read()
            assert ok
            cv2.imwrite(str(folder / f"{i:04d}.png"), frame[16:240, 58:282])
    return root


class Log(list):
    """A log= callback that keeps the lines."""

    def __call__(self, line: str) -> None:
        self.append(line)


# ----- numbers are finite

@pytest.mark.parametrize("value", ["inf", "nan"])
def test_non_finite_fps_is_one_line_naming_fps(shared, tmp_path, value):
    """--fps inf used to be accepted and never finish (0/1 videos after 60 s)."""
    result = cli(str(shared / "videos" / "video_0.mov"), "--out-dir", str(tmp_path / "d"), "--fps", value, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip().count("\n") == 0 and "--fps" in result.stderr and value in result.stderr
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("option, value", [("fps", math.inf), ("fps", math.nan), ("fps", -math.inf),
                                           ("window", math.nan), ("stride", math.inf), ("batch", math.nan),
                                           ("workers", 1.5)])
def test_config_refuses_non_finite_and_non_integer_values(option, value):
    with pytest.raises(ExtractionError, match=f"^--{option} must be"):
        FeatureConfig(**{option: value}).validate()


def test_a_run_whose_input_fps_is_not_finite_is_refused(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text('{"input_fps": Infinity}')  # what json.dumps writes for inf
    with pytest.raises(ExtractionError, match="config.json: input_fps must be a positive finite number"):
        run([tmp_path], tmp_path / "out", fast(checkpoint=str(run_dir)), log=lambda *_: None)


# ----- processes: a killed parent leaves no decoder; shards of another recipe are refused

def children(pid: int) -> list[int]:
    """Pids whose parent is `pid` (from /proc/*/stat; the name in parentheses may hold spaces)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def reading(pid: int, files: set[str]) -> bool:
    """Whether process `pid` has one of `files` open (a decoder at work)."""
    try:
        return any(os.path.realpath(fd) in files for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads processes from /proc (Linux)")
def test_kill_9_of_the_parent_leaves_no_decoding_process(shared, tmp_path):
    """kill -9 of extract_features.py --workers 1 used to leave its decoder blocked on a full pipe for good."""
    videos = tmp_path / "videos"
    videos.mkdir()
    clips = [shared / "videos" / n for n in ("arm_wrestling.mp4", "cleaning_pool.mp4")]
    for copy in range(3):
        for clip in clips:
            os.symlink(clip, videos / f"{clip.stem}_{copy}{clip.suffix}")
    proc = subprocess.Popen([sys.executable, "extract_features.py", str(videos), "--out-dir", str(tmp_path / "f"),
                             "--workers", "1", "--precision", "fp32"], cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    targets = {os.path.realpath(c) for c in clips}
    spawned: set[int] = set()
    try:
        deadline = time.monotonic() + 240
        while not any(reading(pid, targets) for pid in spawned):  # a decoder is at work: the case that hung
            assert proc.poll() is None and time.monotonic() < deadline, "no decoding process started"
            spawned |= set(children(proc.pid))
            time.sleep(0.1)
        spawned |= set(children(proc.pid))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        deadline = time.monotonic() + 3
        while any(alive(pid) for pid in spawned) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not [pid for pid in spawned if alive(pid)], "processes outlived their killed parent"
    finally:
        proc.kill()
        for pid in spawned:
            if alive(pid):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_shards_started_together_with_different_strides_do_not_mix(tmp_path):
    """Two shards at once into one folder, --stride 4 and --stride 2: one runs, the other is refused in one line."""
    videos = frame_folders(tmp_path / "videos", [f"f{i}" for i in range(4)], frames=6)
    common = [str(videos), "--out-dir", str(tmp_path / "f"), "--window", "4", "--workers", "0", "--precision", "fp32"]
    procs = [subprocess.Popen([sys.executable, "extract_features.py", *common, "--shard", f"{i}/2", "--stride", stride],
                              cwd=REPO, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for i, stride in ((1, "4"), (2, "2"))]
    outputs = [p.communicate(timeout=300) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 1], outputs
    refused = next(err for p, (_, err) in zip(procs, outputs) if p.returncode == 1).strip()
    assert refused.count("\n") == 0 and "Traceback" not in refused
    assert "was started with --stride" in refused and "use another --out-dir or --overwrite" in refused
    table = rows(tmp_path / "f")
    assert len(table) == 2 and len({r["stride"] for r in table.values()}) == 1  # only the winner's shard, one stride


# ----- features.csv is checked when read

@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """Three frame folders and their finished features (the folder to copy and damage)."""
    root = tmp_path_factory.mktemp("done")
    videos = frame_folders(root / "videos", ["f0", "f1", "f2"])
    summary = run([videos], root / "out", fast(), log=lambda *_: None)
    assert summary.done == 3
    return videos, root / "out"


def cut_mid_row(out: Path) -> str:
    text = (out / "features.csv").read_text()
    (out / "features.csv").write_text(text[:text.rindex("f2_rgb.npy")])  # the last row stops in its outputs
    return "f2"


def stray_quote(out: Path) -> str:
    text = (out / "features.csv").read_text()
    (out / "features.csv").write_text(text.replace("\nf1,", '\n"f1,'))  # opens a quoted field over the next lines
    return "f1"


def nul_in_a_name(out: Path) -> str:
    text = (out / "features.csv").read_text()
    (out / "features.csv").write_text(text.replace("\nf1,", "\nf\x001,"))
    return "f1"


def truncated_array(out: Path) -> str:
    data = (out / "f2_rgb.npy").read_bytes()
    (out / "f2_rgb.npy").write_bytes(data[:len(data) // 2])
    return "f2"


@pytest.mark.parametrize("damage", [cut_mid_row, stray_quote, nul_in_a_name, truncated_array])
def test_damaged_records_are_redone_with_a_warning(finished, tmp_path, damage):
    videos, done = finished
    out = tmp_path / "out"
    shutil.copytree(done, out)
    redo = damage(out)
    log = Log()
    summary = run([videos], out, fast(), log=log)
    assert (summary.done, summary.skipped, summary.failed) == (1, 2, 0)
    warnings = [line for line in log if line.startswith("warning:")]
    assert len(warnings) == 1 and "\n" not in warnings[0] and "features.csv" in warnings[0]
    table = rows(out)
    assert set(table) == {"f0", "f1", "f2"} and all(r["status"] == "ok" for r in table.values())
    assert "\x00" not in (out / "features.csv").read_text()
    assert np.load(out / f"{redo}_rgb.npy").shape == (1, 1024)
    assert run([videos], out, fast(), log=lambda *_: None).skipped == 3  # clean again: nothing redone


# ----- inputs: symlink loops, NaN arrays, names that cannot be paths

def test_a_symlink_loop_does_not_repeat_videos(shared, tmp_path):
    """`mkdir -p in/sub && ln -s .. in/sub/back` used to turn 3 videos into 123."""
    from src.jobs import walk_files  # new: imported here so that the other tests run on older code too

    root = tmp_path / "in"
    (root / "sub").mkdir(parents=True)
    for name in ("video_0.mov", "video_90.mov"):
        os.symlink(shared / "videos" / name, root / name)
    os.symlink(shared / "videos" / "arm_wrestling.mp4", root / "sub" / "arm_wrestling.mp4")
    os.symlink("..", root / "sub" / "back")
    assert [v.name for v in find_inputs([root])] == ["sub/arm_wrestling", "video_0", "video_90"]
    found = walk_files(root, lambda p: p.suffix == ".mov")
    assert found == [root / "video_0.mov", root / "video_90.mov"]


def test_nan_in_a_preprocessed_array_fails_that_item_only(tmp_path):
    root = tmp_path / "data"
    clean = np.zeros((4, 224, 224, 3), np.float32)
    broken = clean.copy()
    broken[2, 10, 10, 0] = np.nan
    for name, array in (("a", broken), ("b", clean)):
        (root / "train" / "c" / name).mkdir(parents=True)
        np.save(root / "train" / "c" / name / "rgb-SampleRate_1.npy", array)
    (root / "manifest.csv").write_text("source,class,split,name,status,fps,sample_rate\n"
                                       "a.mp4,c,train,a,done,25,1\nb.mp4,c,train,b,done,25,1\n")
    log = Log()
    summary = run([root], tmp_path / "out", fast(), log=log)
    assert (summary.done, summary.failed) == (1, 1)
    status = rows(tmp_path / "out")["train/c/a"]["status"]
    assert status.startswith("failed: ") and "rgb-SampleRate_1.npy: frame 2 holds NaN or infinite values" in status
    assert not (tmp_path / "out" / "train" / "c" / "a_rgb.npy").exists()
    assert np.isfinite(np.load(tmp_path / "out" / "train" / "c" / "b_rgb.npy")).all()


def test_names_with_control_characters_are_refused_the_rest_goes_on(shared, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    os.symlink(shared / "videos" / "video_0.mov", folder / "good.mov")
    os.symlink(shared / "videos" / "video_0.mov", folder / "new\nline.mov")
    listed = tmp_path / "list.txt"
    listed.write_text(f"{folder / 'good.mov'}\n{folder / 'nul'}\x00.mov\n")
    for inputs, bad in (([folder], "new\\nline"), ([listed], "nul\\x00")):
        out = tmp_path / f"out-{bad[:3]}"
        log = Log()
        summary = run(inputs, out, fast(window=16, stride=16), log=log)
        assert (summary.done, summary.failed) == (1, 1)
        failed = [line for line in log if line.startswith("FAILED")]
        assert len(failed) == 1 and "has a control character" in failed[0] and bad in failed[0]
        text = (out / "features.csv").read_text()
        assert text.count("\n") == 3 and "\x00" not in text  # header + 2 rows, each one line
        assert set(rows(out)) == {"good", bad} and sorted(p.name for p in out.iterdir() if p.suffix == ".npy") == \
            ["good_rgb.npy", "good_times.npy"]


def test_an_explicit_precision_this_cpu_lacks_is_one_line_before_any_work(shared, tmp_path):
    from src.inference import cpu_bf16_unsupported

    why = cpu_bf16_unsupported()
    if not why:
        pytest.skip("this CPU runs bf16 convolutions: --precision bf16 is allowed here")
    for form in (["--out-dir", str(tmp_path / "d")], ["--out", str(tmp_path / "f.npy")]):
        result = cli(str(shared / "videos" / "video_0.mov"), *form, "--precision", "bf16")
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        assert result.returncode == 1 and len(lines) == 1 and "--precision bf16" in lines[0], result.stderr
    assert not (tmp_path / "d").exists() and not (tmp_path / "f.npy").exists()
