"""Trained victims: the spec's checks, seeded training, and the cache keyed by the config hash."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import TensorDataset

from ggl.data import EmbeddedFashionMNIST
from ggl.data import embedded as embedded_module
from ggl.fl import TrainedVictim, TrainingSpec, make_victim, train_victim, victim_stage
from ggl.fl import training as training_module
from ggl.fl.training import stage_config, stage_key

SHAPE = (1, 32, 32)
KEY = {"name": "shipped-split"}


class ShippedSplit(EmbeddedFashionMNIST):
    """The 1,000 shipped Fashion-MNIST images split in two (a fixed permutation): 800 public, 200 victims, so
    training needs no download."""

    name = "shipped-split"

    def setup(self, stage: str | None = None) -> None:
        if self.public is None:
            super().setup("predict")
            images, labels = self.victims.tensors  # type: ignore[union-attr]
            order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0))
            self.public = TensorDataset(images[order[:800]], labels[order[:800]])
            self.victims = TensorDataset(images[order[800:]], labels[order[800:]])


@pytest.fixture(scope="module")
def datamodule() -> ShippedSplit:
    module = ShippedSplit(download=False)
    module.setup()
    return module


def stage(datamodule: Any, cache: Path, spec: TrainingSpec, **changes: Any) -> TrainedVictim:
    arguments: dict[str, Any] = {
        "num_classes": 10,
        "image_shape": SHAPE,
        "model_seed": 0,
        "datamodule": datamodule,
        "datamodule_key": KEY,
        "spec": spec,
        "cache_dir": cache,
        **changes,
    }
    return victim_stage("lenet", **arguments)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def bitwise_equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"epochs": -1}, "epochs"),
        ({"epochs": 1.5}, "epochs"),
        ({"epochs": True}, "epochs"),
        ({"epochs": 1, "lr": 0}, "lr"),
        ({"epochs": 1, "lr": float("nan")}, "lr"),
        ({"epochs": 1, "batch_size": 0}, "batch_size"),
        ({"epochs": 1, "seed": -3}, "seed"),
        ({"epochs": 1, "optimizer": "lbfgs"}, "optimizer"),
    ],
)
def test_bad_spec_fields_are_named(fields: dict[str, Any], field: str) -> None:
    with pytest.raises(ValueError, match=f"^{field} must be"):
        TrainingSpec(**fields)


def test_a_spec_is_plain_data_and_spells_its_learning_rate_one_way() -> None:
    assert TrainingSpec(2, lr=1) == TrainingSpec(2, lr=1.0)
    assert isinstance(TrainingSpec(2, lr=1).lr, float)
    config = stage_config("lenet", 10, SHAPE, 0, KEY, TrainingSpec(2, optimizer="adam"))
    assert config["training"] == {"epochs": 2, "lr": 0.05, "batch_size": 32, "seed": 0, "optimizer": "adam"}
    assert json.loads(json.dumps(config)) == config


def test_every_config_field_changes_the_key() -> None:
    base = ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(1))
    variants = [
        ("convnet", 10, SHAPE, 0, KEY, TrainingSpec(1)),
        ("lenet", 2, SHAPE, 0, KEY, TrainingSpec(1)),
        ("lenet", 10, (3, 32, 32), 0, KEY, TrainingSpec(1)),
        ("lenet", 10, SHAPE, 1, KEY, TrainingSpec(1)),
        ("lenet", 10, SHAPE, 0, {"name": "embedded"}, TrainingSpec(1)),
        ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(2)),
        ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(1, seed=1)),
        ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(1, lr=0.1)),
        ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(1, batch_size=64)),
        ("lenet", 10, SHAPE, 0, KEY, TrainingSpec(1, optimizer="adam")),
    ]
    keys = {stage_key(stage_config(*fields)) for fields in [base, *variants]}
    assert len(keys) == len(variants) + 1
    assert all(len(key) == 12 and int(key, 16) >= 0 for key in keys)
    assert stage_key(stage_config(*base)) == stage_key(stage_config("lenet", 10, [1, 32, 32], 0, KEY, TrainingSpec(1)))


def test_training_is_seeded_and_leaves_the_global_rng_alone(datamodule: ShippedSplit) -> None:
    spec = TrainingSpec(1, seed=3)
    torch.manual_seed(11)
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    first = make_victim("lenet", 10, SHAPE, seed=0)
    accuracies = train_victim(first, datamodule, spec, datamodule.normalization)
    assert torch.equal(torch.rand(1), expected_next)
    assert not first.training and all(p.grad is None for p in first.parameters())
    again = make_victim("lenet", 10, SHAPE, seed=0)
    assert train_victim(again, datamodule, spec, datamodule.normalization) == accuracies
    assert bitwise_equal(state(first), state(again))
    other = make_victim("lenet", 10, SHAPE, seed=0)
    train_victim(other, datamodule, TrainingSpec(1, seed=4), datamodule.normalization)
    assert not bitwise_equal(state(first), state(other))


def test_a_second_call_loads_the_cache_without_training(
    datamodule: ShippedSplit, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = TrainingSpec(1)
    trained = stage(datamodule, tmp_path, spec)
    assert trained.key == stage_key(stage_config("lenet", 10, SHAPE, 0, KEY, spec))
    assert trained.path == tmp_path / f"{trained.key}.pt" and trained.path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{trained.key}.json", f"{trained.key}.pt"]
    record = json.loads((tmp_path / f"{trained.key}.json").read_text())
    assert record["config"]["training"] == {"epochs": 1, "lr": 0.05, "batch_size": 32, "seed": 0, "optimizer": "sgd"}
    assert record["test_accuracy"] == trained.test_accuracy and record["train_accuracy"] == trained.train_accuracy
    assert not trained.model.training and next(trained.model.parameters()).device.type == "cpu"

    def no_training(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("a cached stage was trained again")

    monkeypatch.setattr(training_module, "train_victim", no_training)
    loaded = stage(datamodule, tmp_path, spec)
    assert bitwise_equal(state(loaded.model), state(trained.model))
    assert (loaded.key, loaded.path) == (trained.key, trained.path)
    assert (loaded.test_accuracy, loaded.train_accuracy) == (trained.test_accuracy, trained.train_accuracy)
    assert not loaded.model.training
    with pytest.raises(AssertionError, match="trained again"):
        stage(datamodule, tmp_path, TrainingSpec(1, seed=1))  # another key: not in the cache


def test_training_raises_accuracy_well_above_chance(datamodule: ShippedSplit, tmp_path: Path) -> None:
    untrained = stage(datamodule, tmp_path, TrainingSpec(0))
    trained = stage(datamodule, tmp_path, TrainingSpec(5, batch_size=16))
    # Measured on the 200 held-out images: 0.165 untrained; 0.665 (train 0.729) after 5 epochs on the 800 public.
    assert untrained.test_accuracy < 0.25
    assert trained.test_accuracy > 0.5 and trained.train_accuracy is not None and trained.train_accuracy > 0.6


def test_an_untrained_stage_is_make_victims_and_needs_no_public_split(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(embedded_module, "DEBIAN_ROOT", tmp_path / "no-debian-package")
    monkeypatch.setenv("GGL_CACHE", str(tmp_path / "data-cache"))
    offline = EmbeddedFashionMNIST(download=False)  # victims shipped, public split nowhere
    untrained = stage(offline, tmp_path / "cache", TrainingSpec(0), datamodule_key={"name": "embedded"})
    assert bitwise_equal(state(untrained.model), state(make_victim("lenet", 10, SHAPE, seed=0)))
    assert untrained.path is None and untrained.train_accuracy is None and 0 <= untrained.test_accuracy <= 1
    assert offline.public is None
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [f"{untrained.key}.json"]
    again = stage(offline, tmp_path / "cache", TrainingSpec(0), datamodule_key={"name": "embedded"})
    assert again.test_accuracy == untrained.test_accuracy and again.train_accuracy is None


def test_a_truncated_weights_file_is_trained_again_with_a_warning(datamodule: ShippedSplit, tmp_path: Path) -> None:
    first = stage(datamodule, tmp_path, TrainingSpec(1))
    assert first.path is not None
    data = first.path.read_bytes()
    first.path.write_bytes(data[: len(data) // 2])
    with pytest.warns(RuntimeWarning, match=rf"cached victim .*{first.key}\.json is unusable .*truncated or replaced"):
        again = stage(datamodule, tmp_path, TrainingSpec(1))
    assert bitwise_equal(state(again.model), state(first.model))
    assert first.path.read_bytes() == data


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda record: record.write_text('{"format": 1, "con'), "not readable JSON"),
        (lambda record: record.write_text("[1, 2]"), "not a JSON object"),
        (
            lambda record: record.write_text(record.read_text().replace('"model_seed": 0', '"model_seed": 9')),
            "holds another config",
        ),
        (lambda record: record.with_suffix(".pt").unlink(), "weights file .* is missing"),
    ],
)
def test_a_damaged_entry_is_trained_again_with_a_warning(
    datamodule: ShippedSplit, tmp_path: Path, damage: Any, message: str
) -> None:
    first = stage(datamodule, tmp_path, TrainingSpec(1))
    damage(tmp_path / f"{first.key}.json")
    with pytest.warns(RuntimeWarning, match=message):
        again = stage(datamodule, tmp_path, TrainingSpec(1))
    assert bitwise_equal(state(again.model), state(first.model))
    assert json.loads((tmp_path / f"{first.key}.json").read_text())["test_accuracy"] == first.test_accuracy


def test_a_datamodule_of_another_shape_or_a_key_that_is_not_json_is_refused(
    datamodule: ShippedSplit, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match=r"image_shape \(3, 32, 32\) and num_classes 10 must be the datamodule's"):
        stage(datamodule, tmp_path, TrainingSpec(1), image_shape=(3, 32, 32))
    with pytest.raises(ValueError, match="datamodule_key must be plain JSON data"):
        stage(datamodule, tmp_path, TrainingSpec(1), datamodule_key={"root": Path("/data")})
    with pytest.raises(ValueError, match="model_seed must be a non-negative integer"):
        stage(datamodule, tmp_path, TrainingSpec(1), model_seed=-1)
    assert list(tmp_path.iterdir()) == []
