"""TensorFlow's tensor-bundle checkpoint format, read and written without TensorFlow.

A bundle is a `.index` file (a LevelDB-style table whose values are small protobufs: src/weights/leveldb.py
reads the table, this module the protobufs) and data shards holding the raw tensor bytes, each checked by
its masked CRC32C.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from src.weights.errors import CheckpointError
from src.weights.leveldb import crc32c, mask_crc, proto_fields, read_table


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


_MAX_DIMS = 32  # numpy's limit is 64; no I3D tensor has more than 5


def _parse_shape(buf: bytes) -> tuple:
    dims = []
    for field, _, value in proto_fields(buf):
        if field == 2:  # dim
            if len(dims) == _MAX_DIMS:
                raise ValueError(f"tensor shape has more than {_MAX_DIMS} dimensions")
            size = 0
            for f, _, v in proto_fields(value):
                if f == 1:
                    size = v if v < (1 << 63) else v - (1 << 64)  # int64; -1 means unknown
            dims.append(size)
        elif field == 3 and value:
            raise ValueError("tensor shape of unknown rank")
    return tuple(dims)


def _parse_entry(name: str, buf: bytes) -> TensorEntry:
    fields: dict[str, Any] = {"tf_dtype": 0, "shape": (), "shard": 0, "offset": 0, "size": 0, "crc32c": 0,
                              "sliced": False}
    for field, _, value in proto_fields(buf):
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
    for field, _, value in proto_fields(buf):
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
    for key, value in read_table(path):
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
    if p.is_dir() and (p / "variables" / "variables.index").is_file() and not any(p.glob("*.index")):
        return p / "variables" / "variables"  # a TF-Hub / Kaggle module or SavedModel folder
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
        elif any(d < 0 for d in entry.shape):
            problems.append(f"{entry.name}: shape {entry.shape} has a negative (unknown) dimension")
        elif entry.size != entry.dtype.itemsize * math.prod(entry.shape):  # exact: int64 products wrap around
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
            try:
                out[entry.name] = _decode_tensor(entry, raw)
            except ValueError as e:  # the index's checks make this unreachable; one line all the same
                problems.append(f"{entry.name}: cannot be decoded as {entry.dtype} {entry.shape} ({e})")
        if bad_crc:
            more = f" and {len(bad_crc) - 10} more" if len(bad_crc) > 10 else ""
            problems.append(f"{path}: CRC32C mismatch (corrupt data) for {len(bad_crc)} tensor(s): "
                            + ", ".join(bad_crc[:10]) + more)
            bad_crc = []
    if problems:
        raise CheckpointError(f"{prefix}: " + "; ".join(problems))
    bad = nonfinite_tensors(out)
    if bad:
        hint = (" (its header declares big-endian data: if the shard was written little-endian, the header is wrong)"
                if header.endianness == 1 else "")
        raise CheckpointError(f"{prefix}: {describe_nonfinite(bad)}{hint}; such weights are refused")
    return {name: out[name] for name in entries}


def nonfinite_tensors(tensors: Mapping[str, Any]) -> list[str]:
    """Names of the floating-point tensors (numpy or torch) holding NaN or infinity."""
    bad = []
    for name, t in tensors.items():
        if hasattr(t, "is_floating_point"):  # a torch tensor (bfloat16 has no numpy dtype)
            if (t.is_floating_point() or t.is_complex()) and not bool(t.isfinite().all()):
                bad.append(name)
        elif np.asarray(t).dtype.kind in "fc" and not np.isfinite(t).all():
            bad.append(name)
    return bad


def describe_nonfinite(names: list[str], shown: int = 5) -> str:
    """One line naming the non-finite tensors: the first `shown`, then how many more."""
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return f"{len(names)} tensor(s) hold NaN or infinite values: {', '.join(names[:shown])}{more}"


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
