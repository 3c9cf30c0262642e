"""Shared fixtures: a small LeNet victim on 16 px grey images and a two-image batch."""

from __future__ import annotations

import pytest
import torch

from ggl.fl import make_victim, shared_update


@pytest.fixture(scope="module")
def victim() -> torch.nn.Module:
    return make_victim("lenet", num_classes=10, image_shape=(1, 16, 16), seed=0)


@pytest.fixture(scope="module")
def batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return torch.rand(2, 1, 16, 16, generator=generator), torch.tensor([3, 7])


@pytest.fixture(scope="module")
def update(victim, batch):
    images, labels = batch
    return shared_update(victim, images, labels)
