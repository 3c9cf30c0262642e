"""The simulation check: built-in defenses explain their own updates; defenses whose simulation lies do not."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import pytest
import torch

from ggl.defenses import Defense, SimulationCheck, check_simulation, make_defense
from ggl.defenses.audit import NOISE_RATIO_THRESHOLD, RELATIVE_TOLERANCE
from ggl.fl import SharedUpdate, make_victim, shared_update


@pytest.fixture(scope="module")
def lenet() -> torch.nn.Module:
    return make_victim("lenet", num_classes=10, image_shape=(1, 32, 32), seed=0)


@pytest.fixture(scope="module")
def sample() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(1)), torch.tensor([3])


@pytest.fixture(scope="module")
def clean(lenet, sample) -> SharedUpdate:
    return shared_update(lenet, *sample)


def check(defense: Defense, update: SharedUpdate, lenet, sample, **kwargs: Any) -> SimulationCheck:
    images, labels = sample
    return check_simulation(defense, update, model=lenet, images=images, labels=labels, **kwargs)


class ScaleLiar(Defense):
    """Sends the clean update but claims to scale it by 1e-3."""

    name = "scale-liar"

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return list(update.gradients)

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        return [1e-3 * t for t in trial_gradients]


class NoisyScaleLiar(Defense):
    """Adds Gaussian noise (sigma 0.01) but claims to halve the update."""

    name = "noisy-scale-liar"
    deterministic = False

    def apply(self, update: SharedUpdate, *, generator: torch.Generator, **_: Any) -> list[torch.Tensor]:
        return [g + 0.01 * torch.randn(g.shape, generator=generator) for g in update.gradients]

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        return [0.5 * t for t in trial_gradients]


class OffsetNoise(Defense):
    """Gaussian noise (sigma 0.01) with mean 0.01 instead of 0; its identity simulation claims unbiased noise."""

    name = "offset-noise"
    deterministic = False

    def apply(self, update: SharedUpdate, *, generator: torch.Generator, **_: Any) -> list[torch.Tensor]:
        return [g + 0.01 * (torch.randn(g.shape, generator=generator) + 1.0) for g in update.gradients]


class Simulating(Defense):
    """Sends the clean update; its simulation is ``output(trials)``."""

    name = "simulating"

    def __init__(self, output: Any) -> None:
        self.output = output

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return list(update.gradients)

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> Any:
        return self.output(trial_gradients)


@pytest.mark.parametrize(
    ("spec", "deterministic"),
    [
        ({"name": "none"}, True),
        ({"name": "gaussian", "sigma": 0.01}, False),
        ({"name": "gaussian", "sigma": 0.1}, False),
        ({"name": "laplacian", "scale": 0.01}, False),
        ({"name": "clipping", "bound": 0.25}, True),
        ({"name": "clipping", "bound": 4.0}, True),
        ({"name": "sparsification", "ratio": 0.9}, True),
        ({"name": "quantization", "bits": 4}, False),
        ({"name": "sign"}, True),
        ({"name": "soteria", "pruning_rate": 0.3}, True),
        ({"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 0.1}, False),
        ({"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 1.0}, False),
        ({"name": "mixup", "k": 4}, True),
    ],
)
def test_built_in_defenses_pass(spec, deterministic, lenet, sample, clean):
    result = check(make_defense(**spec), clean, lenet, sample)
    assert result.passed, result.detail
    assert result.deterministic is deterministic
    assert result.threshold == (RELATIVE_TOLERANCE if deterministic else NOISE_RATIO_THRESHOLD)
    assert result.draws == 8
    if not deterministic:
        assert 0.5 < result.statistic < 1.5  # an honest simulation sits near the null mean of 1


def test_a_clean_update_claimed_as_scaled_fails_the_exact_check(lenet, sample, clean):
    result = check(ScaleLiar(), clean, lenet, sample)
    assert not result.passed
    assert result.deterministic
    assert result.statistic == pytest.approx(1 - 1e-3, rel=1e-4)
    assert "does not reproduce" in result.detail


def test_noise_claimed_as_halving_fails_the_noise_check(lenet, sample, clean):
    result = check(NoisyScaleLiar(), clean, lenet, sample)
    assert not result.passed
    assert not result.deterministic
    assert result.statistic > 100 * NOISE_RATIO_THRESHOLD
    assert "is not the expected defended update" in result.detail


@pytest.mark.parametrize("seed", range(5))
def test_biased_noise_under_an_exact_simulation_fails(seed, lenet, sample, clean):
    result = check(OffsetNoise(), clean, lenet, sample, seed=seed)
    assert not result.passed
    assert result.statistic == pytest.approx(1 + 8, rel=0.1)  # 1 + draws * offset^2 / sigma^2


def test_a_simulation_that_cannot_reproduce_the_defense_fails(lenet):
    images = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(2))
    labels = torch.tensor([3, 7])
    update = shared_update(lenet, images, labels)
    defense = make_defense("dpsgd", max_grad_norm=1.0, noise_multiplier=0.1)
    result = check_simulation(defense, update, model=lenet, images=images, labels=labels)
    assert not result.passed  # at B = 2 the clipped per-sample mean is not the trial the simulation passes on


def test_the_same_seed_gives_the_same_result(lenet, sample, clean):
    defense = make_defense("gaussian", sigma=0.1)
    first = check(defense, clean, lenet, sample, seed=3)
    assert check(defense, clean, lenet, sample, seed=3) == first
    assert check(defense, clean, lenet, sample, seed=4).statistic != first.statistic


def test_more_draws_are_used_when_asked(lenet, sample, clean):
    result = check(make_defense("laplacian", scale=0.01), clean, lenet, sample, draws=3)
    assert result.draws == 3 and result.passed


def test_to_json_is_plain_data(lenet, sample, clean):
    result = check(ScaleLiar(), clean, lenet, sample)
    data = json.loads(json.dumps(result.to_json()))
    assert data == {
        "passed": False,
        "deterministic": True,
        "statistic": result.statistic,
        "threshold": RELATIVE_TOLERANCE,
        "draws": 8,
        "detail": result.detail,
    }


def test_zero_updates_give_finite_statistics():
    zero = SharedUpdate((torch.zeros(3, 4), torch.zeros(4)), 1, {"algorithm": "fedsgd"})
    assert check_simulation(make_defense("none"), zero).statistic == 0.0
    assert check_simulation(make_defense("gaussian", sigma=0.0), zero).passed
    shifted = check_simulation(Simulating(lambda trials: [t + 1.0 for t in trials]), zero)
    assert not shifted.passed and shifted.statistic == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("output", "message"),
    [
        (lambda trials: [t * math.nan for t in trials], r"non-finite values in gradients\[0\] \(NaN\)"),
        (lambda trials: list(trials[:1]), "one tensor per gradient"),
        (lambda trials: [t[0] for t in trials], r"returned \(3, 4\) for gradients\[0\], expected \(1, 3, 4\)"),
        (lambda trials: None, "one tensor per gradient"),
    ],
)
def test_a_malformed_simulation_names_the_defense(output, message):
    update = SharedUpdate((torch.ones(3, 4), torch.ones(4)), 1, {"algorithm": "fedsgd"})
    with pytest.raises(ValueError, match=f"defense 'simulating': simulate.*{message}"):
        check_simulation(Simulating(output), update)


@pytest.mark.parametrize(
    ("field", "value"),
    [("draws", 1), ("draws", 0), ("draws", 2.5), ("draws", True), ("draws", "8"), ("seed", -1), ("seed", 1.5)],
)
def test_bad_draws_or_seed_name_the_field(field, value):
    update = SharedUpdate((torch.ones(2),), 1, {"algorithm": "fedsgd"})
    with pytest.raises(ValueError, match=f"^{field} must be"):
        check_simulation(make_defense("none"), update, **{field: value})
