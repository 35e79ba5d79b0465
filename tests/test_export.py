"""export.py: ONNX, .pt2 (torch.export) and TorchScript files with a free batch, time and frame size, checked
against the PyTorch model; every user error is one line with exit code 1, found before the export work."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from src.clips import load_clip_tensor
from src.export import ExportError, ExportI3D, check_export, export_model, load_for_export
from src.inference.exported import load_exported, run_exported
from src.model import I3D
from src.weights import i3d, save_state_dict
from src.weights.checkpoint import CheckpointError
from tests.conftest import call_main

REPO = Path(__file__).resolve().parent.parent
# docs/inference.md: max |delta logit| 9.5e-6 (ONNX, arm_wrestling); a small margin, so that a regression to 1e-3 fails.
EXPORT_TOLERANCE = 5e-5


@pytest.fixture(scope="module")
def scratch() -> I3D:
    return i3d(weights="rgb_scratch").eval()


@pytest.fixture(scope="module")
def arm_wrestling(shared) -> torch.Tensor:
    return load_clip_tensor(shared / "videos" / "arm_wrestling.mp4", frames=64)


def export(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "export.py", *args], cwd=REPO, capture_output=True, text=True, timeout=900)


@pytest.mark.parametrize("symbolic", [False, True])
@pytest.mark.parametrize("shape", [(1, 3, 9, 224, 224), (2, 3, 16, 224, 224), (1, 3, 17, 225, 231),
                                   (1, 2, 12, 200, 250)])
def test_export_module_matches_plain_model_at_any_size(shape: tuple[int, ...], symbolic: bool) -> None:
    torch.manual_seed(0)
    model = I3D(num_classes=6, in_channels=shape[1]).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm3d):
            m.running_var.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-0.2, 0.2)
    x = torch.randn(shape)
    with torch.no_grad():
        want, got = model(x), ExportI3D(model, symbolic=symbolic)(x)
    assert (got - want).abs().max().item() <= 1e-4 * want.abs().max().item() + 1e-6


@pytest.fixture(scope="module")
def scratch_pt2(scratch: I3D, tmp_path_factory) -> Path:
    """rgb_scratch exported once as a .pt2 program (the slowest export) for the tests below."""
    return export_model(scratch, tmp_path_factory.mktemp("pt2") / "i3d.pt2", "pt2", frames=16)


@pytest.mark.slow
@pytest.mark.parametrize("fmt,suffix", [
    pytest.param("onnx", ".onnx", marks=pytest.mark.filterwarnings(  # the legacy exporter is deprecated too
        "ignore:(You are using the legacy|The feature will be removed|Constant fold)")),
    ("pt2", ".pt2"),
    pytest.param("torchscript", ".pt", marks=pytest.mark.filterwarnings("ignore:`torch.jit")),  # deprecated, kept
])
def test_export_real_clip_dynamic_time(scratch: I3D, arm_wrestling: torch.Tensor, tmp_path: Path, fmt: str,
                                       suffix: str, request) -> None:
    if fmt == "onnx":
        pytest.importorskip("onnx")
        pytest.importorskip("onnxruntime")
    if fmt == "pt2":
        path = request.getfixturevalue("scratch_pt2")
    else:
        path = export_model(scratch, tmp_path / f"i3d{suffix}", fmt, frames=16)
    assert (path.parent / f"i3d{suffix}.classes.txt").read_text().splitlines()[0] == scratch.categories[0]
    assert sorted(p.name for p in path.parent.iterdir()) == [f"i3d{suffix}", f"i3d{suffix}.classes.txt"]
    for frames in (24, 33):  # neither the traced length nor of its parity
        x = arm_wrestling[:, :, :frames]
        with torch.no_grad():
            want = scratch(x)
        got = run_exported(path, x, trust=True)
        assert got.shape == want.shape
        assert (got - want).abs().max().item() < EXPORT_TOLERANCE
        assert scratch.categories[got.argmax().item()] == "arm wrestling"
    assert check_export(path, scratch, arm_wrestling[:, :, :10]) < EXPORT_TOLERANCE


@pytest.mark.slow
def test_pt2_program_takes_any_batch_time_and_frame_size(scratch: I3D, arm_wrestling: torch.Tensor,
                                                         scratch_pt2: Path) -> None:
    run = load_exported(scratch_pt2, trust=True)
    # the real clip at the smallest allowed size (9 frames, 193 x 193), odd sizes, and a batch of 3
    small = F.interpolate(arm_wrestling[:, :, :9], size=(9, 193, 193), mode="trilinear")
    odd = F.interpolate(arm_wrestling[:, :, :21], size=(21, 225, 251), mode="trilinear")
    batch = torch.cat([arm_wrestling[:, :, i:i + 12] for i in (0, 20, 40)])
    for x in (small, odd, batch):
        with torch.no_grad():
            want = scratch(x)
        got = run(x)
        assert got.shape == want.shape == (x.shape[0], 400)
        assert (got - want).abs().max().item() < EXPORT_TOLERANCE, tuple(x.shape)
    with pytest.raises(Exception, match="9"):  # under the minimum the program refuses rather than guessing
        run(arm_wrestling[:, :, :8])


def test_export_script_from_run_dir(tmp_path: Path, monkeypatch, capsys) -> None:
    run = tmp_path / "run"
    model = I3D(num_classes=3).eval()
    save_state_dict(model.state_dict(), run / "best.safetensors")
    (run / "classes.txt").write_text("a\nb\nc\n")
    loaded = load_for_export(run_dir=run)
    assert loaded.categories == ["a", "b", "c"] and loaded.num_classes == 3
    out = tmp_path / "run.pt2"
    # --check-clip '' skips the check (type=Path used to turn it into '.', an empty frame folder)
    result = export(str(run), "--format", "pt2", "--out", str(out), "--check-clip", "")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"wrote {out}") and "max |logit difference|" not in result.stdout
    assert (tmp_path / "run.pt2.classes.txt").read_text() == "a\nb\nc\n"
    assert "Traceback" not in result.stderr and "deprecated" not in result.stderr
    # an existing file is not replaced without --overwrite
    code, _, err = call_main("export.py", [str(run), "--format", "pt2", "--out", str(out), "--check-clip", ""],
                             monkeypatch, capsys)
    assert code == 1 and err == f"error: --out {out} exists; pass --overwrite to replace it\n"
    with pytest.raises(ExportError, match="best.safetensors"):
        load_for_export(run_dir=tmp_path)


def _cases(tmp: Path, shared: Path) -> dict[str, tuple[list[str], str]]:
    """Arguments of each user error, and what its one-line message must say."""
    empty_run = tmp / "empty_run"
    empty_run.mkdir()
    broken_run = tmp / "broken_run"
    broken_run.mkdir()
    (broken_run / "best.safetensors").write_bytes(b"not safetensors")
    junk = tmp / "junk.pth"
    junk.write_bytes(bytes(range(256)) * 20)
    a_file = tmp / "a_file"
    a_file.write_text("x")
    out = str(tmp / "x.onnx")
    return {
        "run folder without best.safetensors": ([str(empty_run), "--out", out], "has no best.safetensors"),
        "unreadable best.safetensors": ([str(broken_run), "--out", out], "not a readable .safetensors file"),
        "weights file that is not loadable": (["--weights", str(junk), "--out", out], "not a file of plain tensors"),
        "unknown weights name": (["--weights", "rgb_nonesuch", "--out", out], "neither a known checkpoint name"),
        # checked before anything is loaded: the bad --weights is never reached
        "unwritable --out": (["--weights", str(junk), "--out", str(a_file / "x.onnx")], "cannot be written"),
        "suffix of another format": (["--weights", str(junk), "--format", "pt2", "--out", out], "must end in .pt2"),
        "missing check clip": (["--weights", "rgb_scratch", "--out", out, "--check-clip", str(tmp / "none.mp4")],
                               "none.mp4"),
        "check clip too short": (["--weights", "rgb_scratch", "--out", out, "--check-clip",
                                  str(shared / "videos" / "video_0.mov")], "3 frames; the check needs at least 9"),
    }


CASES = ["run folder without best.safetensors", "unreadable best.safetensors", "weights file that is not loadable",
         "unknown weights name", "unwritable --out", "suffix of another format", "missing check clip",
         "check clip too short"]


@pytest.mark.parametrize("case", CASES)
def test_user_errors_are_one_line_before_any_export_work(case: str, tmp_path: Path, shared: Path, monkeypatch,
                                                         capsys) -> None:
    args, says = _cases(tmp_path, shared)[case]
    code, _, err = call_main("export.py", args, monkeypatch, capsys)  # test_export_script_from_run_dir runs the script
    assert code == 1, err
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert says in err
    assert not (tmp_path / "x.onnx").exists() and not list(tmp_path.rglob("*.part"))


def test_load_for_export_errors_name_the_file(tmp_path: Path) -> None:
    (tmp_path / "best.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(ExportError, match="best.safetensors"):
        load_for_export(run_dir=tmp_path)
    save_state_dict({"conv3d_1a_7x7.conv.weight": torch.zeros(64, 3, 7, 7, 7)}, tmp_path / "best.safetensors")
    with pytest.raises(CheckpointError, match="missing"):
        load_for_export(run_dir=tmp_path)
