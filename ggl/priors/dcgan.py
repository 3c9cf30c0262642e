"""DCGAN-style generator and critic for 32-64 px images, optionally class-conditional.

The generator follows GGL's CelebA prior (Li et al., CVPR 2022, arXiv 2203.15696): a linear layer to a 4x4 map,
then transposed convolutions doubling the size up to the output, BatchNorm + ReLU, tanh. Conditioning
concatenates a learned class embedding to z; the critic is a projection critic (Miyato & Koyama 2018) without
normalisation layers, as the WGAN-GP gradient penalty requires.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ggl.checks import non_negative_int, positive_int


@dataclass(frozen=True)
class DCGANConfig:
    """Architecture of a ``DCGANGenerator``/``DCGANCritic`` pair.

    Args:
        latent_dim: size of z (GGL: 128). num_classes: 0 for unconditional, else the number of labels.
        channels: image channels. image_size: output side, a power of two >= 8. width: base channel count.
        embedding_dim: size of the class embedding concatenated to z.
    """

    latent_dim: int = 128
    num_classes: int = 0
    channels: int = 1
    image_size: int = 32
    width: int = 32
    embedding_dim: int = 32

    def __post_init__(self) -> None:
        for name in ("latent_dim", "channels", "width", "embedding_dim"):
            positive_int(name, getattr(self, name))
        non_negative_int("num_classes", self.num_classes)
        size = self.image_size
        if isinstance(size, bool) or not isinstance(size, int) or not 8 <= size <= 1024 or size & (size - 1):
            raise ValueError(f"image_size must be a power of two from 8 to 1024, got {size!r}")

    @property
    def num_upsamplings(self) -> int:
        return int(math.log2(self.image_size)) - 2

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class DCGANGenerator(nn.Module):
    """z (N, latent_dim) [+ labels (N,)] -> images (N, C, S, S) in [0, 1]. See ``DCGANConfig``."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        self.config = config
        self.latent_dim = config.latent_dim
        self.num_classes = config.num_classes
        self.image_shape = (config.channels, config.image_size, config.image_size)
        top = config.width * 2 ** (config.num_upsamplings - 1)
        extra = config.embedding_dim if config.num_classes else 0
        self.embedding = nn.Embedding(config.num_classes, config.embedding_dim) if config.num_classes else None
        self.project = nn.Sequential(
            nn.Linear(config.latent_dim + extra, top * 16), nn.BatchNorm1d(top * 16), nn.ReLU()
        )
        blocks: list[nn.Module] = []
        channels = top
        for _ in range(config.num_upsamplings - 1):
            blocks += [
                nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1),
                nn.BatchNorm2d(channels // 2),
                nn.ReLU(),
            ]
            channels //= 2
        blocks += [nn.ConvTranspose2d(channels, config.channels, 4, 2, 1), nn.Tanh()]
        self.blocks = nn.Sequential(*blocks)
        self._top = top

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embedding is not None:
            if y is None:
                raise ValueError("this generator is class-conditional: pass labels y of shape (N,)")
            z = torch.cat([z, self.embedding(y.long())], dim=1)
        hidden = self.project(z).view(z.shape[0], self._top, 4, 4)
        return (self.blocks(hidden) + 1) / 2

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents from N(0, I) on the generator's device."""
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)


class DCGANCritic(nn.Module):
    """WGAN critic: images in [0, 1] (N, C, S, S) [+ labels] -> scores (N,). No normalisation layers."""

    def __init__(self, config: DCGANConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels, out = config.channels, config.width
        for _ in range(config.num_upsamplings):
            layers += [nn.Conv2d(channels, out, 4, 2, 1), nn.LeakyReLU(0.2)]
            channels, out = out, out * 2
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.score = nn.Linear(channels * 16, 1)
        self.embedding = nn.Embedding(config.num_classes, channels * 16) if config.num_classes else None

    def forward(self, images: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        features = self.features(images * 2 - 1)
        score = self.score(features).squeeze(1)
        if self.embedding is not None and y is not None:
            score = score + (self.embedding(y.long()) * features).sum(dim=1)
        return score
