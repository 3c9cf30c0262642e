"""LightningDataModules with a ``public`` split (prior training) and a ``victims`` split (private images)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.data.celeba import CelebADataModule
from ggl.data.embedded import EmbeddedFashionMNIST
from ggl.data.imagenet import ImageNetDataModule
from ggl.data.lfw import LFWFaces
from ggl.plugins import is_custom_name, resolve_class
from ggl.registry import Registry

DATAMODULES: Registry[Callable[..., VictimDataModule]] = Registry("datamodule")
"""Datamodule classes by the name a suite uses (``fashion-mnist`` is another name for ``embedded``)."""
DATAMODULES.add("embedded", EmbeddedFashionMNIST)
DATAMODULES.add("fashion-mnist", EmbeddedFashionMNIST)
DATAMODULES.add("celeba", CelebADataModule)
DATAMODULES.add("imagenet", ImageNetDataModule)
DATAMODULES.add("lfw", LFWFaces)


def make_datamodule(name: str, **options: Any) -> VictimDataModule:
    """Build a datamodule by name with ``options`` as its constructor's keyword arguments.

    ``name`` is one of ``DATAMODULES`` (an unknown name raises ``ValueError`` with the allowed names and the
    closest ones), or ``module:Class`` for a custom ``VictimDataModule`` subclass in a project module or a
    ``--plugin`` file (resolved as ``ggl.plugins`` says, checked before it is built). A custom constructor's error
    is a ``ValueError`` naming the datamodule; a ``DataNotFoundError`` (missing files) passes through as it is.
    """
    if not is_custom_name(name):
        return DATAMODULES.lookup(name)(**options)
    cls = resolve_class(name, VictimDataModule, "datamodule")
    try:
        return cls(**options)
    except DataNotFoundError:
        raise
    except Exception as error:  # a custom constructor's error is a bad datamodule spec, reported with its name
        problem = f"{type(error).__name__}: {error}"
        raise ValueError(
            f"datamodule {name!r}: building it with options {sorted(options)} failed ({problem}); "
            f"check them against {cls.__name__}'s constructor"
        ) from None


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
