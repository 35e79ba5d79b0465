"""The manifest: one CSV row per item (its source, split, recipe, shapes, status), read to resume a job.

manifest.csv (or manifest-shard<i>of<n>.csv for a shard) is rewritten atomically while a job runs;
the shards' files are merged into manifest.csv under the folder's mutex when each shard ends.
"""
from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Callable

import numpy as np

from src.flow import recipe_name
from src.jobs import DISK_FULL, disk_full_message, folder_mutex, is_disk_full, write_text_atomic
from src.media import natural_key
from src.preprocess.discovery import RawItem, item_key
from src.preprocess.options import JOB, Options, PreprocessError

MANIFEST_FIELDS = [
    "source", "class", "split", "name", "status", "source_fps", "duration_s", "source_frames",
    "frames_written", "rgb_shape", "flow_shape", "dtype", "flow_algorithm", "fps", "sample_rate",
    "size", "crop", "message", "labels", "start", "end",
]
# manifest column -> the option that sets it; the sample rate is not here: it names the files, so rates coexist
RECIPE_OPTIONS = {"fps": "--fps", "size": "--size", "crop": "--crop", "dtype": "--dtype", "flow_algorithm": "--flow"}
RECIPE_FILE = "recipe.json"  # the recipe of each sample rate, recorded by the first run (or shard) into OUT_DIR


def shape_text(shape: tuple[int, ...] | None) -> str:
    """(250, 64, 85, 3) -> '250x64x85x3' ('' for none)."""
    return "x".join(str(s) for s in shape) if shape else ""


def recipe_columns(opts: Options) -> dict[str, str]:
    """The manifest columns that record how an item's arrays were made."""
    return {
        "dtype": opts.dtype, "flow_algorithm": opts.flow if "flow" in opts.modalities else "none",
        "fps": "" if opts.fps is None else f"{opts.fps:g}", "sample_rate": str(opts.sample_rate),
        "size": str(opts.size), "crop": str(opts.crop or ""),
    }


def base_row(item: RawItem, opts: Options) -> dict[str, str]:
    """An item's manifest row before its work: source, class, split, name, labels, times and recipe."""
    source = item.where if item.where and item.error else str(item.source)
    times = {} if item.start is None else {"start": f"{item.start:.3f}", "end": f"{item.end:.3f}"}
    return {"source": source, "class": item.cls, "split": str(item.split), "name": item.name,
            "labels": ";".join(item.labels), **times, **recipe_columns(opts)}


def row_key(row: dict[str, str]) -> str:
    """A manifest row's identity: its source, plus the times of a segment (RawItem.key of its item)."""
    return item_key(row["source"], float(row["start"]), float(row["end"])) if row.get("start") else row["source"]


def shapes_on_disk(paths: dict[str, Path]) -> dict[str, str]:
    """rgb_shape / flow_shape / dtype read from the .npy headers of existing outputs."""
    row: dict[str, str] = {}
    for modality, path in paths.items():
        if path.exists():
            arr = np.load(path, mmap_mode="r")
            row[f"{modality}_shape"] = shape_text(arr.shape)
            row["dtype"] = str(arr.dtype)
            if modality == "rgb":
                row["frames_written"] = str(arr.shape[0])
    return row


def recipe_difference(had: dict[str, str], want: dict[str, str]) -> str | None:
    """The first recipe column where arrays made by `had` differ from what `want` would write, as option words."""
    for column, option in RECIPE_OPTIONS.items():
        old, new = had.get(column, ""), want[column]
        if column == "flow_algorithm" and ("none" in (old, new) or recipe_name(old) == recipe_name(new)):
            continue  # adding or leaving out flow is fine; tvl1 and tvl1-opencv give the same flow (bit-identical)
        if old != new:
            return f"{option} {old or 'unset'} (now {new or 'unset'})"
    return None


def manifest_conflict(previous: dict[str, dict[str, str]], opts: Options) -> str | None:
    """How the finished arrays of an earlier run differ from what `opts` would write (None if they agree)."""
    want = recipe_columns(opts)
    for row in previous.values():
        if row.get("status") == "done" and row.get("sample_rate") == want["sample_rate"]:
            difference = recipe_difference(row, want)
            if difference:
                return f"{difference}, e.g. {row['source']}"
    return None


def claim_recipe(out_dir: Path, opts: Options) -> None:
    """Record this job's recipe in OUT_DIR/recipe.json before any work, or refuse one that differs from it.

    Under the folder's mutex: of shards started together the first records its recipe and the others
    compare against it, so two shards never mix recipes in one dataset. Each sample rate has its own entry
    (its files have their own names); --overwrite replaces the entry.
    """
    path = Path(out_dir) / RECIPE_FILE
    want = recipe_columns(opts)
    with folder_mutex(out_dir, JOB):
        try:
            recorded = json.loads(path.read_text()) if path.exists() else {}
            had = recorded.get(want["sample_rate"])
            if not isinstance(recorded, dict) or not isinstance(had, (dict, type(None))):
                raise ValueError("not a JSON object of recipes")
        except (OSError, ValueError) as exc:
            if not opts.overwrite:
                raise PreprocessError(f"{path}: cannot be read ({exc}); restore it, or pass --overwrite to redo "
                                      "OUT_DIR's arrays with this recipe") from None
            recorded, had = {}, None
        if had and not opts.overwrite:
            difference = recipe_difference(had, want)
            if difference:
                raise PreprocessError(f"{out_dir}: its arrays are being made with {difference} by {path}; mixing "
                                      "recipes in one dataset would skip items silently; use another OUT_DIR or "
                                      "--overwrite")
        if had and want["flow_algorithm"] == "none":
            want["flow_algorithm"] = had.get("flow_algorithm", "none")  # leaving flow out keeps the recorded one
        if had != want:
            recorded[want["sample_rate"]] = want
            write_text(path, json.dumps(recorded, indent=2, sort_keys=True) + "\n")


def write_text(path: Path, text: str | Callable, newline: str | None = None) -> None:
    """A text file of OUT_DIR written atomically; a full disk is a PreprocessError in one line."""
    try:
        write_text_atomic(path, text, newline)
    except OSError as exc:
        if is_disk_full(exc):
            raise PreprocessError(disk_full_message(path, exc)) from None
        raise


def write_manifest(path: Path, rows: dict[str, dict[str, str]]) -> None:
    """Write the manifest CSV atomically, rows sorted by split, class and name."""
    def write(f) -> None:
        writer = csv.DictWriter(f, fieldnames=MANIFEST_FIELDS, extrasaction="ignore")
        writer.writeheader()
        for row in sorted(rows.values(), key=lambda r: (r["split"], r["class"], natural_key(r["name"]), r["source"])):
            writer.writerow({k: row.get(k, "") for k in MANIFEST_FIELDS})

    write_text(path, write, newline="")


def row_problem(row: dict) -> str | None:
    """Why a manifest row read back cannot be trusted (None when it parses)."""
    if None in row or any(value is None for value in row.values()):
        return "a row cut short or with extra cells"
    if any(c in value for value in row.values() for c in "\n\r\0"):
        return "a line break or NUL byte inside a cell (a stray quote?)"
    if row.get("status") not in ("done", "failed") or not row.get("source"):
        return f"status {row.get('status')!r} and source {row.get('source')!r}"
    try:
        row_key(row)
    except ValueError:
        return f"segment times {row.get('start')!r} / {row.get('end')!r} are not numbers"
    return None


def read_manifest(path: Path, problems: list[str] | None = None) -> dict[str, dict[str, str]]:
    """Rows of an existing manifest keyed by source path (empty if there is none).

    Rows that do not parse (a file cut mid-row, a stray quote, a NUL byte, times that are not numbers) are
    left out, so their items are redone; each is described in `problems`.
    """
    if not path.exists():
        return {}
    rows: dict[str, dict[str, str]] = {}
    with open(path, newline="", errors="replace") as f:
        reader = csv.DictReader(f)
        try:
            for row in reader:
                problem = row_problem(row)
                if problem is None:
                    rows[row_key(row)] = row
                elif problems is not None:
                    problems.append(f"{path}:{reader.line_num}: a manifest row that does not parse ({problem}); "
                                    "its item is redone")
        except csv.Error as exc:
            if problems is not None:
                problems.append(f"{path}:{reader.line_num}: the manifest cannot be read on from here ({exc})")
    return rows


def manifest_name(shard: tuple[int, int]) -> str:
    """manifest.csv, or manifest-shard<i>of<n>.csv for a shard of several."""
    i, n = shard
    return "manifest.csv" if n == 1 else f"manifest-shard{i}of{n}.csv"


def merge_shard_manifests(out_dir: Path, n: int) -> Path:
    """Merge the manifest-shard<i>of<n>.csv present into manifest.csv, under the folder's mutex.

    manifest.csv keeps its rows of items that no shard lists (earlier runs, other RAW_DIR content);
    each shard's rows replace the rest. Called by every shard when it ends, so the last one to
    finish leaves manifest.csv complete, and shards running at the same time never lose rows.
    """
    out_dir = Path(out_dir)
    target = out_dir / "manifest.csv"
    with folder_mutex(out_dir, JOB):
        rows = read_manifest(target)
        for i in range(1, n + 1):
            rows.update(read_manifest(out_dir / manifest_name((i, n))))
        write_manifest(target, rows)
    return target


class ManifestRecorder:
    """The rows of a running job: each finished item's row is recorded, reported, and saved every 10 s."""

    def __init__(self, path: Path, previous: dict[str, dict[str, str]], rows: dict[str, dict[str, str]], bar) -> None:
        self.path, self.previous, self.rows, self.bar = path, previous, rows, bar
        self.failures = sum(1 for r in rows.values() if r.get("status") == "failed")
        self.last_save = time.monotonic()

    def record(self, row: dict[str, str]) -> None:
        """Take one item's final row; a full disk stops the job (every later item would fail the same way)."""
        self.rows[row_key(row)] = row
        if row["status"] == "failed":
            self.failures += 1
            self.bar.write(f"FAILED {row['message']}")
            if row["message"].startswith(DISK_FULL):
                raise PreprocessError(f"{row['message']}; free some space, then rerun the same command to resume")
        elif row.get("message"):
            self.bar.write(f"warning: {row['message']}")
        self.bar.update(1)
        if time.monotonic() - self.last_save > 10:
            self.save()

    def save(self) -> None:
        """Write the manifest: this run's rows over the earlier ones (rows of items outside this run are kept)."""
        write_manifest(self.path, {**self.previous, **self.rows})
        self.last_save = time.monotonic()
