"""Utility cost: the update cosine's maths, the fixed data split, and short seeded runs that are deterministic."""

from __future__ import annotations

import statistics

import pytest

from benchmarks.utility import (
    REPORTED,
    SPLIT_IMAGES,
    UtilityConfig,
    embedded_split,
    train_accuracy,
    update_cosine,
    utility_cost,
)
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


def test_split_of_the_shipped_images_is_fixed_and_stratified():
    from ggl.data import EmbeddedFashionMNIST

    datamodule = EmbeddedFashionMNIST(download=False)
    datamodule.setup("predict")
    _, labels = datamodule.victims.tensors
    train, held_out = embedded_split(labels)
    assert len(train) == len(held_out) == SPLIT_IMAGES
    assert set(train.tolist()).isdisjoint(held_out.tolist())
    assert train.tolist() == sorted(train.tolist())
    for label in range(10):
        members = (labels == label).nonzero().flatten().tolist()
        assert set(members[:50]) == set(train[labels[train] == label].tolist())  # the lower test indices train
    # The evaluation half goes round the classes: any first 10 k images hold k of each.
    assert labels[held_out].tolist() == list(range(10)) * 50
    assert embedded_split(labels)[1].tolist() == held_out.tolist()


def test_accuracy_run_is_deterministic_and_learns():
    config = UtilityConfig(steps=40, eval_images=300)
    clean = train_accuracy(make_defense("none"), config, seed=0)
    assert clean > 0.45  # ten classes: chance is 0.1
    assert train_accuracy(make_defense("none"), config, seed=0) == clean
    noisy = make_defense("gaussian", sigma=0.05)
    assert train_accuracy(noisy, config, seed=3) == train_accuracy(noisy, config, seed=3)


def test_result_records_the_data_and_the_seeds():
    result = utility_cost({"name": "gaussian", "sigma": 0.1}, seed=0, seeds=2, **SHORT)
    expected = {*REPORTED, *(f"{name}_std" for name in REPORTED), "seeds", "train_images", "eval_images"}
    assert set(result) == expected
    assert (result["seeds"], result["train_images"], result["eval_images"]) == (2, SPLIT_IMAGES, 300)
    assert all(isinstance(value, (int, float)) for value in result.values())  # what the harness stores
    assert UtilityConfig().data == "embedded-fashion-mnist" and UtilityConfig().seeds == 3


def test_undefended_baseline_and_a_heavy_defense():
    baseline = utility_cost({"name": "none"}, seed=0, **SHORT)
    assert baseline["update_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert baseline["accuracy_drop"] == 0.0 and baseline["accuracy_drop_std"] == 0.0
    assert baseline["accuracy"] == baseline["clean_accuracy"]
    heavy = utility_cost({"name": "gaussian", "sigma": 1.0}, seed=0, **SHORT)
    assert heavy["clean_accuracy"] == baseline["clean_accuracy"]
    assert heavy["update_cosine"] < 0.5
    assert heavy["accuracy_drop"] == pytest.approx(heavy["clean_accuracy"] - heavy["accuracy"])
    assert heavy["accuracy_drop"] > 0.1


def test_same_seed_same_result_and_seeds_average_single_runs():
    spec = {"name": "gaussian", "sigma": 0.1}
    pooled = utility_cost(spec, seed=5, seeds=3, **SHORT)
    assert utility_cost(spec, seed=5, seeds=3, **SHORT) == pooled
    single = [utility_cost(spec, seed=5 + i, seeds=1, **SHORT) for i in range(3)]
    assert all(run["seeds"] == 1 for run in single)
    for name in REPORTED:
        values = [run[name] for run in single]
        assert all(run[f"{name}_std"] == 0.0 for run in single)
        assert pooled[name] == pytest.approx(statistics.fmean(values), abs=1e-12)
        assert pooled[f"{name}_std"] == pytest.approx(statistics.stdev(values), abs=1e-12)
    assert pooled["accuracy_drop_std"] > 0  # the seeds do differ


@pytest.mark.parametrize(
    ("options", "field"),
    [
        ({"steps": 0}, "steps"),
        ({"lr": -1.0}, "lr"),
        ({"epochs": 3}, "epochs"),
        ({"seeds": 0}, "seeds"),
        ({"seeds": 2.0}, "seeds"),
        ({"seeds": True}, "seeds"),
        ({"data": "fashion-mnist-train"}, "data"),
        ({"eval_images": SPLIT_IMAGES + 1}, "eval_images"),
    ],
)
def test_bad_options_name_the_field(options, field):
    with pytest.raises(ValueError, match=field):
        utility_cost({"name": "none"}, **options)


def test_suites_check_the_data_and_seeds_options():
    from benchmarks.config import SuiteError, load_suite

    with pytest.raises(SuiteError, match=r"utility\.options\.data.*embedded-fashion-mnist"):
        load_suite("smoke", ["utility.options.data=fashion-mnist-train"])
    with pytest.raises(SuiteError, match=r"utility\.options\.seeds"):
        load_suite("smoke", ["utility.options.seeds=0"])
    assert load_suite("smoke", ["utility.options.seeds=5"]).utility.options["seeds"] == 5


def test_bad_spec():
    with pytest.raises(ValueError, match="name"):
        utility_cost({"sigma": 0.1})
    with pytest.raises(ValueError, match="sigma"):
        utility_cost({"name": "gaussian", "sigma": -1})
