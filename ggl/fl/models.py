"""Victim zoo: the models whose shared gradients the attacks invert.

All victims are built from a seed (same seed, same weights), are untrained by default (as in GGL, DLG and iDLG),
accept any number of input channels and classes, end in one ``nn.Linear`` (label inference and Soteria rely on
it), and are returned in ``eval()`` mode so that a gradient depends on the batch alone, never on batch statistics.
A custom victim is named ``module:Class`` (a project module or a ``--plugin`` file, see ``ggl.plugins``) and is
checked for the same contract before it is used.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from ggl.fl.labels import last_linear_indices
from ggl.plugins import is_custom_name, resolve_class
from ggl.registry import Registry


class LeNet(nn.Module):
    """DLG's LeNet (Zhu et al., "Deep Leakage from Gradients", NeurIPS 2019, arXiv 1906.08935).

    Three 5x5 sigmoid convolutions (strides 2, 2, 1) and one linear layer. Weights and biases are drawn uniform in
    [-0.5, 0.5] as in DLG's code: with PyTorch's default init, iDLG stalls far from the image.

    Args:
        in_channels: image channels. num_classes: outputs. image_size: square input side, divisible by 4.
    Shapes: (B, in_channels, image_size, image_size) -> (B, num_classes).
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"LeNet needs an image_size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, kernel_size=5, stride=1, padding=2),
            nn.Sigmoid(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(12 * (image_size // 4) ** 2, num_classes)
        for parameter in self.parameters():
            nn.init.uniform_(parameter, -0.5, 0.5)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


class ConvNet(nn.Module):
    """A small ReLU ConvNet: three 3x3 convolutions (32, 64, 64 channels; strides 1, 2, 2) and a linear layer.

    Cheap enough to attack many victims on a CPU, deep enough that pixel attacks are not trivial.
    Shapes: (B, in_channels, S, S) -> (B, num_classes), S divisible by 4.
    """

    def __init__(self, in_channels: int = 3, num_classes: int = 10, image_size: int = 32, width: int = 32) -> None:
        super().__init__()
        if image_size % 4:
            raise ValueError(f"ConvNet needs an image_size divisible by 4, got {image_size}")
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, stride=1, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, kernel_size=3, stride=2, padding=1),
            nn.ReLU(),
            nn.Flatten(),
        )
        self.fc = nn.Linear(2 * width * (image_size // 4) ** 2, num_classes)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


def _resnet18(in_channels: int, num_classes: int, small_images: bool) -> nn.Module:
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if small_images:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    elif in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


VICTIMS: Registry[Callable[[int, int, int], nn.Module]] = Registry("victim")
"""Victim builders by name: ``builder(in_channels, num_classes, image_size) -> nn.Module``.

``resnet18`` uses the CIFAR stem (3x3 convolution, no max-pool) for images of 64 px or less and torchvision's
ImageNet stem above; ``resnet18-224`` always uses torchvision's stem.
"""


@VICTIMS.register("lenet")
def _build_lenet(channels: int, classes: int, size: int) -> nn.Module:
    return LeNet(channels, classes, size)


@VICTIMS.register("convnet")
def _build_convnet(channels: int, classes: int, size: int) -> nn.Module:
    return ConvNet(channels, classes, size)


@VICTIMS.register("resnet18")
def _build_resnet18(channels: int, classes: int, size: int) -> nn.Module:
    return _resnet18(channels, classes, small_images=size <= 64)


@VICTIMS.register("resnet18-224")
def _build_resnet18_224(channels: int, classes: int, size: int) -> nn.Module:
    return _resnet18(channels, classes, small_images=False)


def make_victim(
    name: str,
    num_classes: int = 10,
    image_shape: tuple[int, int, int] = (3, 32, 32),
    seed: int = 0,
    checkpoint: str | Path | None = None,
) -> nn.Module:
    """Build a victim model by name with seeded initialisation, in ``eval()`` mode.

    Args:
        name: one of ``VICTIMS`` (lenet, convnet, resnet18, resnet18-224), or ``module:Class`` for a custom
            ``nn.Module`` built as ``Class(in_channels=C, num_classes=K, image_size=S)`` (see ``custom_victim``).
        num_classes: outputs of the last linear layer.
        image_shape: (channels, height, width) of the inputs; height must equal width.
        seed: initialisation seed; the global RNG is left untouched.
        checkpoint: optional path to a trained ``state_dict`` (``torch.save``), loaded with ``weights_only``.
    """
    custom = is_custom_name(name)
    build = custom_victim(name) if custom else VICTIMS.lookup(name)
    if len(image_shape) != 3 or image_shape[1] != image_shape[2]:
        raise ValueError(f"image_shape must be (channels, size, size), got {tuple(image_shape)}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    channels, size, _ = image_shape
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build(channels, num_classes, size)
        if custom:
            check_victim(name, model, num_classes, (channels, size, size))
    if checkpoint is not None:
        load_victim_checkpoint(model, checkpoint)
    return model.eval()


def custom_victim(name: str) -> Callable[[int, int, int], nn.Module]:
    """The builder of the ``nn.Module`` subclass named ``module:Class``, resolved as ``ggl.plugins`` says.

    The builder calls ``Class(in_channels=C, num_classes=K, image_size=S)``; an error it raises becomes a
    ``ValueError`` naming the victim and the constructor it needs.
    """
    cls = resolve_class(name, nn.Module, "victim", base_name="torch.nn.Module")

    def build(channels: int, classes: int, size: int) -> nn.Module:
        try:
            return cls(in_channels=channels, num_classes=classes, image_size=size)
        except Exception as error:  # a custom constructor's error is a bad victim, reported with its name
            raise ValueError(
                f"victim {name!r}: {cls.__name__}(in_channels={channels}, num_classes={classes}, image_size={size}) "
                f"failed ({type(error).__name__}: {error}); its constructor must take these three keyword arguments"
            ) from None

    return build


def check_victim(name: str, model: nn.Module, num_classes: int, image_shape: tuple[int, int, int]) -> None:
    """Check that a custom victim keeps the zoo's contract, or raise ``ValueError`` naming it and the fix.

    The contract: a forward pass on a zero batch of shape (2, C, S, S) returns logits of shape (2, K), and those
    logits are the output of its last ``nn.Linear`` (``ggl.fl.labels.last_linear_indices``): label inference and
    Soteria read that layer's gradient.
    """
    fix = "end the model in an nn.Linear(features, num_classes) and return its output"
    try:
        weight_index, _ = last_linear_indices(model)
    except ValueError:
        raise ValueError(f"victim {name!r}: {type(model).__name__} has no nn.Linear layer; {fix}") from None
    weight = list(model.parameters())[weight_index]  # the layer label inference reads
    last = next(m for m in model.modules() if isinstance(m, nn.Linear) and m.weight is weight)
    captured: list[torch.Tensor] = []
    hook = last.register_forward_hook(lambda _module, _inputs, output: captured.append(output))
    shape = (2, *image_shape)
    try:
        with torch.no_grad():
            logits = model.eval()(torch.zeros(shape))
    except Exception as error:  # any failure of custom code is a bad victim
        problem = f"{type(error).__name__}: {error}"
        raise ValueError(f"victim {name!r}: forward on a zero batch of shape {shape} failed ({problem})") from None
    finally:
        hook.remove()
    if not isinstance(logits, torch.Tensor) or tuple(logits.shape) != (2, num_classes):
        got = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise ValueError(
            f"victim {name!r}: forward on a batch of shape {shape} returned {got}, expected logits of shape "
            f"(2, {num_classes}); return one logit per class for each image"
        )
    if not captured or captured[-1].shape != logits.shape or not torch.equal(captured[-1], logits):
        raise ValueError(
            f"victim {name!r}: its output is not that of its last nn.Linear ({last}); label inference needs "
            f"the logits straight from that layer: {fix}, with nothing after it"
        )


def load_victim_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load trained weights into ``model`` from a ``state_dict`` file, with a clear error when it does not fit."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"victim checkpoint {path} does not exist; save one with torch.save(model.state_dict())"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"victim checkpoint {path} is not a state_dict saved with torch.save ({reason})") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"victim checkpoint {path} holds a {type(state).__name__}, not a state_dict")
    try:
        model.load_state_dict(state)
    except RuntimeError as error:
        raise ValueError(f"victim checkpoint {path} does not match the model: {error}") from None
    return model
