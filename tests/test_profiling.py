"""i3d_pt_profiling.py and the analytic FLOP counts."""
from __future__ import annotations

import json
import subprocess
import sys

from src.measure.flops import conv_macs_per_block, forward_flops
from src.measure.profiling import profile_model
from src.model import BLOCK_NAMES, I3D

REPO = __import__("pathlib").Path(__file__).resolve().parent.parent


def test_conv_macs_match_hand_count() -> None:
    macs = conv_macs_per_block(I3D(), (2, 3, 16, 224, 224))
    assert list(macs) == list(BLOCK_NAMES)
    assert macs["conv3d_1a_7x7"] == 2 * 64 * 8 * 112 * 112 * 3 * 7 ** 3  # 'SAME', stride 2
    assert macs["conv3d_2c_3x3"] == 2 * 192 * 8 * 56 * 56 * 64 * 27
    # Mixed_5c at 2x7x7 from 832 channels: 1x1s (384 + 192 + 48 + 128 outputs), 3x3s 192->384, 48->128
    positions = 2 * 2 * 7 * 7
    assert macs["mixed_5c"] == positions * (832 * (384 + 192 + 48 + 128) + 27 * (192 * 384 + 48 * 128))
    assert macs["conv3d_0c_1x1"] == 2 * 400 * 1024
    assert all(macs[name] == 0 for name in BLOCK_NAMES if "Pool" in name)
    assert abs(forward_flops(I3D(), (1, 3, 16, 224, 224)) / 1e9 - 55.6) < 0.1  # the figure usually quoted


def test_profile_report_forward_and_backward() -> None:
    for backward in (False, True):
        report = profile_model(I3D(), frames=2, batch=1, backward=backward, repeats=1)
        assert [b.name for b in report.blocks] == list(BLOCK_NAMES)
        assert report.total_ms > 0 and report.clips_per_s > 0 and report.peak_rss_mb > 0
        assert all(b.forward_ms >= 0 for b in report.blocks)
        assert any(b.backward_ms > 0 for b in report.blocks) == backward
        assert report.blocks[0].output_shape == [1, 64, 1, 112, 112]
        assert "mixed_4f" in report.table()


def test_script_json_and_fast_path() -> None:
    out = subprocess.run([sys.executable, "i3d_pt_profiling.py", "--frame_nb", "2", "--repeats", "1", "--json",
                          "--fast"], cwd=REPO, capture_output=True, text=True, check=True).stdout
    report = json.loads(out)
    assert report["model"] == "fast path fp32" and len(report["blocks"]) == 17


def test_runs_under_kernprof_line_by_line(tmp_path) -> None:
    # the original toolkit's usage: kernprof -lv i3d_pt_profiling.py --frame_nb 16 (here fewer frames)
    out = tmp_path / "profile.lprof"
    result = subprocess.run([sys.executable, "-m", "kernprof", "-lv", "-o", str(out), "i3d_pt_profiling.py",
                             "--frame_nb", "9", "--repeats", "1"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for function in ("step", "Unit3D.forward", "MaxPool3dSame.forward", "InceptionBlock.forward"):
        assert f"Function: {function} at line" in result.stdout
    assert "F.conv3d(" in result.stdout and "% Time" in result.stdout  # per-line timings of the model's code
    assert out.stat().st_size > 0
