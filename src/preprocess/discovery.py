"""Finding the items of a job: the videos and frame folders of class folders, or the rows of an annotation file."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from src.annotations import AnnotationError, read_annotations, resolve_video, segment_name
from src.jobs import inside, path_component
from src.media import is_frame_folder, is_hidden, is_video_file, natural_key
from src.preprocess.options import SPLITS, PreprocessError


def item_key(source: str, start: float | None, end: float | None) -> str:
    """What identifies an item in the manifest: its source, plus the times of a segment."""
    return source if start is None else f"{source}@{start:.3f}-{end:.3f}"


@dataclass
class RawItem:
    """One video file or frame folder (or a segment of one) to pre-process, and where its arrays go."""

    source: Path
    cls: str
    name: str
    split: str | None = None
    error: str | None = None
    labels: tuple[str, ...] = ()        # annotation items: every label (cls is the first)
    start: float | None = None          # a segment of the source, in seconds
    end: float | None = None
    where: str | None = None            # annotation items: FILE:line, for failures without a usable source

    @property
    def key(self) -> str:
        """The item's manifest identity (`item_key`); a failed annotation row is known by its FILE:line."""
        return self.where if self.where and self.error else item_key(str(self.source), self.start, self.end)


@dataclass
class Discovery:
    """What was found under RAW_DIR."""

    items: list[RawItem]
    classes: list[str]
    presplit: bool
    notes: list[str] = field(default_factory=list)


def _scan_class_root(root: Path, notes: list[str]) -> list[RawItem]:
    """Items under root/<class>/, skipping hidden and non-media entries with a note."""
    items: list[RawItem] = []
    for class_dir in sorted(root.iterdir(), key=lambda p: p.name):
        if is_hidden(class_dir):
            notes.append(f"skipped hidden {class_dir}")
            continue
        if not class_dir.is_dir():
            notes.append(f"skipped {class_dir}: a file directly under {root} (expected <class>/<video or frame folder>)")
            continue
        seen: dict[str, Path] = {}
        count = len(items)
        try:
            path_component(class_dir.name, "class folder name")
            bad_class = None
        except ValueError as exc:
            bad_class = f"{class_dir}: {exc}; rename the folder"
        for entry in sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name)):
            if is_hidden(entry):
                notes.append(f"skipped hidden {entry}")
                continue
            if is_video_file(entry):
                name = entry.stem
            elif is_frame_folder(entry):
                name = entry.name
            else:
                what = "folder without png/jpg/jpeg/bmp frames" if entry.is_dir() else "not a video or image-folder"
                notes.append(f"skipped {entry}: {what}")
                continue
            item = RawItem(entry, class_dir.name, name)
            if bad_class:
                item.error = bad_class
            elif (bad_name := _unsafe(name, "item name")) is not None:
                item.error = f"{entry}: {bad_name}; rename it"
            elif name in seen:
                item.error = f"{entry}: its output name {name!r} clashes with {seen[name].name}; rename one of them"
            else:
                seen[name] = entry
            items.append(item)
        if len(items) == count:
            notes.append(f"skipped empty class folder {class_dir}: no videos or frame folders in it, so class "
                         f"{class_dir.name!r} is left out")
    return items


def discover(raw_dir: Path) -> Discovery:
    """Find items and classes under RAW_DIR (kept train/val[/test] split if present)."""
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"{raw_dir}: not a folder; RAW_DIR must hold <class>/<video or frame folder> entries")
    notes: list[str] = []
    has = {s: (raw_dir / s).is_dir() for s in SPLITS}
    if has["train"] and has["val"]:
        items = []
        for split in SPLITS:
            if has[split]:
                for item in _scan_class_root(raw_dir / split, notes):
                    item.split = split
                    items.append(item)
        for entry in sorted(raw_dir.iterdir()):
            if entry.name not in SPLITS and not is_hidden(entry):
                notes.append(f"skipped {entry}: RAW_DIR has train/ and val/, so only {', '.join(SPLITS)} are read")
        presplit = True
    elif has["train"] or has["val"]:
        present, missing = ("train", "val") if has["train"] else ("val", "train")
        raise PreprocessError(f"{raw_dir} has a {present}/ folder but no {missing}/; give both to keep your split, "
                              "or neither to split by --val-ratio")
    else:
        items = _scan_class_root(raw_dir, notes)
        presplit = False
    classes = sorted({item.cls for item in items if not item.error})
    if not items:
        raise PreprocessError(f"{raw_dir}: no videos or frame folders found under <class>/ folders")
    return Discovery(items, classes, presplit, notes)


def _unsafe(name: str, what: str) -> str | None:
    """Why `name` cannot be a folder name inside OUT_DIR (src.jobs.path_component), or None when it can."""
    try:
        path_component(name, what)
    except ValueError as exc:
        return str(exc)
    return None


def annotation_problem(row, raw_dir: Path, name: str, outside_ok: bool) -> str | None:
    """What makes an annotation row unusable before any decoding: names that cannot be folders, a path leaving RAW_DIR."""
    if row.error:
        return row.error
    for label in row.labels:
        if (bad := _unsafe(label, "label")) is not None:
            return f"{row.where}: {bad}"
    if not outside_ok and not inside(raw_dir, row.video):
        return (f"{row.where}: video {row.video!r} is outside RAW_DIR {raw_dir}; paths in an annotation file are "
                "relative to RAW_DIR (pass --allow-outside-raw-dir to read videos elsewhere)")
    if (bad := _unsafe(name, "item name")) is not None:
        return f"{row.where}: {bad} (from video {row.video!r})"
    return None


def discover_annotations(annotations: Path, raw_dir: Path, outside_ok: bool = False) -> Discovery:
    """Items of an annotation file (src.annotations) over videos in RAW_DIR; bad rows become failed items.

    Nothing in the file decides where outputs go: every label and item name must be one folder name, and a
    video path leaving RAW_DIR is refused unless `outside_ok` (--allow-outside-raw-dir).
    """
    raw_dir = Path(raw_dir)
    if not raw_dir.is_dir():
        raise PreprocessError(f"{raw_dir}: not a folder; RAW_DIR must hold the videos the annotation file names")
    try:
        rows = read_annotations(annotations)
    except AnnotationError as exc:
        raise PreprocessError(str(exc)) from None
    items: list[RawItem] = []
    names: dict[str, str] = {}
    for row in rows:
        stem = Path(row.video).stem or row.video
        name = segment_name(stem, row.start, row.end) if row.is_segment else stem
        problem = annotation_problem(row, raw_dir, name, outside_ok)
        source = None if problem else resolve_video(raw_dir, row.video)
        item = RawItem(source or raw_dir / row.video, row.labels[0] if row.labels else "", name, row.split, problem,
                       row.labels, row.start, row.end, row.where)
        if not item.error and source is None:
            item.error = f"{row.where}: {raw_dir / row.video}: no such video or frame folder"
        elif not item.error and names.get(name, item.key) != item.key:
            item.error = f"{row.where}: its output name {name!r} clashes with {names[name]}; rename one of the videos"
        if not item.error:
            names[name] = item.key
        items.append(item)
    usable = [it for it in items if not it.error]
    if not items:
        raise PreprocessError(f"{annotations}: no rows after the header; add one row per video or segment")
    if not usable:
        raise PreprocessError(f"{annotations}: none of its {len(items)} rows is usable; first problem: {items[0].error}")
    # labels of rows that fail (missing video, ...) are left out: a class without items could not train
    classes = sorted({lab for it in usable for lab in it.labels}, key=natural_key)
    return Discovery(items, classes, all(it.split for it in usable))
