"""The objective: content, style (Gram or Wasserstein-2) and total-variation losses,
composed.

All terms are made dimensionless so that one set of weights works at any image
size and for any weight family; the exact formulas are in ``docs/losses.md``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

EPS = 1e-8


def gram_matrix(features: torch.Tensor) -> torch.Tensor:
    """Channel correlations ``G[k, k'] = sum_p F[k, p] F[k', p] / P`` in fp32 (or fp64).

    ``features`` is ``1×C×H×W``; dividing by the number of positions ``P = H·W``
    makes Grams of images of different sizes comparable. Computed in fp32 even
    for half-precision features: fp16 Gram entries overflow.
    """
    flat = _flat(features)
    return (flat @ flat.T) / flat.shape[1]


def _flat(features: torch.Tensor) -> torch.Tensor:
    """``1×C×H×W`` features as a ``C×P`` matrix of at least fp32 precision."""
    dtype = torch.promote_types(features.dtype, torch.float32)
    return features.reshape(features.shape[1], -1).to(dtype)


class _RelativeLoss(nn.Module):
    """Holds a target and ``scale = 1 / sum target^2``: its loss is a relative error."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        target = target.detach().float()
        self.register_buffer("target", target)
        self.scale = 1.0 / (target.pow(2).sum().item() + EPS)


class ContentLoss(_RelativeLoss):
    """``sum (F - P)^2 / sum P^2``: squared feature error relative to the photo's energy."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the features unchanged (for the rest of the network) and the loss."""
        return features, (features.float() - self.target).pow(2).sum() * self.scale


class _GramDistance(torch.autograd.Function):
    """The features unchanged, and ``scale · sum (G - A)^2`` with ``G = F Fᵀ / P``.

    Its backward adds the loss's gradient ``4 · scale / P · (G - A) F`` to the
    gradient arriving from the layers above, so that C×P gradient is made only when
    the backward pass reaches this layer, in one matrix product. Plain autograd
    makes every style layer's gradient at the start of the backward pass and holds
    them all until the network's gradient arrives (0.5 GB at 1 MP), and spends two
    products on each. ``G - A``, the loss and the target stay fp32 whatever the
    features' precision.

    bf16 features (the processor's bf16 pass, channels last) are multiplied as they
    are: in bf16 with fp32 accumulation, several times faster there than converting
    them to fp32 first, and bf16 has fp32's range, so nothing overflows. Their
    ``P×C`` view needs no copy.
    """

    @staticmethod
    def forward(ctx, features: torch.Tensor, target: torch.Tensor, scale: float):
        ctx.set_materialize_grads(False)
        with torch.autocast(features.device.type, enabled=False):
            if _channels_last_bf16(features):
                rows = _rows(features)
                gram = (rows.T @ rows).float() / rows.shape[0]
            else:
                gram = gram_matrix(features)
            difference = gram - target
        ctx.save_for_backward(features, difference)
        ctx.factor = 4.0 * scale / features[0, 0].numel()
        return features.view_as(features), difference.pow(2).sum() * scale

    @staticmethod
    def backward(ctx, grad_features: torch.Tensor | None, grad_loss: torch.Tensor | None):
        if grad_loss is None:
            return grad_features, None, None
        features, difference = ctx.saved_tensors
        step = difference * (ctx.factor * grad_loss)
        if _channels_last_bf16(features):
            rows = _rows(features)
            _, channels, height, width = features.shape
            grad = (rows @ step.T.to(rows.dtype)).view(1, height, width, channels) \
                .permute(0, 3, 1, 2)
        else:
            grad = torch.mm(step, _flat(features)).view_as(features)
        if grad_features is not None:
            grad += grad_features
        return grad.to(features.dtype), None, None


def _channels_last_bf16(features: torch.Tensor) -> bool:
    return features.dtype == torch.bfloat16 and \
        features.is_contiguous(memory_format=torch.channels_last)


def _rows(features: torch.Tensor) -> torch.Tensor:
    """``1×C×H×W`` channels-last features as their ``P×C`` view."""
    return features.permute(0, 2, 3, 1).reshape(-1, features.shape[1])


class StyleLoss(_RelativeLoss):
    """``sum (G - A)^2 / sum A^2`` for one layer, ``A`` the style's (blended) Gram matrix
    (the target)."""

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the features (to be passed on through the network) and the loss."""
        return _GramDistance.apply(features, self.target, self.scale)


class _TraceSqrt(torch.autograd.Function):
    """``tr(M^½)`` of a symmetric positive semi-definite matrix, through its
    eigenvalues; its gradient ``½ M^-½`` needs no eigenvector derivatives (which are
    unstable where eigenvalues repeat). fp64 inside: eigenvalues of a covariance
    span many orders of magnitude."""

    @staticmethod
    def forward(ctx, matrix: torch.Tensor) -> torch.Tensor:
        values, vectors = torch.linalg.eigh(matrix.double())
        values = values.clamp(min=values.max().clamp(min=EPS) * 1e-12)
        ctx.save_for_backward(values, vectors)
        ctx.dtype = matrix.dtype
        return values.sqrt().sum().to(matrix.dtype)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        values, vectors = ctx.saved_tensors
        half_inverse_root = (vectors * (0.5 / values.sqrt())) @ vectors.T
        return (half_inverse_root * grad.double()).to(ctx.dtype)


def _sqrtm(matrix: torch.Tensor) -> torch.Tensor:
    values, vectors = torch.linalg.eigh(matrix.double())
    return ((vectors * values.clamp(min=0).sqrt()) @ vectors.T).to(matrix.dtype)


def moments(features: torch.Tensor) -> torch.Tensor:
    """``(C+1)×C``: the Gram matrix (the features' second raw moment) and, as a last
    row, their mean. Both are means over positions, so a blend of paintings is their
    weighted mean, as for Grams alone (crowsonkb's style-transfer-pytorch blends the
    same two)."""
    flat = _flat(features)
    return torch.cat([(flat @ flat.T) / flat.shape[1], flat.mean(1)[None]])


W2_RIDGE = 1e-4  # added to covariances, relative to their mean variance: keeps them invertible


class W2StyleLoss(nn.Module):
    """``W2² / tr(A)``: the squared Wasserstein-2 distance between the Gaussians of the
    features and of the painting's (means μ, covariances Σ),
    ``|μ - μ_t|² + tr(Σ + Σ_t - 2 (Σ_t^½ Σ Σ_t^½)^½)``, relative to the painting's
    energy ``tr(A) = E|f|²`` (A its Gram matrix), as the Gram loss is relative to its
    Gram's. A departure from Gatys et al.: the style is matched as a distribution's
    first two moments, not as correlations alone (docs/losses.md). The target is
    :func:`moments`' ``(C+1)×C``."""

    def __init__(self, target: torch.Tensor) -> None:
        super().__init__()
        target = target.detach().double()
        gram, mean = target[:-1], target[-1]
        covariance = gram - torch.outer(mean, mean)
        self.ridge = W2_RIDGE * float(torch.trace(covariance).clamp(min=EPS)) / len(mean)
        covariance = covariance + self.ridge * torch.eye(len(mean), dtype=target.dtype)
        self.register_buffer("mean", mean.float())
        self.register_buffer("root", _sqrtm(covariance).float())
        self.register_buffer("trace", torch.trace(covariance).float())
        self.scale = 1.0 / (float(torch.trace(gram)) + EPS)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns the features (to be passed on through the network) and the loss."""
        with torch.autocast(features.device.type, enabled=False):
            flat = _flat(features)
            mean = flat.mean(1)
            centred = flat - mean[:, None]
            covariance = centred @ centred.T / flat.shape[1]
            covariance = covariance + self.ridge * torch.eye(
                len(mean), device=flat.device, dtype=flat.dtype)
            cross = _TraceSqrt.apply(self.root @ covariance @ self.root)
            squared = ((mean - self.mean).pow(2).sum() + torch.trace(covariance)
                       + self.trace - 2 * cross)
        return features, squared * self.scale


class TVLoss(nn.Module):
    """Mean squared difference between neighbouring pixels (RGB in [0, 1])."""

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        dx = image[..., :, 1:] - image[..., :, :-1]
        dy = image[..., 1:, :] - image[..., :-1, :]
        return dx.pow(2).mean() + dy.pow(2).mean()


class RangePenalty(nn.Module):
    """``mean(max(x - 1, 0)^2 + max(-x, 0)^2)``: zero for displayable pixels.

    Keeps the optimum inside [0, 1] so that the pixels need no clamping between
    steps (a clamp moves the point L-BFGS just evaluated and costs a second
    evaluation per step).
    """

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return (image - image.clamp(0, 1)).pow(2).mean()


def blended_grams(
    grams: Sequence[Mapping[str, torch.Tensor]], blend: Sequence[float]
) -> dict[str, torch.Tensor]:
    """Weighted mean of several style images' Gram matrices, per layer."""
    total = float(sum(blend))
    return {name: sum(w / total * g[name] for w, g in zip(blend, grams)) for name in grams[0]}


RANGE_WEIGHT = 1e4  # makes excursions beyond [0, 1] cost more than they gain


class Objective(nn.Module):
    """``alpha·content + beta·mean_l(style_l) + tv_weight·tv + RANGE_WEIGHT·range``
    for one image size."""

    def __init__(
        self,
        content_targets: Mapping[str, torch.Tensor],
        style_targets: Mapping[str, torch.Tensor],
        content_weight: float,
        style_weight: float,
        tv_weight: float,
        style_loss: str = "gram",
    ) -> None:
        """``style_targets``: per layer a Gram matrix (``gram``) or :func:`moments`
        (``w2``), as ``Targets`` works them out for ``style_loss``."""
        super().__init__()
        self.content = nn.ModuleDict({k: ContentLoss(v) for k, v in content_targets.items()})
        kind = {"gram": StyleLoss, "w2": W2StyleLoss}[style_loss]
        self.style = nn.ModuleDict({k: kind(v) for k, v in style_targets.items()})
        self.tv = TVLoss()
        self.range = RangePenalty()
        self.content_weight = content_weight
        self.style_weight = style_weight
        self.tv_weight = tv_weight

    def forward(
        self, image: torch.Tensor, network: Callable[..., object]
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Runs ``network(image, tap)`` (``StyleTransfer.features``) with the content
        and style losses tapped into the pass at their layers, and returns the
        total (for backward) and its weighted parts (for reports)."""
        content, style = [], []

        def tap(name: str, features: torch.Tensor) -> torch.Tensor:
            if name in self.content:
                features, loss = self.content[name](features)
                content.append(loss)
            if name in self.style:
                features, loss = self.style[name](features)
                style.append(loss)
            return features

        network(image, tap)
        parts = {
            "content": self.content_weight * sum(content),
            "style": self.style_weight * sum(style) / len(self.style),
        }
        if self.tv_weight:
            parts["tv"] = self.tv_weight * self.tv(image)
        parts["range"] = RANGE_WEIGHT * self.range(image)
        total = sum(parts.values())
        values = torch.stack(list(parts.values())).detach().tolist()  # one device sync
        return total, dict(zip(parts, values))
