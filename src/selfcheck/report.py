"""The facts of a machine that a bug report needs: versions, devices, and what each job would run here and why."""
from __future__ import annotations

import os
import platform
import re
import sys

import cv2
import numpy as np
import torch

from src.device import cpu_flags, machine_description
from src.guard import cache_file, read_cache, triton_version


def opencv_ffmpeg() -> str:
    """OpenCV's FFmpeg as its build information states it, e.g. 'YES (avcodec 61.19.100, avformat 61.7.100)'."""
    info = cv2.getBuildInformation()
    found = re.search(r"^\s*FFMPEG:\s*(\S+)", info, re.M)
    if not found:
        return "not in OpenCV's build information"
    parts = [f"{lib} {m.group(1)}" for lib in ("avcodec", "avformat", "avutil", "swscale")
             if (m := re.search(rf"^\s*{lib}:\s*YES \(([^)]*)\)", info, re.M))]
    return found.group(1) + (f" ({', '.join(parts)})" if parts else "")


def versions() -> dict:
    """Python, torch, CUDA, cuDNN, triton, OpenCV and its FFmpeg, PyAV, numpy."""
    try:
        import av
        pyav = av.__version__
    except ImportError:
        pyav = None
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    return {"python": platform.python_version(), "platform": platform.platform(), "torch": torch.__version__,
            "cuda": torch.version.cuda, "cudnn": cudnn, "triton": triton_version(), "opencv": cv2.__version__,
            "opencv_contrib_optflow": hasattr(cv2, "optflow"), "opencv_ffmpeg": opencv_ffmpeg(), "pyav": pyav,
            "numpy": np.__version__}


def devices() -> list[dict]:
    """The CPU (model, SIMD flags, cores, torch threads) and every CUDA / MPS device."""
    found = [{"device": "cpu", "name": machine_description(), "flags": cpu_flags(), "cores": os.cpu_count(),
              "torch_threads": torch.get_num_threads(), "onednn": torch.backends.mkldnn.is_available()}]
    if torch.cuda.is_available():
        driver = getattr(torch._C, "_cuda_getDriverVersion", lambda: None)()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            found.append({"device": f"cuda:{i}", "name": p.name, "capability": f"{p.major}.{p.minor}",
                          "memory_gib": round(p.total_memory / 2**30, 1), "driver": driver,
                          "bf16": torch.cuda.is_bf16_supported()})
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        found.append({"device": "mps", "name": "Apple MPS"})
    return found


def job_plan(device_list: list[dict]) -> list[dict]:
    """For each device: the model precision `auto` picks, the TV-L1 `--flow tvl1` runs, and why; then decoding."""
    from src.flow.choice import choose_cpu_tvl1, cpu_speeds
    from src.flow.extractor import tvl1_backend
    from src.inference import auto_precision

    rows = []
    for d in device_list:
        name = d["device"]
        precision, why = auto_precision(name)
        rows.append({"job": f"inference --precision auto on {name}", "runs": precision, "why": why})
        if name == "cpu":
            choice = choose_cpu_tvl1(64, 256 * 340, cpu_speeds())
            runs, why = f"{choice.implementation} (a 64-pair job)", choice.reason
        else:
            backend, why = tvl1_backend(name.split(":")[0])
            runs = backend
        rows.append({"job": f"--flow tvl1 on {name}", "runs": runs, "why": why})
    rows.append({"job": "decoding", "runs": "OpenCV's FFmpeg backend (cv2.CAP_FFMPEG)",
                 "why": f"worker processes: pre-process.py --workers default {os.cpu_count()} (all cores)"})
    return rows


def guard_verdicts() -> dict:
    """What the jobs' guards have cached on this machine: {path@device: ok, detail}, and the file."""
    return {"file": str(cache_file()),
            "verdicts": {k: {"ok": v.get("ok"), "detail": v.get("detail")} for k, v in read_cache().items()}}


def environment() -> dict:
    """Everything of this module in one dict."""
    device_list = devices()
    return {"versions": versions(), "devices": device_list, "plan": job_plan(device_list), "guard": guard_verdicts(),
            "argv": sys.argv[1:]}
