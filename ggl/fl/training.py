"""Trained victims: a victim trained on its datamodule's public split, cached on disk under a hash of its config.

A suite names a victim's training stage (untrained, one epoch, converged) as a ``TrainingSpec``. ``victim_stage``
builds the victim with ``make_victim``, trains it as the spec says and caches the weights, so every run of a
stage attacks bitwise the same model and trains it only once.

Cache layout (``cache_dir``): ``<key>.pt``, the trained ``state_dict`` (``torch.save``), and ``<key>.json``, the
record: the hashed config, the accuracies, the name and SHA-256 of the weights file. ``key`` is the first 12 hex
digits of the SHA-256 of the config's canonical JSON: victim name, classes, image shape, model seed, the
datamodule's key and the spec. Both files are written atomically, weights first, so the record marks a complete
entry. An untrained stage (``epochs == 0``) caches its record only: its weights are ``make_victim``'s.

A cache entry that cannot be used (unreadable record, another config, weights missing, truncated or changed) is
retrained and overwritten with a ``RuntimeWarning`` naming the file and the reason: training is deterministic, so
this restores the same weights. A custom victim's code (``module:Class``) is not part of the key: give it a new
name, or delete its cache entries, when its code changes.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from ggl.checks import non_negative_int, one_of, positive_int, positive_number
from ggl.fl.models import load_victim_checkpoint, make_victim
from ggl.fl.normalization import Normalization
from ggl.io import atomic_path, atomic_write, canonical_json, pretty_json

OPTIMIZERS = ("sgd", "adam")
"""Optimizers a spec may name: SGD with momentum ``SGD_MOMENTUM``, or Adam with PyTorch's default betas."""
SGD_MOMENTUM = 0.9
EVAL_IMAGES = 2000
"""Images an accuracy is measured on: the whole split when it has no more, else a fixed subset (``EVAL_SEED``)."""
EVAL_SEED = 0
"""Seed of the fixed evaluation subset, independent of the spec so that every stage is scored on the same images."""
EVAL_BATCH_SIZE = 256
RECORD_FORMAT = 1
"""Version of the ``<key>.json`` record; a record of another version is retrained."""


@dataclass(frozen=True)
class TrainingSpec:
    """How a victim is trained: plain data (``dataclasses.asdict`` is its JSON), part of the cache key.

    Args:
        epochs: passes over the public split; 0 is the untrained model as ``make_victim`` initialises it.
        lr: learning rate (stored as a float, so ``1`` and ``1.0`` are one spec).
        batch_size: images per step; an epoch's last, smaller batch is kept.
        seed: seed of the batch order and of any randomness of the training-mode forward (dropout).
        optimizer: ``sgd`` (momentum 0.9) or ``adam``.
    Raises ``ValueError`` naming the field for a bad value.
    """

    epochs: int
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    optimizer: str = "sgd"

    def __post_init__(self) -> None:
        non_negative_int("epochs", self.epochs)
        object.__setattr__(self, "lr", positive_number("lr", self.lr))
        positive_int("batch_size", self.batch_size)
        non_negative_int("seed", self.seed)
        one_of("optimizer", self.optimizer, OPTIMIZERS)


@dataclass(frozen=True)
class TrainedVictim:
    """A victim at a training stage.

    Attributes:
        model: the victim in ``eval()`` mode, on the CPU.
        test_accuracy: accuracy in [0, 1] on the datamodule's ``victims`` split (all of it up to ``EVAL_IMAGES``
            images, else a fixed subset of that many drawn with ``EVAL_SEED``).
        train_accuracy: accuracy on the ``public`` split it was trained on (same subset rule); None when
            ``epochs == 0``: an untrained stage never reads the public split, so it runs without one.
        key: the stage's cache key (12 hex digits).
        path: the cached ``state_dict``; None when ``epochs == 0`` (the weights are ``make_victim``'s).
    """

    model: nn.Module
    test_accuracy: float
    train_accuracy: float | None
    key: str
    path: Path | None


def train_victim(
    model: nn.Module, datamodule: Any, spec: TrainingSpec, normalization: Normalization
) -> tuple[float, float]:
    """Train ``model`` in place on ``datamodule.public`` as ``spec`` says; returns (train, test) accuracy.

    Images in [0, 1] are normalised with ``normalization`` before the model; the loss is the mean cross-entropy.
    The batch order comes from a generator seeded with ``spec.seed`` and the training-mode forward runs under a
    forked RNG seeded the same way, so the result is deterministic and the global RNG is untouched. The model
    trains in ``train()`` mode on its own device and is left in ``eval()`` mode with no ``.grad``. Accuracies are
    measured as ``TrainedVictim`` says, on the public and the victims split.
    """
    public = _split(datamodule, "public")
    victims = _split(datamodule, "victims")
    count = len(public)  # type: ignore[arg-type]
    device = next(model.parameters()).device
    order = torch.Generator().manual_seed(spec.seed)
    optimizer = _optimizer(model, spec)
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked), torch.enable_grad():
        torch.manual_seed(spec.seed)
        model.train()
        for _ in range(spec.epochs):
            for indices in torch.randperm(count, generator=order).split(spec.batch_size):
                images, labels = _batch(public, indices)
                logits = model(normalization.normalize(images.to(device)))
                loss = F.cross_entropy(logits, labels.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    model.eval()
    return _accuracy(model, public, normalization), _accuracy(model, victims, normalization)


def victim_stage(
    name: str,
    *,
    num_classes: int,
    image_shape: tuple[int, int, int],
    model_seed: int,
    datamodule: Any,
    datamodule_key: Mapping[str, Any],
    spec: TrainingSpec,
    cache_dir: Path | str,
) -> TrainedVictim:
    """The victim ``make_victim(name, num_classes, image_shape, seed=model_seed)`` trained per ``spec``, cached.

    ``datamodule_key`` is plain data that identifies the training data (the datamodule's name and options); it
    enters the key with the rest of the config, see the module docstring for the files under ``cache_dir``. A
    second call with the same config loads the cache without training and returns identical weights; an unusable
    entry is retrained with a ``RuntimeWarning``. Raises ``ValueError`` for a datamodule whose image shape or class
    count differs from the ones given, or a key that is not JSON data.
    """
    non_negative_int("model_seed", model_seed)
    if tuple(datamodule.image_shape) != tuple(image_shape) or datamodule.num_classes != num_classes:
        raise ValueError(
            f"victim stage {name!r}: image_shape {tuple(image_shape)} and num_classes {num_classes} must be the "
            f"datamodule's ({tuple(datamodule.image_shape)}, {datamodule.num_classes})"
        )
    config = stage_config(name, num_classes, image_shape, model_seed, datamodule_key, spec)
    key = stage_key(config)
    folder = Path(cache_dir)
    record_path = folder / f"{key}.json"
    weights_path = None if spec.epochs == 0 else folder / f"{key}.pt"

    def build() -> nn.Module:
        return make_victim(name, num_classes, image_shape, seed=model_seed)

    model = build()
    record = _cached_record(record_path, weights_path, config, model)
    if record is not None:
        return TrainedVictim(model.eval(), record["test_accuracy"], record["train_accuracy"], key, weights_path)
    model = build()  # a failed load may have changed some of the weights
    normalization = datamodule.normalization
    if weights_path is None:
        train_accuracy, test_accuracy = None, _accuracy(model, _split(datamodule, "victims"), normalization)
    else:
        train_accuracy, test_accuracy = train_victim(model, datamodule, spec, normalization)
        with atomic_path(weights_path) as partial:
            torch.save(model.state_dict(), partial)
    record = {
        "format": RECORD_FORMAT,
        "key": key,
        "config": config,
        "test_accuracy": test_accuracy,
        "train_accuracy": train_accuracy,
        "weights": None if weights_path is None else weights_path.name,
        "weights_sha256": None if weights_path is None else _sha256(weights_path),
    }
    atomic_write(record_path, pretty_json(record))
    return TrainedVictim(model, test_accuracy, train_accuracy, key, weights_path)


def stage_config(
    name: str,
    num_classes: int,
    image_shape: tuple[int, int, int],
    model_seed: int,
    datamodule_key: Mapping[str, Any],
    spec: TrainingSpec,
) -> dict[str, Any]:
    """The config a stage's key hashes, as plain JSON data (what its record stores under ``config``)."""
    config = {
        "victim": name,
        "num_classes": num_classes,
        "image_shape": list(image_shape),
        "model_seed": model_seed,
        "datamodule": dict(datamodule_key),
        "training": asdict(spec),
    }
    try:
        return json.loads(canonical_json(config))  # tuples become lists, as a record read back has them
    except (TypeError, ValueError) as error:
        raise ValueError(f"victim stage {name!r}: datamodule_key must be plain JSON data ({error})") from None


def stage_key(config: Mapping[str, Any]) -> str:
    """A stage's cache key: the first 12 hex digits of the SHA-256 of its config's canonical JSON."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]


def _cached_record(
    record_path: Path, weights_path: Path | None, config: dict[str, Any], model: nn.Module
) -> dict[str, Any] | None:
    """The record of a usable cache entry, its weights loaded into ``model``; None (with a warning when an entry
    exists but is unusable) otherwise."""
    if not record_path.is_file():
        return None
    problem: str | None
    try:
        record = json.loads(record_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        record, problem = None, f"the record is not readable JSON: {error}"
    else:
        problem = _record_problem(record, weights_path, config)
    if problem is None and weights_path is not None:
        try:
            load_victim_checkpoint(model, weights_path)
        except (ValueError, FileNotFoundError) as error:
            problem = str(error)
    if problem is not None:
        message = f"cached victim {record_path} is unusable ({problem}); training it again"
        warnings.warn(message, RuntimeWarning, stacklevel=3)  # points at victim_stage's caller
        return None
    return record


def _record_problem(record: Any, weights_path: Path | None, config: dict[str, Any]) -> str | None:
    """Why a record read back (and its weights file) cannot be used for ``config``; None if it can."""
    if not isinstance(record, dict):
        return "the record is not a JSON object"
    untrained = weights_path is None
    checks = [
        (record.get("format") == RECORD_FORMAT, f"the record is not of format {RECORD_FORMAT}"),
        (record.get("config") == config, "the record holds another config"),
        (_is_accuracy(record.get("test_accuracy")), "the record has no test accuracy in [0, 1]"),
        (
            record.get("train_accuracy") is None if untrained else _is_accuracy(record.get("train_accuracy")),
            "the record's train accuracy is not in [0, 1] (null for an untrained stage)",
        ),
    ]
    for passed, problem in checks:
        if not passed:
            return problem
    if weights_path is None:
        return None
    if not weights_path.is_file():
        return f"its weights file {weights_path} is missing"
    if record.get("weights_sha256") != _sha256(weights_path):
        return f"its weights file {weights_path} is not the one the record was written for (truncated or replaced)"
    return None


def _is_accuracy(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 <= value <= 1.0


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _optimizer(model: nn.Module, spec: TrainingSpec) -> torch.optim.Optimizer:
    if spec.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=spec.lr)
    return torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=SGD_MOMENTUM)


def _split(datamodule: Any, split: str) -> Dataset[Any]:
    """The datamodule's ``public`` or ``victims`` split, set up on first use; ``ValueError`` when it is empty."""
    dataset = getattr(datamodule, split)
    if dataset is None:
        datamodule.setup("fit" if split == "public" else "predict")
        dataset = getattr(datamodule, split)
    if dataset is None or len(dataset) == 0:
        raise ValueError(f"datamodule {datamodule.name!r} has no {split} split to train or score a victim on")
    return dataset


def _batch(dataset: Dataset[Any], indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Images (B, C, H, W) and labels (B,) at ``indices``; a ``TensorDataset`` is indexed without a Python loop."""
    if isinstance(dataset, TensorDataset):
        images, labels = dataset.tensors[0][indices], dataset.tensors[1][indices]
    else:
        items = [dataset[int(i)] for i in indices]
        images = torch.stack([image for image, _ in items])
        labels = torch.tensor([int(label) for _, label in items])
    return images.float(), labels.long()


def _accuracy(model: nn.Module, dataset: Dataset[Any], normalization: Normalization) -> float:
    """Top-1 accuracy of ``model`` (in its current mode) on ``dataset``, subset as ``TrainedVictim`` says."""
    total = len(dataset)  # type: ignore[arg-type]
    if total <= EVAL_IMAGES:
        indices = torch.arange(total)
    else:
        indices = torch.randperm(total, generator=torch.Generator().manual_seed(EVAL_SEED))[:EVAL_IMAGES].sort().values
    device = next(model.parameters()).device
    correct = 0
    with torch.no_grad():
        for chunk in indices.split(EVAL_BATCH_SIZE):
            images, labels = _batch(dataset, chunk)
            predicted = model(normalization.normalize(images.to(device))).argmax(dim=1).cpu()
            correct += int((predicted == labels).sum())
    return correct / len(indices)
