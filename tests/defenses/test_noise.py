"""Additive noise: empirical moments on large tensors."""

from __future__ import annotations

import math

import pytest
import torch

from ggl.defenses import make_defense
from ggl.fl import SharedUpdate


def _large_update() -> SharedUpdate:
    generator = torch.Generator().manual_seed(0)
    gradients = (torch.randn(500, 1000, generator=generator), torch.randn(1000, generator=generator))
    return SharedUpdate(gradients, 1, {"algorithm": "fedsgd"})


def test_none_returns_the_update_unchanged():
    update = _large_update()
    defended = make_defense("none")(update)
    assert all(torch.equal(a, b) for a, b in zip(defended.gradients, update.gradients))


@pytest.mark.parametrize("sigma", [0.01, 0.5])
def test_gaussian_noise_has_the_requested_std(sigma):
    update = _large_update()
    defended = make_defense("gaussian", sigma=sigma)(update, generator=torch.Generator().manual_seed(1))
    noise = defended.flat() - update.flat()
    assert float(noise.std()) == pytest.approx(sigma, rel=0.01)
    assert abs(float(noise.mean())) < 5 * sigma / math.sqrt(noise.numel())
    kurtosis = float(((noise - noise.mean()) / noise.std()).pow(4).mean())
    assert kurtosis == pytest.approx(3.0, rel=0.03)


@pytest.mark.parametrize("scale", [0.01, 0.3])
def test_laplace_noise_has_the_requested_scale(scale):
    update = _large_update()
    defended = make_defense("laplacian", scale=scale)(update, generator=torch.Generator().manual_seed(2))
    noise = defended.flat() - update.flat()
    assert float(noise.abs().mean()) == pytest.approx(scale, rel=0.01)  # E|X| = b
    assert float(noise.std()) == pytest.approx(math.sqrt(2) * scale, rel=0.01)  # Var = 2 b^2
    kurtosis = float(((noise - noise.mean()) / noise.std()).pow(4).mean())
    assert kurtosis == pytest.approx(6.0, rel=0.05)  # Laplace: 6, Gaussian: 3


@pytest.mark.parametrize("name", ["gaussian", "laplacian", "none"])
def test_noise_simulation_is_the_identity(name):
    update = _large_update()
    defended = make_defense(name)(update)
    trials = [torch.stack([g, 2 * g]) for g in update.gradients]
    assert all(torch.equal(s, t) for s, t in zip(make_defense(name).simulate(trials, defended), trials))
