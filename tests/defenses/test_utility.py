"""Utility cost: the update cosine's maths, and a short accuracy-drop run that is deterministic."""

from __future__ import annotations

import pytest

from benchmarks.utility import UtilityConfig, train_accuracy, update_cosine, utility_cost
from ggl.defenses import make_defense
from ggl.fl import shared_update

SHORT = {"steps": 40, "eval_images": 300, "cosine_victims": 2}


def test_update_cosine_matches_closed_forms(victim, batch):
    images, labels = batch
    batches = [(images[:1], labels[:1]), (images[1:], labels[1:])]
    assert update_cosine(make_defense("none"), victim, batches) == pytest.approx(1.0, abs=1e-6)
    # Global clipping only rescales: the direction, hence the cosine, is unchanged.
    assert update_cosine(make_defense("clipping", bound=1e-3), victim, batches) == pytest.approx(1.0, abs=1e-5)
    # Sparsification: cos(g * mask, g) = ||g * mask|| / ||g||.
    sparsification = make_defense("sparsification", ratio=0.8, mode="global")
    expected = []
    for x, y in batches:
        clean = shared_update(victim, x, y)
        expected.append(sparsification(clean).norm() / clean.norm())
    assert update_cosine(sparsification, victim, batches) == pytest.approx(sum(expected) / 2, rel=1e-5)
    noisy = update_cosine(make_defense("gaussian", sigma=1.0), victim, batches)
    assert -0.2 < noisy < 0.5


def test_accuracy_run_is_deterministic_and_learns():
    config = UtilityConfig(steps=40, eval_images=300)
    clean, source = train_accuracy(make_defense("none"), config, seed=0)
    assert clean > 0.45  # ten classes: chance is 0.1
    assert train_accuracy(make_defense("none"), config, seed=0) == (clean, source)
    noisy = make_defense("gaussian", sigma=0.05)
    assert train_accuracy(noisy, config, seed=3) == train_accuracy(noisy, config, seed=3)


def test_utility_cost_fields_and_undefended_baseline():
    baseline = utility_cost({"name": "none"}, seed=0, **SHORT)
    assert baseline["update_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert baseline["accuracy_drop"] == 0.0 and baseline["accuracy"] == baseline["clean_accuracy"]
    heavy = utility_cost({"name": "gaussian", "sigma": 1.0}, seed=0, **SHORT)
    assert heavy["clean_accuracy"] == baseline["clean_accuracy"]
    assert heavy["update_cosine"] < 0.5
    assert heavy["accuracy_drop"] == pytest.approx(heavy["clean_accuracy"] - heavy["accuracy"])
    assert heavy["accuracy_drop"] > 0.1
    assert utility_cost({"name": "gaussian", "sigma": 1.0}, seed=0, **SHORT) == heavy


@pytest.mark.parametrize(
    ("options", "field"), [({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"epochs": 3}, "epochs")]
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        utility_cost({"name": "none"}, **options)


def test_bad_spec():
    with pytest.raises(ValueError, match="name"):
        utility_cost({"sigma": 0.1})
    with pytest.raises(ValueError, match="sigma"):
        utility_cost({"name": "gaussian", "sigma": -1})
