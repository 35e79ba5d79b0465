"""Snappy decompression of the raw block format (LevelDB table blocks of type 1), in pure Python.

A block is the uncompressed length as a varint, then elements whose tag byte's low two bits say
what follows: 0 a literal (length - 1 in the upper six bits, or in the next 1-4 bytes when those
bits are 60-63), 1/2/3 a copy of earlier output (length and offset packed into the tag and 1, 2
or 4 more bytes). A copy may overlap what it writes, repeating a short pattern. The framing
format of snappy streams (chunks with their own CRCs) is a different thing and is not read here.
"""
from __future__ import annotations


class SnappyError(ValueError):
    """Data that is not a valid snappy block."""


def _length_varint(data: bytes) -> tuple[int, int]:
    """The uncompressed length at the start of a block (at most 32 bits) and where the elements begin."""
    value, shift = 0, 0
    for pos in range(min(len(data), 5)):
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if value >= 1 << 32:
                raise SnappyError("uncompressed length does not fit in 32 bits")
            return value, pos + 1
        shift += 7
    raise SnappyError("truncated or overlong uncompressed-length varint")


def decompress(data: bytes | memoryview) -> bytes:
    """The bytes a raw snappy block decompresses to; SnappyError if it is malformed or its length is wrong."""
    data = bytes(data)
    expected, pos = _length_varint(data)
    out = bytearray()
    end = len(data)
    while pos < end:
        tag = data[pos]
        pos += 1
        if tag & 3 == 0:  # literal
            length = tag >> 2
            if length >= 60:
                extra = length - 59
                if pos + extra > end:
                    raise SnappyError(f"literal length at byte {pos - 1} runs past the end")
                length = int.from_bytes(data[pos:pos + extra], "little")
                pos += extra
            length += 1
            if pos + length > end:
                raise SnappyError(f"literal of {length} bytes at byte {pos} runs past the end")
            out += data[pos:pos + length]
            pos += length
        else:
            pos = _copy(data, pos, tag, out)
        if len(out) > expected:
            raise SnappyError(f"decompresses past its declared length {expected}")
    if len(out) != expected:
        raise SnappyError(f"decompresses to {len(out)} bytes, its header says {expected}")
    return bytes(out)


def _copy(data: bytes, pos: int, tag: int, out: bytearray) -> int:
    """Append the copy element whose tag was read (its operand bytes start at `pos`); return the next position."""
    kind, end = tag & 3, len(data)
    if kind == 1:  # 11-bit offset: 3 bits in the tag, 8 in the next byte
        if pos >= end:
            raise SnappyError("truncated copy element")
        length = 4 + ((tag >> 2) & 7)
        offset = ((tag >> 5) << 8) | data[pos]
        pos += 1
    else:  # 16- or 32-bit little-endian offset
        width = 2 if kind == 2 else 4
        if pos + width > end:
            raise SnappyError("truncated copy element")
        length = (tag >> 2) + 1
        offset = int.from_bytes(data[pos:pos + width], "little")
        pos += width
    if offset == 0 or offset > len(out):
        raise SnappyError(f"copy offset {offset} with only {len(out)} bytes written")
    start = len(out) - offset
    if offset >= length:
        out += out[start:start + length]
    else:  # overlapping copy: the last `offset` bytes repeat
        out += (bytes(out[start:]) * (length // offset + 1))[:length]
    return pos
