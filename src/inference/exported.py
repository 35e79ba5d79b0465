"""Running exported models (ONNX, torch.export programs, TorchScript) behind the model's clip -> logits interface.

Only ONNX files load as data (onnxruntime's fixed operator set, no pickle). A TorchScript file is a
program, and torch.export.load unpickles parts of a .pt2 archive with weights_only=False (a crafted
.pt2 ran os.system while loading), so both run only with trust=True (predict.py --trust-model).
"""
from __future__ import annotations

import functools
from pathlib import Path

import torch

SAFE_SUFFIXES = (".onnx",)


class UntrustedModel(ValueError):
    """An exported model whose loading or running can execute code from the file, without the user's opt-in."""


def check_trusted(path: str | Path, trust: bool = False) -> None:
    """Raise FileNotFoundError for a missing file, UntrustedModel unless `path` loads as data (ONNX) or the user
    trusts it (`trust`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such exported model; create one with `python export.py`")
    if trust or path.suffix.lower() in SAFE_SUFFIXES:
        return
    kind = ("a torch.export program, whose loading unpickles objects that can run any code"
            if path.suffix.lower() == ".pt2" else "TorchScript, a program that runs whatever code it holds")
    raise UntrustedModel(f"{path}: not loaded: the file is {kind}; pass --trust-model only for a file you exported "
                         f"yourself or whose author you trust (ONNX files load without running code)")


def load_exported(path: str | Path, trust: bool = False):
    """An exported model (.onnx via onnxruntime, .pt2 torch.export program, .pt/.ts TorchScript) as clip -> logits.

    Anything but ONNX is refused (UntrustedModel) unless `trust`: see the module's docstring.
    """
    path = Path(path)
    check_trusted(path, trust)
    if path.suffix == ".onnx":
        try:
            import onnxruntime as ort
        except ImportError as exc:
            raise ImportError(f"{path}: running ONNX models needs onnxruntime (pip install onnxruntime)") from exc
        session = ort.InferenceSession(str(path), providers=ort.get_available_providers())
        name = session.get_inputs()[0].name

        def run_onnx(clip: torch.Tensor):
            array = clip.detach().cpu().float().contiguous().numpy()
            return torch.from_numpy(session.run(None, {name: array})[0])
        return run_onnx
    if path.suffix == ".pt2":
        program = torch.export.load(str(path)).module()

        def run_program(clip: torch.Tensor):
            with torch.no_grad():
                return program(clip.float().cpu())
        return run_program
    module = torch.jit.load(str(path), map_location="cpu").eval()

    def run_ts(clip: torch.Tensor):
        with torch.inference_mode():
            return module(clip.float())
    return run_ts


def run_exported(path: str | Path, clip: torch.Tensor, trust: bool = False) -> torch.Tensor:
    """Logits (N, classes) of an exported model on a float32 (N, C, T, H, W) clip; the model is cached."""
    return _cached_exported(str(Path(path).resolve()), trust)(clip)


@functools.lru_cache(maxsize=4)
def _cached_exported(path: str, trust: bool):
    return load_exported(path, trust)


class ExportedModel(torch.nn.Module):
    """An exported model (ONNX / torch.export / TorchScript) behind the model interface: clip -> logits."""

    def __init__(self, path: str | Path, trust: bool = False):
        super().__init__()
        check_trusted(path, trust)
        self.path, self.trust = str(path), trust

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return run_exported(self.path, clip.float().cpu(), self.trust)
