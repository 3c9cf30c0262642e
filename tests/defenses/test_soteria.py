"""Soteria on LeNet and ResNet-18: the intended fraction of representation features is pruned."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ggl.defenses import make_defense, representation_scores
from ggl.fl import last_linear_indices, make_victim, shared_update


def _check_soteria(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, rate: float) -> None:
    update = shared_update(model, images, labels)
    defense = make_defense("soteria", pruning_rate=rate)
    defended = defense(update, model=model, images=images, labels=labels)
    weight_index, _ = last_linear_indices(model)
    features = update.gradients[weight_index].shape[1]
    # The pruned features are those with the smallest score ||dr/dx|| / |r| (largest |r| / ||dr/dx||).
    scores, representation = representation_scores(model, images)
    assert representation.shape == (images.shape[0], features)
    pruned = torch.topk(scores, math.floor(rate * features), largest=False).indices
    assert pruned.numel() == math.floor(rate * features) > 0
    pruned_mask = torch.zeros(features, dtype=torch.bool)
    pruned_mask[pruned] = True
    before, after = update.gradients[weight_index], defended.gradients[weight_index]
    assert bool((after[:, pruned_mask] == 0).all())
    assert torch.equal(after[:, ~pruned_mask], before[:, ~pruned_mask])
    zero_columns = (after == 0).all(0)
    assert int(zero_columns.sum()) == pruned.numel() + int(((before == 0).all(0) & ~pruned_mask).sum())
    for index, (a, b) in enumerate(zip(defended.gradients, update.gradients)):
        if index != weight_index:
            assert torch.equal(a, b)
    # The attacker's simulation reproduces the defense on the true gradient.
    trials = [g.unsqueeze(0) for g in update.gradients]
    for sim, received in zip(defense.simulate(trials, defended), defended.gradients):
        assert torch.equal(sim[0], received)


def test_soteria_lenet(victim, batch):
    images, labels = batch
    _check_soteria(victim, images, labels, rate=0.3)


def test_soteria_resnet18():
    model = make_victim("resnet18", num_classes=10, image_shape=(1, 8, 8), seed=0)
    images = torch.rand(1, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    _check_soteria(model, images, torch.tensor([4]), rate=0.1)


def test_scores_match_an_explicit_jacobian(victim, batch):
    images, _ = batch
    scores, representation = representation_scores(victim, images)
    inputs = images.clone().requires_grad_(True)
    features = victim.features(inputs)
    torch.testing.assert_close(features.detach(), representation)
    for feature in (0, 37, 191):
        (rows,) = torch.autograd.grad(features[:, feature].sum(), inputs, retain_graph=True)
        expected = (rows.flatten(1).norm(dim=1) / features[:, feature].abs()).sum()
        torch.testing.assert_close(scores[feature], expected.detach(), rtol=1e-4, atol=0)


def test_soteria_needs_a_linear_layer(update):
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten())
    with pytest.raises(ValueError, match="nn.Linear"):
        make_defense("soteria")(update, model=model, images=torch.rand(1, 1, 4, 4), labels=torch.tensor([0]))
