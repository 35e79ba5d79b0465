"""The error raised for checkpoint files that are missing, corrupt or not I3D weights (one module, no imports)."""
from __future__ import annotations


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not hold the expected I3D tensors."""
