"""Shared fixtures for attack tests: embedded Fashion-MNIST victims, real victim models and shared updates.

The ground-truth images stay in the test: attacks only ever receive an ``AttackTarget``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
import torch

from ggl.attacks import AttackTarget, Reconstruction
from ggl.data.embedded import EmbeddedFashionMNIST
from ggl.fl import make_victim, shared_update


@dataclass
class Victim:
    """One client batch and what the server receives from it."""

    images: torch.Tensor
    labels: torch.Tensor
    target: AttackTarget


def _psnr(reconstruction: torch.Tensor, reference: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1]: 10 log10(1 / MSE) over the whole batch."""
    mse = (reconstruction.detach().cpu().clamp(0, 1) - reference).pow(2).mean().clamp_min(1e-12)
    return float(10 * torch.log10(1 / mse))


def _assert_same_search(got: Reconstruction, expected: Reconstruction, rel: float = 1e-4) -> None:
    """Two runs of one search (batched or not, together or alone): the same trials, trace, winner, images, labels,
    evaluations and flag, to a relative ``rel``."""
    assert got.extras["trial_losses"] == pytest.approx(expected.extras["trial_losses"], rel=rel)
    assert got.extras["best_trial"] == expected.extras["best_trial"]
    assert got.trace == pytest.approx(expected.trace, rel=rel)
    assert (got.images - expected.images).abs().max() < rel
    assert torch.equal(got.labels, expected.labels)
    assert got.evaluations == expected.evaluations
    assert got.extras["still_improving"] == expected.extras["still_improving"]


@pytest.fixture(scope="session")
def same_search() -> Callable[..., None]:
    """``same_search(got, expected)`` asserts two runs of one search agree (see ``_assert_same_search``)."""
    return _assert_same_search


@pytest.fixture(scope="session")
def psnr() -> Callable[[torch.Tensor, torch.Tensor], float]:
    """PSNR in dB of images in [0, 1] (computed here, independently of the library's metrics)."""
    return _psnr


@pytest.fixture(scope="session")
def fashion() -> EmbeddedFashionMNIST:
    datamodule = EmbeddedFashionMNIST()
    datamodule.setup("predict")
    return datamodule


@pytest.fixture(scope="session")
def make_case(fashion: EmbeddedFashionMNIST) -> Callable[..., Victim]:
    """``make_case(victim_name, index, batch=1, seed=0, defense=None)`` -> a ``Victim`` (defense applied)."""

    def build(
        model_name: str = "lenet",
        index: int = 0,
        batch: int = 1,
        seed: int = 0,
        defense: object | None = None,
        known_labels: bool = False,
    ) -> Victim:
        indices = fashion.victim_indices(index + batch, seed=0)[index : index + batch]
        images, labels = fashion.victim_batch(indices)
        model = make_victim(model_name, 10, fashion.image_shape, seed)
        inputs = fashion.normalization.normalize(images)
        update = shared_update(model, inputs, labels)
        if defense is not None:
            rng = torch.Generator().manual_seed(seed)
            update = defense(update, model=model, images=inputs, labels=labels, generator=rng)  # type: ignore[operator]
        target = AttackTarget(
            model,
            update,
            defense=defense,  # type: ignore[arg-type]
            image_shape=fashion.image_shape,
            normalization=fashion.normalization,
            labels=labels if known_labels else None,
        )
        return Victim(images, labels, target)

    return build
