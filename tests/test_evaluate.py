"""evaluate.py as a user runs it: options refused in one line before any work."""
from __future__ import annotations

import subprocess
import sys

import pytest

from src.training.evaluation import evaluate_run
from src.training.runs import TrainingError
from tests.conftest import REPO, call_main


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args, needle", [(["--clips", "0"], "--clips"), (["--clips", "-3"], "--clips"),
                                          (["--crops", "0"], "--crops"), (["--crops", "-1"], "--crops")])
def test_clip_and_crop_counts_are_checked_in_one_line(tmp_path, args, needle, monkeypatch, capsys):
    code, _, err = call_main("evaluate.py", [str(tmp_path / "run"), *args], monkeypatch, capsys)
    assert code == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0], err


def test_evaluate_run_refuses_zero_clips_before_loading(tmp_path):
    with pytest.raises(TrainingError, match="--clips 0: must be 1 or more"):
        evaluate_run(tmp_path / "run", clips=0)
    with pytest.raises(TrainingError, match="--crops 2"):
        evaluate_run(tmp_path / "run", crops=2)
