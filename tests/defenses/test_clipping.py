"""Norm clipping and its simulation."""

from __future__ import annotations

import pytest
import torch

from ggl.defenses import make_defense


def _layer_norms(gradients):
    return [float(torch.linalg.vector_norm(g)) for g in gradients]


def test_global_clipping_bounds_the_norm_and_keeps_the_direction(update):
    bound = 0.25 * update.norm()
    defended = make_defense("clipping", bound=bound)(update)
    assert defended.norm() == pytest.approx(bound, rel=1e-5)
    cosine = torch.nn.functional.cosine_similarity(defended.flat(), update.flat(), dim=0)
    assert float(cosine) == pytest.approx(1.0, abs=1e-6)


def test_per_layer_clipping_bounds_each_layer_and_leaves_short_layers(update):
    norms = _layer_norms(update.gradients)
    bound = sorted(norms)[len(norms) // 2]
    defended = make_defense("clipping", bound=bound, mode="per_layer")(update)
    for before, after, norm in zip(update.gradients, defended.gradients, norms):
        assert float(torch.linalg.vector_norm(after)) <= bound * (1 + 1e-6)
        if norm <= bound:
            assert torch.equal(after, before)
        else:
            assert float(torch.linalg.vector_norm(after)) == pytest.approx(bound, rel=1e-5)


def test_clipping_below_the_bound_is_the_identity(update):
    defended = make_defense("clipping", bound=2 * update.norm())(update)
    assert all(torch.equal(a, b) for a, b in zip(defended.gradients, update.gradients))


@pytest.mark.parametrize("mode", ["global", "per_layer"])
@pytest.mark.parametrize("factor", [0.3, 3.0])
def test_simulation_equals_the_defense_on_the_true_gradient(update, mode, factor):
    defense = make_defense("clipping", bound=factor * update.norm() / 3, mode=mode)
    defended = defense(update)
    trials = [torch.stack([g, 0.5 * g, 4 * g]) for g in update.gradients]
    simulated = defense.simulate(trials, defended)
    for sim, received in zip(simulated, defended.gradients):
        torch.testing.assert_close(sim[0], received, rtol=1e-5, atol=1e-9)


def test_simulation_rule_identity_when_unclipped_clip_when_clipped(update):
    norm = update.norm()
    unclipped = make_defense("clipping", bound=2 * norm)
    trials = [torch.stack([g, 4 * g]) for g in update.gradients]
    for sim, trial in zip(unclipped.simulate(trials, unclipped(update)), trials):
        assert torch.equal(sim, trial)  # the long trial stays long: it cannot explain an unclipped update
    clipped = make_defense("clipping", bound=0.5 * norm)
    simulated = clipped.simulate(trials, clipped(update))
    sim_norms = torch.stack([s.flatten(1).pow(2).sum(1) for s in simulated]).sum(0).sqrt()
    torch.testing.assert_close(sim_norms, torch.full((2,), 0.5 * norm), rtol=1e-5, atol=0)
