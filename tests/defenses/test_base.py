"""Registry, specs, parameter checking, generators and metadata, for every registered defense."""

from __future__ import annotations

import pytest
import torch
import yaml

from ggl.defenses import DEFENSES, Defense, make_defense, register_defense

SETTINGS = {
    "none": {},
    "gaussian": {"sigma": 0.05},
    "laplacian": {"scale": 0.02},
    "clipping": {"bound": 0.5, "mode": "per_layer"},
    "sparsification": {"ratio": 0.7, "mode": "global"},
    "quantization": {"bits": 3, "scale": "l2"},
    "sign": {},
    "soteria": {"pruning_rate": 0.25},
    "dpsgd": {"max_grad_norm": 0.3, "noise_multiplier": 0.5},
    "mixup": {"k": 3},
}
STOCHASTIC = ("gaussian", "laplacian", "quantization", "dpsgd", "mixup")


def test_every_registered_defense_has_a_setting_here():
    assert set(DEFENSES) == set(SETTINGS)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_spec_round_trips_through_dict_and_yaml(name):
    defense = make_defense(name, **SETTINGS[name])
    spec = defense.spec
    assert spec == {"name": name, **{key: getattr(defense, key) for key in defense.parameters}}
    assert all(spec[key] == value for key, value in SETTINGS[name].items())
    assert make_defense(**spec) == defense and make_defense(**spec).spec == spec
    from_yaml = yaml.safe_load(yaml.safe_dump(spec))
    assert make_defense(**from_yaml).spec == spec
    assert defense.name == name and isinstance(defense, Defense)


def test_yaml_exponent_without_dot_is_read_as_a_number():
    spec = yaml.safe_load("name: gaussian\nsigma: 1e-2\n")
    assert isinstance(spec["sigma"], str)  # YAML 1.1 reads it as a string
    assert make_defense(**spec).sigma == pytest.approx(0.01)


@pytest.mark.parametrize(
    ("name", "params", "field"),
    [
        ("gaussian", {"sigma": -0.1}, "sigma"),
        ("gaussian", {"sigma": "loud"}, "sigma"),
        ("laplacian", {"scale": float("nan")}, "scale"),
        ("clipping", {"bound": 0.0}, "bound"),
        ("clipping", {"mode": "layerwise"}, "mode"),
        ("sparsification", {"ratio": 1.0}, "ratio"),
        ("sparsification", {"ratio": -0.1}, "ratio"),
        ("sparsification", {"mode": "per_tensor"}, "mode"),
        ("quantization", {"bits": 1}, "bits"),
        ("quantization", {"bits": 2.5}, "bits"),
        ("quantization", {"scale": "mean"}, "scale"),
        ("soteria", {"pruning_rate": 1.0}, "pruning_rate"),
        ("dpsgd", {"max_grad_norm": 0}, "max_grad_norm"),
        ("dpsgd", {"noise_multiplier": -1}, "noise_multiplier"),
        ("mixup", {"k": 1}, "k"),
        ("gaussian", {"std": 0.1}, "std"),
        ("gaussian", {"sigma": 1e300}, "sigma"),
        ("gaussian", {"sigma": "1e7"}, "sigma"),
        ("laplacian", {"scale": 1e300}, "scale"),
        ("laplacian", {"scale": float("inf")}, "scale"),
        ("dpsgd", {"noise_multiplier": 1e300}, "noise_multiplier"),
        ("dpsgd", {"max_grad_norm": 1e300, "noise_multiplier": 1.0}, r"noise_multiplier \* max_grad_norm"),
    ],
)
def test_bad_parameters_raise_value_error_naming_the_parameter(name, params, field):
    with pytest.raises(ValueError, match=field):
        make_defense(name, **params)


def test_bad_choice_lists_the_allowed_values():
    with pytest.raises(ValueError, match="per_layer") as error:
        make_defense("clipping", mode="layerwise")
    assert "global" in str(error.value)


def test_unknown_name_lists_registered_names():
    with pytest.raises(ValueError, match="unknown defense 'dropout'; allowed: .*gaussian"):
        make_defense("dropout")
    with pytest.raises(ValueError, match="unknown defense 'gausian' \\(did you mean 'gaussian'\\?\\)"):
        make_defense("gausian")


def test_register_refuses_duplicates():
    class AnotherGaussian(Defense):
        name = "gaussian"

    with pytest.raises(ValueError, match="defense 'gaussian' is already registered by GaussianNoise"):
        register_defense(AnotherGaussian)
    assert DEFENSES["gaussian"].__name__ == "GaussianNoise"


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_defended_update_is_new_and_records_the_defense(name, victim, batch, update):
    images, labels = batch
    before = [g.clone() for g in update.gradients]
    defense = make_defense(name, **SETTINGS[name])
    defended = defense(update, model=victim, images=images, labels=labels)
    assert defended.metadata["defenses"][-1] == defense.spec
    assert defended.metadata["algorithm"] == "fedsgd"
    assert defended.num_samples == update.num_samples
    assert [tuple(g.shape) for g in defended.gradients] == [tuple(g.shape) for g in update.gradients]
    assert all(torch.equal(a, b) for a, b in zip(update.gradients, before))


@pytest.mark.parametrize("name", STOCHASTIC)
def test_same_generator_state_same_output(name, victim, batch, update):
    images, labels = batch
    defense = make_defense(name, **SETTINGS[name])

    def run(seed: int | None) -> torch.Tensor:
        generator = None if seed is None else torch.Generator().manual_seed(seed)
        return defense(update, model=victim, images=images, labels=labels, generator=generator).flat()

    assert torch.equal(run(5), run(5))
    assert not torch.equal(run(5), run(6))
    assert torch.equal(run(None), run(None))
    assert torch.equal(run(None), run(0))  # None = a fresh generator seeded with DEFAULT_SEED (0)


@pytest.mark.parametrize("name", ["soteria", "dpsgd", "mixup"])
def test_batch_defenses_require_the_batch(name, update):
    with pytest.raises(ValueError, match="model"):
        make_defense(name)(update)


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_simulate_is_batched_and_differentiable(name, victim, batch, update):
    images, labels = batch
    defense = make_defense(name, **SETTINGS[name])
    received = defense(update, model=victim, images=images, labels=labels)
    generator = torch.Generator().manual_seed(3)
    trials = [torch.randn(4, *g.shape, generator=generator).requires_grad_(True) for g in update.gradients]
    simulated = defense.simulate(trials, received)
    assert [tuple(s.shape) for s in simulated] == [tuple(t.shape) for t in trials]
    loss = sum((s - r).pow(2).sum() for s, r in zip(simulated, received.gradients))
    loss.backward()
    assert all(t.grad is not None and torch.isfinite(t.grad).all() for t in trials)
    assert sum(float(t.grad.abs().sum()) for t in trials) > 0
    with pytest.raises(ValueError, match="trial_gradients"):
        defense.simulate(trials[:-1], received)
