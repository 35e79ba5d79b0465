"""Annotation files: CSV with header (and its aliases), plain `path label` lists, merging, row errors, names."""
from __future__ import annotations

import pytest

from src.annotations import (AnnotationError, frame_range, label_set, parse_segment_name, read_annotations,
                             resolve_video, segment_name)


def _write(tmp_path, text, name="ann.csv"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_csv_with_segments_labels_and_splits(tmp_path):
    path = _write(tmp_path, "video,label,start,end,split\n"
                            "a/day1.mp4,cut;stir,12,15.5,train\n"
                            "a/day1.mp4, stir ,20,21,Validation\n"
                            "b.mp4,pour,,,test\n")
    rows = read_annotations(path)
    assert [(r.video, r.labels, r.start, r.end, r.split, r.error) for r in rows] == [
        ("a/day1.mp4", ("cut", "stir"), 12.0, 15.5, "train", None),
        ("a/day1.mp4", ("stir",), 20.0, 21.0, "val", None),
        ("b.mp4", ("pour",), None, None, "test", None),
    ]
    assert rows[0].is_segment and not rows[2].is_segment
    assert rows[1].where == f"{path}:3"
    assert label_set(rows) == ["cut", "pour", "stir"]


def test_kinetics_style_columns_and_same_segment_rows_merge(tmp_path):
    path = _write(tmp_path, "label,youtube_id,time_start,time_end,split\n"
                            "abseiling,--07WQ2iBlw,1,11,train\n"
                            "climbing,--07WQ2iBlw,1,11,train\n"
                            "abseiling,--33Lscn6sk,4,14,validate\n")
    rows = read_annotations(path)
    assert len(rows) == 2
    assert rows[0].labels == ("abseiling", "climbing") and (rows[0].start, rows[0].end) == (1.0, 11.0)
    assert rows[1].split == "val"


def test_plain_list_mmaction_style_and_natural_label_order(tmp_path):
    path = _write(tmp_path, "# comment\nsome/v1.mp4 10\nv2.avi 2 3\n\n", name="list.txt")
    rows = read_annotations(path)
    assert [(r.video, r.labels) for r in rows] == [("some/v1.mp4", ("10",)), ("v2.avi", ("2", "3"))]
    assert label_set(rows) == ["2", "3", "10"]


def test_bad_rows_are_errors_naming_file_and_line_others_kept(tmp_path):
    path = _write(tmp_path, "video,label,start,end,split\n"
                            "v.mp4,,0,1,train\n"          # empty label
                            "v.mp4,a,0,1,holdout\n"       # unknown split
                            "v.mp4,a,3,2,train\n"         # end before start
                            "v.mp4,a,x,2,train\n"         # not a number
                            "v.mp4,a,1,,train\n"          # start without end
                            "v.mp4,a,-1,2,train\n"        # negative
                            "v.mp4,a,0,1,train\n")
    rows = read_annotations(path)
    errors = [r.error for r in rows]
    assert errors[-1] is None and all(errors[:-1])
    assert errors[0] == f"{path}:2: empty label"
    assert "unknown split 'holdout'" in errors[1] and errors[1].startswith(f"{path}:3: ")
    assert "not after start" in errors[2] and "'x'" in errors[3] and "both start and end" in errors[4]
    assert "-1" in errors[5]


@pytest.mark.parametrize("text, message", [
    ("", "no annotations"),
    ("clip,category\na.mp4,x\n", "no video or label column"),
    ("video,label,start\na.mp4,x,1\n", "has start but not end"),
])
def test_unusable_files_are_one_clear_error(tmp_path, text, message):
    with pytest.raises(AnnotationError, match=message):
        read_annotations(_write(tmp_path, text))


def test_segment_names_read_back():
    name = segment_name("day1", 12.0, 15.5)
    assert name == "day1_12000-15500ms"
    assert parse_segment_name(name) == ("day1", 12.0, 15.5)
    assert parse_segment_name("my_clip_2-3ms_x") is None
    assert parse_segment_name(segment_name("a_1-2ms", 0.04, 1.0)) == ("a_1-2ms", 0.04, 1.0)


def test_frame_range_at_25_fps():
    # frames k with start <= k / 25 < end
    assert frame_range(2.0, 4.0, 25.0) == (50, 100)
    assert frame_range(0.1, 0.3, 25.0) == (3, 8)
    assert frame_range(0.0, 0.01, 25.0) == (0, 1)
    assert frame_range(0.041, 0.079, 25.0) == (2, 2)  # between two frames: empty


def test_videos_resolve_with_or_without_extension(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "clip.mp4").write_bytes(b"")
    assert resolve_video(tmp_path, "x/clip.mp4") == tmp_path / "x" / "clip.mp4"
    assert resolve_video(tmp_path, "x/clip") == tmp_path / "x" / "clip.mp4"
    assert resolve_video(tmp_path, "x/other") is None
    for pattern in ("x/*", "x/c*", "x/cli?", "x/[c]lip"):  # a name, not a pattern matching clip.mp4
        assert resolve_video(tmp_path, pattern) is None, pattern
