"""Per-dataset input normalisation, shared by clients (who normalise) and attackers (who denormalise)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Normalization:
    """Channel-wise ``(x - mean) / std`` on images in [0, 1].

    Args:
        mean: one value per channel.
        std: one value per channel, all positive.

    Example:
        >>> norm = Normalization((0.5,), (0.5,))
        >>> norm.denormalize(norm.normalize(torch.ones(1, 1, 2, 2))).max().item()
        1.0
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std):
            raise ValueError(f"Normalization: mean has {len(self.mean)} values but std has {len(self.std)}")
        if any(s <= 0 for s in self.std):
            raise ValueError(f"Normalization: std must be positive, got {self.std}")

    @classmethod
    def identity(cls, channels: int) -> Normalization:
        """No-op normalisation for ``channels`` channels."""
        return cls((0.0,) * channels, (1.0,) * channels)

    @classmethod
    def from_values(cls, mean: Sequence[float], std: Sequence[float]) -> Normalization:
        """Build from any sequences (e.g. lists read from YAML)."""
        return cls(tuple(float(m) for m in mean), tuple(float(s) for s in std))

    def _view(self, values: tuple[float, ...], images: torch.Tensor) -> torch.Tensor:
        channels = images.shape[-3]
        if channels != len(values):
            raise ValueError(f"Normalization has {len(values)} channels but the images have {channels}")
        return torch.tensor(values, dtype=images.dtype, device=images.device).view(-1, 1, 1)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map [0, 1] pixels to the model's input space; works on (..., C, H, W)."""
        return (images - self._view(self.mean, images)) / self._view(self.std, images)

    def denormalize(self, images: torch.Tensor) -> torch.Tensor:
        """Map model inputs back to [0, 1] pixel space (not clamped)."""
        return images * self._view(self.std, images) + self._view(self.mean, images)
