"""Annotation files: which video (or which segment of a long recording) shows which action(s).

Two formats are read:

* a CSV with a header naming at least a video and a label column, e.g.

      video,label,start,end,split
      kitchen/day1.mp4,cut;stir,12.0,15.5,train

  `video` is a path relative to RAW_DIR (aliases: path, filename, youtube_id; without an extension
  the file RAW_DIR/<video>.* is looked up), `label` one label or several separated by ';'
  (aliases: labels, class, action), optional `start` / `end` in seconds (aliases: time_start,
  time_end) and optional `split` (train, val or test; validate/validation mean val). Rows naming the
  same video and times are one item whose labels are the union of the rows' labels.
* a plain list, mmaction2 style: `path label [label ...]` per line, separated by white space.

A row that cannot be used (empty label, unknown split, bad times) becomes an Annotation with an
`error`, so the caller can report it in one line and go on with the rest.
"""
from __future__ import annotations

import csv
import glob
import io
import math
import re
from dataclasses import dataclass
from pathlib import Path

from src.media.video import VIDEO_EXTENSIONS, natural_key

SPLIT_NAMES = {"train": "train", "val": "val", "validate": "val", "validation": "val", "test": "test"}
COLUMN_ALIASES = {
    "video": ("video", "path", "filename", "file", "youtube_id"),
    "label": ("label", "labels", "class", "action"),
    "start": ("start", "time_start", "start_s"),
    "end": ("end", "time_end", "end_s"),
    "split": ("split", "subset"),
}
LABEL_SEPARATOR = ";"
_SEGMENT_NAME = re.compile(r"^(?P<stem>.+)_(?P<start>\d+)-(?P<end>\d+)ms$")


class AnnotationError(ValueError):
    """The annotation file as a whole cannot be read; the message names the file and the fix."""


@dataclass
class Annotation:
    """One item to cut: a video (relative to RAW_DIR), its labels, optional times and split."""

    where: str                      # "FILE:line" of the (first) row, for messages
    video: str
    labels: tuple[str, ...]
    start: float | None = None
    end: float | None = None
    split: str | None = None
    error: str | None = None

    @property
    def is_segment(self) -> bool:
        """True when the item is a time range of its video rather than the whole video."""
        return self.start is not None or self.end is not None


def segment_name(stem: str, start: float, end: float) -> str:
    """The item name of a segment: '<video stem>_<start ms>-<end ms>ms', e.g. 'day1_12000-15500ms'."""
    return f"{stem}_{round(start * 1000)}-{round(end * 1000)}ms"


def parse_segment_name(name: str) -> tuple[str, float, float] | None:
    """(video stem, start s, end s) read back from a segment's item name, or None for a whole video."""
    m = _SEGMENT_NAME.match(name)
    if not m:
        return None
    return m["stem"], int(m["start"]) / 1000, int(m["end"]) / 1000


def _number(text: str, column: str) -> float:
    value = float(text)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{column} {text!r} is not a time in seconds >= 0")
    return value


def _make(where: str, video: str, labels: list[str], start: str = "", end: str = "", split: str = "") -> Annotation:
    """An Annotation from one row's cells, with `error` set instead of raising for a bad row."""
    labels = [lab.strip() for lab in labels if lab.strip()]
    item = Annotation(where, video.strip(), tuple(dict.fromkeys(labels)))
    try:
        if not item.video:
            raise ValueError("empty video path")
        if not item.labels:
            raise ValueError("empty label")
        if split.strip():
            if split.strip().lower() not in SPLIT_NAMES:
                raise ValueError(f"unknown split {split.strip()!r} (use train, val or test)")
            item.split = SPLIT_NAMES[split.strip().lower()]
        if start.strip() or end.strip():
            if not (start.strip() and end.strip()):
                raise ValueError("a segment needs both start and end")
            item.start, item.end = _number(start, "start"), _number(end, "end")
            if item.end <= item.start:
                raise ValueError(f"end {item.end:g} s is not after start {item.start:g} s")
    except ValueError as exc:
        item.error = f"{where}: {exc}"
    return item


def _columns(header: list[str], path: Path) -> dict[str, int]:
    lowered = [h.strip().lower() for h in header]
    found: dict[str, int] = {}
    for column, aliases in COLUMN_ALIASES.items():
        for alias in aliases:
            if alias in lowered:
                found[column] = lowered.index(alias)
                break
    missing = [c for c in ("video", "label") if c not in found]
    if missing:
        raise AnnotationError(f"{path}: the header {','.join(header)!r} has no {' or '.join(missing)} column "
                              f"(need video,label[,start,end,split]; see pre-process.py --help)")
    if ("start" in found) != ("end" in found):
        raise AnnotationError(f"{path}: the header has {'start' if 'start' in found else 'end'} but not "
                              f"{'end' if 'start' in found else 'start'}; give both or neither")
    return found


def read_annotations(path: Path) -> list[Annotation]:
    """Every item of an annotation CSV or plain list; rows naming the same video and times are merged."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise AnnotationError(f"{path}: cannot be read as a text file ({exc})") from None
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), None)
    if first is None:
        raise AnnotationError(f"{path}: no annotations in the file")
    items: list[Annotation] = []
    if "," in first:
        # the csv module reads quoted cells whole: a newline inside one stays in it (and the row is refused later)
        reader = csv.reader(io.StringIO(text))
        cols, row_start = None, 1
        try:
            for row in reader:
                line, row_start = row_start, reader.line_num + 1
                if not any(c.strip() for c in row) or (cols is not None and row[0].lstrip().startswith("#")):
                    continue
                if cols is None:
                    cols = _columns(row, path)
                    continue
                cell = {c: (row[i] if i < len(row) else "") for c, i in cols.items()}
                items.append(_make(f"{path}:{line}", cell["video"], cell["label"].split(LABEL_SEPARATOR),
                                   cell.get("start", ""), cell.get("end", ""), cell.get("split", "")))
        except csv.Error as exc:
            raise AnnotationError(f"{path}:{reader.line_num}: not a readable CSV row ({exc})") from None
    else:
        for n, line in enumerate(lines, start=1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            video, *labels = line.split()
            items.append(_make(f"{path}:{n}", video, labels))
    return merge(items)


def merge(items: list[Annotation]) -> list[Annotation]:
    """One Annotation per (video, start, end): labels united in row order; rows disagreeing on split fail."""
    merged: dict[tuple, Annotation] = {}
    out: list[Annotation] = []
    for item in items:
        if item.error:
            out.append(item)
            continue
        key = (item.video, item.start, item.end)
        if key not in merged:
            merged[key] = item
            out.append(item)
            continue
        kept = merged[key]
        kept.labels = tuple(dict.fromkeys(kept.labels + item.labels))
        if item.split and kept.split and item.split != kept.split and not kept.error:
            kept.error = f"{item.where}: split {item.split} disagrees with {kept.where} ({kept.split}) for the same segment"
        kept.split = kept.split or item.split
    return out


def resolve_video(raw_dir: Path, video: str) -> Path | None:
    """RAW_DIR/video, or the one RAW_DIR/video.<ext> with a video extension when `video` has none."""
    path = Path(raw_dir) / video
    if path.exists():
        return path
    if not path.suffix or path.suffix.lower() not in VIDEO_EXTENSIONS:
        matches = sorted(p for p in path.parent.glob(f"{glob.escape(path.name)}.*")  # '*' in a name is a '*'
                         if p.suffix.lower() in VIDEO_EXTENSIONS) \
            if path.parent.is_dir() else []
        if len(matches) == 1:
            return matches[0]
    return None


def label_set(items: list[Annotation]) -> list[str]:
    """All labels of the usable items, in natural order ('2' before '10')."""
    return sorted({lab for it in items if not it.error for lab in it.labels}, key=natural_key)


def frame_range(start: float, end: float, fps: float) -> tuple[int, int]:
    """Output frames [first, stop) of the segment [start, end) s at `fps`: those whose time k/fps lies in it."""
    # 1e-6 absorbs binary rounding: 2.0 s at 25 fps is frame 50, not 51
    return math.ceil(start * fps - 1e-6), math.ceil(end * fps - 1e-6)
