"""Additive noise defenses: ``none``, ``gaussian(sigma)`` and ``laplacian(scale)``.

Attacker-side simulation is the identity for all three. The noise is zero-mean and independent of the update,
so the noiseless trial gradient is the attacker's best deterministic guess of what the client computed; adding
a fresh noise draw to each trial would only add variance to the objective (the attacker does not know the
client's draw). GGL's ImageNet code does the same; its CelebA code reused the client's own draw, which a real
server does not have.
"""

from __future__ import annotations

from typing import Any

import torch

from ggl.defenses.base import MAX_SCALE, SCALE_REASON, Defense, as_float, register_defense, sample_like
from ggl.fl.client import SharedUpdate


@register_defense
class NoDefense(Defense):
    """The undefended baseline: the update is shared as computed.

    Example:
        >>> make_defense("none").spec
        {'name': 'none'}
    """

    name = "none"
    parameters = ()

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return list(update.gradients)


@register_defense
class GaussianNoise(Defense):
    """Additive Gaussian noise on every gradient entry: ``g + sigma * N(0, 1)``.

    The setting of DLG (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, arXiv 1906.08935) and GGL
    (default sigma 0.01, absolute, not relative to the gradient's scale).

    Args:
        sigma: standard deviation of the noise, in [0, 1e6] (``MAX_SCALE``: larger scales overflow float32).
    """

    name = "gaussian"
    parameters = ("sigma",)
    deterministic = False

    def __init__(self, sigma: float = 0.01) -> None:
        self.sigma = as_float(self.name, "sigma", sigma, low=0.0, high=MAX_SCALE, reason=SCALE_REASON)

    def apply(self, update: SharedUpdate, *, generator: torch.Generator, **_: Any) -> list[torch.Tensor]:
        return [g + self.sigma * sample_like(g, generator, torch.randn) for g in update.gradients]


def _laplace(
    shape: tuple[int, ...], *, generator: torch.Generator, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """Standard Laplace samples (density exp(-|x|)/2) as the difference of two unit exponentials."""
    first = torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
    second = torch.empty(shape, device=device, dtype=dtype).exponential_(generator=generator)
    return first - second


@register_defense
class LaplacianNoise(Defense):
    """Additive Laplace noise on every gradient entry: ``g + Laplace(0, scale)`` (std ``sqrt(2) * scale``).

    Studied as a gradient perturbation by DLG (Zhu et al., NeurIPS 2019, arXiv 1906.08935).

    Args:
        scale: the Laplace scale b (density exp(-|x|/b) / 2b), in [0, 1e6] (``MAX_SCALE``).
    """

    name = "laplacian"
    parameters = ("scale",)
    deterministic = False

    def __init__(self, scale: float = 0.01) -> None:
        self.scale = as_float(self.name, "scale", scale, low=0.0, high=MAX_SCALE, reason=SCALE_REASON)

    def apply(self, update: SharedUpdate, *, generator: torch.Generator, **_: Any) -> list[torch.Tensor]:
        return [g + self.scale * sample_like(g, generator, _laplace) for g in update.gradients]
