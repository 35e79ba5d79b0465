"""Run folders: loading a finished run strictly, and what counts as a run."""
from __future__ import annotations

import json
import re
from dataclasses import asdict

import pytest
import torch
from torch import nn

from src.model import I3D
from src.training.runs import RunConfig, TrainingError, load_run, new_run_dir, stream_state_dict
from src.weights import save_state_dict


def joint_run(tmp_path, keep: tuple[str, ...] = ("rgb", "flow")):
    """A joint run folder whose best.safetensors holds the streams in `keep` (random weights)."""
    cfg = RunConfig(modality="joint", classes=["a", "b", "c"])
    (tmp_path / "config.json").write_text(json.dumps(asdict(cfg)))
    models = nn.ModuleDict({"rgb": I3D(3, 3), "flow": I3D(3, 2)})
    state = {k: v for k, v in stream_state_dict(models).items() if k.split(".")[0] in keep}
    save_state_dict(state, tmp_path / "best.safetensors")
    return state


def test_a_joint_run_loads_both_streams_exactly(tmp_path):
    state = joint_run(tmp_path)
    cfg, models = load_run(tmp_path)
    assert cfg.modality == "joint" and list(models) == ["rgb", "flow"]
    for key in ("rgb.conv3d_1a_7x7.conv.weight", "flow.conv3d_1a_7x7.conv.weight", "flow.conv3d_0c_1x1.conv.bias"):
        stream, name = key.split(".", 1)
        assert torch.equal(models[stream].state_dict()[name], state[key])


def test_a_joint_run_missing_a_stream_is_refused_in_one_line(tmp_path):
    joint_run(tmp_path, keep=("rgb",))
    with pytest.raises(TrainingError, match=r"best.safetensors: does not hold the joint run's model: \d+ tensors "
                                            r"missing \(e.g. flow\.") as info:
        load_run(tmp_path)
    assert "\n" not in str(info.value)


def test_a_weights_file_of_another_shape_is_refused(tmp_path):
    joint_run(tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**cfg, "classes": ["a", "b"]}))  # 2 classes, weights have 3
    with pytest.raises(TrainingError, match="does not fit the run's model"):
        load_run(tmp_path)


def test_only_a_folder_with_last_pt_holds_a_run(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a run that stopped before its first epoch ended
    assert new_run_dir(RunConfig(out=str(out))) == out
    (out / "last.pt").write_bytes(b"")
    with pytest.raises(TrainingError, match="already holds a run; use --resume"):
        new_run_dir(RunConfig(out=str(out)))
    assert new_run_dir(RunConfig(out=str(out)), overwrite=True) == out


def good_config() -> dict:
    """A valid config.json of a finished run, as train.py writes it."""
    return asdict(RunConfig(data="data", classes=["a", "b"]))


@pytest.mark.parametrize("text, message", [
    ("{not json", "config.json: not valid JSON (Expecting property name"),
    ("[1, 2]", "config.json: holds a JSON list, not train.py's settings object"),
    (json.dumps({**good_config(), "batch_sise": 8}), "config.json: unknown key 'batch_sise' (not a train.py setting)"),
    (json.dumps({**good_config(), "batch_size": 0}), "config.json: batch_size 0: must be positive"),
    (json.dumps({**good_config(), "lr": "fast"}), 'config.json: lr is "fast", expected a number'),
    (json.dumps({**good_config(), "epochs": 2.5}), "config.json: epochs is 2.5, expected an integer"),
    (json.dumps({**good_config(), "amp": 1}), "config.json: amp is 1, expected true or false"),
    (json.dumps({**good_config(), "sample_rate": "2"}), 'sample_rate is "2", expected an integer or null'),
    (json.dumps({**good_config(), "classes": ["a", 3]}), 'classes is ["a", 3], expected a list of strings'),
    (json.dumps({**good_config(), "modality": "depth"}), "config.json: modality 'depth': choose one of rgb, flow, joint"),
    (json.dumps({**good_config(), "freeze": 30}), "config.json: freeze 30: choose 0..18"),
    (json.dumps({**good_config(), "lr": float("nan")}), "config.json: lr nan: must be a finite number"),
])
def test_a_resumed_config_is_checked_as_a_new_one(tmp_path, text, message):
    from src.training.loop import train
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(TrainingError, match=re.escape(message)) as info:
        train(RunConfig(), resume=str(tmp_path))
    assert str(tmp_path / "config.json") in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(TrainingError, match=re.escape(message)):
        load_run(tmp_path)  # evaluate.py and predict.py --checkpoint read it the same way


def test_a_config_without_newer_keys_still_loads(tmp_path):
    old = good_config()
    del old["cache_dtype"], old["multi_label"]
    (tmp_path / "config.json").write_text(json.dumps(old))
    assert RunConfig.load(tmp_path) == RunConfig(data="data", classes=["a", "b"])


def test_cli_resume_with_a_broken_config_is_one_line(tmp_path):
    import subprocess
    import sys

    from tests.conftest import REPO
    (tmp_path / "config.json").write_text(json.dumps({**good_config(), "lr": "fast"}))
    result = subprocess.run([sys.executable, "train.py", "--resume", str(tmp_path)], cwd=REPO, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert result.stderr.strip() == f'error: {tmp_path / "config.json"}: lr is "fast", expected a number'


def test_the_first_plots_on_a_fresh_machine_log_nothing(tmp_path):
    """train.py logs at INFO; matplotlib's first import logged "generated new fontManager" in the middle of
    training (quickstart). A fresh MPLCONFIGDIR makes this the first import."""
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    code = ("import logging, sys, numpy as np; from pathlib import Path\n"
            "logging.basicConfig(level=logging.INFO, format='%(message)s')\n"
            "from src.training.runs import save_plots\n"
            "save_plots(Path(sys.argv[1]), [{'epoch': 1, 'train_loss': 1.0, 'val_loss': 1.0, 'train_top1': 0.5, "
            "'val_top1': 0.5}], np.eye(2, dtype=int), ['a', 'b'])\n")
    env = {**os.environ, "MPLCONFIGDIR": str(tmp_path / "mpl")}
    result = subprocess.run([sys.executable, "-c", code, str(tmp_path)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "" and result.stderr == ""
    assert (tmp_path / "curves.png").exists() and list((tmp_path / "mpl").glob("fontlist-*.json"))


def test_options_given_with_resume_are_applied_or_refused(tmp_path, monkeypatch, capsys):
    from tests.conftest import call_main
    (tmp_path / "config.json").write_text(json.dumps({**good_config(), "reverse_pairs": "pan_left:pan_right"}))
    args = ["--resume", str(tmp_path), "--reverse-pairs", "pan_left:pan_up", "--epochs", "2", "--workers", "2"]
    code, out, err = call_main("train.py", args, monkeypatch, capsys)
    assert code == 1 and out == "" and err == (
        f"error: --resume {tmp_path}: --epochs 2 (the run has 10), --reverse-pairs 'pan_left:pan_up' (the run has "
        "'pan_left:pan_right'): cannot change when a run is resumed; leave them out, or start a new run with --out\n")
    # the run's own values, or where and how fast it runs, may be given: applied, and said
    cfg = RunConfig.load(tmp_path)
    notes = cfg.resumed_with({"epochs": 10, "reverse_pairs": "pan_left:pan_right", "workers": 2, "device": "cpu"},
                             tmp_path)
    assert notes == ["--resume: --workers 2 instead of the run's 0", "--resume: --device 'cpu' instead of the run's 'auto'"]
    assert (cfg.workers, cfg.device, cfg.epochs) == (2, "cpu", 10)
