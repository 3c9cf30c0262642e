"""LightningDataModules with a ``public`` split (prior training) and a ``victims`` split (private images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.data.celeba import CelebADataModule
from ggl.data.embedded import EmbeddedFashionMNIST
from ggl.data.imagenet import ImageNetDataModule
from ggl.data.lfw import LFWFaces
from ggl.registry import Registry

DATAMODULES: Registry[Callable[..., VictimDataModule]] = Registry("datamodule")
"""Datamodule classes by the name a suite uses (``fashion-mnist`` is another name for ``embedded``)."""
DATAMODULES.add("embedded", EmbeddedFashionMNIST)
DATAMODULES.add("fashion-mnist", EmbeddedFashionMNIST)
DATAMODULES.add("celeba", CelebADataModule)
DATAMODULES.add("imagenet", ImageNetDataModule)
DATAMODULES.add("lfw", LFWFaces)


def make_datamodule(name: str, **options: Any) -> VictimDataModule:
    """Build a datamodule by name (see ``DATAMODULES``); an unknown name raises ``ValueError`` with the allowed
    names and the closest ones."""
    return DATAMODULES.lookup(name)(**options)


__all__ = [
    "DATAMODULES",
    "CelebADataModule",
    "DataNotFoundError",
    "EmbeddedFashionMNIST",
    "ImageNetDataModule",
    "LFWFaces",
    "VictimDataModule",
    "make_datamodule",
]
