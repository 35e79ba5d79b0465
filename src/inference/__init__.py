"""Inference: the fast eval-only path of a trained I3D and runners for exported models."""
from src.inference.exported import SAFE_SUFFIXES, ExportedModel, UntrustedModel, check_trusted, load_exported, run_exported
from src.inference.fast import (PRECISION_DTYPES, PRECISIONS, FastI3D, FastPath, auto_precision,
                                check_precision, cpu_bf16_unsupported, cpu_has_bf16, optimize_for_inference)
from src.inference.guard import FAST_PATH_BOUNDS, accelerate, fast_bound, guarded_fast_path
