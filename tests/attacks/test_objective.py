"""The gradient distances and regularisers: known values, population batching, the registry and its errors."""

from __future__ import annotations

import pytest
import torch

from ggl.attacks.objective import DISTANCES, distance_scale, gradient_distance, latent_kl, total_variation

TARGET = [torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([2.0, -1.0])]
TRIAL = [torch.stack([t, 2 * t]) for t in TARGET]  # P = 2 candidates: the target itself and twice it


def test_registered_distances_and_known_values() -> None:
    assert list(DISTANCES) == ["l2", "l1", "cosine"]
    assert gradient_distance(TRIAL, TARGET, "l2").tolist() == [0.0, (2.0 + 5.0) / 2]
    assert gradient_distance(TRIAL, TARGET, "l1").tolist() == [0.0, (2.0 + 3.0) / 2]
    assert gradient_distance(TRIAL, TARGET, "cosine").tolist() == pytest.approx([0.0, 0.0], abs=1e-6)
    weighted = gradient_distance(TRIAL, TARGET, "l2", layer_weights=[0.0, 2.0])
    assert weighted.tolist() == [0.0, 5.0]


def test_distance_scale_is_the_distance_of_a_zero_gradient() -> None:
    assert distance_scale(TARGET, "l2") == (2.0 + 5.0) / 2
    assert distance_scale(TARGET, "l1") == (2.0 + 3.0) / 2
    assert distance_scale(TARGET, "cosine") == 1.0
    shrunk, shrunk_trial = [t / 100 for t in TARGET], [t / 100 for t in TRIAL]  # both rescaled, as clipping does
    relative = gradient_distance(TRIAL, TARGET, "l2") / distance_scale(TARGET, "l2")
    assert gradient_distance(shrunk_trial, shrunk, "l2").tolist() != pytest.approx(relative.tolist())
    assert (gradient_distance(shrunk_trial, shrunk, "l2") / distance_scale(shrunk, "l2")).tolist() == pytest.approx(
        relative.tolist()
    )


def test_unknown_distance_and_bad_shapes_raise() -> None:
    with pytest.raises(ValueError, match="unknown gradient distance 'l3'.*allowed: cosine, l1, l2"):
        gradient_distance(TRIAL, TARGET, "l3")
    with pytest.raises(ValueError, match="layer_weights"):
        gradient_distance(TRIAL, TARGET, "l2", layer_weights=[1.0])
    with pytest.raises(ValueError, match="trial shape"):
        gradient_distance([TARGET[0], TRIAL[1]], TARGET, "l2")


def test_regularisers() -> None:
    flat = torch.ones(2, 1, 4, 4)
    stripes = torch.arange(4.0).repeat(4, 1).reshape(1, 1, 4, 4)
    assert total_variation(flat).tolist() == [0.0, 0.0]
    assert total_variation(stripes).tolist() == [pytest.approx(12 / 12)]  # mean |dx| = 1 over 12 pairs, dy = 0
    standard = torch.tensor([[1.0, -1.0, 1.0, -1.0]])  # mean 0, variance 1
    assert latent_kl(standard).tolist() == [pytest.approx(0.0)]
    assert latent_kl(2 * standard).item() > 0
