"""The two sides of an FVD comparison: a folder of videos, a list file, an array file, or saved statistics.

A folder is searched recursively (hidden entries skipped): video files, frame folders (a folder
holding images is one video and is not searched further) and `.npy` clips (T, H, W, 3) are its
videos, in natural order of their paths. A text file (.txt, .lst, .list) lists such paths, one a
line (relative to the list's folder; blank lines and # comments skipped), in its own order. A
`.npy`/`.npz` array (N, T, H, W, 3) holds N videos. A `.npz` written by --save-stats is a set's
statistics. `max_videos` keeps the first N.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.clips import InputError
from src.fvd.npzfile import member_names, open_npz, read_member
from src.media import is_hidden, is_image_file, is_video_file, natural_key

log = logging.getLogger(__name__)

LIST_SUFFIXES = (".txt", ".lst", ".list")
STATS_KEY = "fvd_meta"  # the key that marks a statistics file


@dataclass(frozen=True)
class VideoEntry:
    """One video of a set: a video file, frame folder or .npy clip, or row `row` of an array file."""

    path: Path
    row: int | None = None

    @property
    def name(self) -> str:
        """How messages name it."""
        return str(self.path) if self.row is None else f"{self.path}[{self.row}]"


@dataclass
class VideoSet:
    """One side of the comparison: its videos (`items`, rows of `array` for an array file) or a statistics file."""

    spec: str
    items: list[VideoEntry] = field(default_factory=list)
    array: np.ndarray | None = None
    stats_path: Path | None = None
    skipped: int = 0  # videos left out by max_videos

    @property
    def is_stats(self) -> bool:
        """True when this side is a statistics file written by --save-stats."""
        return self.stats_path is not None


def is_video_input(path: Path) -> bool:
    """A file or folder that is one video of a folder set: a video file, a .npy clip, or a frame folder."""
    if path.is_dir():
        return any(is_image_file(p) for p in path.iterdir())
    return is_video_file(path) or (path.is_file() and path.suffix.lower() == ".npy")


def scan_folder(root: Path, order: str = "natural") -> list[Path]:
    """Every video under `root` (recursively), in natural order of the paths below `root`, or with order
    'codepoint' in Python's sorted() order of those paths (StyleGAN-V's and Latte's)."""
    found: list[Path] = []
    for folder, dirs, files in os.walk(root):
        here = Path(folder)
        if any(is_image_file(here / f) for f in files):
            found.append(here)  # a frame folder is one video: do not look inside it further
            dirs.clear()
            continue
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found.extend(here / f for f in files if is_video_input(here / f) and not is_hidden(here / f))
    if order == "codepoint":
        return sorted(found, key=lambda p: str(p.relative_to(root)))
    return sorted(found, key=lambda p: natural_key(str(p.relative_to(root))))


def read_list(path: Path) -> list[Path]:
    """The paths a list file names, each checked to be a video, frame folder or .npy clip."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{path}: cannot be read as a list of videos ({exc})") from None
    paths = []
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        entry = Path(line) if Path(line).is_absolute() else path.parent / line
        if not entry.exists():
            raise InputError(f"{path}:{number}: {line}: no such file or folder")
        if not is_video_input(entry):
            raise InputError(f"{path}:{number}: {line}: not a video, frame folder or .npy clip")
        paths.append(entry)
    return paths


def load_video_array(path: Path) -> np.ndarray | None:
    """The (N, T, H, W, 3) videos of an array file (memory-mapped .npy); None for a statistics file.

    An .npz member is read whole, after its header is checked against the bytes it really holds.
    """
    if path.suffix.lower() == ".npy":
        try:
            return np.load(path, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError, EOFError) as exc:
            raise InputError(f"{path}: not a readable .npy array ({exc})") from None
    with open_npz(path) as archive:
        names = member_names(archive)
        if STATS_KEY in names:
            return None
        chosen = ["videos"] if "videos" in names else names
        if len(chosen) != 1:
            raise InputError(f"{path}: holds arrays {', '.join(names) or 'none'}; expected one (N, T, H, W, 3) array "
                             "(or one named 'videos') or a statistics file from --save-stats")
        return read_member(archive, chosen[0], path)


def open_set(spec: str, max_videos: int | None = None, order: str = "natural") -> VideoSet:
    """The videos (or the statistics file) that `spec` names, the first `max_videos` of them (a folder's in `order`:
    scan_folder)."""
    path = Path(spec)
    if not path.exists():
        raise InputError(f"{spec}: no such file or folder")
    video_set = VideoSet(spec)
    if path.is_dir():
        video_set.items = [VideoEntry(p) for p in scan_folder(path, order)]
        what = "videos, frame folders or .npy clips"
    elif path.suffix.lower() in (".npy", ".npz"):
        array = load_video_array(path)
        if array is None:
            video_set.stats_path = path
            return video_set
        if array.ndim == 4 or (array.ndim == 5 and array.shape[0] == 1 and path.suffix.lower() == ".npy"):
            video_set.items = [VideoEntry(path)]  # one clip (T, H, W, 3): a set of one video
        elif array.ndim == 5 and array.shape[-1] == 3:
            video_set.array = array
            video_set.items = [VideoEntry(path, i) for i in range(array.shape[0])]
        else:
            raise InputError(f"{path}: array of shape {array.shape}; expected videos (N, T, H, W, 3)")
        what = "videos"
    elif path.suffix.lower() in LIST_SUFFIXES:
        video_set.items = [VideoEntry(p) for p in read_list(path)]
        what = "listed videos"
    elif is_video_input(path):
        video_set.items = [VideoEntry(path)]
        what = "videos"
    else:
        raise InputError(f"{spec}: not a folder of videos, a video, a .npy/.npz array (N, T, H, W, 3), a statistics "
                         f"file from --save-stats or a {'/'.join(LIST_SUFFIXES)} list of videos")
    if not video_set.items:
        raise InputError(f"{spec}: no {what} found")
    if max_videos is not None and len(video_set.items) > max_videos:
        video_set.skipped = len(video_set.items) - max_videos
        video_set.items = video_set.items[:max_videos]
    elif max_videos is not None and len(video_set.items) < max_videos:
        log.warning("%s: only %d videos, fewer than --max-videos %d", spec, len(video_set.items), max_videos)
    return video_set
