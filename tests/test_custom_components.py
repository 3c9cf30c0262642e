"""Custom victims and datamodules named ``module:Class``: resolved like custom defenses, checked before use."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

from ggl import plugins
from ggl.data import VictimDataModule, make_datamodule
from ggl.fl import infer_labels, make_victim, shared_update

STEM = "custom_components_plugin"
PLUGIN = '''
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ggl.data import VictimDataModule
from ggl.fl import Normalization


class TinyNet(nn.Module):
    """Two convolutions and a linear layer."""

    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(4, 4, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.head = nn.Linear(4 * (image_size // 4) ** 2, num_classes)

    def forward(self, images):
        return self.head(self.features(images))


class NoLinear(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, num_classes, 3, padding=1)

    def forward(self, images):
        return self.conv(images).mean(dim=(2, 3))


class LinearThenSoftmax(TinyNet):
    def forward(self, images):
        return super().forward(images).softmax(dim=1)


class WrongShape(TinyNet):
    def forward(self, images):
        return super().forward(images)[:, :1]


class Crashes(TinyNet):
    def forward(self, images):
        raise RuntimeError("boom")


class TakesNoSize(nn.Module):
    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()


class NotAModule:
    def __init__(self, in_channels: int, num_classes: int, image_size: int) -> None:
        pass


class RandomImages(VictimDataModule):
    """``count`` random 2-channel images in each split, labels cycling through the classes."""

    name = "random-images"
    num_classes = 3
    normalization = Normalization((0.5, 0.5), (0.25, 0.25))

    def __init__(self, count: int = 6, image_size: int = 8, **options) -> None:
        super().__init__(**options)
        if count < 1:
            raise ValueError("count must be at least 1")
        self.count = count
        self.image_shape = (2, image_size, image_size)

    def setup(self, stage=None) -> None:
        generator = torch.Generator().manual_seed(self.seed)
        labels = torch.arange(self.count) % self.num_classes
        self.public = TensorDataset(torch.rand(self.count, *self.image_shape, generator=generator), labels)
        self.victims = TensorDataset(torch.rand(self.count, *self.image_shape, generator=generator), labels)
'''


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The plugin file loaded as ``--plugin`` would load it, in a fresh plugin table dropped afterwards."""
    monkeypatch.setattr(plugins, "_PLUGINS", {})
    monkeypatch.setitem(sys.modules, plugins.PLUGIN_MODULE_PREFIX + STEM, None)  # removed afterwards
    path = tmp_path / f"{STEM}.py"
    path.write_text(PLUGIN)
    assert plugins.load_plugins([path]) == [STEM]
    return STEM


def test_a_custom_datamodule_is_built_with_its_options(plugin: str) -> None:
    datamodule = make_datamodule(f"{plugin}:RandomImages", count=5, image_size=12, seed=3)
    assert isinstance(datamodule, VictimDataModule) and type(datamodule).__name__ == "RandomImages"
    assert datamodule.image_shape == (2, 12, 12) and datamodule.seed == 3
    images, labels = datamodule.victim_batch(datamodule.victim_indices(2))
    assert images.shape == (2, 2, 12, 12) and labels.dtype == torch.long


def test_a_custom_victim_is_seeded_and_shares_gradients_of_its_shapes(plugin: str) -> None:
    datamodule = make_datamodule(f"{plugin}:RandomImages", count=4, image_size=8)
    name = f"{plugin}:TinyNet"
    torch.manual_seed(5)
    expected_next = torch.rand(1)
    torch.manual_seed(5)
    model = make_victim(name, datamodule.num_classes, datamodule.image_shape, seed=1)
    assert torch.equal(torch.rand(1), expected_next)
    again = make_victim(name, datamodule.num_classes, datamodule.image_shape, seed=1)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), again.parameters()))
    assert not model.training and type(model).__name__ == "TinyNet"
    images, labels = datamodule.victim_batch([0, 1])
    update = shared_update(model, datamodule.normalization.normalize(images), labels)
    assert [tuple(g.shape) for g in update.gradients] == [tuple(p.shape) for p in model.parameters()]
    assert tuple(update.gradients[-2].shape) == (3, 4 * 2 * 2) and update.num_samples == 2
    assert infer_labels(update, model).shape == (2,)


def test_a_project_module_class_is_a_custom_victim() -> None:
    model = make_victim("ggl.fl.models:ConvNet", num_classes=4, image_shape=(1, 16, 16), seed=0)
    assert type(model).__name__ == "ConvNet" and model(torch.zeros(1, 1, 16, 16)).shape == (1, 4)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("os:path", "module 'os' is neither a project module nor a plugin; a custom victim is module:Class"),
        ("os.path:join", "module 'os.path' is neither a project module nor a plugin"),
        ("{plugin}:NotAModule", "'NotAModule' in '{plugin}' is not a subclass of torch.nn.Module .got type"),
        ("{plugin}:Missing", "is not a subclass of torch.nn.Module .got nothing"),
        ("{plugin}:NoLinear", "NoLinear has no nn.Linear layer; end the model in an nn.Linear"),
        ("{plugin}:LinearThenSoftmax", "its output is not that of its last nn.Linear"),
        ("{plugin}:WrongShape", r"returned \(2, 1\), expected logits of shape \(2, 3\)"),
        ("{plugin}:Crashes", r"forward on a zero batch of shape \(2, 2, 8, 8\) failed \(RuntimeError: boom\)"),
        ("{plugin}:TakesNoSize", r"TakesNoSize\(in_channels=2, num_classes=3, image_size=8\) failed \(TypeError"),
        ("dir/my_victim.py:TinyNet", "--plugin dir/my_victim.py, then my_victim:TinyNet"),
    ],
)
def test_bad_custom_victims_are_refused_naming_the_problem(plugin: str, name: str, message: str) -> None:
    name = name.format(plugin=plugin)
    with pytest.raises(ValueError, match=message.format(plugin=plugin)) as caught:
        make_victim(name, num_classes=3, image_shape=(2, 8, 8))
    assert f"victim {name!r}" in str(caught.value)
    assert "os" not in plugins._PLUGINS


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("os:path", {}, "module 'os' is neither a project module nor a plugin; a custom datamodule is module:Class"),
        ("{plugin}:TinyNet", {}, "'TinyNet' in '{plugin}' is not a subclass of ggl.data.base.VictimDataModule"),
        ("ggl.data.base:VictimDataModule", {}, "is not a subclass"),
        ("{plugin}:RandomImages", {"count": 0}, r"options \['count'\] failed \(ValueError: count must be at least 1\)"),
        ("{plugin}:RandomImages", {"colour": "red"}, r"options \['colour'\] failed \(TypeError"),
    ],
)
def test_bad_custom_datamodules_are_refused_naming_the_problem(
    plugin: str, name: str, options: dict, message: str
) -> None:
    name = name.format(plugin=plugin)
    with pytest.raises(ValueError, match=message.format(plugin=plugin)) as caught:
        make_datamodule(name, **options)
    assert f"datamodule {name!r}" in str(caught.value)


def test_registered_names_still_resolve_as_before() -> None:
    with pytest.raises(ValueError, match="lenett"):
        make_victim("lenett")
    with pytest.raises(ValueError, match="embeded"):
        make_datamodule("embeded")
    assert make_datamodule("embedded").name == "embedded"
