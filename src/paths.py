"""Where the repository keeps things: converted weights, the dataset layout, runs."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
LABELS_DIR = Path(__file__).resolve().parent / "labels"


def model_dir() -> Path:
    """Folder for converted and cached weights: `$I3D_MODEL_DIR` or `model/` in the repository."""
    path = Path(os.environ.get("I3D_MODEL_DIR", REPO_ROOT / "model"))
    path.mkdir(parents=True, exist_ok=True)
    return path
