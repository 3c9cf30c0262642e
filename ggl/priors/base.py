"""The ``Generator`` protocol every generative prior follows, and what every prior loader shares."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class Generator(Protocol):
    """A generative image prior.

    Attributes:
        latent_dim: size of one latent code z.
        num_classes: classes it is conditioned on (0 for unconditional priors; ``y`` is then ignored).
        image_shape: (C, H, W) of its output.
    ``forward(z, y=None)`` maps latents (N, latent_dim) and optional labels (N,) to images (N, C, H, W) in [0, 1].
    ``sample(n, generator=None)`` draws n latents from the prior's latent distribution (N(0, I) unless stated).
    """

    latent_dim: int
    num_classes: int
    image_shape: tuple[int, int, int]

    def __call__(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor: ...

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor: ...


class PriorNotFoundError(FileNotFoundError):
    """A prior's weights are not where they were looked for; the message says where to put them."""


def freeze(generator: nn.Module) -> nn.Module:
    """Eval mode (BatchNorm uses its running statistics, so a population is one consistent batch) and frozen weights."""
    generator.eval()
    generator.requires_grad_(False)
    return generator
