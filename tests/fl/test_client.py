"""Shared updates: FedSGD equals autograd on the same batch; FedAvg is SGD on a copy."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from ggl.fl import Normalization, fedavg_update, make_victim, shared_update


def _batch(batch: int, shape: tuple[int, int, int], classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(batch, *shape, generator=generator) * 2 - 1
    labels = torch.randint(0, classes, (batch,), generator=generator)
    return images, labels


@pytest.mark.parametrize(("name", "batch"), [("lenet", 1), ("lenet", 5), ("convnet", 3), ("resnet18", 2)])
def test_fedsgd_equals_autograd(name: str, batch: int) -> None:
    model = make_victim(name, num_classes=10, image_shape=(3, 32, 32), seed=3)
    images, labels = _batch(batch, (3, 32, 32), 10, seed=batch)
    update = shared_update(model, images, labels)

    reference = copy.deepcopy(model)
    F.cross_entropy(reference(images), labels).backward()
    expected = [p.grad for p in reference.parameters()]
    assert len(update.gradients) == len(expected)
    for got, want in zip(update.gradients, expected):
        assert got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert update.num_samples == batch
    assert update.metadata["algorithm"] == "fedsgd"
    assert all(p.grad is None for p in model.parameters())
    assert torch.isclose(torch.tensor(update.norm()), torch.linalg.vector_norm(update.flat()))


def test_fedavg_one_step_is_lr_times_fedsgd() -> None:
    model = make_victim("lenet", num_classes=10, image_shape=(3, 32, 32), seed=0)
    images, labels = _batch(4, (3, 32, 32), 10, seed=0)
    before = copy.deepcopy(model.state_dict())
    fedsgd = shared_update(model, images, labels)
    fedavg = fedavg_update(model, images, labels, local_steps=1, lr=0.05)
    for difference, gradient in zip(fedavg.gradients, fedsgd.gradients):
        torch.testing.assert_close(difference, 0.05 * gradient, rtol=1e-4, atol=1e-7)
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items())
    assert fedavg.metadata == {"algorithm": "fedavg", "local_steps": 1, "lr": 0.05, "local_batch_size": None}


def test_fedavg_several_steps_equal_torch_sgd() -> None:
    model = make_victim("convnet", num_classes=5, image_shape=(1, 16, 16), seed=4)
    images, labels = _batch(3, (1, 16, 16), 5, seed=4)
    update = fedavg_update(model, images, labels, local_steps=3, lr=0.1)
    reference = copy.deepcopy(model)
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    for _ in range(3):
        optimizer.zero_grad()
        F.cross_entropy(reference(images), labels).backward()
        optimizer.step()
    for difference, start, end in zip(update.gradients, model.parameters(), reference.parameters()):
        torch.testing.assert_close(difference, start.detach() - end.detach(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    ("images", "labels", "message"),
    [
        (torch.rand(3, 32, 32), torch.tensor([1]), "images must be"),
        (torch.rand(2, 3, 32, 32), torch.tensor([1]), "labels must be a vector"),
        (torch.rand(1, 3, 32, 32), torch.tensor([1.0]), "integer class indices"),
    ],
)
def test_updates_reject_bad_batches(images: torch.Tensor, labels: torch.Tensor, message: str) -> None:
    model = make_victim("lenet", seed=0)
    with pytest.raises(ValueError, match=message):
        shared_update(model, images, labels)
    with pytest.raises(ValueError, match=message):
        fedavg_update(model, images, labels)


def test_fedavg_rejects_bad_schedule() -> None:
    model = make_victim("lenet", seed=0)
    images, labels = _batch(1, (3, 32, 32), 10, seed=0)
    with pytest.raises(ValueError, match="local_steps must be a positive integer, got 0"):
        fedavg_update(model, images, labels, local_steps=0)
    with pytest.raises(ValueError, match="local_steps must be a positive integer"):
        fedavg_update(model, images, labels, local_steps=True)
    with pytest.raises(ValueError, match="lr must be a positive number, got 0.0"):
        fedavg_update(model, images, labels, lr=0.0)


def test_normalization_round_trip_and_errors() -> None:
    norm = Normalization.from_values([0.5, 0.4, 0.3], [0.2, 0.25, 0.5])
    images = torch.rand(2, 3, 4, 4)
    torch.testing.assert_close(norm.denormalize(norm.normalize(images)), images)
    torch.testing.assert_close(norm.normalize(images)[:, 2], (images[:, 2] - 0.3) / 0.5)
    with pytest.raises(ValueError, match="channels"):
        norm.normalize(torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="positive"):
        Normalization((0.0,), (0.0,))
    with pytest.raises(ValueError, match="mean has 2 values"):
        Normalization((0.0, 0.0), (1.0,))
