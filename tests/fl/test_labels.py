"""Label inference from the last linear layer's gradient (iDLG's sign rule for B = 1, the count rule for B > 1)."""

from __future__ import annotations

import pytest
import torch

from ggl.fl import fedavg_update, infer_labels, last_linear_indices, make_victim, shared_update
from ggl.fl.client import SharedUpdate
from ggl.metrics import label_accuracy


def _cases(name: str, models: int, images_per_model: int, seed: int):
    """(model, image, label) triples: random seeds, class counts, channels and labels."""
    generator = torch.Generator().manual_seed(seed)
    for model_index in range(models):
        classes = int(torch.randint(2, 101, (1,), generator=generator))
        channels = 1 if model_index % 3 == 2 else 3
        model = make_victim(name, num_classes=classes, image_shape=(channels, 32, 32), seed=seed + model_index)
        for _ in range(images_per_model):
            image = torch.rand(1, channels, 32, 32, generator=generator) * 2 - 1
            label = torch.randint(0, classes, (1,), generator=generator)
            yield model, image, label


@pytest.mark.parametrize(("name", "models", "per_model"), [("lenet", 50, 1), ("resnet18", 5, 10)])
def test_single_image_label_is_always_recovered(name: str, models: int, per_model: int) -> None:
    cases = 0
    for model, image, label in _cases(name, models, per_model, seed=11):
        inferred = infer_labels(shared_update(model, image, label), model)
        assert inferred.dtype == torch.long and inferred.shape == (1,)
        assert int(inferred) == int(label), f"case {cases}: inferred {int(inferred)} for label {int(label)}"
        cases += 1
    assert cases >= 50


def test_single_image_rule_holds_for_fedavg_one_step() -> None:
    for model, image, label in _cases("lenet", 10, 1, seed=5):
        assert int(infer_labels(fedavg_update(model, image, label, local_steps=1, lr=0.1), model)) == int(label)


# Measured on 20 random batches each (seeds 0-19, 10 classes, inputs uniform in [-1, 1]): multiset accuracy
# convnet 1.00 / 1.00 (B = 2 / 4), resnet18 1.00 / 1.00, lenet 0.83 / 0.86 (DLG's wide init makes its softmax far
# from uniform, which the count rule assumes). The bounds below leave a margin under those numbers.
@pytest.mark.parametrize(
    ("name", "batch", "trials", "bound"),
    [("convnet", 2, 10, 0.95), ("convnet", 4, 10, 0.95), ("resnet18", 4, 4, 0.95), ("lenet", 4, 20, 0.7)],
)
def test_batch_label_counts(name: str, batch: int, trials: int, bound: float) -> None:
    accuracies = []
    for trial in range(trials):
        generator = torch.Generator().manual_seed(1000 * batch + trial)
        if trial % 2 == 0:  # two batches per model: building a ResNet-18 costs more than its update
            model = make_victim(name, num_classes=10, image_shape=(3, 32, 32), seed=trial)
        images = torch.rand(batch, 3, 32, 32, generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (batch,), generator=generator)
        inferred = infer_labels(shared_update(model, images, labels), model)
        assert inferred.shape == (batch,)
        assert torch.equal(inferred, inferred.sort().values)
        accuracies.append(label_accuracy(inferred, labels))
    assert sum(accuracies) / trials >= bound, accuracies


def test_batch_rule_without_bias() -> None:
    model = make_victim("convnet", num_classes=10, image_shape=(3, 32, 32), seed=0)
    model.fc = torch.nn.Linear(model.fc.in_features, 10, bias=False)
    accuracies = []
    for trial in range(10):
        generator = torch.Generator().manual_seed(trial)
        images = torch.rand(3, 3, 32, 32, generator=generator) * 2 - 1
        labels = torch.randint(0, 10, (3,), generator=generator)
        accuracies.append(label_accuracy(infer_labels(shared_update(model, images, labels), model), labels))
    assert last_linear_indices(model)[1] is None
    assert sum(accuracies) / len(accuracies) >= 0.9, accuracies


def test_last_linear_indices_and_errors() -> None:
    model = make_victim("lenet", num_classes=10, image_shape=(3, 32, 32), seed=0)
    weight, bias = last_linear_indices(model)
    parameters = list(model.parameters())
    assert parameters[weight] is model.fc.weight and parameters[bias] is model.fc.bias
    with pytest.raises(ValueError, match="no nn.Linear"):
        last_linear_indices(torch.nn.Sequential(torch.nn.Conv2d(1, 1, 1)))
    update = shared_update(model, torch.rand(1, 3, 32, 32), torch.tensor([0]))
    with pytest.raises(ValueError, match="update.num_samples must be a positive integer, got 0"):
        infer_labels(SharedUpdate(update.gradients, 0), model)
