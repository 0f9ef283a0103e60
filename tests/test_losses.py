import pytest
import torch

from nst_engine.losses import (
    EPS,
    ContentLoss,
    Objective,
    RangePenalty,
    StyleLoss,
    TVLoss,
    W2StyleLoss,
    blended_grams,
    gram_matrix,
    moments,
)


def test_gram_matrix_by_hand():
    # Two channels over four positions: F = [[1, 2, 0, 1], [0, 1, 1, 2]]
    features = torch.tensor([[1.0, 2, 0, 1], [0, 1, 1, 2]]).reshape(1, 2, 2, 2)
    gram = gram_matrix(features)
    expected = torch.tensor([[1 + 4 + 0 + 1, 0 + 2 + 0 + 2], [4, 0 + 1 + 1 + 4]]) / 4
    assert torch.allclose(gram, expected)


def test_gram_is_fp32_even_for_half_input():
    features = torch.full((1, 4, 64, 64), 300.0, dtype=torch.float16)
    gram = gram_matrix(features)
    assert gram.dtype == torch.float32
    assert torch.isfinite(gram).all() and torch.allclose(gram, torch.full((4, 4), 90000.0))


def test_content_loss_is_squared_error_relative_to_target_energy():
    target = torch.tensor([1.0, 2.0, 2.0, 0.0]).reshape(1, 1, 2, 2)
    current = torch.tensor([1.0, 0.0, 2.0, 1.0]).reshape(1, 1, 2, 2)
    # sum (F-P)^2 = 4 + 1 = 5; sum P^2 = 9
    passed_on, loss = ContentLoss(target)(current)
    assert passed_on is current and abs(loss.item() - 5 / 9) < 1e-6
    assert ContentLoss(target)(target)[1].item() == 0


def test_style_loss_by_hand():
    style = torch.tensor([[1.0, 1], [0, 0]]).reshape(1, 2, 1, 2)  # A = [[1, 0], [0, 0]]
    current = torch.tensor([[1.0, 1], [1, 1]]).reshape(1, 2, 1, 2)  # G = [[1, 1], [1, 1]]
    passed_on, loss = StyleLoss(gram_matrix(style))(current)
    assert abs(loss.item() - 3.0) < 1e-6  # sum (G-A)^2 = 3, sum A^2 = 1
    assert torch.equal(passed_on, current)


def _plain_style_loss(features, target):
    return (gram_matrix(features) - target).pow(2).sum() / (target.pow(2).sum() + EPS)


@pytest.mark.parametrize("downstream", [True, False])
def test_style_loss_gradient_matches_autograd_of_the_formula(downstream):
    # The fused backward adds the Gram gradient to what arrives from the layers
    # above (or stands alone when nothing uses the passed-on features).
    torch.manual_seed(0)
    target = gram_matrix(torch.rand(1, 4, 5, 6)).double()  # StyleLoss keeps it in fp32
    weights = torch.rand(1, 4, 5, 6, dtype=torch.float64)
    x = torch.rand(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)

    def total(loss_module_output, features):
        passed_on, loss = loss_module_output
        return 3 * loss + ((passed_on * weights).sum() if downstream else 0)

    fused = torch.autograd.grad(total(StyleLoss(target).double()(x), x), x)[0]
    expected = torch.autograd.grad(
        3 * _plain_style_loss(x, target) + ((x * weights).sum() if downstream else 0), x)[0]
    assert torch.allclose(fused, expected, rtol=1e-6, atol=1e-12)  # scale: fp32 sum
    assert torch.autograd.gradcheck(
        lambda f: total(StyleLoss(target).double()(f), f), (x,))


@pytest.mark.parametrize("downstream", [True, False])
def test_bf16_channels_last_style_loss_follows_the_fp32_formula(downstream):
    """The processor's bf16 path (channels-last features, bf16 products with fp32
    accumulation): loss and gradient as the fp32 formula's, to bf16's precision, and
    the gradient in the features' own dtype and layout."""
    torch.manual_seed(0)
    target = gram_matrix(torch.rand(1, 16, 12, 10))
    weights = torch.rand(1, 16, 12, 10)
    start = torch.rand(1, 16, 12, 10)
    x = start.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    passed_on, loss = StyleLoss(target)(x)
    total = 3 * loss + ((passed_on.float() * weights).sum() if downstream else 0)
    fused = torch.autograd.grad(total, x)[0]
    assert fused.dtype == torch.bfloat16
    exact = start.bfloat16().double().requires_grad_(True)  # the same bf16 values, exactly
    expected_loss = _plain_style_loss(exact, target.double())
    expected = torch.autograd.grad(
        3 * expected_loss + ((exact * weights.double()).sum() if downstream else 0), exact)[0]
    assert loss.item() == pytest.approx(expected_loss.item(), rel=1e-2)
    relative = (fused.double() - expected).norm() / expected.norm()
    assert relative < 1e-2, float(relative)


def test_moments_are_the_gram_and_the_mean():
    features = torch.tensor([[1.0, 2, 0, 1], [0, 1, 1, 2]]).reshape(1, 2, 2, 2)
    stacked = moments(features)
    assert stacked.shape == (3, 2)
    assert torch.allclose(stacked[:2], gram_matrix(features))
    assert torch.allclose(stacked[2], torch.tensor([1.0, 1.0]))


def test_w2_style_loss_by_hand_for_one_channel():
    """For one channel the Wasserstein-2 distance between two Gaussians is
    ``(μ - μ_t)² + (σ - σ_t)²``; the loss is that over the painting's E[f²]."""
    style = torch.tensor([1.0, 3.0, 1.0, 3.0]).reshape(1, 1, 2, 2)  # μ 2, σ² 1, E f² 5
    current = torch.tensor([0.0, 0.0, 0.0, 8.0]).reshape(1, 1, 2, 2)  # μ 2, σ² 12
    loss_module = W2StyleLoss(moments(style).double())
    ridge = loss_module.ridge  # the same small ridge added to both variances
    passed_on, loss = loss_module(current)
    expected = ((2 - 2) ** 2 + ((12 + ridge) ** 0.5 - (1 + ridge) ** 0.5) ** 2) / 5
    assert passed_on is current
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    shifted = torch.tensor([2.0, 4.0, 2.0, 4.0]).reshape(1, 1, 2, 2)  # μ 3, σ² 1
    assert loss_module(shifted)[1].item() == pytest.approx(1 / 5, rel=1e-5)


def test_w2_style_loss_by_hand_for_two_channels():
    """Diagonal covariances (two orthogonal zero-mean patterns): W2² is
    ``|μ - μ_t|² + Σ_k (σ_k - σ_t,k)²``."""
    a = torch.tensor([1.0, -1, 1, -1])
    b = torch.tensor([1.0, 1, -1, -1])
    style = torch.stack([a, 2 * b + 1]).reshape(1, 2, 2, 2)  # μ (0, 1), σ² (1, 4)
    current = torch.stack([3 * a, b]).reshape(1, 2, 2, 2)  # μ (0, 0), σ² (9, 1)
    loss_module = W2StyleLoss(moments(style).double())
    r = loss_module.ridge
    expected = (1 + ((9 + r) ** 0.5 - (1 + r) ** 0.5) ** 2
                + ((1 + r) ** 0.5 - (4 + r) ** 0.5) ** 2) / (1 + 5)  # E|f|² = 1 + (4 + 1)
    assert loss_module(current)[1].item() == pytest.approx(expected, rel=1e-5)
    assert loss_module(style)[1].item() == pytest.approx(0, abs=1e-6)


def test_w2_style_loss_gradient_is_the_formulas():
    torch.manual_seed(0)
    target = moments(torch.rand(1, 4, 5, 6).double())
    x = torch.rand(1, 4, 5, 6, dtype=torch.float64, requires_grad=True)
    loss_module = W2StyleLoss(target).double()
    assert torch.autograd.gradcheck(lambda f: loss_module(f)[1], (x,))


def test_w2_style_loss_takes_the_processors_bf16_features():
    torch.manual_seed(2)
    target = moments(torch.rand(1, 16, 12, 10))
    start = torch.rand(1, 16, 12, 10)
    x = start.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    loss = W2StyleLoss(target)(x)[1]
    grad = torch.autograd.grad(loss, x)[0]
    assert grad.dtype == torch.bfloat16 and torch.isfinite(grad.float()).all()
    exact = W2StyleLoss(target)(start.bfloat16().float())[1]
    assert loss.item() == pytest.approx(exact.item(), rel=1e-3)


def test_the_style_loss_follows_the_setting():
    objective = Objective({"c": torch.ones(1, 1, 2, 2)}, {"s": moments(torch.rand(1, 3, 4, 4))},
                          1.0, 1.0, 0.0, style_loss="w2")
    assert isinstance(objective.style["s"], W2StyleLoss)
    assert isinstance(Objective({}, {"s": torch.eye(3)}, 1.0, 1.0, 0.0).style["s"], StyleLoss)


def test_tv_loss_by_hand():
    image = torch.tensor([[0.0, 1.0], [0.0, 0.0]]).reshape(1, 1, 2, 2)
    # horizontal diffs: 1, 0 -> mean 0.5; vertical: 0, -1 -> mean 0.5
    assert abs(TVLoss()(image).item() - 1.0) < 1e-6


def test_blended_grams_weighted_mean():
    a = {"x": torch.ones(1, 1)}
    b = {"x": torch.full((1, 1), 4.0)}
    grams = blended_grams([a, b], [3, 1])
    assert torch.allclose(grams["x"], torch.tensor([[0.75 * 1 + 0.25 * 4]]))


def test_objective_combines_weighted_parts():
    content = {"c": torch.ones(1, 1, 2, 2)}
    style = {"s": torch.eye(1)}
    objective = Objective(content, style, content_weight=2.0, style_weight=5.0, tv_weight=0.5)
    image = torch.zeros(1, 3, 2, 2)
    seen = []

    def network(rgb, tap):  # two layers of zeros, in the order a VGG pass makes them
        for name in ("c", "s"):
            seen.append(name)
            tap(name, torch.zeros(1, 1, 2, 2))

    total, parts = objective(image, network)
    assert seen == ["c", "s"]
    assert parts == {"content": 2.0, "style": 5.0, "tv": 0.0, "range": 0.0}
    assert abs(total.item() - 7.0) < 1e-6


def test_range_penalty_only_outside_the_displayable_range():
    image = torch.tensor([-0.5, 0.0, 0.3, 1.0, 1.5]).reshape(1, 1, 1, 5)
    assert abs(RangePenalty()(image).item() - (0.25 + 0.25) / 5) < 1e-7
    assert RangePenalty()(image.clamp(0, 1)).item() == 0.0
