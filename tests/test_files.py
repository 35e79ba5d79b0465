"""atomic_write: the target is absent, old or complete; temporary names are unique per process and call."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from src.dataset import load_array
from src.jobs.files import PARTIAL_SUFFIX, atomic_write, save_array_atomic
from tests.conftest import REPO


def test_success_replaces_target_with_normal_permissions(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent and tmp.name.endswith(PARTIAL_SUFFIX)
        assert f".{os.getpid()}." in tmp.name and not target.exists()
        tmp.write_bytes(b"new")
    assert target.read_bytes() == b"new" and os.listdir(target.parent) == ["out.bin"]
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600


def test_failure_keeps_old_file_and_leaves_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"
    target.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_write(target) as tmp:
            tmp.write_bytes(b"half")
            raise KeyboardInterrupt
    assert target.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]


def test_nested_writers_of_one_target_get_their_own_temporary(tmp_path: Path) -> None:
    target = tmp_path / "out.npy"
    with atomic_write(target) as a, atomic_write(target) as b:
        assert a != b and a.exists() and b.exists()
        a.write_bytes(b"a")
        b.write_bytes(b"b")
    assert target.read_bytes() == b"a"  # the outer one finished last


WRITER = """
import sys
import numpy as np
from src.jobs.files import save_array_atomic
value = int(sys.argv[2])
for _ in range(20):
    save_array_atomic(sys.argv[1], np.full((256, 256), value, dtype=np.float32) / 255)
"""


def test_two_processes_writing_one_array_never_mix(tmp_path: Path) -> None:
    target = tmp_path / "rgb-SampleRate_1.npy"
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(target), str(v)], cwd=REPO) for v in (10, 200)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    arr = load_array(target)
    assert arr.shape == (256, 256) and np.unique(arr).size == 1  # one writer's whole array, not a mixture
    assert os.listdir(tmp_path) == [target.name]


def test_save_array_atomic_round_trip(tmp_path: Path) -> None:
    arr = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    save_array_atomic(tmp_path / "a.npy", arr)
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), arr)
    save_array_atomic(tmp_path / "fps.npy", np.array(29.97))  # a 0-d array stays 0-d (video_features' fps file)
    assert np.load(tmp_path / "fps.npy").shape == () and float(np.load(tmp_path / "fps.npy")) == 29.97
    save_array_atomic(tmp_path / "t.npy", arr.T)  # a transposed view is stored in C order
    loaded = np.load(tmp_path / "t.npy")
    np.testing.assert_array_equal(loaded, arr.T)
    assert loaded.flags.c_contiguous
