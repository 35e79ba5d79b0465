"""What a pre-processing job is asked to do: the recipe and the job settings, checked before anything runs."""
from __future__ import annotations

import math
from dataclasses import dataclass

from src.media import STORAGE_DTYPES

SPLITS = ("train", "val", "test")
MODALITIES = ("rgb", "flow")
JOB, TOOL = "preprocess", "pre-process.py"  # the job's lock names and how messages call it


class PreprocessError(ValueError):
    """A problem with the whole job (paths, options, disk space), reported as one sentence."""


@dataclass
class Options:
    """Recipe and job settings; defaults are the official I3D recipe."""

    fps: float | None = 25.0
    folder_fps: float | None = None
    size: int = 256
    crop: int | None = None
    sample_rate: int = 1
    modalities: tuple[str, ...] = MODALITIES
    flow: str = "tvl1"
    bound: float = 20.0
    dtype: str = "float32"
    val_ratio: float = 0.2
    seed: int = 0
    workers: int = 1
    overwrite: bool = False
    shard: tuple[int, int] = (1, 1)
    min_frames: int = 2
    disk_check: bool = True
    flow_device: str = "auto"
    flow_batch: int = 0  # 0: 32 pairs on a GPU; on a CPU each worker computes its items' flow a pair at a time
    flow_compile: str = "auto"
    outside_ok: bool = False  # annotation files may name videos outside RAW_DIR (--allow-outside-raw-dir)

    def validate(self) -> None:
        """Raise PreprocessError for inconsistent settings."""
        for option, value in (("--fps", self.fps), ("--folder-fps", self.folder_fps), ("--val-ratio", self.val_ratio)):
            if value is not None and not math.isfinite(value):
                raise PreprocessError(f"{option} must be a finite number, got {value}")
        if self.fps is not None and self.fps <= 0:
            raise PreprocessError(f"--fps must be positive, got {self.fps}")
        if self.folder_fps is not None and self.folder_fps <= 0:
            raise PreprocessError(f"--folder-fps must be positive, got {self.folder_fps}")
        if self.size < 1:
            raise PreprocessError(f"--size must be a positive number of pixels, got {self.size}")
        if self.crop is not None and not 0 < self.crop <= self.size:
            raise PreprocessError(f"--crop {self.crop} must be between 1 and --size {self.size}")
        if self.sample_rate < 1:
            raise PreprocessError(f"--sample-rate must be 1 or more, got {self.sample_rate}")
        bad = [m for m in self.modalities if m not in MODALITIES]
        if bad or not self.modalities:
            raise PreprocessError(f"--modalities must be a comma list of {', '.join(MODALITIES)}, "
                                  f"got {','.join(self.modalities)}")
        if self.dtype not in STORAGE_DTYPES:
            raise PreprocessError(f"--dtype must be one of {', '.join(STORAGE_DTYPES)}, got {self.dtype}")
        if not 0 <= self.val_ratio < 1:
            raise PreprocessError(f"--val-ratio must be in [0, 1), got {self.val_ratio}")
        if self.workers < 1:
            raise PreprocessError(f"--workers must be 1 or more, got {self.workers}")
        i, n = self.shard
        if not 1 <= i <= n:
            raise PreprocessError(f"--shard {i}/{n}: need 1 <= i <= n")
        if self.flow_batch < 0:
            raise PreprocessError(f"--flow-batch must be 1 or more (0: auto), got {self.flow_batch}")
        if self.flow_compile not in ("auto", "yes", "no"):
            raise PreprocessError(f"--flow-compile must be auto, yes or no, got {self.flow_compile}")
        if "flow" in self.modalities and self.min_frames < 2:
            raise PreprocessError("--min-frames must be at least 2 when flow is computed (flow needs a frame pair)")
