"""Utility cost of a defense setting, measured the same way for every setting (see docs/defenses.md).

Two numbers, both pure functions of (defense spec, seed, configuration):

- ``update_cosine``: cosine similarity between the defended and the clean update, averaged over victims (the
  embedded Fashion-MNIST victims on a seeded victim model by default). 1 = the update is untouched.
- ``accuracy_drop``: test accuracy of a short FedSGD training run without the defense minus the same run with
  the defense applied to every update (same seed, same initialisation, same batches, same schedule). Training
  uses the Fashion-MNIST train split (the embedded datamodule's public split) when it can be found, otherwise a
  seeded half of the 1,000 embedded victims; evaluation is always on held-out victims images.

``utility_cost(spec, seed=0, **options)`` is the entry point the harness calls; ``options`` are the fields of
``UtilityConfig``.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.config import UTILITY_OPTIONS
from ggl.defenses import Defense, build_defense, make_defense
from ggl.fl import make_victim, shared_update

UTILITY_IMAGE_SIZE = 16
"""Side of the images of the accuracy-drop run: the 32 px embedded images average-pooled by 2."""


@dataclass(frozen=True)
class UtilityConfig:
    """The fixed protocol; every field may be overridden through ``utility_cost(..., **options)``.

    Args:
        steps: FedSGD rounds (one client batch each) of the training run (default 300).
        batch_size: images in each client's batch (default 32).
        lr: server learning rate applied to the (defended) update (default 0.1, momentum-free SGD).
        hidden: hidden units of the training model ``UtilityNet`` (default 64).
        eval_images: held-out images used to measure accuracy (default 1000 = all embedded victims; 500 when
            the train split is missing and half of the victims are used for training).
        cosine_victim: victim architecture for ``update_cosine`` (default lenet, DLG's model).
        cosine_victims: how many victims (batches) ``update_cosine`` averages over (default 8).
        cosine_batch_size: images in each of those batches (default 1, GGL's setting).
    """

    steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    hidden: int = 64
    eval_images: int = 1000
    cosine_victim: str = "lenet"
    cosine_victims: int = 8
    cosine_batch_size: int = 1

    def __post_init__(self) -> None:
        """Every field checked by its entry of ``benchmarks.config.UTILITY_OPTIONS`` (what suites are checked by)."""
        for name, check in UTILITY_OPTIONS.items():
            check(f"utility option {name}", getattr(self, name))

    @classmethod
    def from_options(cls, options: Mapping[str, Any]) -> UtilityConfig:
        """Build from keyword options, refusing unknown names (the message lists the allowed ones)."""
        allowed = [f.name for f in fields(cls)]
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise ValueError(f"unknown utility option {', '.join(unknown)}; allowed: {', '.join(allowed)}")
        return cls(**options)


class UtilityNet(nn.Module):
    """The model trained in the accuracy-drop run: a one-hidden-layer ReLU perceptron on 16 x 16 images.

    Chosen for speed (a 300-round run takes well under a second of compute) and because its ``hidden``
    representation is small, which keeps Soteria's per-round Jacobian cost low.
    Shapes: (B, 1, 16, 16) -> (B, 10).
    """

    def __init__(self, hidden: int = 64, num_classes: int = 10, image_size: int = UTILITY_IMAGE_SIZE) -> None:
        super().__init__()
        self.features = nn.Sequential(nn.Flatten(), nn.Linear(image_size * image_size, hidden), nn.ReLU())
        self.fc = nn.Linear(hidden, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def update_cosine(
    defense: Defense,
    model: nn.Module,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
    generator: torch.Generator | None = None,
) -> float:
    """Mean cosine similarity between ``defense(update)`` and the clean FedSGD update over ``batches``.

    Args:
        defense: the defense setting.
        model: the victim model (its current weights and mode are used).
        batches: (normalised images (B, C, H, W), labels (B,)) pairs, one per victim.
        generator: randomness of the defense, shared across the batches in order (None: seeded with 0).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    similarities = []
    for images, labels in batches:
        clean = shared_update(model, images, labels)
        defended = defense(clean, model=model, images=images, labels=labels, generator=generator)
        similarities.append(float(F.cosine_similarity(defended.flat(), clean.flat(), dim=0, eps=1e-12)))
    if not similarities:
        raise ValueError("update_cosine needs at least one batch")
    return sum(similarities) / len(similarities)


@functools.lru_cache(maxsize=1)
def _datamodule() -> Any:
    from ggl.data import EmbeddedFashionMNIST

    datamodule = EmbeddedFashionMNIST(image_size=32, download=False)
    datamodule.setup("predict")
    return datamodule


@functools.lru_cache(maxsize=4)
def _training_data(seed: int, train_images: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, str]:
    """(train images, train labels, test images, test labels, source), normalised, deterministic in ``seed``."""
    from ggl.data.base import DataNotFoundError
    from ggl.data.embedded import fashion_mnist_train

    datamodule = _datamodule()
    norm = datamodule.normalization
    victims_images, victims_labels = datamodule.victims.tensors
    generator = torch.Generator().manual_seed(seed)
    try:
        pixels, labels = fashion_mnist_train(download=False)
        order = torch.randperm(pixels.shape[0], generator=generator)[:train_images]
        # 28 px -> 32 px by zero padding, as the embedded victims are stored.
        train_x, train_y = F.pad(pixels[order].float().unsqueeze(1) / 255.0, (2, 2, 2, 2)), labels[order]
        test_x, test_y, source = victims_images, victims_labels, "fashion-mnist-train"
    except DataNotFoundError:
        order = torch.randperm(victims_images.shape[0], generator=generator)
        half = victims_images.shape[0] // 2
        train_x, train_y = victims_images[order[half:]], victims_labels[order[half:]]
        test_x, test_y, source = victims_images[order[:half]], victims_labels[order[:half]], "embedded-victims-half"
    factor = 32 // UTILITY_IMAGE_SIZE
    train_x, test_x = F.avg_pool2d(norm.normalize(train_x), factor), F.avg_pool2d(norm.normalize(test_x), factor)
    return train_x, train_y, test_x, test_y, source


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def train_accuracy(defense: Defense, config: UtilityConfig, seed: int) -> tuple[float, str]:
    """Test accuracy after ``config.steps`` FedSGD rounds with ``defense`` on every update, and the data source.

    Round t: the client computes the mean cross-entropy gradient of its batch t (``shared_update``), applies the
    defense with a generator seeded from ``seed``, and the server takes one SGD step with the defended update.
    The model, the batches and the generator are all functions of ``seed``.
    """
    train_x, train_y, test_x, test_y, source = _training_data(seed, config.steps * config.batch_size)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = UtilityNet(config.hidden).eval()
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(train_x.shape[0], generator=torch.Generator().manual_seed(seed + 1))
    total = train_x.shape[0]
    for step in range(config.steps):
        index = order[torch.arange(step * config.batch_size, (step + 1) * config.batch_size) % total]
        images, labels = train_x[index], train_y[index]
        update = defense(
            shared_update(model, images, labels), model=model, images=images, labels=labels, generator=generator
        )
        with torch.no_grad():
            for parameter, gradient in zip(model.parameters(), update.gradients):
                parameter.sub_(config.lr * gradient)
    evaluated = min(config.eval_images, test_x.shape[0])
    return _accuracy(model, test_x[:evaluated], test_y[:evaluated]), source


@functools.lru_cache(maxsize=16)
def _clean_accuracy(config: UtilityConfig, seed: int) -> tuple[float, str]:
    return train_accuracy(make_defense("none"), config, seed)


def _cosine_batches(config: UtilityConfig, seed: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
    datamodule = _datamodule()
    count = config.cosine_victims * config.cosine_batch_size
    indices = datamodule.victim_indices(count, seed=seed)
    batches = []
    for start in range(0, count, config.cosine_batch_size):
        images, labels = datamodule.victim_batch(indices[start : start + config.cosine_batch_size])
        batches.append((datamodule.normalization.normalize(images), labels))
    return batches


def utility_cost(defense_spec: Mapping[str, Any], *, seed: int = 0, **options: Any) -> dict[str, Any]:
    """Utility cost of one defense setting: ``update_cosine``, ``accuracy``, ``clean_accuracy``, ``accuracy_drop``.

    Args:
        defense_spec: ``{"name": ..., **params}`` as in ``make_defense(**spec)``, or a submission's
            ``{"name": "module:Class", **params}``.
        seed: seeds the victim model, the victims, the training run and the defense's generator.
        options: ``UtilityConfig`` fields (steps, batch_size, lr, hidden, eval_images, cosine_victim,
            cosine_victims, cosine_batch_size).
    Returns:
        Floats ``update_cosine``, ``accuracy``, ``clean_accuracy``, ``accuracy_drop`` (= clean - defended, in
        accuracy points between 0 and 1), plus ``train_data`` (which training images were used).
    """
    if not isinstance(defense_spec, Mapping) or "name" not in defense_spec:
        raise ValueError(f"defense_spec must be a mapping with a 'name', got {defense_spec!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    config = UtilityConfig.from_options(options)
    defense = build_defense(defense_spec)
    datamodule = _datamodule()
    victim = make_victim(config.cosine_victim, datamodule.num_classes, datamodule.image_shape, seed=seed)
    cosine = update_cosine(defense, victim, _cosine_batches(config, seed), torch.Generator().manual_seed(seed))
    clean, source = _clean_accuracy(config, seed)
    accuracy, _ = train_accuracy(defense, config, seed)
    return {
        "update_cosine": cosine,
        "accuracy": accuracy,
        "clean_accuracy": clean,
        "accuracy_drop": clean - accuracy,
        "train_data": source,
    }


def utility_table(specs: Sequence[Mapping[str, Any]], *, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """``utility_cost`` of several settings (a privacy-utility sweep), each row with its spec and config."""
    config = asdict(UtilityConfig.from_options(options))
    return [
        {"defense": dict(spec), "seed": seed, "config": config, **utility_cost(spec, seed=seed, **options)}
        for spec in specs
    ]
