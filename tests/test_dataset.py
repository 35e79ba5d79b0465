"""The pre-processed dataset reader: layout errors, windows, crops and the flow flip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.dataset import ClipDataset, DatasetError, Item, View, read_classes, scan_split, window
from src.jobs.files import save_array_atomic
from src.synthetic import make_arrays


def test_window_loops_short_items():
    assert window(5, 8, 0).tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert window(10, 4, 3).tolist() == [3, 4, 5, 6]


def test_scan_and_centre_view(tmp_path):
    data = make_arrays(tmp_path / "d", per_class=(2, 1), frames=12, size=40)
    classes = read_classes(data)
    assert classes == ["pan_left", "pan_right", "pan_up", "pan_down"]
    items = scan_split(data, "train", classes, "rgb")
    assert len(items) == 8 and sorted({it.label for it in items}) == [0, 1, 2, 3]
    ds = ClipDataset(items, "rgb", clip_len=8, crop=32, train=False)
    index, view, inputs, label = ds[0]
    kind, clip = inputs[0]
    assert kind == "clip" and clip.shape == (3, 8, 32, 32) and clip.dtype == torch.float32
    stored = np.load(items[0].files["rgb"]).astype(np.float32) / 255 * 2 - 1  # uint8 storage, decoded by hand
    np.testing.assert_allclose(clip.permute(1, 2, 3, 0).numpy(), stored[2:10, 4:36, 4:36], atol=1e-6)


def test_flow_flip_negates_x_and_mirrors(tmp_path):
    folder = tmp_path / "d" / "train" / "a" / "item"
    flow = np.zeros((4, 6, 8, 2), np.float32)
    flow[..., 0] = 0.5                      # moving right
    flow[..., 1] = np.linspace(-1, 1, 8)    # a left-to-right ramp in y, to see the mirroring
    save_array_atomic(folder / "flow-SampleRate_1.npy", flow)
    (tmp_path / "d" / "classes.txt").write_text("a\n")
    items = scan_split(tmp_path / "d", "train", ["a"], "flow")
    ds = ClipDataset(items, "flow", clip_len=4, crop=6)
    plain = ds.load(items[0], "flow", View(0, 0.5, 0.5, False)).permute(1, 2, 3, 0).numpy()
    flipped = ds.load(items[0], "flow", View(0, 0.5, 0.5, True)).permute(1, 2, 3, 0).numpy()
    np.testing.assert_allclose(plain[..., 0], 0.5)
    np.testing.assert_allclose(flipped[..., 0], -0.5)       # mirrored motion goes left
    np.testing.assert_allclose(flipped[..., 1], plain[..., 1][:, :, ::-1])


def test_empty_class_is_named(tmp_path):
    data = make_arrays(tmp_path / "d", per_class=(1, 1), frames=4, size=16)
    (data / "classes.txt").write_text("pan_left\npan_right\npan_up\npan_down\njumping\n")
    with pytest.raises(DatasetError, match=r"train/jumping: class 'jumping' has no rgb arrays"):
        scan_split(data, "train", read_classes(data), "rgb")


def test_val_class_missing_from_classes_txt(tmp_path):
    data = make_arrays(tmp_path / "d", per_class=(1, 1), frames=4, size=16)
    (data / "val" / "swimming" / "x").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"classes \['swimming'\] are not in"):
        scan_split(data, "val", read_classes(data), "rgb")


def test_wrong_shape_names_the_file(tmp_path):
    data = make_arrays(tmp_path / "d", per_class=(1, 1), frames=4, size=16)
    bad = data / "train" / "pan_up" / "pan_up_0" / "rgb-SampleRate_1.npy"
    np.save(bad, np.zeros((4, 16, 16), np.uint8))
    items = scan_split(data, "train", read_classes(data), "rgb")
    ds = ClipDataset(items, "rgb", clip_len=4, crop=16)
    index = next(i for i, it in enumerate(items) if it.files["rgb"] == bad)
    with pytest.raises(DatasetError, match=r"rgb-SampleRate_1.npy: shape \(4, 16, 16\), expected \(T, H, W, 3\)"):
        ds[index]


def test_fixed_views_take_turns(tmp_path):
    data = make_arrays(tmp_path / "d", per_class=(1, 1), frames=20, size=48)
    items = scan_split(data, "train", read_classes(data), "rgb")
    ds = ClipDataset(items, "rgb", clip_len=8, crop=32, views=2, seed=3)
    seen = []
    for epoch in range(4):
        ds.set_epoch(epoch)
        seen.append((ds.view_index(0), ds.view_for(0)))
    assert [v for v, _ in seen] == [0, 1, 0, 1]
    assert seen[0][1] == seen[2][1] and seen[1][1] == seen[3][1] and seen[0][1] != seen[1][1]


def test_balanced_sampling_evens_out_unbalanced_classes():
    from pathlib import Path

    from torch.utils.data import WeightedRandomSampler

    from src.dataset import Item, balanced_weights
    items = [Item(Path(f"a{i}"), 0, {}) for i in range(9)] + [Item(Path("b0"), 1, {}), Item(Path("c0"), 2, {})]
    weights = balanced_weights(items, 3)
    assert weights[:9].sum() == pytest.approx(1.0) and weights[9] == weights[10] == 1.0  # 1/count each
    drawn = list(WeightedRandomSampler(weights, 6000, generator=torch.Generator().manual_seed(0)))
    share = np.bincount([items[i].label for i in drawn], minlength=3) / len(drawn)
    np.testing.assert_allclose(share, [1 / 3] * 3, atol=0.03)  # 9:1:1 in the folder, even when drawn


def _frames_by_opencv(video, count: int, size: int) -> np.ndarray:
    """The first `count` frames, centre `size` crop of a bilinear short-side resize, as x / 255 * 2 - 1."""
    import cv2

    cap = cv2.VideoCapture(str(video))
    out = []
    for _ in range(count):
        bgr = cv2.cvtColor(cap.read()[1], cv2.COLOR_BGR2RGB)
        h, w = bgr.shape[:2]
        small = cv2.resize(bgr, (round(w * size / min(h, w)), round(h * size / min(h, w))), interpolation=cv2.INTER_LINEAR)
        top, left = (small.shape[0] - size) // 2, (small.shape[1] - size) // 2
        out.append(small[top:top + size, left:left + size])
    return (np.stack(out).astype(np.float32) / 255 * 2 - 1).astype(np.float32)


def test_seed_layout_converts_in_one_command(shared, tmp_path):
    import csv
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    seed = tmp_path / "seed"
    clips = {("a", "s1"): "arm_wrestling.mp4", ("a", "s2"): "cleaning_pool.mp4", ("a", "s3"): "video_0.mov",
             ("b", "t1"): "video_90.mov", ("b", "t2"): "unordered.mov"}
    sources = {}
    for (cls, series), clip in clips.items():
        (seed / cls / series).mkdir(parents=True)
        rgb = _frames_by_opencv(shared / "videos" / clip, 3, 32)
        sources[series] = rgb
        # the original toolkit saved the model's (1, T, H, W, C) input; bare (T, H, W, C) is accepted too
        np.save(seed / cls / series / "test_rgb.npy", rgb[None] if series == "s1" else rgb)
    flow = np.clip(np.diff(sources["s1"][..., :2], axis=0), -1, 1)  # any values in range will do: they are moved
    np.save(seed / "a" / "s1" / "test_flow.npy", flow[None])
    (seed / "a" / "broken").mkdir()
    np.save(seed / "a" / "broken" / "test_rgb.npy", np.zeros((3, 32, 32, 3), np.complex64))
    (seed / "c_empty").mkdir()
    with pytest.raises(DatasetError, match="pre-process.py --from-seed"):
        read_classes(seed)  # pointing train.py at the seed folder says how to convert it

    out = tmp_path / "data"
    cmd = [sys.executable, "pre-process.py", "--from-seed", str(seed), str(out), "--val-ratio", "0.5"]
    result = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and "Traceback" not in result.stderr  # the broken series failed, the rest went on
    assert "FAILED" in result.stdout and "broken/test_rgb.npy: dtype complex64" in result.stdout
    assert "c_empty" in result.stdout  # the empty class folder is noted
    assert read_classes(out) == ["a", "b"]
    items = {it.folder.name: it for split in ("train", "val") for it in scan_split(out, split, ["a", "b"], "rgb")}
    assert sorted(items) == ["s1", "s2", "s3", "t1", "t2"]
    for name, item in items.items():
        assert item.label == (0 if name.startswith("s") else 1)
        assert np.array_equal(np.load(item.files["rgb"]), sources[name])
        if name != "s1":  # bare arrays are hard-linked, not copied
            assert os.stat(item.files["rgb"]).st_ino == os.stat(seed / item.folder.parent.name / name / "test_rgb.npy").st_ino
    s1 = items["s1"].folder
    assert np.array_equal(np.load(s1 / "flow-SampleRate_1.npy"), flow)
    assert [p.name for p in (out / "train").rglob("flow-SampleRate_1.npy")] + \
        [p.name for p in (out / "val").rglob("flow-SampleRate_1.npy")] == ["flow-SampleRate_1.npy"]
    flow_item = Item(s1, 0, {"flow": s1 / "flow-SampleRate_1.npy"})
    clip = ClipDataset([flow_item], "flow", clip_len=2, crop=32, train=False).load(flow_item, "flow", View.centre())
    np.testing.assert_array_equal(clip.permute(1, 2, 3, 0).numpy(), flow)
    with open(out / "manifest.csv", newline="") as f:
        rows = {r["name"]: r for r in csv.DictReader(f)}
    assert rows["s1"]["status"] == "done" and rows["broken"]["status"] == "failed"
    assert (rows["s1"]["fps"], rows["s1"]["size"], rows["s1"]["crop"], rows["s1"]["flow_algorithm"]) == ("25", "256", "32", "tvl1")
    again = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert again.returncode == 1 and again.stderr.count("\n") == 1 and "--overwrite" in again.stderr


def test_unusable_dtype_names_the_file(tmp_path):
    folder = tmp_path / "d" / "train" / "a" / "item"
    folder.mkdir(parents=True)
    np.save(folder / "rgb-SampleRate_1.npy", np.zeros((4, 8, 8, 3), np.complex64))
    items = scan_split(tmp_path / "d", "train", ["a"], "rgb")
    with pytest.raises(DatasetError, match=r"rgb-SampleRate_1.npy: dtype complex64, expected float32"):
        ClipDataset(items, "rgb", clip_len=4, crop=8).load(items[0], "rgb", View.centre())
def test_multi_label_items_read_their_labels_txt(tmp_path):
    from src.dataset import collate, is_multi_label, targets
    from src.synthetic import MULTI_COMBOS, MULTI_LABELS, make_multilabel_arrays
    data = make_multilabel_arrays(tmp_path / "d", per_combo=(1, 1), frames=8, size=40)
    classes = read_classes(data)
    assert classes == list(MULTI_LABELS)
    items = scan_split(data, "train", classes, "rgb")
    assert len(items) == len(MULTI_COMBOS) and is_multi_label(items)
    got = sorted(tuple(classes[i] for i in it.label_set()) for it in items)
    assert got == sorted(MULTI_COMBOS)     # zoom_in and brighten have no class folder of their own here
    expected = np.array([[c in combo for c in classes] for combo in
                         (tuple(classes[i] for i in it.label_set()) for it in items)], np.float32)
    np.testing.assert_array_equal(targets(items, len(classes)), expected)
    ds = ClipDataset(items, "rgb", clip_len=4, crop=32, train=False, multi_label_classes=len(classes))
    batch = collate([ds[0], ds[1]])
    assert batch[3].shape == (2, 4) and torch.equal(batch[3], torch.from_numpy(expected[:2]))
    assert not is_multi_label(scan_split(make_arrays(tmp_path / "s", (1, 1), 4, 40), "train",
                                         read_classes(tmp_path / "s"), "rgb"))


def test_labels_txt_naming_an_unknown_class_is_a_clear_error(tmp_path):
    from src.synthetic import make_multilabel_arrays
    data = make_multilabel_arrays(tmp_path / "d", per_combo=(1, 0), frames=4, size=40)
    folder = next((data / "train" / "pan_left").iterdir())
    (folder / "labels.txt").write_text("pan_left\njumping\n")
    with pytest.raises(DatasetError, match=r"labels.txt: labels \['jumping'\] are not in classes.txt"):
        scan_split(data, "train", read_classes(data), "rgb")
    (data / "classes.txt").write_text("pan_left\npan_right\nzoom_in\nbrighten\njumping\n")
    (folder / "labels.txt").write_text("pan_left\n")
    with pytest.raises(DatasetError, match="class 'jumping' has no rgb arrays"):
        scan_split(data, "train", read_classes(data), "rgb")


def poison(path, frames, value=np.nan, dtype=np.float32) -> None:
    """Re-store an item's array as float (as pre-process.py --dtype float32 would) with `value` in some frames."""
    from src.media import decode_array
    arr = decode_array(np.load(path)).astype(dtype)
    arr[frames, 10, 12, 1] = value
    save_array_atomic(path, arr)


def test_nan_or_inf_in_a_loaded_clip_names_the_file_and_frames(tmp_path):
    from src.dataset import NonFiniteValues, drop_nonfinite_items
    data = make_arrays(tmp_path / "d", per_class=(2, 1), frames=12, size=40)
    items = scan_split(data, "train", read_classes(data), "rgb")
    poison(items[1].files["rgb"], [9, 10])
    poison(items[2].files["rgb"], [0], np.inf, np.float16)
    ds = ClipDataset(items, "rgb", clip_len=8, crop=32, train=False)
    ds.load(items[0], "rgb", View.centre())                          # uint8: cannot hold NaN, never scanned
    with pytest.raises(NonFiniteValues, match=rf"{items[1].files['rgb']}: NaN/inf values in frames 9..10 \(2 of "
                                              r"them\); .*--skip-bad-items") as info:
        ds.load(items[1], "rgb", View(1.0, 0.5, 0.5, False))         # frames 4..11
    assert isinstance(info.value, DatasetError) and "\n" not in str(info.value)
    clip = ds.load(items[1], "rgb", View(0.0, 0.5, 0.5, False))      # frames 0..7: finite, and used as they are
    assert torch.isfinite(clip).all()
    with pytest.raises(NonFiniteValues, match="frame 0;"):
        ds.load(items[2], "rgb", View(0.0, 0.5, 0.5, False))
    kept, dropped = drop_nonfinite_items(items)
    assert kept == [items[0]] + items[3:]
    assert dropped == [f"{items[1].files['rgb']}: NaN/inf values in frames 9..10 (2 of them); item left out "
                       "(--skip-bad-items)", f"{items[2].files['rgb']}: NaN/inf values in frame 0; item left out "
                       "(--skip-bad-items)"]


def test_an_error_in_a_loader_worker_keeps_its_one_line_message(tmp_path):
    from torch.utils.data import DataLoader

    from src.dataset import NonFiniteValues, collate, error_text
    data = make_arrays(tmp_path / "d", per_class=(1, 1), frames=8, size=32)
    items = scan_split(data, "train", read_classes(data), "rgb")
    poison(items[0].files["rgb"], [2])
    loader = DataLoader(ClipDataset(items, "rgb", clip_len=8, crop=32, train=False), batch_size=2, num_workers=1,
                        collate_fn=collate)
    with pytest.raises(NonFiniteValues) as info:
        next(iter(loader))
    assert "Traceback" in str(info.value)  # what PyTorch makes of it
    assert error_text(info.value) == f"{items[0].files['rgb']}: NaN/inf values in frame 2; re-make the item with " \
                                     "pre-process.py or remove it, or pass --skip-bad-items to leave such items out"


def pan_data_with_flow(root, per_class=(2, 1), frames=12, size=40):
    """pan_left / pan_right items with rgb and DIS flow arrays (flow i: frame i -> i+1, so T - 1 of them)."""
    from src.flow import FlowExtractor, rgb_to_gray
    data = make_arrays(root, per_class=per_class, frames=frames, size=size, classes=("pan_left", "pan_right"))
    flow = FlowExtractor("dis")
    for rgb in sorted(data.glob("*/*/*/rgb-SampleRate_1.npy")):
        pixels = np.load(rgb)  # uint8 storage of the model-range frames: the synthetic pixels themselves
        save_array_atomic(rgb.with_name("flow-SampleRate_1.npy"), flow(rgb_to_gray(pixels)))
    return data


def test_a_reversed_pan_left_clip_is_a_pan_right_clip(tmp_path):
    from src.flow import FlowExtractor, rgb_to_gray
    data = pan_data_with_flow(tmp_path / "d")
    classes = read_classes(data)
    items = scan_split(data, "train", classes, "joint")
    left, right = classes.index("pan_left"), classes.index("pan_right")
    ds = ClipDataset(items, "joint", clip_len=11, crop=32, flip=False, reverse_to={left: right, right: left})
    index = next(i for i, it in enumerate(items) if it.label == left)
    draws = []
    for epoch in range(200):
        ds.set_epoch(epoch)
        draws.append(ds.view_for(index).reverse)
    assert 0.35 < np.mean(draws) < 0.65  # backwards with probability 0.5
    ds.set_epoch(draws.index(True))
    view = ds.view_for(index)
    _, _, inputs, label = ds[index]
    assert label == right  # and forwards it is still pan_left
    assert ds.target(index, View(view.start, view.top, view.left, False)) == left
    (_, rgb), (_, flow) = inputs
    # rgb: the original frames in reverse order (11 of the 12 frames: the window starts at 0 or 1)
    stored = np.load(items[index].files["rgb"]).astype(np.float32) / 255 * 2 - 1
    start = int(view.start * 1)
    top, left_px = round(view.top * 8), round(view.left * 8)
    want = stored[start:start + 11][::-1, top:top + 32, left_px:left_px + 32]
    np.testing.assert_allclose(rgb.permute(1, 2, 3, 0).numpy(), want, atol=1e-6)
    # flow, by construction: 12 frames give 11 flows and the reversed flow i is -flow[12 - 2 - i]
    stored_flow = np.load(items[index].files["flow"])
    got = flow.permute(1, 2, 3, 0).numpy()
    np.testing.assert_array_equal(got, -stored_flow[10 - np.arange(11), top:top + 32, left_px:left_px + 32])
    # and against flow actually computed on the reversed frames: the same, away from the borders
    pixels = np.load(items[index].files["rgb"])
    computed = FlowExtractor("dis")(rgb_to_gray(np.ascontiguousarray(pixels[::-1])))
    computed = computed[:, top:top + 32, left_px:left_px + 32]
    inner = (slice(None), slice(6, -6), slice(6, -6))
    assert np.abs(got[inner] - computed[inner]).mean() < 2e-3
    # the motion is a pan_right item's: 2 px per frame to the right, i.e. +0.1 after the /20 scaling
    right_item = next(it for it in items if it.label == right)
    assert got[inner][..., 0].mean() == pytest.approx(np.load(right_item.files["flow"])[..., 0].mean(), abs=0.01)
    assert got[inner][..., 0].mean() == pytest.approx(0.1, abs=0.01)


def test_fixed_views_keep_their_reversal(tmp_path):
    # the feature cache stores fixed views: a view must be reversed every time it comes back, or never
    data = make_arrays(tmp_path / "d", per_class=(2, 1), frames=8, size=32, classes=("pan_left", "pan_right"))
    items = scan_split(data, "train", read_classes(data), "rgb")
    ds = ClipDataset(items, "rgb", clip_len=8, crop=32, views=4, flip=False, reverse_to={0: 1, 1: 0})
    seen = {}
    for epoch in range(12):
        ds.set_epoch(epoch)
        for i in range(len(items)):
            seen.setdefault((i, ds.view_index(i)), set()).add(ds.view_for(i))
    assert all(len(views) == 1 for views in seen.values())
    assert {next(iter(v)).reverse for v in seen.values()} == {True, False}
    plain = ClipDataset(items, "rgb", clip_len=8, crop=32, views=4, flip=False)
    assert not any(plain.view_for(i).reverse for i in range(len(items)))  # no pairs: never reversed
