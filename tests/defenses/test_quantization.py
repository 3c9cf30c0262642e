"""Stochastic uniform quantization (levels, unbiasedness) and sign compression."""

from __future__ import annotations

import pytest
import torch

from ggl.defenses import make_defense
from ggl.defenses.quantization import quantization_levels
from ggl.fl import SharedUpdate


@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("scale", ["max", "l2"])
def test_values_lie_on_the_levels_next_to_the_input(bits, scale):
    generator = torch.Generator().manual_seed(0)
    gradient = torch.randn(4000, generator=generator)
    defended = make_defense("quantization", bits=bits, scale=scale)(SharedUpdate((gradient,), 1, {}))
    quantized = defended.gradients[0]
    levels = quantization_levels(bits)
    m = gradient.abs().max() if scale == "max" else torch.linalg.vector_norm(gradient)
    units = quantized / m * levels
    torch.testing.assert_close(units, units.round(), rtol=0, atol=1e-4)
    assert int(units.round().abs().max()) <= levels
    assert len(torch.unique(units.round())) <= 2 * levels + 1 == 2**bits - 1
    assert bool(((quantized - gradient).abs() <= m / levels * (1 + 1e-5)).all())
    assert bool((torch.sign(quantized) * torch.sign(gradient) >= 0).all())


@pytest.mark.parametrize("bits", [2, 3])
def test_quantization_is_unbiased(bits):
    # 200,000 copies of each of three values plus one entry fixing the max: the mean of each group must
    # match its value within 4 standard errors of the rounding noise (a biased rounding would miss by far more).
    values = torch.tensor([0.13, -0.41, 0.77])
    gradient = torch.cat([values.repeat_interleave(200_000), torch.ones(1)])
    quantized = make_defense("quantization", bits=bits)(
        SharedUpdate((gradient,), 1, {}), generator=torch.Generator().manual_seed(4)
    ).gradients[0]
    step = 1.0 / quantization_levels(bits)
    for index, value in enumerate(values):
        group = quantized[index * 200_000 : (index + 1) * 200_000]
        assert abs(float(group.mean()) - float(value)) < 4 * (step / 2) / 200_000**0.5
        assert 0 < float(group.std()) <= step / 2 + 1e-6
        low = torch.floor(value.abs() / step) * step
        distance = torch.minimum((group.abs() - low).abs(), (group.abs() - low - step).abs())
        assert float(distance.max()) < 1e-5  # only the two levels around the value


def test_sign_gives_signs_times_the_mean_magnitude(update):
    defended = make_defense("sign")(update)
    for before, after in zip(update.gradients, defended.gradients):
        torch.testing.assert_close(after, torch.sign(before) * before.abs().mean())


def test_sign_simulation_equals_the_defense_and_passes_gradients(update):
    defense = make_defense("sign")
    defended = defense(update)
    trials = [torch.stack([g, -3 * g]).requires_grad_(True) for g in update.gradients]
    simulated = defense.simulate(trials, defended)
    for sim, received in zip(simulated, defended.gradients):
        torch.testing.assert_close(sim[0], received)
        torch.testing.assert_close(sim[1], -3 * received)
    sum(s.sum() for s in simulated).backward()
    assert all(float(t.grad.abs().sum()) > 0 for t in trials)
