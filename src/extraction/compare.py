"""One's own features against released ones: shapes, T', and the cosine similarity of each row (also shifted by a
row or two, which is what a different first frame or frame count gives)."""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.fvd.npzfile import member_info, parse_header

SHIFTS = range(-2, 3)  # rows THEIRS may be offset by
CROP_COUNTS = (5, 10)


_NPY_MAGIC, _ZIP_MAGIC = b"\x93NUMPY", b"PK"  # an empty .npz is a zip of the end record only: PK\x05\x06


def _fits(stream, available: int) -> None:
    """Refuse a .npy header whose declared array is larger than the `available` bytes behind it."""
    member = parse_header(stream, "features")
    available -= stream.tell()
    if member.nbytes > available:
        raise ValueError(f"declares a {member.dtype} array of shape {member.shape} ({member.nbytes:,} bytes) but holds "
                         f"only {available:,}: truncated or crafted")


def _load(path: Path) -> np.ndarray:
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic.startswith(_ZIP_MAGIC):
        with np.load(path, allow_pickle=False) as data:
            keys = list(data.keys())
            if not keys:
                raise ValueError("an .npz archive holding no arrays")
            key = next((k for k in ("feature", "features") if k in keys), keys[0] if len(keys) == 1 else None)
            if key is None:
                raise ValueError(f"which array of {', '.join(keys)} holds the features? keep one, "
                                 "or name it 'feature'")
            info = member_info(data.zip, key, path)
            with data.zip.open(info) as member:
                _fits(member, info.file_size)
            return np.asarray(data[key])
    if magic != _NPY_MAGIC:
        raise ValueError("not a .npy array file (nor an .npz archive of them)")
    with open(path, "rb") as f:
        _fits(f, path.stat().st_size)  # checked before anything of that size is allocated
        f.seek(0)
        return np.load(f, allow_pickle=False)


def load_features(path: str | Path) -> np.ndarray:
    """A feature array from .npy, or .npz (its 'feature' / 'features' array, as CMCS's, or its only one)."""
    path = Path(path)
    try:
        array = _load(path)
    except zipfile.BadZipFile as exc:
        raise ValueError(f"{path}: not a readable .npz archive ({exc})") from None
    except (ValueError, EOFError, MemoryError) as exc:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ValueError(f"{path}: {message}") from None
    if array.ndim >= 1 and array.shape[0] == 0:
        raise ValueError(f"{path}: holds no rows of features (shape {array.shape})")
    if array.ndim >= 2 and array.size == 0:
        raise ValueError(f"{path}: its rows hold no values (shape {array.shape})")
    return array


def row_cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of each row of two (T, C) arrays (1 where both rows are zero)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    dot = (a * b).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        cos = dot / (na * nb)
    return np.where((na == 0) & (nb == 0), 1.0, np.nan_to_num(cos))


def _oriented(mine: np.ndarray, theirs: np.ndarray, notes: list[str]) -> np.ndarray:
    """THEIRS laid out as MINE where a known other layout fits: (C, T') as MS-TCN's, (crops, T', C) as CMCS's."""
    if theirs.shape == mine.shape:
        return theirs
    if theirs.ndim == 2 and mine.ndim >= 2 and theirs.shape[0] == mine.shape[-1] != theirs.shape[1]:
        notes.append("THEIRS is (C, T'), as MS-TCN's files: transposed")
        return theirs.T
    if theirs.ndim == 3 and theirs.shape[0] in CROP_COUNTS and theirs.shape[2] == mine.shape[-1]:
        notes.append("THEIRS is (crops, T', C), as CMCS's files: read as (T', crops, C)")
        return np.moveaxis(theirs, 0, 1)
    return theirs


def _rows(array: np.ndarray, other: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """(T', C) rows to compare: a crop axis the other file lacks is averaged over."""
    if array.ndim == 3 and other.ndim == 2:
        notes.append(f"{name} has {array.shape[1]} crops, the other none: their mean is compared")
        array = array.mean(axis=1)
    return array.reshape(len(array), -1)


@dataclass
class Comparison:
    """What compare_files found."""

    mine: str
    theirs: str
    mine_shape: tuple[int, ...]
    theirs_shape: tuple[int, ...]
    theirs_rows: int = 0  # after reading THEIRS in MINE's layout
    notes: list[str] = field(default_factory=list)
    problem: str | None = None
    cosines: dict[int, np.ndarray] = field(default_factory=dict)  # shift -> per-row cosine (mine[i] vs theirs[i+s])
    halves: dict[str, np.ndarray] = field(default_factory=dict)  # rgb / flow halves of 2048-wide rows, at shift 0

    @property
    def comparable(self) -> bool:
        """Whether rows could be compared at all."""
        return self.problem is None

    def best_shift(self) -> int:
        """The shift whose rows agree best (0 when none does better)."""
        return max(self.cosines, key=lambda s: (round(float(self.cosines[s].mean()), 6), s == 0))

    def text(self) -> str:
        """The report, a few lines."""
        lines = [f"MINE   {self.mine}: {self.mine_shape}", f"THEIRS {self.theirs}: {self.theirs_shape}", *self.notes]
        if self.problem:
            return "\n".join(lines + [f"not comparable: {self.problem}"])
        lines.append(f"T': {self.mine_shape[0]} (mine) vs {self.theirs_rows} (theirs)")
        lines.append(f"per-row cosine similarity, {len(self.cosines[0])} rows: {_summary(self.cosines[0])}")
        lines += [f"  {name} half: {_summary(cos)}" for name, cos in self.halves.items()]
        best = self.best_shift()
        if best != 0:
            lines.append(f"rows agree best with THEIRS shifted by {best:+d} ({_summary(self.cosines[best])}): "
                         "another first frame or frame count (see docs/feature-presets.md)")
        return "\n".join(lines)


def _summary(cos: np.ndarray) -> str:
    return (f"mean {cos.mean():.4f}, median {np.median(cos):.4f}, min {cos.min():.4f}, "
            f"rows >= 0.99: {(cos >= 0.99).mean():.0%}")


def compare_files(mine_path: str | Path, theirs_path: str | Path) -> Comparison:
    """Compare two feature files row by row (see the module docstring)."""
    mine, theirs = load_features(mine_path), load_features(theirs_path)
    report = Comparison(str(mine_path), str(theirs_path), tuple(mine.shape), tuple(theirs.shape))
    if mine.ndim < 2 or theirs.ndim < 2:
        report.problem = "each file must hold rows of features, (T', C) or (T', crops, C)"
        return report
    theirs = _oriented(mine, theirs, report.notes)
    a, b = _rows(mine, theirs, "MINE", report.notes), _rows(theirs, mine, "THEIRS", report.notes)
    report.theirs_rows = len(b)
    if a.shape[1] != b.shape[1]:
        report.problem = f"rows of {a.shape[1]} values (mine) and {b.shape[1]} (theirs)"
        return report
    finite_a, finite_b = _finite_rows(a, "MINE", report.notes), _finite_rows(b, "THEIRS", report.notes)
    for shift in SHIFTS:
        lo, hi = max(0, -shift), min(len(a), len(b) - shift)
        if hi - lo > 0:
            keep = finite_a[lo:hi] & finite_b[lo + shift:hi + shift]
            if keep.any():
                report.cosines[shift] = row_cosines(a[lo:hi][keep], b[lo + shift:hi + shift][keep])
    if 0 not in report.cosines:
        report.problem = "no rows in common" + ("" if finite_a.all() and finite_b.all() else " where both are finite")
        return report
    if a.shape[1] == 2048:  # rgb+flow side by side, RGB first
        n = min(len(a), len(b))
        keep = finite_a[:n] & finite_b[:n]
        report.halves = {"RGB": row_cosines(a[:n][keep, :1024], b[:n][keep, :1024]),
                         "flow": row_cosines(a[:n][keep, 1024:], b[:n][keep, 1024:])}
    return report


def _finite_rows(rows: np.ndarray, name: str, notes: list[str]) -> np.ndarray:
    """Which rows hold only finite values; the others are counted in `notes` and left out of the cosines."""
    finite = np.isfinite(rows)
    keep = finite.all(axis=1)
    if not keep.all():
        notes.append(f"{name} has {(~finite).sum()} NaN or infinite values in {(~keep).sum()} of {len(rows)} rows: "
                     "those rows are left out of the cosines")
    return keep
