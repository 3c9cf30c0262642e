"""The gradient-matching objective shared by every attack: gradient distances and image/latent regularisers.

All distances are batched over a population: trial gradients carry a leading population dimension P
(one tensor per model parameter, shape (P, *parameter.shape)); the target gradients do not. Each returns (P,).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ggl.registry import Registry

Distance = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[float] | None], torch.Tensor]

DISTANCES: Registry[Distance] = Registry("gradient distance")
"""Gradient distances by name (``l2``, ``l1``, ``cosine``)."""


def _layer_weights(weights: Sequence[float] | None, count: int) -> list[float]:
    if weights is None:
        return [1.0] * count
    if len(weights) != count:
        raise ValueError(f"layer_weights has {len(weights)} entries but there are {count} gradient tensors")
    return [float(w) for w in weights]


def _check(trial: Sequence[torch.Tensor], target: Sequence[torch.Tensor]) -> None:
    if len(trial) != len(target):
        raise ValueError(f"trial has {len(trial)} gradient tensors but the target has {len(target)}")
    for index, (t, g) in enumerate(zip(trial, target)):
        if tuple(t.shape[1:]) != tuple(g.shape):
            raise ValueError(
                f"gradient {index}: trial shape {tuple(t.shape)} is not (P, *{tuple(g.shape)}) for the target"
            )


def _per_layer_sum(
    trial: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    layer_weights: Sequence[float] | None,
    elementwise: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """``elementwise(trial - target)`` summed within each layer, weighted, averaged over layers. (P,)"""
    _check(trial, target)
    weights = _layer_weights(layer_weights, len(target))
    total = sum(w * elementwise(t - g.unsqueeze(0)).flatten(1).sum(1) for w, t, g in zip(weights, trial, target))
    return total / len(target)  # type: ignore[return-value]


@DISTANCES.register("l2")
def l2_distance(
    trial: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """GGL's distance: squared L2 summed within each layer, weighted, averaged over layers. (P,)"""
    return _per_layer_sum(trial, target, layer_weights, lambda difference: difference.pow(2))


@DISTANCES.register("l1")
def l1_distance(
    trial: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """L1 summed within each layer, weighted, averaged over layers. (P,)"""
    return _per_layer_sum(trial, target, layer_weights, torch.abs)


@DISTANCES.register("cosine")
def cosine_distance(
    trial: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Inverting Gradients' distance: 1 - cosine similarity of the whole (weighted) gradient vectors. (P,)"""
    _check(trial, target)
    weights = _layer_weights(layer_weights, len(target))
    dot = sum(w * (t * g.unsqueeze(0)).flatten(1).sum(1) for w, t, g in zip(weights, trial, target))
    trial_norm = sum(w * t.pow(2).flatten(1).sum(1) for w, t in zip(weights, trial))
    target_norm = sum(w * g.pow(2).sum() for w, g in zip(weights, target))
    return 1 - dot / (trial_norm.clamp_min(1e-20).sqrt() * target_norm.clamp_min(1e-20).sqrt())  # type: ignore[union-attr]


def gradient_distance(
    trial: Sequence[torch.Tensor],
    target: Sequence[torch.Tensor],
    metric: str = "l2",
    layer_weights: Sequence[float] | None = None,
) -> torch.Tensor:
    """Distance of each of P trial gradients to the target, by ``metric`` (see ``DISTANCES``). Returns (P,)."""
    return DISTANCES.lookup(metric)(trial, target, layer_weights)


def distance_scale(
    target: Sequence[torch.Tensor], metric: str = "l2", layer_weights: Sequence[float] | None = None
) -> float:
    """The distance of an all-zero trial gradient to ``target``: the update's own size in ``metric``'s units.

    ``l2``: the (weighted) mean over layers of the squared layer norms; ``l1``: of the L1 layer norms; ``cosine``:
    1. A distance divided by it is unchanged when trial and target gradients are rescaled together (as norm
    clipping does), so a search stopped by absolute tolerances behaves the same at every update scale.
    """
    zeros = [torch.zeros_like(g).unsqueeze(0) for g in target]
    return float(gradient_distance(zeros, target, metric, layer_weights)[0])


def total_variation(images: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation (mean absolute neighbour difference) of images (..., C, H, W), per leading item."""
    dx = (images[..., :, 1:] - images[..., :, :-1]).abs().flatten(-3).mean(-1)
    dy = (images[..., 1:, :] - images[..., :-1, :]).abs().flatten(-3).mean(-1)
    return dx + dy


def pixel_l2(images: torch.Tensor) -> torch.Tensor:
    """Mean squared pixel value of images (..., C, H, W), per leading item."""
    return images.pow(2).flatten(-3).mean(-1)


def latent_kl(latents: torch.Tensor) -> torch.Tensor:
    """GGL's latent prior term: KL-style pull of each latent's mean to 0 and std to 1, per leading item.

    For a latent vector z of size d with empirical mean m and variance v: 0.5 * (v + m^2 - 1 - log v).
    """
    mean = latents.mean(-1)
    variance = latents.var(-1, unbiased=False).clamp_min(1e-12)
    return 0.5 * (variance + mean.pow(2) - 1 - variance.log())
