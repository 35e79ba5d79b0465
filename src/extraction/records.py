"""What OUT_DIR records of a features job: features.csv (one row per video: recipe, shapes, status), merged by
concurrent shards under the folder's mutex and checked when read, never trusted blindly; features-recipe.json
(the recipe the folder was started with); and which videos a rerun may skip."""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from src.extraction.config import ExtractionError, FeatureConfig, parse_recipe, recipe_option
from src.extraction.inputs import TIME_KEYS, Video, name_problem, output_paths, printable
from src.extraction.presets import PRESETS
from src.jobs import folder_mutex, write_text_atomic
from src.media.video import natural_key

CSV_NAME = "features.csv"
CSV_FIELDS = ["name", "file", "stream", "frames", "fps", "T'", "window", "stride", "crops", "status", "recipe", "outputs",
              "message"]
RECIPE_NAME = "features-recipe.json"
JOB = "features"  # the folder mutex: OUT_DIR/.features.lock


@dataclass
class Records:
    """The rows of features.csv that can be read, by output name, and a warning line for each one that could not."""

    rows: dict[str, dict[str, str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _row_problem(row: dict[str, str]) -> str | None:
    """Why a parsed row cannot be used (its fields make no sense), or None."""
    name = row.get("name", "")
    problem = name_problem(name)
    if problem:
        return problem
    if not row.get("status"):
        return f"{name!r} has no status"
    if row["status"] != "ok":
        return None
    t_prime = row.get("T'", "")
    if not (t_prime.isascii() and t_prime.isdigit() and int(t_prime) >= 1):
        return f"{name!r} is ok with T' {printable(t_prime)!r}, not a count of windows"
    outputs = row.get("outputs", "").split(";")
    bad = [p for p in outputs if name_problem(p)]
    if not row.get("outputs") or bad:
        return f"{name!r} is ok with no usable outputs ({printable(row.get('outputs', ''))!r})"
    return None


def read_records(out_dir: Path) -> Records:
    """features.csv parsed line by line (a stray quote or a cut spoils only its own line), each row checked."""
    path = Path(out_dir) / CSV_NAME
    records = Records()
    try:
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            lines = f.read().split("\n")
    except FileNotFoundError:
        return records
    header = None
    for number, line in enumerate(lines, 1):
        line = line.removesuffix("\r")
        if not line:
            continue
        try:
            fields = next(csv.reader([line], strict=True))
        except csv.Error as exc:
            records.warnings.append(f"{path} line {number}: does not parse ({exc}: a stray quote?)")
            continue
        if header is None:
            header = fields
            if "name" not in header or "status" not in header:
                records.warnings.append(f"{path} line {number}: not the header of a features.csv")
                return records
            continue
        if len(fields) != len(header):
            records.warnings.append(f"{path} line {number}: {len(fields)} fields where the header has "
                                    f"{len(header)} (cut short?)")
            continue
        row = dict(zip(header, fields))
        problem = "undecodable bytes" if "\ufffd" in line else _row_problem(row)
        if problem:
            records.warnings.append(f"{path} line {number}: {problem}")
            continue
        records.rows[row["name"]] = row
    return records


def _csv_text(rows: dict[str, dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows, key=natural_key):
        writer.writerow({k: rows[key].get(k, "") for k in CSV_FIELDS})
    return buffer.getvalue()


def load_records(out_dir: Path) -> Records:
    """The usable rows of DIR/features.csv; one that is not is dropped, the CSV rewritten without it, and a warning
    says so (its video is then redone)."""
    with folder_mutex(out_dir, JOB):
        records = read_records(out_dir)
        if records.warnings:
            write_text_atomic(Path(out_dir) / CSV_NAME, _csv_text(records.rows))
    records.warnings = [f"warning: {w}; dropped, its video is redone" for w in records.warnings]
    return records


def update_csv(out_dir: Path, rows: dict[str, dict[str, str]]) -> None:
    """Merge rows (keyed by output name) into DIR/features.csv under the folder's mutex, writing it atomically."""
    with folder_mutex(out_dir, JOB):
        write_text_atomic(Path(out_dir) / CSV_NAME, _csv_text({**read_records(out_dir).rows, **rows}))


def _conflict(had: dict[str, str], want: dict[str, str]) -> str | None:
    # only words both have: a stream added or left out is not a conflict; another preset is named first
    for key in sorted(set(had) & set(want), key=lambda k: (k != "preset", k)):
        if had[key] != want[key]:
            return f"{recipe_option(key)} {had[key]} (now {want[key]})"
    return None


def recipe_conflict(previous: dict[str, dict[str, str]], cfg: FeatureConfig) -> str | None:
    """How finished features in DIR differ from what `cfg` would write (None when they agree)."""
    want = parse_recipe(cfg.recipe_text())
    for row in previous.values():
        conflict = _conflict(parse_recipe(row.get("recipe", "")), want) if row.get("status") == "ok" else None
        if conflict:
            return f"{conflict}, e.g. {row.get('file')}"
    return None


def _recorded_recipe(path: Path) -> dict[str, str]:
    try:
        recipe = json.loads(path.read_text())
    except (OSError, ValueError):  # none yet (or not one this tool wrote: it is written atomically)
        return {}
    return {str(k): str(v) for k, v in recipe.items()} if isinstance(recipe, dict) else {}


def check_recipe(out_dir: Path, cfg: FeatureConfig, record: bool = False) -> None:
    """Refuse (ExtractionError) a recipe that differs from the one OUT_DIR was started with, unless --overwrite;
    with `record`, write this job's recipe as the folder's (atomically, under the folder's mutex)."""
    path = Path(out_dir) / RECIPE_NAME
    want = parse_recipe(cfg.recipe_text())
    with folder_mutex(out_dir, JOB):
        had = _recorded_recipe(path)
        conflict = None if cfg.overwrite else _conflict(had, want)
        if conflict:
            raise ExtractionError(f"{out_dir} was started with {conflict} (see {path.name}); use another --out-dir "
                                  "or --overwrite")
        if record and (cfg.overwrite or {**had, **want} != had):
            write_text_atomic(path, json.dumps(want if cfg.overwrite else {**had, **want}, indent=1) + "\n")


def feature_row(video: Video, cfg: FeatureConfig, status: str, info: dict | None = None, t_prime: int | None = None,
                out_dir: Path | None = None, message: str = "") -> dict[str, str]:
    """The features.csv row of one video (every field one line)."""
    paths = output_paths(out_dir or Path("."), video.name, cfg)
    info = info or {}
    preset = PRESETS.get(cfg.preset)
    if preset and preset.flow_note and "flow" in cfg.streams and status == "ok":
        message = " | ".join(filter(None, [message, preset.flow_note]))
    return {
        "name": video.name, "file": printable(str(video.source)),
        "stream": "rgb+flow" if cfg.concat else ",".join(cfg.streams),
        "frames": str(info.get("frames", "")), "fps": f"{info['fps']:.6g}" if "fps" in info else "",
        "T'": "" if t_prime is None else str(t_prime), "window": str(cfg.window),
        "stride": "1" if cfg.per_frame else str(cfg.stride), "crops": str(cfg.crops), "status": printable(status),
        "recipe": cfg.recipe_text(),
        "outputs": ";".join(p.relative_to(out_dir).as_posix() if out_dir else p.name for p in paths.values()),
        "message": printable(message),
    }


def _array_problem(path: Path, rows: int | None, axis: int = 0) -> str | None:
    """Why a feature file cannot be what its row says (missing, unreadable or truncated, `axis` not of length `rows`;
    rows None: a scalar), or None."""
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except FileNotFoundError:
        return f"{path.name} is missing"
    except (OSError, ValueError, EOFError) as exc:
        return f"{path.name} cannot be read ({printable(str(exc))}: truncated?)"
    if rows is None:
        return None if array.ndim == 0 else f"{path.name} has shape {array.shape}, not a single value"
    if array.ndim <= axis or array.shape[axis] != rows:
        return f"{path.name} has shape {array.shape}, not the row's T' = {rows}"
    return None


def check_finished(previous: dict[str, dict[str, str]], video: Video, out_dir: Path,
                   cfg: FeatureConfig) -> tuple[bool, str | None]:
    """Whether a rerun may skip `video` (its row is ok and its feature files are complete), and a warning when its
    row says ok but its files cannot be trusted."""
    row = previous.get(video.name)
    if cfg.overwrite or row is None or row.get("status") != "ok":
        return False, None
    listed = set(row["outputs"].split(";"))
    for key, path in output_paths(out_dir, video.name, cfg).items():
        if path.relative_to(out_dir).as_posix() not in listed:
            return False, None  # not made by that run (another stream): made now, no warning
        crops_first = cfg.crops > 1 and cfg.crops_first and not cfg.per_crop_files and key not in TIME_KEYS
        problem = _array_problem(path, None if key == "fps" else int(row["T'"]), 1 if crops_first else 0)
        if problem:
            return False, f"warning: {out_dir / CSV_NAME}: {video.name!r} is ok but {problem}; redoing it"
    return True, None
