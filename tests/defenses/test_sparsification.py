"""Top-magnitude sparsification: exact counts, the right entries, and its simulation."""

from __future__ import annotations

import math

import pytest
import torch

from ggl.defenses import make_defense
from ggl.fl import SharedUpdate


def _random_update() -> SharedUpdate:
    generator = torch.Generator().manual_seed(0)
    shapes = [(12, 1, 5, 5), (12,), (10, 192), (10,), (7,)]
    return SharedUpdate(tuple(torch.randn(s, generator=generator) for s in shapes), 1, {})


@pytest.mark.parametrize("ratio", [0.0, 0.2, 0.5, 0.9, 0.99])
def test_per_layer_keeps_exactly_the_largest_fraction(ratio):
    update = _random_update()
    defended = make_defense("sparsification", ratio=ratio, mode="per_layer")(update)
    for before, after in zip(update.gradients, defended.gradients):
        kept = after != 0
        assert int(kept.sum()) == before.numel() - math.floor(ratio * before.numel() + 1e-9)
        assert torch.equal(after[kept], before[kept])
        if (~kept).any():
            assert float(before[kept].abs().min()) >= float(before[~kept].abs().max())


@pytest.mark.parametrize("ratio", [0.2, 0.75])
def test_global_keeps_exactly_the_largest_fraction_overall(ratio):
    update = _random_update()
    defended = make_defense("sparsification", ratio=ratio, mode="global")(update)
    flat_before, flat_after = update.flat(), defended.flat()
    kept = flat_after != 0
    assert int(kept.sum()) == flat_before.numel() - math.floor(ratio * flat_before.numel())
    assert float(flat_before[kept].abs().min()) >= float(flat_before[~kept].abs().max())
    per_layer = [int((g != 0).sum()) / g.numel() for g in defended.gradients]
    assert max(per_layer) - min(per_layer) > 0.05  # one threshold for all: layers keep different fractions


def test_ties_still_give_exact_counts():
    update = SharedUpdate((torch.ones(10, 10),), 1, {})
    defended = make_defense("sparsification", ratio=0.37)(update)
    assert int((defended.gradients[0] != 0).sum()) == 63


@pytest.mark.parametrize("mode", ["per_layer", "global"])
def test_simulation_equals_the_defense_on_the_same_gradient(update, mode):
    defense = make_defense("sparsification", ratio=0.6, mode=mode)
    defended = defense(update)
    trials = [torch.stack([g, torch.ones_like(g)]) for g in update.gradients]
    simulated = defense.simulate(trials, defended)
    for sim, received in zip(simulated, defended.gradients):
        assert torch.equal(sim[0], received)
        assert torch.equal(sim[1], (received != 0).to(sim.dtype))
