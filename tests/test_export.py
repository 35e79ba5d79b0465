"""export.py: ONNX and TorchScript files with a free time axis, checked against the PyTorch model."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from src.predict import load_clip_tensor
from src.export import ExportI3D, export_model, load_for_export
from src.inference import load_exported, run_exported
from src.model import I3D
from src.weights import i3d, save_state_dict

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def scratch() -> I3D:
    return i3d(weights="rgb_scratch").eval()


@pytest.mark.parametrize("shape", [(1, 3, 9, 224, 224), (2, 3, 16, 224, 224), (1, 3, 17, 225, 231),
                                   (1, 2, 12, 200, 250)])
def test_export_module_matches_plain_model_at_any_size(shape: tuple[int, ...]) -> None:
    torch.manual_seed(0)
    model = I3D(num_classes=6, in_channels=shape[1]).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(shape)
    with torch.no_grad():
        want, got = model(x), ExportI3D(model)(x)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-6


@pytest.mark.parametrize("fmt,suffix", [("onnx", ".onnx"), ("torchscript", ".pt")])
def test_export_real_clip_dynamic_time(scratch: I3D, shared, tmp_path: Path, fmt: str, suffix: str) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    path = export_model(scratch, tmp_path / f"i3d{suffix}", fmt, frames=16)
    assert (tmp_path / f"i3d{suffix}.classes.txt").read_text().splitlines()[0] == scratch.categories[0]
    clip = load_clip_tensor(shared / "videos" / "arm_wrestling.mp4", frames=64)
    for frames in (24, 33):  # neither the traced length nor of its parity
        x = clip[:, :, :frames]
        with torch.no_grad():
            want = scratch(x)
        got = run_exported(path, x)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < 1e-3
        assert scratch.categories[got.argmax().item()] == "arm wrestling"
    assert load_exported(path)(clip[:, :, :10]).shape == (1, 400)


def test_export_script_from_run_dir(scratch: I3D, shared, tmp_path: Path) -> None:
    run = tmp_path / "run"
    model = I3D(num_classes=3).eval()
    save_state_dict(model.state_dict(), run / "best.safetensors")
    (run / "classes.txt").write_text("a\nb\nc\n")
    loaded = load_for_export(run_dir=run)
    assert loaded.categories == ["a", "b", "c"] and loaded.num_classes == 3
    out = tmp_path / "run.pt"
    result = subprocess.run([sys.executable, "export.py", str(run), "--format", "torchscript", "--out", str(out),
                             "--check-clip", str(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif"),
                             "--check-frames", "12"], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "max |logit difference|" in result.stdout and out.exists()
    with pytest.raises(FileNotFoundError, match="best.safetensors"):
        load_for_export(run_dir=tmp_path)
