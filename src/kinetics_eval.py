"""Kinetics accuracy of pretrained weights: top-1, top-5 and mean class accuracy over a list of videos (or a
pre-processed folder), per class, resumable, with missing and broken videos counted and never fatal.

The official test recipe: 25 fps, short side 256, a centre 224 crop, the whole clip in one pass (the
model's head averages over time). `clips` N with `frames` L takes N evenly spaced windows of L frames and
`crops` 3 three crops along the frame, softmax scores averaged, as evaluate.py does for a fine-tuned run.

A Kinetics list (label,youtube_id,time_start,time_end,split) names a clip by its YouTube id and its times
in the original video, while downloaded clips are usually cut already and named
<id>_<start:06d>_<end:06d>.mp4 (or <id>.mp4): the file is looked up by those names anywhere under RAW_DIR
and used as it is, never cut again. Class names are matched to the label map whatever their spelling
(case, underscores, parentheses, quotes: "arm_wrestling", "Arm wrestling", "hurling_(sport)").

OUT/records.jsonl holds one result per video, rewritten atomically every few seconds and at the end;
OUT/settings.json says what they were computed with. A rerun with the same settings skips the videos
already scored and retries the missing and broken ones.
"""
from __future__ import annotations

import csv
import json
import logging
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from src.annotations import AnnotationError, read_annotations
from src.clips import TEST_CROPS, InputError, clip_to_tensor, crop_at, load_crops
from src.dataset import DatasetError, decode_array, find_array, read_classes, scan_split
from src.device import pick_device
from src.jobs import FolderLock, LockError, inside, write_text_atomic
from src.media import VideoError, is_video_file, natural_key
from src.predict import Predictor, make_predictor
from src.weights import pretrained_streams

log = logging.getLogger("evaluate")
RECORDS, SETTINGS, PER_CLASS, SUMMARY = "records.jsonl", "settings.json", "per_class.csv", "summary.json"
FLUSH_SECONDS = 10.0  # records are rewritten at most this often (and at the end): cheap, and little is lost
SHOWN = 20  # problems named one by one before the rest are only counted


class EvaluationError(ValueError):
    """The evaluation as a whole cannot run (no usable list, a busy output folder); one line naming the fix."""


def label_key(name: str) -> str:
    """A class name reduced for matching: case, underscores, parentheses and quotes do not count."""
    text = re.sub(r"[()'\"]", "", name.strip().lower().replace("_", " "))
    return " ".join(text.split())


def match_classes(names: list[str], categories: list[str]) -> dict[str, int]:
    """The label-map index of each name that matches a category (unmatched names are left out)."""
    keys = {label_key(c): i for i, c in enumerate(categories)}
    return {n: keys[label_key(n)] for n in names if label_key(n) in keys}


@dataclass
class Entry:
    """One video (or pre-processed item) to score: its records key, class, where it is listed and its file."""

    key: str
    label: str
    where: str
    index: int | None = None
    path: str | None = None
    problem: str | None = None  # why it cannot be scored: an unusable row, a class the weights do not know
    looked_for: str = ""  # the file names tried, for the message when none is there
    unmatched: str | None = None  # the class name, when the weights do not know it


def index_videos(raw_dir: Path) -> dict[str, Path]:
    """Every video file under RAW_DIR by its stem (the first in natural order) and by its path relative to RAW_DIR,
    with and without the extension; symlinked folders are not entered. One walk, then only exact look-ups: a name
    holding '*', '?' or '[' means those characters."""
    found: dict[str, Path] = {}
    for folder, subfolders, files in os.walk(raw_dir):  # followlinks=False: no loop through a link back up
        subfolders[:] = sorted((d for d in subfolders if not d.startswith(".")), key=natural_key)
        for name in sorted(files, key=natural_key):
            path = Path(folder) / name
            if not name.startswith(".") and is_video_file(path):
                relative = path.relative_to(raw_dir)
                for key in (path.stem, relative.as_posix(), relative.with_suffix("").as_posix()):
                    found.setdefault(key, path)
    return found


def find_video(index: dict[str, Path], raw_dir: Path, name: str) -> Path | None:
    """The video a list names: by stem or relative path in the index, else RAW_DIR/name itself if it is a video."""
    if name in index:
        return index[name]
    path = raw_dir / name  # e.g. under a symlinked folder, which the index does not enter
    return path if is_video_file(path) else None


def list_entries(list_path: Path, raw_dir: Path, categories: list[str]) -> list[Entry]:
    """The rows of an annotation list, each with its label-map index and its video file (or a problem)."""
    try:
        rows = read_annotations(list_path)
    except AnnotationError as exc:
        raise EvaluationError(str(exc)) from None
    index = index_videos(raw_dir)
    listed = [lab for r in rows if not r.error for lab in r.labels]
    labels = match_classes(listed, categories)
    if rows and not labels:
        raise EvaluationError(f"{list_path}: no label matches the {len(categories)} classes of the weights "
                              f"({unmatched_names(listed, labels)}); is it a list of another Kinetics version?")
    entries = []
    for row in rows:
        names = [row.video]
        if row.is_segment:  # a Kinetics clip: the cut file is named by id and whole seconds
            names.insert(0, f"{row.video}_{int(row.start):06d}_{int(row.end):06d}")
        # rows of one clip whose labels differ only in spelling ('Arm Wrestling', 'arm_wrestling') name one class
        spellings = list({label_key(lab): lab for lab in reversed(row.labels)}.values())[::-1]
        entry = Entry(names[0] or row.where, ";".join(spellings), row.where)
        if row.error:
            entry.problem = row.error
        elif len(spellings) > 1:
            entry.problem = f"{row.where}: several labels ({', '.join(spellings)}); Kinetics clips have one"
        elif spellings[0] not in labels:
            entry.problem = f"{row.where}: label {spellings[0]!r} is not one of the weights' {len(categories)} classes"
            entry.unmatched = spellings[0]
        elif not inside(raw_dir, row.video):  # the shared rule: a list's paths are read inside RAW_DIR only
            entry.problem = f"{row.where}: video {row.video!r} is outside {raw_dir}"
        else:
            entry.index = labels[spellings[0]]
            path = next((p for n in names if (p := find_video(index, raw_dir, n))), None)
            entry.path = str(path) if path else None
            entry.looked_for = f"{' or '.join(n + '.*' for n in names)} under {raw_dir}"
        entries.append(entry)
    return entries


def unmatched_names(names: list[str], matched: dict[str, int], shown: int = 5) -> str:
    """"N class name(s) match none of them: 'a', 'b' and K more": the names of a list the weights do not know."""
    missing = list(dict.fromkeys(n for n in names if n not in matched))
    more = f" and {len(missing) - shown} more" if len(missing) > shown else ""
    return (f"{len(missing)} class name(s) match none of them: " + ", ".join(repr(n) for n in missing[:shown])
            + more)


def folder_entries(data_dir: Path, split: str, categories: list[str], modality: str) -> list[Entry]:
    """The items of one split of a pre-processed folder (classes.txt names matched to the label map)."""
    try:
        classes = read_classes(data_dir)
        items = scan_split(data_dir, split, classes, modality)
    except DatasetError as exc:
        raise EvaluationError(str(exc)) from None
    labels = match_classes(classes, categories)
    if not labels:
        raise EvaluationError(f"{data_dir / 'classes.txt'}: no class matches the {len(categories)} classes of the "
                              f"weights (e.g. {classes[0]!r})")
    entries = []
    for item in items:
        label = classes[item.label]
        entry = Entry(str(item.folder.relative_to(data_dir)), label, str(item.folder), labels.get(label),
                      str(item.folder))
        if entry.index is None:
            entry.problem = f"{item.folder}: class {label!r} is not one of the weights' {len(categories)} classes"
            entry.unmatched = label
        entries.append(entry)
    return entries


def windows(length: int, clips: int, frames: int | None) -> list[slice]:
    """`clips` evenly spaced windows of `frames` frames (the whole clip when None or longer than it)."""
    if frames is None or frames >= length:
        return [slice(0, length)]
    if clips == 1:
        start = (length - frames) // 2  # the central frames, as predict.py --frames takes them
        return [slice(start, start + frames)]
    return [slice(s, s + frames) for s in np.linspace(0, length - frames, clips).round().astype(int)]


def load_views(predictor: Predictor, entry: Entry, crops: int) -> dict[str, list[np.ndarray]]:
    """Each stream's whole clip at each crop corner: decoded by the recipe, or read from a pre-processed item."""
    corners = TEST_CROPS[crops]
    if Path(entry.path).is_dir():
        views = {}
        for stream, recipe in predictor.recipes.items():
            path = find_array(Path(entry.path), stream, None)
            arr = decode_array(np.load(path, mmap_mode="r", allow_pickle=False))
            if not np.isfinite(arr).all():
                raise InputError(f"{path}: NaN/inf values")
            views[stream] = [crop_at(arr, recipe.crop, corner) for corner in corners]
        return views
    return {s: load_crops(entry.path, recipe, corners) for s, recipe in predictor.recipes.items()}


def score(predictor: Predictor, entry: Entry, clips: int, crops: int, frames: int | None,
          device: torch.device) -> np.ndarray:
    """Class probabilities of one entry: softmax of the streams' summed logits, averaged over every view."""
    views = load_views(predictor, entry, crops)
    total, n = 0.0, 0
    with torch.inference_mode():
        for c in range(len(TEST_CROPS[crops])):
            # joint: rgb has one frame more than flow; each stream takes its own windows, in step
            spans = {s: windows(len(v[c]), clips, frames) for s, v in views.items()}
            for w in range(min(len(x) for x in spans.values())):
                logits = sum(model(clip_to_tensor(views[s][c][spans[s][w]]).to(device))[0].float().cpu()
                             for s, model in predictor.models.items())
                total, n = total + logits.softmax(0), n + 1
    return (total / n).numpy()


class ScoreRecords:
    """OUT/records.jsonl: one JSON object per video, keyed by `key`, rewritten atomically now and then."""

    def __init__(self, out_dir: Path, settings: dict, overwrite: bool):
        self.path, self.flushed = out_dir / RECORDS, time.monotonic()
        stamp = out_dir / SETTINGS
        try:
            saved = json.loads(stamp.read_text()) if stamp.exists() else None
        except ValueError as exc:
            raise EvaluationError(f"{stamp}: not valid JSON ({exc}); --overwrite starts again") from None
        if saved is not None and saved != settings and not overwrite:
            changed = ", ".join(f"{k} {saved.get(k)!r} -> {v!r}" for k, v in settings.items() if saved.get(k) != v)
            raise EvaluationError(f"{out_dir} holds results of other settings ({changed}); use another --out-dir, "
                                  "or --overwrite to start again")
        self.rows: dict[str, dict] = {}
        if overwrite:
            for name in (RECORDS, PER_CLASS, SUMMARY):
                (out_dir / name).unlink(missing_ok=True)
        elif self.path.exists():
            try:
                self.rows = {row["key"]: row for row in map(json.loads, self.path.read_text().splitlines())}
            except (ValueError, KeyError, TypeError) as exc:
                raise EvaluationError(f"{self.path}: not a records file ({exc}); move it away, or --overwrite "
                                      "to start again") from None
        write_text_atomic(stamp, json.dumps(settings, indent=2) + "\n")

    def done(self, entry: Entry) -> bool:
        """Whether the entry was scored already, as listed now (missing and broken ones are tried again)."""
        row = self.rows.get(entry.key, {})
        return row.get("status") == "ok" and row.get("index") == entry.index and row.get("path") == entry.path

    def add(self, row: dict) -> None:
        """Keep one result; the file is rewritten when the last write is FLUSH_SECONDS old."""
        self.rows[row["key"]] = row
        if time.monotonic() - self.flushed > FLUSH_SECONDS:
            self.flush()

    def flush(self) -> None:
        """Rewrite the records file atomically."""
        write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows.values()))
        self.flushed = time.monotonic()


def summarize_scores(entries: list[Entry], rows: dict[str, dict], categories: list[str]) -> tuple[dict, list[dict]]:
    """The summary (top1, top5, mean_class_accuracy, n and the counts of videos not scored) and per-class rows."""
    scored = [rows[e.key] for e in entries if rows.get(e.key, {}).get("status") == "ok"]
    per_class: dict[int, list[tuple[bool, bool]]] = {e.index: [] for e in entries if e.index is not None}
    for r in scored:
        per_class[r["index"]].append((r["top5"][0] == r["index"], r["index"] in r["top5"]))
    classes = [{"class": categories[i], "index": i, "videos": len(h),
                "top1": sum(a for a, _ in h) / len(h) if h else None,
                "top5": sum(b for _, b in h) / len(h) if h else None} for i, h in sorted(per_class.items())]
    accuracies = [c["top1"] for c in classes if c["top1"] is not None]
    statuses = [rows.get(e.key, {}).get("status", "missing") for e in entries]
    n = len(scored)
    summary = {"top1": sum(r["top5"][0] == r["index"] for r in scored) / n if n else None,
               "top5": sum(r["index"] in r["top5"] for r in scored) / n if n else None,
               "mean_class_accuracy": float(np.mean(accuracies)) if accuracies else None, "n": n,
               "listed": len(entries), "missing": statuses.count("missing"), "broken": statuses.count("broken"),
               "unusable": statuses.count("unusable"), "classes": len(accuracies)}
    return summary, classes


def evaluate_entries(predictor: Predictor, entries: list[Entry], records: ScoreRecords, clips: int, crops: int,
                     frames: int | None, device: torch.device) -> dict:
    """Score every entry not done yet into the records; write OUT/per_class.csv; return the summary.

    Missing, broken and unusable entries are recorded, named (the first few) and counted, never fatal.
    """
    todo = [e for e in entries if not records.done(e)]
    if len(todo) < len(entries):
        log.info("%d of %d videos already scored in %s: skipped", len(entries) - len(todo), len(entries), records.path)
    shown = 0
    try:
        for entry in tqdm(todo, desc="evaluating", unit="video", disable=not todo):
            row = {k: v for k, v in asdict(entry).items() if k not in ("problem", "looked_for", "unmatched")}
            row["status"] = "ok"
            if entry.problem or entry.path is None:
                row["status"] = "unusable" if entry.problem else "missing"
                row["error"] = entry.problem or f"{entry.where}: no video {entry.looked_for}"
            else:
                try:
                    probs = score(predictor, entry, clips, crops, frames, device)
                    top = np.argsort(-probs, kind="stable")[:5]
                    row.update(top5=top.tolist(), probs=[round(float(probs[i]), 6) for i in top],
                               prob_true=round(float(probs[entry.index]), 6))
                except (InputError, VideoError, DatasetError, OSError, ValueError, RuntimeError) as exc:
                    row["status"], row["error"] = "broken", f"{entry.path}: {' '.join(str(exc).split())}"
            if row["status"] != "ok":
                shown += 1
                if shown <= SHOWN:
                    log.warning("%s %s", row["status"].upper(), row["error"])
            records.add(row)
    finally:
        records.flush()
    if shown > SHOWN:
        log.warning("... and %d more videos not scored: see %s", shown - SHOWN, records.path)
    summary, classes = summarize_scores(entries, records.rows, predictor.categories)
    write_text_atomic(records.path.parent / PER_CLASS, lambda f: write_rows(f, classes), newline="")
    return summary


def write_rows(f, rows: list[dict]) -> None:
    """The per-class table as CSV (class, index, videos, top1, top5)."""
    writer = csv.DictWriter(f, fieldnames=["class", "index", "videos", "top1", "top5"])
    writer.writeheader()
    writer.writerows(rows)


def evaluate_weights(weights: str, target: str | Path, annotations: str | Path | None = None,
                     out_dir: str | Path | None = None, split: str = "val", clips: int = 1, crops: int = 1,
                     frames: int | None = None, device: torch.device | None = None, precision: str | None = "auto",
                     compile: bool = False, overwrite: bool = False) -> dict:
    """Kinetics accuracy of pretrained `weights` ('NAME', or 'RGB+FLOW' for both streams) over the videos of an
    annotation list in RAW_DIR `target`, or over one split of a pre-processed folder; returns the summary."""
    if clips < 1 or crops not in TEST_CROPS or (frames is not None and frames < 1):
        raise EvaluationError(f"--clips {clips} / --crops {crops} / --frames {frames}: clips and frames must be "
                              "1 or more, crops 1 or 3")
    if clips > 1 and frames is None:
        raise EvaluationError(f"--clips {clips} needs --frames (each clip's length); the official test is one pass "
                              "over the whole video")
    target, device = Path(target), device or pick_device()
    if not target.is_dir():
        raise EvaluationError(f"{target}: not a folder (give the folder of the videos, or a pre-processed folder)")
    names = weights.split("+")
    source = Path(annotations or target)
    out_dir = Path(out_dir or Path("evaluations") / f"{'+'.join(Path(n).stem for n in names)}-{source.stem}"
                   f"{'' if annotations else '-' + split}")
    settings = {"weights": weights, "source": str(source.resolve()), "split": None if annotations else split,
                "clips": clips, "crops": crops, "frames": frames, "precision": precision}
    out_dir.mkdir(parents=True, exist_ok=True)
    lock = FolderLock(out_dir, (1, 1), "kinetics-eval", "evaluate.py")
    try:
        lock.acquire()
    except LockError as exc:
        raise EvaluationError(str(exc)) from None
    try:
        records = ScoreRecords(out_dir, settings, overwrite)  # before the weights load: a mistake costs nothing
        streams = pretrained_streams(names[0] if len(names) == 1 else {"rgb": names[0], "flow": names[1]})
        predictor = make_predictor(streams, device, precision, compile)
        modality = "joint" if len(predictor.models) == 2 else next(iter(predictor.models))
        if annotations:
            entries = list_entries(Path(annotations), target, predictor.categories)
        else:
            entries = folder_entries(target, split, predictor.categories, modality)
        if not entries:
            raise EvaluationError(f"{annotations or target / split}: no videos listed")
        log.info("%s: %d videos listed; %s; writing to %s", weights, len(entries), predictor.path, out_dir)
        summary = evaluate_entries(predictor, entries, records, clips, crops, frames, device)
        summary = {**summary, **settings, "out_dir": str(out_dir),
                   "recipe": "; ".join(f"{s}: {r.describe()}" for s, r in predictor.recipes.items())}
        write_text_atomic(out_dir / SUMMARY, json.dumps(summary, indent=2) + "\n")
        if not summary["n"]:  # a top-1 of 'n/a' is no result: say why nothing was scored
            unknown = [e.unmatched for e in entries if e.unmatched]
            names = f"; {unmatched_names(unknown, {})}" if unknown else ""
            raise EvaluationError(f"{source}: none of the {len(entries)} videos listed could be scored "
                                  f"({summary['missing']} missing, {summary['broken']} broken, {summary['unusable']} "
                                  f"unusable rows{names}); each is named in {out_dir / RECORDS}")
        return summary
    finally:
        lock.release()
