"""LightningDataModules with a ``public`` split (prior training) and a ``victims`` split (private images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.data.celeba import CelebADataModule
from ggl.data.embedded import EmbeddedFashionMNIST
from ggl.data.imagenet import ImageNetDataModule

DATAMODULES: dict[str, Callable[..., VictimDataModule]] = {
    "embedded": EmbeddedFashionMNIST,
    "fashion-mnist": EmbeddedFashionMNIST,
    "celeba": CelebADataModule,
    "imagenet": ImageNetDataModule,
}
"""Datamodule classes by the name a suite uses."""


def make_datamodule(name: str, **options: Any) -> VictimDataModule:
    """Build a datamodule by name (see ``DATAMODULES``); unknown names raise ``ValueError`` listing the allowed."""
    if name not in DATAMODULES:
        raise ValueError(f"unknown datamodule {name!r}; allowed: {', '.join(sorted(DATAMODULES))}")
    return DATAMODULES[name](**options)


__all__ = [
    "DATAMODULES",
    "CelebADataModule",
    "DataNotFoundError",
    "EmbeddedFashionMNIST",
    "ImageNetDataModule",
    "VictimDataModule",
    "make_datamodule",
]
