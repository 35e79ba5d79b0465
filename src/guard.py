"""What the guards of the accelerated paths share: the verdict cache, the process-wide settings, the one-line notice.

Before a job trusts an accelerated path on a device (the Triton or PyTorch TV-L1, the fast inference path at a
precision), a quick check compares it with its reference (src/flow/guard.py, src/inference/guard.py). The verdict
is kept in `cache_dir()/guard.json`, one entry per path and device, each with the facts it was made under (device
name, driver, torch, triton and OpenCV versions, the CPU): an entry whose facts differ from this machine's, or a
file that does not parse, is ignored and the check redone. Checks run in the main process only: a worker process
(decoding) reads the verdicts and never checks.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from pathlib import Path

from src.jobs import write_text_atomic
from src.paths import cache_dir

CACHE_FILE = "guard.json"
REPORT = "attach the output of `python selfcheck.py --json` to a bug report"
FLOW_BACKENDS = ("triton", "pytorch", "opencv")
FLOW_BACKEND_ENV = "I3D_FLOW_BACKEND"  # --flow-backend, inherited by the worker processes a job starts

_settings = {"recheck": False}
_told: set[str] = set()
_rechecked: set[str] = set()
_unsaved: dict[str, dict] = {}


def configure(flow_backend: str | None = None, recheck: bool = False) -> None:
    """Set this process's guard options (the scripts' --flow-backend and --recheck); workers inherit the backend."""
    if flow_backend not in (None, *FLOW_BACKENDS):
        raise ValueError(f"--flow-backend must be one of {', '.join(FLOW_BACKENDS)}, got {flow_backend!r}")
    if flow_backend:
        os.environ[FLOW_BACKEND_ENV] = flow_backend
    else:
        os.environ.pop(FLOW_BACKEND_ENV, None)
    _settings["recheck"] = recheck
    _rechecked.clear()


def forced_flow_backend() -> str | None:
    """The TV-L1 implementation forced by --flow-backend, or None (the guarded default)."""
    value = os.environ.get(FLOW_BACKEND_ENV) or None
    return value if value in FLOW_BACKENDS else None


def in_worker() -> bool:
    """Whether this is a worker process a job started (where no check may run)."""
    return multiprocessing.parent_process() is not None


def device_facts(device) -> dict:
    """What a verdict about `device` depends on: its name and driver, torch, triton and OpenCV versions, the CPU."""
    import cv2
    import torch

    from src.device import machine_description

    facts = {"device": str(device), "torch": torch.__version__, "opencv": cv2.__version__,
             "triton": triton_version(), "cpu": machine_description()}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        props = torch.cuda.get_device_properties(index)
        driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
        facts.update(name=props.name, capability=f"{props.major}.{props.minor}", driver=driver,
                     cuda=torch.version.cuda, cudnn=torch.backends.cudnn.version())
    elif device.type == "mps":
        facts["name"] = "Apple MPS"
    return facts


def triton_version() -> str | None:
    """triton's version, or None where it is not installed."""
    try:
        import triton
    except ImportError:
        return None
    return triton.__version__


def cache_file() -> Path:
    """The verdict cache: next to the CPU flow calibration."""
    return cache_dir() / CACHE_FILE


def read_cache() -> dict:
    """Every stored entry; {} for a missing, unreadable or corrupt file."""
    try:
        data = json.loads(cache_file().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) and all(isinstance(v, dict) for v in data.values()) else {}


def cached_verdict(key: str, facts: dict) -> dict | None:
    """The stored verdict of `key` if it was made under these very facts (and --recheck was not given)."""
    if _settings["recheck"] and key not in _rechecked:  # --recheck: each path once in this process
        return None
    entry = _unsaved.get(key) or read_cache().get(key)
    if entry is None or entry.get("facts") != facts or not isinstance(entry.get("ok"), bool):
        return None
    return entry


def store_verdict(key: str, facts: dict, ok: bool, detail: str, figures: dict | None = None) -> dict:
    """Keep a verdict (atomically; entries of other paths kept, a corrupt file replaced) and return it."""
    entry = {"ok": ok, "detail": detail, "figures": figures or {}, "facts": facts,
             "checked": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    data = read_cache()
    data[key] = entry
    try:
        write_text_atomic(cache_file(), json.dumps(data, indent=2, sort_keys=True) + "\n")
    except OSError:
        _unsaved[key] = entry  # a read-only cache: kept for this process, checked again by the next
    _rechecked.add(key)
    return entry


def notice(what: str, device, why: str, instead: str) -> str:
    """The one line a job prints when a path fails its check (once per process and path)."""
    line = f"warning: {what} on {device} failed its check ({why}); running {instead} instead; {REPORT}"
    if line not in _told:
        _told.add(line)
        print(line, file=sys.stderr, flush=True)
    return line


def add_guard_arguments(parser: argparse.ArgumentParser, flow: bool = True) -> None:
    """--recheck (and, for scripts that compute optical flow, --flow-backend): the checks of the accelerated paths."""
    if flow:
        parser.add_argument("--flow-backend", choices=FLOW_BACKENDS, default=None,
                            help="force this TV-L1 implementation, unchecked (default: Triton on CUDA, the fastest "
                                 "of OpenCV and the PyTorch port on a CPU; Triton and the port are checked against "
                                 "OpenCV once per machine and replaced by the next one if they fail)")
    parser.add_argument("--recheck", action="store_true",
                        help="redo the once-per-machine checks of the accelerated paths (fast path, TV-L1) instead "
                             "of trusting their cached verdicts")


def apply_guard_arguments(args: argparse.Namespace) -> None:
    """Hand --flow-backend and --recheck to the guards (src/guard.py) before any work."""
    configure(getattr(args, "flow_backend", None), args.recheck)
