import pytest
import torch

from nst_contract.layers import FEATURE_SHAPES, LAYER_NAMES
from nst_engine import weights
from nst_engine.vgg import (
    MaxPool,
    Normalize,
    VGGFeatures,
    build_features,
)


def test_layer_names_follow_vgg19():
    assert len(LAYER_NAMES) == 37
    assert LAYER_NAMES[:5] == ["conv1_1", "relu1_1", "conv1_2", "relu1_2", "pool1"]
    assert LAYER_NAMES.index("relu4_2") == 22 and LAYER_NAMES.index("relu5_1") == 29
    assert LAYER_NAMES[-1] == "pool5" and len(FEATURE_SHAPES) == 32


def test_truncated_after_last_layer_in_use():
    state, family = weights.load("random")
    model = VGGFeatures(state, family, ["relu1_1", "relu3_1"])
    assert model.names[-1] == "relu3_1" and len(model.body) == LAYER_NAMES.index("relu3_1") + 1
    out = model(torch.rand(1, 3, 32, 32))
    assert set(out) == {"relu1_1", "relu3_1"}
    assert out["relu3_1"].shape == (1, 256, 8, 8)
    assert not any(p.requires_grad for p in model.parameters())


def test_conv_output_is_not_overwritten_by_inplace_relu():
    state, family = weights.load("random")
    model = VGGFeatures(state, family, ["conv2_1"])
    out = model(torch.rand(1, 3, 16, 16))["conv2_1"]
    assert (out < 0).any(), "a conv output must keep its negative values"


@pytest.mark.parametrize("size", [(8, 8), (7, 9)])
def test_max_pool_matches_torch_forward_and_backward(size):
    # The pool finds its maxima again in backward instead of keeping indices.
    torch.manual_seed(0)
    x = torch.randn(1, 3, *size, requires_grad=True)
    upstream = torch.randn(1, 3, size[0] // 2, size[1] // 2)
    ours = MaxPool()(x)
    (ours * upstream).sum().backward()
    ours_grad, x.grad = x.grad, None
    theirs = torch.nn.functional.max_pool2d(x, 2, 2)
    (theirs * upstream).sum().backward()
    assert torch.equal(ours, theirs) and torch.equal(ours_grad, x.grad)


@pytest.mark.parametrize("layers", [["relu1_1", "relu2_1", "relu3_1", "relu4_2", "relu5_1"],
                                    ["conv1_2", "relu2_2", "pool3"]])
def test_features_and_gradient_match_stock_layers(layers):
    # In-place ReLUs and the index-free pooling: the same activations and image
    # gradient as torchvision's stock layers, odd sizes included.
    state, family = weights.load("random")
    model = VGGFeatures(state, family, layers)
    stock = build_features()
    stock.load_state_dict(state)
    torch.manual_seed(1)
    rgb = torch.rand(1, 3, 45, 38, requires_grad=True)
    ours = model(rgb)
    weights_out = {name: torch.randn_like(out) for name, out in ours.items()}
    sum((out * weights_out[name]).sum() for name, out in ours.items()).backward()
    ours_grad, rgb.grad = rgb.grad, None
    x, theirs = model.normalize(rgb), {}
    for name, module in zip(LAYER_NAMES, stock):
        x = module(x)
        if name in layers:
            theirs[name] = x.clone()  # an in-place ReLU may change x next
        if len(theirs) == len(layers):
            break
    sum((theirs[n] * weights_out[n]).sum() for n in layers).backward()
    for name in layers:
        torch.testing.assert_close(ours[name], theirs[name])
    torch.testing.assert_close(ours_grad, rgb.grad)


def test_avg_pooling_and_unknown_layer():
    state, family = weights.load("random")
    model = VGGFeatures(state, family, ["relu2_1"], pooling="avg")
    assert isinstance(model.body[4], torch.nn.AvgPool2d)
    with pytest.raises(ValueError):
        VGGFeatures(state, family, ["relu9_9"])


def test_caffe_normalisation_is_bgr_0_255_minus_mean():
    rgb = torch.tensor([1.0, 0.5, 0.0]).reshape(1, 3, 1, 1)
    out = Normalize("original")(rgb).flatten().tolist()
    expected = [0 - 103.939, 127.5 - 116.779, 255 - 123.68]
    assert all(abs(a - b) < 1e-3 for a, b in zip(out, expected))
