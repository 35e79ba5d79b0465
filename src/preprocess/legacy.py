"""Importing the original toolkit's layout, SEED/<class>/<series>/test_rgb.npy and test_flow.npy.

`import_seed` turns it into this toolkit's layout (classes.txt, train/ and val/ split by --val-ratio,
<split>/<class>/<series>/{rgb,flow}-SampleRate_1.npy, manifest.csv) without recomputing anything:
(T, H, W, C) arrays are hard-linked (copied across file systems), (1, T, H, W, C) ones are written
without the batch axis. The manifest declares the recipe the arrays were made with (by default the
official one), so train.py and predict.py prepare new inputs the same way.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

import numpy as np

from src.jobs import FolderLock, LockError, atomic_write, save_array_atomic
from src.media import is_hidden, natural_key
from src.preprocess.discovery import RawItem
from src.preprocess.manifest import base_row, manifest_name, shape_text, write_manifest, write_text
from src.preprocess.options import JOB, TOOL, Options, PreprocessError
from src.preprocess.pipeline import prepare_out_dir
from src.preprocess.plan import item_paths
from src.preprocess.splits import assign_splits

SEED_NAMES = {"rgb": "test_rgb.npy", "flow": "test_flow.npy"}
CHANNELS = {"rgb": 3, "flow": 2}


def is_legacy_layout(folder: Path) -> bool:
    """Whether `folder` holds <class>/<series>/test_rgb.npy or test_flow.npy entries."""
    folder = Path(folder)
    return any(folder.glob(f"*/*/{SEED_NAMES['rgb']}")) or any(folder.glob(f"*/*/{SEED_NAMES['flow']}"))


def check_seed_array(path: Path, modality: str) -> tuple[np.ndarray, bool]:
    """A seed array as a (T, H, W, C) read-only view and whether it had a batch axis; ValueError names what is wrong."""
    try:
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise ValueError(f"{path}: not a readable .npy array ({exc})") from None
    batched = arr.ndim == 5 and arr.shape[0] == 1
    if batched:
        arr = arr[0]
    c = CHANNELS[modality]
    if arr.ndim != 4 or arr.shape[-1] != c or min(arr.shape) == 0:
        raise ValueError(f"{path}: shape {arr.shape}, expected (T, H, W, {c}) or (1, T, H, W, {c}) for {modality}")
    if arr.dtype not in (np.float32, np.float16, np.uint8):
        raise ValueError(f"{path}: dtype {arr.dtype}, expected float32, float16 or uint8")
    if arr.dtype != np.uint8:
        low, high = float(arr.min()), float(arr.max())
        if not (-1.001 <= low and high <= 1.001):  # also false for NaN
            raise ValueError(f"{path}: values span [{low:g}, {high:g}], expected the model range [-1, 1]")
    return arr, batched


def _link_or_copy(src: Path, dest: Path) -> None:
    """Place `src` at `dest` atomically: a hard link where possible, else a copy."""
    with atomic_write(dest, fsync=False) as tmp:
        tmp.unlink()  # the link (or the copy) takes the temporary name
        try:
            os.link(src, tmp)
        except OSError:
            shutil.copyfile(src, tmp)


def import_legacy_layout(seed_dir: Path, out_dir: Path, opts: Options, log: Callable[[str], None] = print) -> int:
    """Convert SEED/<class>/<series>/test_{rgb,flow}.npy into OUT_DIR's layout; return the number of failed series."""
    seed_dir, out_dir = Path(seed_dir), Path(out_dir)
    if not seed_dir.is_dir() or not is_legacy_layout(seed_dir):
        raise PreprocessError(f"{seed_dir}: no <class>/<series>/test_rgb.npy or test_flow.npy found (the original toolkit's layout)")
    if out_dir.exists() and any(out_dir.iterdir()) and not opts.overwrite:
        raise PreprocessError(f"{out_dir}: OUT_DIR is not empty; use another folder or --overwrite")
    items: list[RawItem] = []
    for class_dir in sorted(p for p in seed_dir.iterdir() if p.is_dir() and not is_hidden(p)):
        series = [p for p in sorted(class_dir.iterdir(), key=lambda p: natural_key(p.name))
                  if p.is_dir() and any((p / n).exists() for n in SEED_NAMES.values())]
        if not series:
            log(f"note: skipped {class_dir}: no <series>/test_rgb.npy or test_flow.npy in it")
        items += [RawItem(p, class_dir.name, p.name) for p in series]
    note = assign_splits(items, opts.val_ratio, opts.seed)
    if note:
        log(f"note: {note}")
    classes = sorted({it.cls for it in items})
    prepare_out_dir(out_dir)
    try:
        with FolderLock(out_dir, (1, 1), JOB, TOOL):
            return _import_items(seed_dir, out_dir, items, classes, opts, log)
    except LockError as exc:
        raise PreprocessError(str(exc)) from None


def _import_items(seed_dir: Path, out_dir: Path, items: list[RawItem], classes: list[str], opts: Options,
                  log: Callable[[str], None]) -> int:
    """Place every series' arrays and write classes.txt and manifest.csv (OUT_DIR locked)."""
    write_text(out_dir / "classes.txt", "".join(f"{c}\n" for c in classes))
    rows: dict[str, dict[str, str]] = {}
    failed = 0
    for item in items:
        present = tuple(m for m in opts.modalities if (item.source / SEED_NAMES[m]).exists())
        row = base_row(item, opts)
        try:
            if not present:
                raise ValueError(f"{item.source}: none of {', '.join(SEED_NAMES[m] for m in opts.modalities)}")
            paths = item_paths(out_dir, item, Options(**{**opts.__dict__, "modalities": present}))
            for modality, dest in paths.items():
                src = item.source / SEED_NAMES[modality]
                arr, batched = check_seed_array(src, modality)
                if batched:
                    save_array_atomic(dest, np.ascontiguousarray(arr))  # drop the batch axis
                else:
                    _link_or_copy(src, dest)
                row[f"{modality}_shape"] = shape_text(arr.shape)
                row["dtype"] = str(arr.dtype)
                row["frames_written"] = row.get("frames_written") or str(arr.shape[0] + (modality == "flow"))
                if opts.crop is None and arr.shape[1] == arr.shape[2]:
                    row["crop"] = str(arr.shape[1])
            row.update(status="done", message="")
        except (ValueError, OSError) as exc:
            failed += 1
            row.update(status="failed", message=str(exc))
            log(f"FAILED {exc}")
        rows[row["source"]] = row
    write_manifest(out_dir / manifest_name((1, 1)), rows)
    log(f"{seed_dir}: {len(items)} series in {len(classes)} classes -> {out_dir} "
        f"({sum(it.split == 'train' for it in items)} train, {sum(it.split == 'val' for it in items)} val), {failed} failed")
    return failed
