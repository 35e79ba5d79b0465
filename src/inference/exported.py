"""Running exported models (ONNX, torch.export programs, TorchScript) behind the model's clip -> logits interface."""
from __future__ import annotations

import functools
from pathlib import Path

import torch


def load_exported(path: str | Path):
    """An exported model (.onnx via onnxruntime, .pt2 torch.export program, .pt/.ts TorchScript) as clip -> logits."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such exported model; create one with `python export.py`")
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


def run_exported(path: str | Path, clip: torch.Tensor) -> torch.Tensor:
    """Logits (N, classes) of an exported model on a float32 (N, C, T, H, W) clip; the model is cached."""
    return _cached_exported(str(Path(path).resolve()))(clip)


@functools.lru_cache(maxsize=4)
def _cached_exported(path: str):
    return load_exported(path)


class ExportedModel(torch.nn.Module):
    """An exported model (ONNX / torch.export / TorchScript) behind the model interface: clip -> logits."""

    def __init__(self, path: str | Path):
        super().__init__()
        self.path = str(path)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        return run_exported(self.path, clip.float().cpu())
