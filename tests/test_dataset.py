"""The pre-processed dataset reader: layout errors, windows, crops and the flow flip."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from src.arrays import save_array_atomic
from src.dataset import ClipDataset, DatasetError, View, read_classes, scan_split, window
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
