"""pre-process.py against hostile or broken input: nothing written outside OUT_DIR or read outside RAW_DIR, finite
numbers, one recipe per OUT_DIR across shards, manifests and arrays never trusted blindly (issue 17)."""
from __future__ import annotations

import csv
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.preprocess import Options, PreprocessError, run
from tests.test_preprocess import _cli, _one_line_error

REPO = Path(__file__).resolve().parent.parent
RGB = ("--modalities", "rgb", "--size", "32", "--workers", "1", "--no-disk-check")


def _files_under(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.fixture
def recordings(tmp_path: Path, shared: Path) -> tuple[Path, Path]:
    """tmp/work/raw/rec/day1.mp4 (3 frames) and a video beside RAW_DIR, tmp/work/outside.mp4."""
    work = tmp_path / "work"
    (work / "raw" / "rec").mkdir(parents=True)
    shutil.copy(shared / "videos" / "video_0.mov", work / "raw" / "rec" / "day1.mp4")
    shutil.copy(shared / "videos" / "video_0.mov", work / "outside.mp4")
    return work, work / "raw"


def test_annotation_labels_and_videos_never_leave_out_dir(recordings, tmp_path):
    work, raw = recordings
    absolute = tmp_path / "some" / "dir" / "ABS"
    ann = work / "ann.csv"
    ann.write_text("video,label,start,end,split\n"  # other times on each row: rows of one segment would merge
                   "rec/day1.mp4,../../ESCAPED_LABEL,0,0.04,train\n"
                   f"rec/day1.mp4,{absolute},0,0.05,train\n"
                   "rec/day1.mp4,..,0,0.06,train\n"
                   "rec/day1.mp4,a/b,0,0.07,train\n"
                   "rec/x/..,walk,,,train\n"
                   "../outside.mp4,walk,,,train\n"
                   f"{work / 'outside.mp4'},walk,,,train\n"
                   "../../../../etc/passwd,walk,,,train\n"
                   '"rec/day1.mp4","walk\nfast",0,0.08,train\n'
                   "rec/day1.mp4,walk,0,0.12,train\n")
    out = work / "out"
    before = _files_under(tmp_path)
    result = _cli("--annotations", str(ann), str(raw), str(out), *RGB)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    failed = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("FAILED ")]
    assert len(failed) == 9, failed  # one line per refused row, each naming its file and line
    for line_number in range(2, 11):
        assert sum(f"ann.csv:{line_number}:" in line for line in failed) == 1, (line_number, failed)
    assert any("path separator" in f for f in failed) and any("outside RAW_DIR" in f for f in failed)
    assert any("control character" in f for f in failed)  # the quoted label with a newline is not 'walkfast'
    written = _files_under(tmp_path) - before
    assert written and all(out in p.parents for p in written), sorted(written - {p for p in written if out in p.parents})
    assert not absolute.exists() and not (tmp_path / "ESCAPED_LABEL").exists()
    assert (out / "classes.txt").read_text() == "walk\n"  # only the usable row's label
    assert [p.name for p in (out / "train" / "walk").iterdir()] == ["day1_0-120ms"]
    with open(out / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sum(r["status"] == "failed" for r in rows) == 9 and sum(r["status"] == "done" for r in rows) == 1


def test_outside_videos_are_read_only_when_asked(recordings):
    work, raw = recordings
    ann = work / "ann.csv"
    ann.write_text("video,label,split\n../outside.mp4,walk,train\nrec/day1.mp4,walk,val\n")
    out = work / "out"
    assert _cli("--annotations", str(ann), str(raw), str(out), *RGB).returncode == 1
    assert not (out / "train" / "walk" / "outside").exists()
    result = _cli("--annotations", str(ann), str(raw), str(out), *RGB, "--allow-outside-raw-dir")
    assert result.returncode == 0, result.stderr
    assert np.load(out / "train" / "walk" / "outside" / "rgb-SampleRate_1.npy").shape[0] == 3


def test_a_class_folder_named_with_a_newline_is_refused(tmp_path, shared):
    raw = tmp_path / "raw"
    for cls in ("walk", "run", "bad\nname"):
        (raw / cls).mkdir(parents=True)
        shutil.copy(shared / "videos" / "video_0.mov", raw / cls / "clip.mov")
        shutil.copy(shared / "videos" / "video_0.mov", raw / cls / "clip2.mov")
    out = tmp_path / "out"
    messages: list[str] = []
    assert run(raw, out, Options(modalities=("rgb",), size=32, val_ratio=0.5), log=messages.append) == 2
    assert (out / "classes.txt").read_text() == "run\nwalk\n"
    assert sorted(p.name for p in (out / "train").iterdir()) == ["run", "walk"]


def test_header_only_and_unreadable_annotation_files_are_one_line(recordings):
    work, raw = recordings
    header_only = work / "empty.csv"
    header_only.write_text("video,label,start,end\n")
    _one_line_error(_cli("--annotations", str(header_only), str(raw), str(work / "o1"), *RGB), "empty.csv",
                    "no rows after the header")
    broken = work / "nul.csv"
    broken.write_bytes(b"video,label\nrec/day1.mp4,\xff\xfe walk\n")
    _one_line_error(_cli("--annotations", str(broken), str(raw), str(work / "o2"), *RGB), "nul.csv")


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_rates_must_be_finite(recordings, value):
    work, raw = recordings
    for option in ("--fps", "--folder-fps"):
        _one_line_error(_cli(str(raw), str(work / "out"), *RGB, f"{option}={value}"), option, "finite")
    assert not (work / "out").exists()


def test_shards_with_another_recipe_are_refused_before_any_work(tmp_path, shared):
    raw = tmp_path / "raw"
    for cls in ("a", "b"):
        (raw / cls).mkdir(parents=True)
        for i in range(2):
            shutil.copy(shared / "videos" / "video_0.mov", raw / cls / f"v{i}.mov")
    out = tmp_path / "out"
    assert _cli(str(raw), str(out), *RGB, "--shard", "1/2", "--fps", "25").returncode == 0
    before = _files_under(out)
    message = _one_line_error(_cli(str(raw), str(out), *RGB, "--shard", "2/2", "--fps", "10"), "--fps 25 (now 10)",
                              "recipe.json")
    assert "another OUT_DIR or --overwrite" in message
    assert _files_under(out) == before  # shard 2 wrote nothing: the datasets never mix two recipes
    assert _cli(str(raw), str(out), *RGB, "--shard", "2/2", "--fps", "25").returncode == 0
    assert _cli(str(raw), str(out), *RGB, "--sample-rate", "2").returncode == 0  # another rate: its own files


def test_broken_manifest_rows_and_arrays_are_redone_with_a_warning(tmp_path, shared):
    raw = tmp_path / "raw"
    (raw / "a").mkdir(parents=True)
    for i in range(4):
        shutil.copy(shared / "videos" / "video_0.mov", raw / "a" / f"v{i}.mov")
    out = tmp_path / "out"
    opts = Options(modalities=("rgb",), size=32, val_ratio=0, disk_check=False)
    assert run(raw, out, opts, log=lambda m: None) == 0
    manifest = out / "manifest.csv"
    lines = manifest.read_text().splitlines(keepends=True)
    assert len(lines) == 5
    arrays = {i: out / "train" / "a" / f"v{i}" / "rgb-SampleRate_1.npy" for i in range(4)}
    stamps = {i: p.stat().st_mtime_ns for i, p in arrays.items()}
    # v0 row cut mid-row, v1 row with a NUL byte, v2's array truncated; v3 untouched
    rows = {line.split(",")[0].rsplit("/", 1)[-1]: line for line in lines[1:]}
    text = lines[0] + rows["v0.mov"][:40] + "\n" + rows["v1.mov"].replace("train", "tr\0ain") + rows["v2.mov"] + \
        rows["v3.mov"]
    manifest.write_text(text)
    data = arrays[2].read_bytes()
    arrays[2].write_bytes(data[: len(data) // 2])
    messages: list[str] = []
    assert run(raw, out, opts, log=messages.append) == 0
    warnings = [m for m in messages if m.startswith("warning: ")]
    assert len(warnings) == 3, messages
    assert any("rgb-SampleRate_1.npy: not a complete .npy array" in w for w in warnings)
    # rows that do not parse are rebuilt from their complete arrays; the truncated array is made again
    assert any("3 already done, 1 to do" in m for m in messages), messages
    assert arrays[3].stat().st_mtime_ns == stamps[3] and arrays[2].stat().st_mtime_ns != stamps[2]
    assert np.load(arrays[2]).shape == np.load(arrays[3]).shape
    with open(manifest, newline="") as f:
        reread = list(csv.DictReader(f))
    assert len(reread) == 4 and all(r["status"] == "done" and "\0" not in r["split"] for r in reread)
    with pytest.raises(PreprocessError, match="recipe.json: cannot be read"):
        (out / "recipe.json").write_text("{not json")
        run(raw, out, opts, log=lambda m: None)


def test_decoding_workers_start_without_torch():
    """A spawned worker re-imports pre-process.py as __mp_main__ and then the job's modules before it can set up
    dying with its parent; without torch that window stays short (torch alone takes seconds on a loaded machine)."""
    code = ("import runpy, sys; runpy.run_path('pre-process.py', run_name='__mp_main__'); "
            "import src.preprocess.item, src.preprocess.batched_flow, src.jobs.workers; print('torch' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "False", result.stderr
