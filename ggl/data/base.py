"""The datamodule contract every dataset follows: a ``public`` split and a ``victims`` split of pixel images.

Both splits yield ``(image, label)`` with ``image`` a float tensor (C, H, W) in [0, 1]; the victim model's input
normalisation is ``datamodule.normalization`` and is applied by the client, so metrics and priors work in pixels.
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ggl.checks import non_negative_int, positive_int
from ggl.fl.normalization import Normalization


class DataNotFoundError(FileNotFoundError):
    """A dataset's files are missing or malformed; the message says what to put where."""


class VictimDataModule(pl.LightningDataModule):
    """Base class: subclasses set the class attributes and build ``self.public`` / ``self.victims`` in ``setup``.

    Args:
        batch_size: batch size of the public loader (prior training).
        num_workers: loader workers.
        seed: seed of the deterministic victim selection.
    """

    name: str = "base"
    image_shape: tuple[int, int, int] = (3, 32, 32)
    num_classes: int = 10
    normalization: Normalization = Normalization.identity(3)

    def __init__(self, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__()
        self.batch_size = positive_int("batch_size", batch_size)
        self.num_workers = non_negative_int("num_workers", num_workers)
        self.seed = non_negative_int("seed", seed)
        self.public: Dataset[Any] | None = None
        self.victims: Dataset[Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        raise NotImplementedError

    def _require(self, split: str) -> Dataset[Any]:
        dataset = getattr(self, split)
        if dataset is None:
            self.setup("fit" if split == "public" else "predict")
            dataset = getattr(self, split)
        assert dataset is not None
        return dataset

    def victim_indices(self, count: int, seed: int | None = None) -> list[int]:
        """``count`` victim indices, a deterministic function of ``seed`` (default: the datamodule's seed)."""
        victims = self._require("victims")
        total = len(victims)  # type: ignore[arg-type]
        if not 1 <= count <= total:
            raise ValueError(f"count must be in [1, {total}] for {self.name}, got {count}")
        generator = torch.Generator().manual_seed(self.seed if seed is None else seed)
        return torch.randperm(total, generator=generator)[:count].tolist()

    def victim_batch(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack the victims at ``indices`` into (images in [0, 1] of shape (B, C, H, W), labels (B,))."""
        victims = self._require("victims")
        items = [victims[i] for i in indices]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items], dtype=torch.long)
        return images, labels

    def train_dataloader(self) -> DataLoader[Any]:
        """The public split, shuffled: what a generative prior is trained on."""
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._require("public"),
            batch_size=self.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.num_workers,
            generator=generator,
        )

    def predict_dataloader(self) -> DataLoader[Any]:
        """The victims split in order."""
        return DataLoader(self._require("victims"), batch_size=self.batch_size, num_workers=self.num_workers)
