"""Victim zoo: seeded construction, shapes, eval mode, argument errors and checkpoints."""

from __future__ import annotations

import pytest
import torch

from ggl.fl import VICTIMS, load_victim_checkpoint, make_victim
from ggl.fl.models import LeNet


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> bool:
    return all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))


@pytest.mark.parametrize("name", ["lenet", "convnet", "resnet18"])
def test_victims_are_seeded_and_leave_the_global_rng_alone(name: str) -> None:
    torch.manual_seed(123)
    expected_next = torch.rand(1)
    torch.manual_seed(123)
    first = make_victim(name, num_classes=10, image_shape=(3, 32, 32), seed=7)
    assert torch.equal(torch.rand(1), expected_next)
    again = make_victim(name, num_classes=10, image_shape=(3, 32, 32), seed=7)
    other = make_victim(name, num_classes=10, image_shape=(3, 32, 32), seed=8)
    assert _same_weights(first, again)
    assert not _same_weights(first, other)
    assert not first.training


@pytest.mark.parametrize(
    ("name", "shape", "classes"),
    [
        ("lenet", (1, 32, 32), 10),
        ("lenet", (3, 64, 64), 2),
        ("convnet", (1, 32, 32), 10),
        ("resnet18", (1, 32, 32), 2),
        ("resnet18", (3, 64, 64), 10),
    ],
)
def test_victims_map_images_to_logits(name: str, shape: tuple[int, int, int], classes: int) -> None:
    model = make_victim(name, num_classes=classes, image_shape=shape, seed=0)
    with torch.no_grad():
        logits = model(torch.rand(2, *shape))
    assert logits.shape == (2, classes)
    assert isinstance(list(model.modules())[-1], torch.nn.Linear)
    assert set(VICTIMS) >= {"lenet", "convnet", "resnet18", "resnet18-224"}


def test_lenet_follows_dlg_init() -> None:
    model = make_victim("lenet", num_classes=10, image_shape=(3, 32, 32), seed=0)
    assert isinstance(model, LeNet)
    values = torch.cat([p.reshape(-1) for p in model.parameters()])
    assert values.min() >= -0.5 and values.max() <= 0.5
    assert values.std() > 0.25  # uniform[-0.5, 0.5] has std 0.289; PyTorch's default init is far narrower
    assert model.fc.in_features == 768


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"name": "vgg"}, "unknown victim 'vgg'; allowed: convnet, lenet, resnet18, resnet18-224"),
        ({"name": "resnet"}, r"did you mean 'resnet18'"),
        ({"name": "lenet", "image_shape": (3, 32, 28)}, "image_shape"),
        ({"name": "lenet", "image_shape": (32, 32)}, "image_shape"),
        ({"name": "lenet", "num_classes": 1}, "num_classes"),
        ({"name": "lenet", "image_shape": (3, 30, 30)}, "divisible by 4"),
    ],
)
def test_make_victim_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_victim(**kwargs)


def test_checkpoint_round_trip_and_mismatch(tmp_path) -> None:
    trained = make_victim("convnet", num_classes=10, image_shape=(3, 32, 32), seed=1)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(1.0)
    path = tmp_path / "victim.pt"
    torch.save(trained.state_dict(), path)
    loaded = make_victim("convnet", num_classes=10, image_shape=(3, 32, 32), seed=2, checkpoint=path)
    assert _same_weights(loaded, trained)
    assert not loaded.training
    wrapped = tmp_path / "wrapped.pt"
    torch.save({"state_dict": trained.state_dict()}, wrapped)
    assert _same_weights(load_victim_checkpoint(make_victim("convnet", seed=3), wrapped), trained)

    with pytest.raises(ValueError, match="does not match the model"):
        make_victim("convnet", num_classes=2, image_shape=(3, 32, 32), checkpoint=path)
    with pytest.raises(ValueError, match="does not match the model"):
        make_victim("lenet", num_classes=10, image_shape=(3, 32, 32), checkpoint=path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        make_victim("convnet", checkpoint=tmp_path / "missing.pt")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not a state_dict saved with torch.save"):
        make_victim("convnet", checkpoint=garbage)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ValueError, match="holds a Tensor, not a state_dict"):
        make_victim("convnet", checkpoint=tensor)
