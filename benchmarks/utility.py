"""Utility cost of a defense setting, measured the same way for every setting on every machine (docs/defenses.md).

Two numbers, both pure functions of (defense spec, seed, options):

- ``update_cosine``: cosine similarity between the defended and the clean update, averaged over victims (the
  embedded Fashion-MNIST victims on a seeded victim model by default). 1 = the update is untouched.
- ``accuracy_drop``: test accuracy of a short FedSGD training run without the defense minus the same run with
  the defense applied to every update (same seed, same initialisation, same batches, same schedule).

Data (option ``data``, the only value ``embedded-fashion-mnist``): the 1,000 Fashion-MNIST test images shipped in
the package (``ggl/data/assets/fashion_mnist_test_slice.npz``, 100 per class, in test order), split by a fixed rule
that needs no random numbers: of each class, the 50 images with the lowest test index train and the other 50 are
held out for evaluation (500 + 500; the evaluation half goes round the classes, so its first ``eval_images``
are balanced). Nothing is looked up on the machine, so every machine trains on the same 500 images.

Seeds (option ``seeds``, default 3): the run for ``seed`` averages the runs at ``seed, seed + 1, ...``; every
number is returned as its mean under its own key and its sample standard deviation under ``<key>_std``.

``utility_cost(spec, seed=0, **options)`` is the entry point the harness calls; ``options`` are the fields of
``UtilityConfig``.
"""

from __future__ import annotations

import functools
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.defenses import Defense, build_defense, make_defense
from ggl.fl import make_victim, shared_update

from .config import UTILITY_DATA, UTILITY_OPTIONS

UTILITY_IMAGE_SIZE = 16
"""Side of the images of the accuracy-drop run: the 32 px embedded images average-pooled by 2."""
SPLIT_IMAGES = 500
"""Images in each half of the ``embedded-fashion-mnist`` split (50 per class for training, 50 for evaluation)."""
REPORTED = ("update_cosine", "accuracy", "clean_accuracy", "accuracy_drop")
"""The numbers averaged over seeds; each is returned with its ``<name>_std``."""


@dataclass(frozen=True)
class UtilityConfig:
    """The fixed protocol; every field may be overridden through ``utility_cost(..., **options)``.

    Args:
        data: training and evaluation data (default and only value ``embedded-fashion-mnist``: the fixed
            500 / 500 split of the shipped images described in the module docstring).
        seeds: seeded runs averaged, at ``seed, seed + 1, ...`` (default 3).
        steps: FedSGD rounds (one client batch each) of the training run (default 300).
        batch_size: images in each client's batch (default 32).
        lr: server learning rate applied to the (defended) update (default 0.1, momentum-free SGD).
        hidden: hidden units of the training model ``UtilityNet`` (default 64).
        eval_images: held-out images used to measure accuracy, the first of the evaluation half (default and
            at most 500).
        cosine_victim: victim architecture for ``update_cosine`` (default lenet, DLG's model).
        cosine_victims: how many victims (batches) ``update_cosine`` averages over (default 8).
        cosine_batch_size: images in each of those batches (default 1, GGL's setting).
    """

    data: str = UTILITY_DATA[0]
    seeds: int = 3
    steps: int = 300
    batch_size: int = 32
    lr: float = 0.1
    hidden: int = 64
    eval_images: int = SPLIT_IMAGES
    cosine_victim: str = "lenet"
    cosine_victims: int = 8
    cosine_batch_size: int = 1

    def __post_init__(self) -> None:
        """Every field checked by its entry of ``benchmarks.config.UTILITY_OPTIONS`` (what suites are checked by)."""
        for name, check in UTILITY_OPTIONS.items():
            check(f"utility option {name}", getattr(self, name))
        if self.eval_images > SPLIT_IMAGES:
            raise ValueError(
                f"utility option eval_images must be at most {SPLIT_IMAGES} (the evaluation half of {self.data}), "
                f"got {self.eval_images!r}"
            )

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


def embedded_split(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(train indices, evaluation indices) of the shipped images: per class, the first half in stored order trains.

    ``labels`` are the shipped images' labels in their stored (Fashion-MNIST test) order. The training indices are
    ascending; the evaluation indices go round the classes (the first held-out image of class 0, of class 1, ...,
    then the second of each), so the first ``10 k`` of them hold ``k`` images of every class (the shipped images
    have 100 of each). No random numbers: the split is the same on every machine and with every torch version.
    """
    train, held_out = [], []
    for label in labels.unique().tolist():
        members = (labels == label).nonzero().flatten()
        half = members.shape[0] // 2
        train.append(members[:half])
        held_out.append(members[half:])
    return torch.cat(train).sort().values, torch.stack(held_out, dim=1).flatten()


@functools.lru_cache(maxsize=1)
def _training_data(data: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(train images, train labels, evaluation images, evaluation labels) of ``data`` (checked by ``UtilityConfig``;
    ``embedded-fashion-mnist`` is its only value), normalised and pooled."""
    datamodule = _datamodule()
    images, labels = datamodule.victims.tensors
    train, held_out = embedded_split(labels)
    pooled = F.avg_pool2d(datamodule.normalization.normalize(images), 32 // UTILITY_IMAGE_SIZE)
    return pooled[train], labels[train], pooled[held_out], labels[held_out]


def _accuracy(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(images).argmax(1) == labels).float().mean())


def _batch_order(count: int, samples: int, generator: torch.Generator) -> torch.Tensor:
    """``samples`` indices into ``count`` images: one fresh permutation per pass over them."""
    passes = -(-samples // count)
    return torch.cat([torch.randperm(count, generator=generator) for _ in range(passes)])[:samples]


def train_accuracy(defense: Defense, config: UtilityConfig, seed: int) -> float:
    """Accuracy on the evaluation half after ``config.steps`` FedSGD rounds with ``defense`` on every update.

    Round t: the client computes the mean cross-entropy gradient of its batch t (``shared_update``), applies the
    defense, and the server takes one SGD step with the defended update. Three streams derive from ``seed``
    (``4 * seed + k``, so that no two seeds share one): the model's initialisation (k = 0), the defense's
    generator (k = 1) and the batch order (k = 2, a fresh permutation of the 500 training images per pass).
    """
    train_x, train_y, test_x, test_y = _training_data(config.data)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(4 * seed)
        model = UtilityNet(config.hidden).eval()
    generator = torch.Generator().manual_seed(4 * seed + 1)
    samples = config.steps * config.batch_size
    order = _batch_order(train_x.shape[0], samples, torch.Generator().manual_seed(4 * seed + 2))
    for step in range(config.steps):
        index = order[step * config.batch_size : (step + 1) * config.batch_size]
        images, labels = train_x[index], train_y[index]
        update = defense(
            shared_update(model, images, labels), model=model, images=images, labels=labels, generator=generator
        )
        with torch.no_grad():
            for parameter, gradient in zip(model.parameters(), update.gradients):
                parameter.sub_(config.lr * gradient)
    return _accuracy(model, test_x[: config.eval_images], test_y[: config.eval_images])


@functools.lru_cache(maxsize=32)
def _clean_accuracy(config: UtilityConfig, seed: int) -> float:
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


def _one_seed(defense_spec: Mapping[str, Any], config: UtilityConfig, seed: int) -> dict[str, float]:
    """The four numbers of one seeded run (a fresh defense, so no state carries from one seed to the next)."""
    defense = build_defense(defense_spec)
    datamodule = _datamodule()
    victim = make_victim(config.cosine_victim, datamodule.num_classes, datamodule.image_shape, seed=seed)
    cosine = update_cosine(defense, victim, _cosine_batches(config, seed), torch.Generator().manual_seed(seed))
    # The clean run does not depend on seeds or the cosine options: one cache entry serves every setting.
    training = replace(config, seeds=1, cosine_victim="lenet", cosine_victims=1, cosine_batch_size=1)
    clean = _clean_accuracy(training, seed)
    accuracy = train_accuracy(defense, config, seed)
    return {"update_cosine": cosine, "accuracy": accuracy, "clean_accuracy": clean, "accuracy_drop": clean - accuracy}


def utility_cost(defense_spec: Mapping[str, Any], *, seed: int = 0, **options: Any) -> dict[str, float | int]:
    """Utility cost of one defense setting, averaged over ``seeds`` runs at ``seed, seed + 1, ...``.

    Args:
        defense_spec: ``{"name": ..., **params}`` as in ``make_defense(**spec)``, or a submission's
            ``{"name": "module:Class", **params}``.
        seed: the first seed; run i seeds the victim model, the victims, the training run and the defense's
            generator from ``seed + i``.
        options: ``UtilityConfig`` fields (data, seeds, steps, batch_size, lr, hidden, eval_images,
            cosine_victim, cosine_victims, cosine_batch_size).
    Returns:
        The means over the seeds of ``update_cosine``, ``accuracy``, ``clean_accuracy`` and ``accuracy_drop``
        (= clean - defended, per seed, in accuracy points between 0 and 1), each with ``<name>_std`` (sample
        standard deviation over the seeds, 0 for one seed); ``seeds``, and ``train_images`` / ``eval_images``
        (how many images trained and evaluated; which ones the ``data`` option names).
    """
    if not isinstance(defense_spec, Mapping) or "name" not in defense_spec:
        raise ValueError(f"defense_spec must be a mapping with a 'name', got {defense_spec!r}")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ValueError(f"seed must be an integer, got {seed!r}")
    config = UtilityConfig.from_options(options)
    build_defense(defense_spec)  # a bad spec fails before any run
    runs = [_one_seed(defense_spec, config, seed + i) for i in range(config.seeds)]
    result: dict[str, float | int] = {}
    for name in REPORTED:
        values = [run[name] for run in runs]
        result[name] = statistics.fmean(values)
        result[f"{name}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    train_x, _, test_x, _ = _training_data(config.data)
    result.update(seeds=config.seeds, train_images=train_x.shape[0], eval_images=test_x[: config.eval_images].shape[0])
    return result


def utility_table(specs: Sequence[Mapping[str, Any]], *, seed: int = 0, **options: Any) -> list[dict[str, Any]]:
    """``utility_cost`` of several settings (a privacy-utility sweep), each row with its spec and config."""
    config = asdict(UtilityConfig.from_options(options))
    return [
        {"defense": dict(spec), "seed": seed, "config": config, **utility_cost(spec, seed=seed, **options)}
        for spec in specs
    ]
