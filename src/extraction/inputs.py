"""The inputs of a features job: every video of the INPUTs (files, frame folders, folders, list files, pre-processed
datasets) with the output name it gets, this shard's share of them, and where their feature files go."""
from __future__ import annotations

import csv
import math
import os
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from src.dataset import find_array
from src.extraction.config import STREAMS, ExtractionError, FeatureConfig
from src.jobs import path_component, prepare_folder, reason, take_shard, walk_files
from src.media.video import VIDEO_EXTENSIONS, is_frame_folder, is_hidden, is_video_file, natural_key

LIST_SUFFIXES = (".txt", ".lst", ".list")


@dataclass
class Video:
    """One input to extract: a video file, a frame folder, or a pre-processed item's arrays."""

    source: Path
    name: str  # output stem relative to OUT_DIR, '/'-separated
    arrays: dict[str, Path] = field(default_factory=dict)  # pre-processed: stream -> .npy
    array_fps: float | None = None
    error: str | None = None


def printable(text: str) -> str:
    """`text` with its control characters (NUL, newline, ...) written as escapes, so it stays one line of a CSV."""
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def name_problem(name: str) -> str | None:
    """Why an output name cannot be a path inside OUT_DIR (each '/'-separated part one file or folder name by
    src.jobs.path_component: none empty, '.' or '..', no control characters), or None when it can."""
    try:
        for part in name.split("/"):
            path_component(part, "part", separators="/")  # names of files on this system: '\\' is a character
    except ValueError as exc:
        return f"its output name '{printable(name)}' is not a path inside the output folder: {exc}"
    return None


def _rate(text: str | None) -> float | None:
    """A manifest's frame rate: a positive finite number, else None (unknown)."""
    try:
        value = float(text or "")
    except ValueError:
        return None
    return value if math.isfinite(value) and value > 0 else None


def is_preprocessed(folder: Path) -> bool:
    """Whether `folder` is a pre-process.py output folder (it has a manifest)."""
    return (folder / "manifest.csv").is_file() or any(folder.glob("manifest-shard*of*.csv"))


def preprocessed_items(root: Path) -> list[Video]:
    """Items of a pre-process.py output folder (split/class/item/{rgb,flow}-SampleRate_n.npy)."""
    rates: dict[str, float | None] = {}
    for manifest in sorted(root.glob("manifest*.csv")):
        with open(manifest, newline="") as f:
            for row in csv.DictReader(f):
                rates[f"{row.get('split')}/{row.get('class')}/{row.get('name')}"] = \
                    _rate(row.get("fps")) or _rate(row.get("source_fps"))
    videos = []
    for folder in sorted((p for p in root.glob("*/*/*") if p.is_dir() and not is_hidden(p)),
                         key=lambda p: [natural_key(x) for x in p.relative_to(root).parts]):
        arrays = {s: find_array(folder, s, None) for s in STREAMS}
        arrays = {s: p for s, p in arrays.items() if p is not None}
        if not arrays:
            continue
        name = folder.relative_to(root).as_posix()
        fps = rates.get(name)
        rgb_or_flow = next(iter(arrays.values())).name
        sample_rate = int(rgb_or_flow.split("SampleRate_")[1].split(".")[0]) if "SampleRate_" in rgb_or_flow else 1
        videos.append(Video(folder, name, arrays, (fps / sample_rate) if fps else None))
    return videos


def media_under(root: Path) -> list[Path]:
    """Videos and frame folders under `root`, recursively (a frame folder is not searched further; a folder
    reached again through a symlink is not searched twice)."""
    return walk_files(root, is_video_file, is_frame_folder, skip=is_hidden, sort_key=lambda p: natural_key(p.name))


def output_stem(path: Path) -> str:
    """An output name: the path without its video extension ('/'-separated); frame folders keep their name."""
    return (path.with_suffix("") if path.suffix.lower() in VIDEO_EXTENSIONS else path).as_posix()


def _listed(path: Path) -> list[Video]:
    """The videos a list file names, one path a line (relative to the current folder), named from their common folder."""
    lines = [line.strip() for line in path.read_text().splitlines()]
    listed = [Path(line) for line in lines if line and not line.startswith("#")]
    if not listed:
        raise ExtractionError(f"{path}: the list names no videos (one path a line)")
    absolute = [Path(os.path.abspath(p)) for p in listed]  # not resolve(): keep symlinks' own names
    common = Path(os.path.commonpath([str(p.parent) for p in absolute]))
    videos = []
    for p, full in zip(listed, absolute):
        video = Video(p, output_stem(full.relative_to(common)))
        if not p.exists():
            video.error = f"{p}: no such file (listed in {path})"
        videos.append(video)
    return videos


def find_inputs(inputs: list[str | Path]) -> list[Video]:
    """Every video of the INPUTs (file, frame folder, folder searched recursively, list file, pre-processed folder)."""
    videos: list[Video] = []
    for text in inputs:
        path = Path(text)
        if not path.exists():
            raise ExtractionError(f"{path}: no such file or folder")
        if path.is_file() and path.suffix.lower() in LIST_SUFFIXES:
            videos.extend(_listed(path))
        elif path.is_file():
            videos.append(Video(path, output_stem(Path(path.name))))
        elif is_frame_folder(path):
            videos.append(Video(path, path.resolve().name))
        elif is_preprocessed(path):
            videos.extend(preprocessed_items(path))
        else:
            try:
                media = media_under(path)
            except OSError as exc:
                raise ExtractionError(f"{path}: cannot be searched for videos ({reason(exc)})") from None
            if not media:
                raise ExtractionError(f"{path}: no videos or frame folders found in it (searched recursively)")
            videos.extend(Video(p, output_stem(p.relative_to(path))) for p in media)
    for video in videos:
        problem = name_problem(video.name)
        if problem:  # refused for this input only; the row it gets stays one line of the CSV
            video.error = f"{printable(str(video.source))}: {problem}; rename it"
            video.name = printable(video.name) or "(empty)"
    seen: dict[str, Path] = {}
    for video in videos:
        if video.name in seen and video.error is None:
            video.error = f"{video.source}: its output name {video.name!r} clashes with {seen[video.name]}; rename one"
        seen.setdefault(video.name, video.source)
    return videos


def shard_videos(videos: list[Video], shard: tuple[int, int]) -> list[Video]:
    """Shard i of n: every n-th video of the list sorted by output name, from the i-th (same on every machine)."""
    return take_shard(videos, shard, key=lambda v: (natural_key(v.name), str(v.source)))


TIME_KEYS = ("times", "fps", "timestamps_ms")  # output keys that are not feature arrays


def output_paths(out_dir: Path, name: str, cfg: FeatureConfig) -> dict[str, Path]:
    """Files of one video by key: each stream's features (or 'rgb+flow' with concat), NAME_rgb.npy ...; with
    --per-crop-files one per crop, 'rgb__k' -> NAME__k.npy (NAME_rgb__k.npy when there are two streams); then
    'times' (NAME_times.npy), or 'fps' and 'timestamps_ms' with --time-files video-features."""
    base = Path(out_dir) / name
    keys = ["rgb+flow"] if cfg.concat else list(cfg.streams)
    if cfg.per_crop_files and cfg.crops > 1:
        paths = {f"{k}__{c}": base.with_name(f"{base.name}{'' if len(keys) == 1 else '_' + k}__{c}.npy")
                 for k in keys for c in range(cfg.crops)}
    else:
        paths = {k: base.with_name(f"{base.name}_{k}.npy") for k in keys}
    times = ["times"] if cfg.time_files == "seconds" else ["fps", "timestamps_ms"]
    paths.update({k: base.with_name(f"{base.name}_{k}.npy") for k in times})
    return paths


def prepare_feature_dir(folder: Path) -> Path:
    """Make `folder` if needed and check a file can be written in it; ExtractionError (one line) if not."""
    try:
        return prepare_folder(folder)
    except OSError as exc:
        raise ExtractionError(f"{folder}: cannot write there ({reason(exc)})") from None
