"""End to end with the batched objective: under a deterministic defense the adaptive objective vanishes at the
private image and not elsewhere, while the plain objective does not vanish at the private image."""

from __future__ import annotations

import functools

import pytest
import torch

from ggl.attacks.batched import PopulationObjective
from ggl.defenses import make_defense
from ggl.fl import shared_update

DETERMINISTIC = [
    {"name": "clipping", "bound": 0.5},
    {"name": "clipping", "bound": 0.2, "mode": "per_layer"},
    {"name": "sparsification", "ratio": 0.9},
    {"name": "sparsification", "ratio": 0.5, "mode": "global"},
    {"name": "sign"},
    {"name": "soteria", "pruning_rate": 0.5},
    {"name": "dpsgd", "max_grad_norm": 0.5, "noise_multiplier": 0.0},
]


@pytest.mark.parametrize("spec", DETERMINISTIC, ids=lambda spec: "-".join(str(v) for v in spec.values()))
def test_adaptive_objective_is_zero_at_the_private_image(victim, batch, spec):
    images, labels = batch[0][:1], batch[1][:1]
    defense = make_defense(**spec)
    defended = defense(shared_update(victim, images, labels), model=victim, images=images, labels=labels)
    other = torch.rand(1, 1, 16, 16, generator=torch.Generator().manual_seed(9))
    population = torch.stack([images, other])  # (P=2, B=1, C, H, W)
    adaptive = PopulationObjective(
        victim,
        defended.gradients,
        labels,
        simulate=functools.partial(defense.simulate, received=defended),
        engine="serial",
    )(population)
    plain = PopulationObjective(victim, defended.gradients, labels, engine="serial")(population)
    scale = float(sum(g.pow(2).sum() for g in defended.gradients))
    assert float(adaptive[0]) < 1e-8 * scale
    assert float(adaptive[1]) > 1e-3 * scale
    assert float(plain[0]) > 1e-4 * scale  # the plain objective is misled by the defense
