"""Reading arrays out of an .npz without trusting it: each member's .npy header is read and checked first.

numpy's own `np.load(...)[name]` allocates whatever shape a member's header declares before reading
a byte, and a deflated member holds up to ~1000 times its compressed size. Here a member is read
only after its declared shape and dtype are checked against what the caller expects and against the
member's real (uncompressed) size recorded in the zip, so memory is bounded by what the file holds.
Object (pickled) arrays are refused, never unpickled. Every failure is an InputError naming the file.
"""
from __future__ import annotations

import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.lib import format as npy_format

from src.clips import InputError

# What a corrupt or truncated zip raises while its directory or a member is read.
KIND_NAMES = {"f": "float", "i": "int", "u": "unsigned int", "U": "text", "b": "bool"}
CHUNK = 1 << 22  # bytes read from a member at a time
ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, NotImplementedError, EOFError, OSError,
              ValueError)


@dataclass(frozen=True)
class Member:
    """One .npy member of an .npz as its header declares it: shape, dtype, memory order, byte count."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    nbytes: int


def open_npz(path: str | Path) -> zipfile.ZipFile:
    """The .npz at `path` opened as a zip (its directory read, no member); InputError naming it if it is not one."""
    try:
        return zipfile.ZipFile(path)
    except ZIP_ERRORS as exc:
        raise InputError(f"{path}: not a readable .npz (zip) file ({type(exc).__name__}: {exc})") from None


def member_names(archive: zipfile.ZipFile) -> list[str]:
    """The array names of an .npz (its members' names without '.npy')."""
    return [name[:-4] if name.endswith(".npy") else name for name in archive.namelist()]


def member_info(archive: zipfile.ZipFile, name: str, path: str | Path) -> zipfile.ZipInfo:
    """The zip entry of array `name` ('name.npy', or 'name' as numpy also reads)."""
    for entry in (name + ".npy", name):
        try:
            return archive.getinfo(entry)
        except KeyError:
            continue
    raise InputError(f"{path}: has no array '{name}'")


def read_header(archive: zipfile.ZipFile, name: str, path: str | Path) -> Member:
    """The declared shape and dtype of member `name`, checked against the bytes the member really holds."""
    info = member_info(archive, name, path)
    try:
        with archive.open(info) as stream:
            member = parse_header(stream, name)
            offset = stream.tell()
    except InputError as exc:
        raise InputError(f"{path}: {exc}") from None
    except ZIP_ERRORS as exc:
        raise InputError(f"{path}: array '{name}' cannot be read ({type(exc).__name__}: {exc})") from None
    held = info.file_size - offset
    if member.nbytes > held:
        raise InputError(f"{path}: array '{name}' declares shape {member.shape} {member.dtype} ({member.nbytes:,} "
                         f"bytes) but holds {max(held, 0):,} bytes")
    return member


def parse_header(stream, name: str) -> Member:
    """The .npy header at the start of `stream` (left at the first data byte); InputError if it is not one."""
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            shape, fortran_order, dtype = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f".npy format version {version[0]}.{version[1]} is not read here")
    except (ValueError, TypeError, SyntaxError, EOFError) as exc:
        raise InputError(f"array '{name}' is not a .npy array ({exc})") from None
    if dtype.hasobject:
        raise InputError(f"array '{name}' holds Python objects (dtype {dtype}); such arrays are never unpickled")
    if any(d < 0 for d in shape):
        raise InputError(f"array '{name}' declares a negative dimension {shape}")
    return Member(name, tuple(shape), dtype, fortran_order, math.prod(shape) * dtype.itemsize)


def read_member(archive: zipfile.ZipFile, name: str, path: str | Path,
                shape: tuple[int | None, ...] | None = None, kinds: str | None = None,
                max_bytes: int | None = None) -> np.ndarray:
    """Member `name` as an array, read only after its header passed the checks.

    `shape` is the expected shape (None entries match any size), `kinds` the accepted dtype kinds
    (e.g. 'f' or 'fiu'), `max_bytes` a cap on its size; the declared size must also fit in the
    member's uncompressed size.
    """
    member = read_header(archive, name, path)
    if shape is not None and (len(member.shape) != len(shape) or
                              any(want is not None and want != got for want, got in zip(shape, member.shape))):
        expected = "(" + ", ".join("n" if d is None else str(d) for d in shape) + ("," if len(shape) == 1 else "") + ")"
        raise InputError(f"{path}: array '{name}' has shape {member.shape}; expected {expected}")
    if kinds is not None and member.dtype.kind not in kinds:
        expected = " or ".join(KIND_NAMES.get(kind, kind) for kind in kinds)
        raise InputError(f"{path}: array '{name}' has dtype {member.dtype}; expected {expected}")
    if max_bytes is not None and member.nbytes > max_bytes:
        raise InputError(f"{path}: array '{name}' of shape {member.shape} {member.dtype} is {member.nbytes:,} bytes, "
                         f"more than the {max_bytes:,} allowed here")
    data = np.empty(member.nbytes, np.uint8)  # filled in place: one copy of the data, writable
    view, filled = memoryview(data), 0
    try:
        with archive.open(member_info(archive, name, path)) as stream:
            parse_header(stream, name)
            while filled < member.nbytes:
                chunk = stream.read(min(CHUNK, member.nbytes - filled))
                if not chunk:
                    break
                view[filled:filled + len(chunk)] = chunk
                filled += len(chunk)
    except ZIP_ERRORS as exc:
        raise InputError(f"{path}: array '{name}' cannot be read ({type(exc).__name__}: {exc})") from None
    if filled != member.nbytes:
        raise InputError(f"{path}: array '{name}' is truncated ({filled:,} of {member.nbytes:,} bytes)")
    array = data.view(member.dtype) if member.dtype.itemsize else np.zeros(0, member.dtype)
    return array.reshape(member.shape, order="F" if member.fortran_order else "C")
