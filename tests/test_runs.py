"""Run folders: loading a finished run strictly, and what counts as a run."""
from __future__ import annotations

import json
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
