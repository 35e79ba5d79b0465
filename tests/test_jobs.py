"""The plumbing shared by the batch jobs: names that become paths, paths that must stay inside a folder, shards."""
from __future__ import annotations

import os

import pytest

from src.jobs import check_writable, inside, parse_shard, path_component, prepare_folder, take_shard


@pytest.mark.parametrize("name", ["walk", "arm wrestling", "hurling (sport)", "día_1", "a.b", "..a", "x" * 255])
def test_ordinary_names_are_one_path_component(name):
    assert path_component(name) == name


@pytest.mark.parametrize("name, why", [
    ("", "empty"), ("   ", "empty"), (".", "folder itself"), ("..", "folder itself"),
    ("../../ESCAPED", "separator"), ("/some/dir/ABS", "separator"), ("a/b", "separator"), ("a\\b", "separator"),
    ("walk\nfast", "control character"), ("nul\0name", "control character"), ("tab\there", "control character"),
    ("é" * 128, "longer than a file name"),
])
def test_names_that_are_not_one_component_are_refused(name, why):
    with pytest.raises(ValueError, match=why):
        path_component(name, "label")


def test_inside_judges_the_names_not_the_links(tmp_path):
    root = tmp_path / "raw"
    (root / "sub").mkdir(parents=True)
    (root / "link").symlink_to(tmp_path)  # the user's own link inside RAW_DIR is trusted
    for path in ("a.mp4", "sub/../a.mp4", "sub/x/../../b.mp4", str(root / "c.mp4"), "link/other.mp4"):
        assert inside(root, path), path
    for path in ("../outside.mp4", "sub/../../x.mp4", "/etc/passwd", "../../../../etc/passwd", str(tmp_path / "raw2")):
        assert not inside(root, path), path


def test_shards_partition_by_the_sort_key_whatever_the_input_order():
    items = [f"v{i}" for i in range(11)]
    shards = [take_shard(list(reversed(items)), (i, 3), key=lambda s: int(s[1:])) for i in (1, 2, 3)]
    assert shards[0] == ["v0", "v3", "v6", "v9"] and shards[2] == ["v2", "v5", "v8"]
    assert sorted(x for s in shards for x in s) == sorted(items)
    assert parse_shard("2/4") == (2, 4)
    for text in ("0/4", "5/4", "2", "a/b"):
        with pytest.raises(ValueError, match="--shard"):
            parse_shard(text)


def test_writability_is_checked_without_leaving_anything(tmp_path):
    target = tmp_path / "new" / "deeper" / "f.npy"
    check_writable(target)  # missing folders are made, nothing else is left
    assert target.parent.is_dir() and not list(target.parent.iterdir())
    with pytest.raises(OSError, match="No such file"):
        check_writable(tmp_path / "missing" / "f.npy", create_folders=False)
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    with pytest.raises(OSError, match="cannot be written"):
        check_writable(blocker / "f.npy")
    with pytest.raises(OSError):
        prepare_folder(blocker / "sub")
    assert prepare_folder(tmp_path / "made") == tmp_path / "made" and os.listdir(tmp_path / "made") == []
