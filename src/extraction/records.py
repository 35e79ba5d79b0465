"""OUT_DIR/features.csv: one row per video (recipe, shapes, status), merged by concurrent shards under the folder's
mutex; the recipe check against finished rows, and which videos a rerun skips."""
from __future__ import annotations

import csv
import io
from pathlib import Path

from src.extraction.config import FeatureConfig, parse_recipe, recipe_option
from src.extraction.inputs import Video, output_paths
from src.jobs import folder_mutex, write_text_atomic
from src.media.video import natural_key

CSV_NAME = "features.csv"
CSV_FIELDS = ["name", "file", "stream", "frames", "fps", "T'", "window", "stride", "crops", "status", "recipe", "outputs",
              "message"]
JOB = "features"  # the folder mutex: OUT_DIR/.features.lock


def read_csv(out_dir: Path) -> dict[str, dict[str, str]]:
    """Rows of DIR/features.csv keyed by the output name (empty if there is none)."""
    path = Path(out_dir) / CSV_NAME
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {row["name"]: row for row in csv.DictReader(f) if row.get("name")}


def _csv_text(rows: dict[str, dict[str, str]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_FIELDS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for key in sorted(rows, key=natural_key):
        writer.writerow({k: rows[key].get(k, "") for k in CSV_FIELDS})
    return buffer.getvalue()


def update_csv(out_dir: Path, rows: dict[str, dict[str, str]]) -> None:
    """Merge rows (keyed by output name) into DIR/features.csv under the folder's mutex, writing it atomically."""
    with folder_mutex(out_dir, JOB):
        write_text_atomic(Path(out_dir) / CSV_NAME, _csv_text({**read_csv(out_dir), **rows}))


def recipe_conflict(previous: dict[str, dict[str, str]], cfg: FeatureConfig) -> str | None:
    """How finished features in DIR differ from what `cfg` would write (None when they agree)."""
    want = parse_recipe(cfg.recipe_text())
    for row in previous.values():
        if row.get("status") != "ok":
            continue
        had = parse_recipe(row.get("recipe", ""))
        for key in sorted(set(had) & set(want)):  # a stream added or left out is not a conflict
            if had[key] != want[key]:
                return f"{recipe_option(key)} {had[key]} (now {want[key]}), e.g. {row.get('file')}"
    return None


def feature_row(video: Video, cfg: FeatureConfig, status: str, info: dict | None = None, t_prime: int | None = None,
                out_dir: Path | None = None, message: str = "") -> dict[str, str]:
    """The features.csv row of one video."""
    paths = output_paths(out_dir or Path("."), video.name, cfg)
    info = info or {}
    return {
        "name": video.name, "file": str(video.source), "stream": "rgb+flow" if cfg.concat else ",".join(cfg.streams),
        "frames": str(info.get("frames", "")), "fps": f"{info['fps']:.6g}" if "fps" in info else "",
        "T'": "" if t_prime is None else str(t_prime), "window": str(cfg.window),
        "stride": "1" if cfg.per_frame else str(cfg.stride), "crops": str(cfg.crops), "status": status,
        "recipe": cfg.recipe_text(),
        "outputs": ";".join(p.relative_to(out_dir).as_posix() if out_dir else p.name for p in paths.values()),
        "message": message,
    }


def is_finished(previous: dict[str, dict[str, str]], video: Video, out_dir: Path, cfg: FeatureConfig) -> bool:
    """Whether a rerun may skip `video`: its row is ok and its feature files are there."""
    if cfg.overwrite or previous.get(video.name, {}).get("status") != "ok":
        return False
    return all(p.exists() for p in output_paths(out_dir, video.name, cfg).values())
