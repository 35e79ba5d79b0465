"""The layers under a TF checkpoint index: masked CRC32C, protobuf's wire format, and LevelDB tables (SSTables),
read without TensorFlow. A table's blocks are plain, as TF's own checkpoints write them, or snappy-compressed,
as in TF-Hub and Kaggle module folders."""
from __future__ import annotations

import struct
from pathlib import Path
from typing import Iterator

from src.weights.errors import CheckpointError
from src.weights.snappy import SnappyError, decompress

try:
    import crc32c as _crc32c_mod
except ImportError:  # pragma: no cover - the package is pinned in requirements
    _crc32c_mod = None


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

def varint(buf: bytes, pos: int) -> tuple[int, int]:
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


def proto_fields(buf: bytes) -> Iterator[tuple[int, int, int | bytes]]:
    """Yield (field number, wire type, value) for each field of a serialized protobuf message."""
    pos = 0
    end = len(buf)
    while pos < end:
        tag, pos = varint(buf, pos)
        field, wire = tag >> 3, tag & 7
        if field == 0:  # never written by protobuf: a run of zero bytes would otherwise parse as endless fields
            raise ValueError(f"protobuf field number 0 at byte {pos - 1}")
        if wire == 0:
            value, pos = varint(buf, pos)
        elif wire == 1:
            if pos + 8 > end:
                raise IndexError("truncated fixed64")
            value = struct.unpack_from("<Q", buf, pos)[0]
            pos += 8
        elif wire == 2:
            n, pos = varint(buf, pos)
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
_KEY_EXPANSION = 16  # TF's indexes spell out 1.5-4 times a block's bytes as keys


def block_handle(buf: bytes, pos: int) -> tuple[int, int, int]:
    offset, pos = varint(buf, pos)
    size, pos = varint(buf, pos)
    return offset, size, pos


class UnsupportedTable(ValueError):
    """A table block compressed in a way this reader does not know."""


def read_block(data: bytes, offset: int, size: int) -> bytes:
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
    if ctype == 1:  # snappy: the indexes of TF-Hub and Kaggle module folders (variables/variables.index)
        try:
            return decompress(contents)
        except SnappyError as e:
            raise ValueError(f"snappy-compressed block at offset {offset} is corrupt: {e}") from None
    raise UnsupportedTable(f"block at offset {offset} has unknown compression type {ctype} "
                            "(LevelDB tables use 0, none, or 1, snappy)")


def block_entries(block: bytes) -> Iterator[tuple[bytes, bytes]]:
    """Yield (key, value) from a table block: prefix-compressed keys followed by a restart array."""
    if len(block) < 4:
        raise ValueError("block too short for its restart count")
    num_restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    limit = len(block) - 4 - 4 * num_restarts
    if limit < 0:
        raise ValueError("block restart array is larger than the block")
    pos = 0
    key = b""
    budget = _KEY_EXPANSION * len(block) + 4096  # bytes of keys a block may spell out through shared prefixes
    while pos < limit:
        shared, pos = varint(block, pos)
        non_shared, pos = varint(block, pos)
        value_len, pos = varint(block, pos)
        if shared > len(key) or pos + non_shared + value_len > limit:
            raise ValueError("block entry runs past the block")
        budget -= shared + non_shared
        if budget < 0:  # each entry re-using a growing key: quadratic time and memory otherwise
            raise ValueError(f"the keys of a {len(block)}-byte block spell out more than {_KEY_EXPANSION} times "
                             "its size through shared prefixes")
        key = key[:shared] + block[pos:pos + non_shared]
        pos += non_shared
        yield key, block[pos:pos + value_len]
        pos += value_len


def _index_handles(index: bytes) -> list[tuple[int, int]]:
    """The (offset, size) of each data block the index block names, in key order: keys strictly increasing and
    blocks that neither repeat nor overlap, so that reading them all costs at most the file's size."""
    previous_key = None
    spans: list[tuple[int, int]] = []
    for key, handle in block_entries(index):
        if previous_key is not None and key <= previous_key:
            raise ValueError(f"index block keys are not strictly increasing ({previous_key[:40]!r}, then {key[:40]!r})")
        previous_key = key
        offset, size, _ = block_handle(handle, 0)
        spans.append((offset, size))
    ordered = sorted(spans)
    for (a_off, a_size), (b_off, _) in zip(ordered, ordered[1:]):
        if a_off + a_size + _BLOCK_TRAILER_SIZE > b_off:
            raise ValueError(f"index entries name the data block at offset {a_off} more than once "
                             f"(or overlapping blocks at offsets {a_off} and {b_off})")
    return spans


def read_table(path: Path) -> list[tuple[bytes, bytes]]:
    """All (key, value) pairs of a LevelDB table file, in key order (strictly increasing keys, each block read once)."""
    data = path.read_bytes()
    if len(data) < _FOOTER_SIZE:
        raise CheckpointError(f"{path}: {len(data)} bytes is too short for a TF checkpoint index (truncated?)")
    footer = data[-_FOOTER_SIZE:]
    magic = struct.unpack_from("<Q", footer, 40)[0]
    if magic != _TABLE_MAGIC:
        raise CheckpointError(f"{path}: bad magic number 0x{magic:016x}; not a TF checkpoint index (or truncated)")
    try:
        _, _, pos = block_handle(footer, 0)  # metaindex: unused by TF bundles
        index_offset, index_size, _ = block_handle(footer, pos)
        pairs: list[tuple[bytes, bytes]] = []
        for offset, size in _index_handles(read_block(data, index_offset, index_size)):
            for key, value in block_entries(read_block(data, offset, size)):
                if pairs and key <= pairs[-1][0]:
                    what = "repeats" if key == pairs[-1][0] else "is out of order after"
                    raise ValueError(f"key {key[:80]!r} {what} {pairs[-1][0][:80]!r}")
                pairs.append((key, value))
    except UnsupportedTable as e:
        raise CheckpointError(f"{path}: {e}") from None
    except (ValueError, IndexError, struct.error) as e:
        raise CheckpointError(f"{path}: corrupt TF checkpoint index: {e}") from None
    return pairs
