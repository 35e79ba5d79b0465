"""Where the repository keeps things: converted weights, the dataset layout, runs."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS_DIR = Path(__file__).resolve().parent / "labels"
ITEM_LABELS_FILE = "labels.txt"  # in an item folder of the pre-processed layout: its labels, one per line (multi-label)


def model_dir() -> Path:
    """Folder for converted and cached weights: `$I3D_MODEL_DIR` or `model/` in the repository."""
    path = Path(os.environ.get("I3D_MODEL_DIR", REPO_ROOT / "model"))
    path.mkdir(parents=True, exist_ok=True)
    return path


def cache_dir() -> Path:
    """Folder for what this toolkit measures about a machine (e.g. TV-L1 speeds): `$I3D_CACHE_DIR` or
    ~/.cache/i3d-finetune."""
    path = Path(os.environ.get("I3D_CACHE_DIR", Path.home() / ".cache" / "i3d-finetune"))
    path.mkdir(parents=True, exist_ok=True)
    return path
