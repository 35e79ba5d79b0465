"""The I3D graph: TF 'SAME' padding, endpoint shapes, the 20 blocks, and clear errors."""
from __future__ import annotations

import pytest
import torch

from src.model import BLOCK_NAMES, ENDPOINTS, I3D, MaxPool3dSame, Unit3D, same_padding


@pytest.mark.parametrize("size, kernel, stride, expected", [
    (224, 7, 2, (2, 3)),  # out 112: (111 * 2 + 7 - 224) = 5 -> TF puts the odd pixel after
    (79, 7, 2, (3, 3)),   # out 40: 39 * 2 + 7 - 79 = 6
    (56, 3, 2, (0, 1)),   # out 28: 27 * 2 + 3 - 56 = 1
    (7, 2, 2, (0, 1)),    # out 4: 3 * 2 + 2 - 7 = 1
    (8, 2, 2, (0, 0)),
    (10, 3, 1, (1, 1)),
    (1, 3, 2, (1, 1)),    # out 1: 0 + 3 - 1 = 2
])
def test_same_padding_matches_tf_rule(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_conv_pads_the_odd_pixel_after_like_tf():
    # 1-D along W: input [1, 2, 3, 4], kernel of ones (1, 1, 3), stride 2 -> TF 'SAME' windows
    # [1, 2, 3] and [3, 4, pad] = 6 and 7 (padding 0 before, 1 after).
    unit = Unit3D(1, 1, kernel=(1, 1, 3), stride=(1, 1, 2), batch_norm=False, relu=False)
    with torch.no_grad():
        unit.conv.weight.fill_(1.0)
    x = torch.tensor([1.0, 2.0, 3.0, 4.0]).view(1, 1, 1, 1, 4)
    assert unit(x).flatten().tolist() == [6.0, 7.0]


def test_max_pool_padding_never_wins():
    pool = MaxPool3dSame(3, 2)
    x = torch.full((1, 2, 5, 6, 7), -5.0)
    y = pool(x)
    assert y.shape == (1, 2, 3, 3, 4)
    assert torch.all(y == -5.0)


def test_twenty_blocks_in_the_original_order():
    model = I3D()
    assert list(model.blocks) == [
        "conv3d_1a_7x7", "maxPool3d_2a_3x3", "conv3d_2b_1x1", "conv3d_2c_3x3", "maxPool3d_3a_3x3",
        "mixed_3b", "mixed_3c", "maxPool3d_4a_3x3", "mixed_4b", "mixed_4c", "mixed_4d", "mixed_4e",
        "mixed_4f", "maxPool3d_5a_2x2", "mixed_5b", "mixed_5c", "avg_pool", "dropout", "conv3d_0c_1x1",
        "softmax"]
    assert list(BLOCK_NAMES) == list(model.blocks)


def test_batch_norm_has_offset_but_no_scale_and_eps_1e3():
    model = I3D()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm3d)]
    assert len(bns) == 57  # 3 stem units + 9 inception blocks x 6 units
    assert all(bn.weight is None and bn.bias is not None and bn.eps == 1e-3 for bn in bns)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv3d)]
    assert [c.bias is not None for c in convs].count(True) == 1  # only the logits conv


# Endpoint shapes of Inception-v1 I3D on a 64 x 224 x 224 clip (DeepMind's i3d.py / the paper).
EXPECTED_ENDPOINTS = {
    "Conv3d_1a_7x7": (64, 32, 112, 112), "MaxPool3d_2a_3x3": (64, 32, 56, 56),
    "Conv3d_2b_1x1": (64, 32, 56, 56), "Conv3d_2c_3x3": (192, 32, 56, 56),
    "MaxPool3d_3a_3x3": (192, 32, 28, 28), "Mixed_3b": (256, 32, 28, 28), "Mixed_3c": (480, 32, 28, 28),
    "MaxPool3d_4a_3x3": (480, 16, 14, 14), "Mixed_4b": (512, 16, 14, 14), "Mixed_4c": (512, 16, 14, 14),
    "Mixed_4d": (512, 16, 14, 14), "Mixed_4e": (528, 16, 14, 14), "Mixed_4f": (832, 16, 14, 14),
    "MaxPool3d_5a_2x2": (832, 8, 7, 7), "Mixed_5b": (832, 8, 7, 7), "Mixed_5c": (1024, 8, 7, 7),
}


@pytest.fixture(scope="module")
def small_model() -> I3D:
    torch.manual_seed(0)
    return I3D(num_classes=7).eval()


def test_endpoint_shapes(small_model):
    assert tuple(EXPECTED_ENDPOINTS) == ENDPOINTS
    # every endpoint of one pass through the blocks on the full-size clip
    x = torch.zeros(1, 3, 64, 224, 224)
    with torch.no_grad():
        for i, (endpoint, shape) in enumerate(EXPECTED_ENDPOINTS.items()):
            x = small_model.forward_blocks(x, i, i + 1)
            assert x.shape == (1, *shape), endpoint
        assert small_model.forward_head(x).shape == (1, 7)
    # forward_features stops at each endpoint of the same walk (checked on a small clip)
    clip = torch.randn(1, 3, 9, 64, 64)
    with torch.no_grad():
        walked = clip
        for i, endpoint in enumerate(ENDPOINTS):
            walked = small_model.forward_blocks(walked, i, i + 1)
            assert torch.equal(small_model.forward_features(clip, endpoint), walked), endpoint


def test_logits_average_over_time_and_space(small_model):
    # Frames larger than 224 give a logits map larger than 1x1: the model averages it.
    x = torch.randn(2, 3, 16, 256, 288)
    with torch.no_grad():
        features = small_model.forward_features(x)
        per_position = small_model.conv3d_0c_1x1(small_model.avg_pool(features))
        assert per_position.shape[2:] == (1, 2, 3)
        torch.testing.assert_close(small_model(x), per_position.mean(dim=(2, 3, 4)))


@pytest.mark.parametrize("shape", [(1, 3, 1, 224, 224), (1, 3, 5, 64, 80), (2, 3, 9, 33, 17)])
def test_short_clips_and_small_frames_still_run(small_model, shape):
    with torch.no_grad():
        logits = small_model(torch.randn(shape))
    assert logits.shape == (shape[0], 7) and torch.isfinite(logits).all()


def test_empty_clip_error_says_the_minimum(small_model):
    with pytest.raises(ValueError, match="at least 1 frame"):
        small_model(torch.zeros(1, 3, 0, 224, 224))


def test_wrong_channels_error(small_model):
    with pytest.raises(ValueError, match="3 input channels got 2"):
        small_model(torch.zeros(1, 2, 8, 64, 64))
    with pytest.raises(ValueError, match="5-D"):
        small_model(torch.zeros(3, 8, 64, 64))


def test_unknown_endpoint(small_model):
    with pytest.raises(ValueError, match="unknown endpoint"):
        small_model.forward_features(torch.zeros(1, 3, 8, 64, 64), "Mixed_9z")


def test_replace_logits_keeps_block_order():
    model = I3D()
    model.replace_logits(5)
    assert list(model.blocks) == list(BLOCK_NAMES)
    assert model.conv3d_0c_1x1.conv.weight.shape == (5, 1024, 1, 1, 1)
    with torch.no_grad():
        assert model.eval()(torch.zeros(1, 3, 8, 64, 64)).shape == (1, 5)


def test_flow_model_takes_two_channels():
    model = I3D(num_classes=400, in_channels=2).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 2, 8, 112, 112)).shape == (1, 400)


@pytest.mark.parametrize("frames", [2, 3, 8])
def test_bf16_autocast_weight_gradient_is_right_for_short_inputs(frames):
    # the Mixed_5c convolution of a 16-frame clip sees T = 2 under a 3x3x3 kernel (--amp training)
    torch.manual_seed(0)
    unit = Unit3D(48, 128, 3, batch_norm=False, relu=False)
    x = torch.randn(4, 48, frames, 4, 4)
    grad_out = torch.randn(4, 128, frames, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = unit(x)
    out.float().backward(grad_out)
    # reference: the exact weight gradient of the same conv (padding 1 all round), in float64
    want = torch.nn.grad.conv3d_weight(x.double(), unit.conv.weight.shape, grad_out.double(), padding=1)
    assert torch.isfinite(unit.conv.weight.grad).all()
    assert ((unit.conv.weight.grad.double() - want).abs().max() / want.abs().max()).item() < 0.02
