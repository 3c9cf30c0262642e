"""Generative priors by name or path: ``load_prior("fashion-mnist-wgan")``, and fitting a prior to a victim's shape.

Registered names (``PRIORS``):
    fashion-mnist-wgan  the embedded conditional WGAN-GP generator shipped in ``ggl/priors/assets`` (32 px, 1 channel)
    face-dcgan          the pretrained 64 px face DCGAN of the ``gan-face-generate`` package (see ``faces.py``)
    biggan-deep-256     BigGAN-deep (ImageNet, class-conditional) from local weights (see ``biggan.py``)
Any other string is read as a path to a ``ggl-dcgan-v1`` checkpoint written by ``python -m benchmarks.train_prior``.
Every prior comes back in eval mode with frozen weights: attacks optimise latents, never the generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from importlib import resources
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.priors.base import Generator, PriorNotFoundError, freeze
from ggl.priors.dcgan import DCGANConfig, DCGANGenerator
from ggl.priors.training import CHECKPOINT_FORMAT
from ggl.registry import Registry

PriorFactory = Callable[..., Generator]


PRIORS: Registry[PriorFactory] = Registry("prior")
"""Prior factories by registry name; ``load_prior`` calls them with its keyword arguments."""


def register_prior(name: str) -> Callable[[PriorFactory], PriorFactory]:
    """Decorator adding a factory to ``PRIORS`` under ``name``; refuses a name that is already taken."""
    return PRIORS.register(name)


def load_dcgan_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> DCGANGenerator:
    """A ``DCGANGenerator`` from a ``ggl-dcgan-v1`` checkpoint (``weights_only=True`` loading), eval, frozen."""
    path = Path(path)
    if not path.is_file():
        raise PriorNotFoundError(
            f"prior checkpoint {str(path)!r} does not exist; train one with "
            f"`python -m benchmarks.train_prior --data fashion-mnist --out {path}` or pass a registered name "
            f"({', '.join(sorted(PRIORS))})"
        )
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types; report them as bad input
        raise ValueError(f"prior checkpoint {str(path)!r} could not be read as a torch file: {error}") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        found = checkpoint.get("format") if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(
            f"prior checkpoint {str(path)!r} has format {found!r}; expected {CHECKPOINT_FORMAT!r} "
            "(written by `python -m benchmarks.train_prior`)"
        )
    shown = str(path)
    config = checkpoint_config(shown, checkpoint.get("config"))
    state = checkpoint_state(shown, checkpoint.get("state_dict"), config)
    training = checkpoint.get("training", {})
    if not isinstance(training, dict):
        found = type(training).__name__
        raise ValueError(f"prior checkpoint {shown!r}: field 'training' must be a mapping, got {found}")
    generator = DCGANGenerator(config)
    generator.load_state_dict(state)
    generator.training_info = dict(training)  # type: ignore[assignment]
    return freeze(generator)  # type: ignore[return-value]


def checkpoint_config(path: str, config: Any) -> DCGANConfig:
    """The ``config`` field of a prior checkpoint as a ``DCGANConfig``; ``ValueError`` naming the checkpoint and the
    field when it is missing, not a mapping, has a name ``DCGANConfig`` lacks or a bad value."""
    names = [f.name for f in fields(DCGANConfig)]
    if not isinstance(config, dict):
        found = "missing" if config is None else f"a {type(config).__name__}"
        raise ValueError(
            f"prior checkpoint {path!r}: field 'config' is {found}; expected a mapping of {', '.join(names)} "
            "(as `python -m benchmarks.train_prior` writes it)"
        )
    unknown = sorted((key for key in config if key not in names), key=str)
    if unknown:
        allowed = ", ".join(names)
        raise ValueError(f"prior checkpoint {path!r}: field 'config.{unknown[0]}' is unknown; allowed: {allowed}")
    try:
        return DCGANConfig(**config)
    except ValueError as error:
        name, _, problem = str(error).partition(" ")
        raise ValueError(f"prior checkpoint {path!r}: field 'config.{name}' {problem}") from None


def checkpoint_state(path: str, state: Any, config: DCGANConfig) -> dict[str, torch.Tensor]:
    """The ``state_dict`` field of a prior checkpoint, checked against the shapes ``config`` makes (built on the
    meta device, so a huge config allocates nothing) before any weight is built."""
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"prior checkpoint {path!r}: field 'state_dict' must be a mapping of tensor names to tensors")
    with torch.device("meta"):
        expected = {name: tuple(value.shape) for name, value in DCGANGenerator(config).state_dict().items()}
    found = {name: tuple(value.shape) for name, value in state.items()}
    for name in sorted(set(expected) | set(found), key=str):
        if expected.get(name) != found.get(name):
            raise ValueError(
                f"prior checkpoint {path!r}: field 'state_dict.{name}' has shape {found.get(name)}, but its 'config' "
                f"makes {expected.get(name)}; the file is damaged or its config does not belong to its weights"
            )
    return state


def embedded_prior_path() -> Path:
    """Where the shipped Fashion-MNIST prior lives inside the installed package."""
    return Path(str(resources.files("ggl.priors") / "assets" / "fashion_mnist_wgan.pt"))


@register_prior("fashion-mnist-wgan")
def fashion_mnist_wgan(path: str | Path | None = None, map_location: str | torch.device = "cpu") -> Generator:
    """The embedded conditional Fashion-MNIST WGAN-GP prior: 128-d z, 10 classes, (1, 32, 32) in [0, 1]."""
    location = Path(path) if path is not None else embedded_prior_path()
    if not location.is_file():
        raise PriorNotFoundError(
            f"the embedded prior {str(location)!r} is missing from this installation; reinstall ggl-bench or "
            "recreate it with `python -m benchmarks.train_prior --data fashion-mnist "
            f"--out {location}` (the exact command is in the .json beside it)"
        )
    return load_dcgan_checkpoint(location, map_location)  # type: ignore[return-value]


@register_prior("face-dcgan")
def face_dcgan(**options: Any) -> Generator:
    """The pretrained face DCGAN of ``gan-face-generate`` (``pip install --no-deps gan-face-generate``)."""
    from ggl.priors.faces import load_face_dcgan

    return load_face_dcgan(**options)


@register_prior("biggan-deep-256")
def biggan_deep_256(**options: Any) -> Generator:
    """BigGAN-deep-256 from local weights (``pip install --no-deps pytorch-pretrained-biggan``)."""
    from ggl.priors.biggan import load_biggan

    return load_biggan("biggan-deep-256", **options)


def load_prior(name_or_path: str | Path, **options: Any) -> Generator:
    """A prior by registry name (``PRIORS``) or from a path to a ``ggl-dcgan-v1`` checkpoint.

    Args:
        name_or_path: a name in ``PRIORS`` or a checkpoint path. options: passed to the prior's factory.
    Raises:
        PriorNotFoundError: the prior's files are missing (the message says where to put them).
        ValueError: an unknown name or an unreadable checkpoint.
    """
    if isinstance(name_or_path, str) and name_or_path in PRIORS:
        return PRIORS[name_or_path](**options)
    path = Path(name_or_path)
    looks_like_path = path.suffix in {".pt", ".pth", ".ckpt"} or len(path.parts) > 1 or path.exists()
    if not looks_like_path:
        raise ValueError(
            f"{PRIORS.unknown(name_or_path)}, or a path to a checkpoint written by `python -m benchmarks.train_prior`"
        )
    return load_dcgan_checkpoint(path, **options)  # type: ignore[return-value]


def adapt_images(images: torch.Tensor, image_shape: tuple[int, int, int] | torch.Size) -> torch.Tensor:
    """Images (N, C, H, W) in [0, 1] -> (N, *image_shape): area resize when shrinking, bilinear when growing;
    RGB -> grey by ITU-R BT.601 luma, grey -> RGB by repetition. Differentiable; a no-op when shapes agree."""
    channels, height, width = (int(s) for s in image_shape)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[-2:] != (height, width):
        shrinking = images.shape[-2] >= height and images.shape[-1] >= width
        if shrinking:
            images = F.interpolate(images, size=(height, width), mode="area")
        else:
            images = F.interpolate(images, size=(height, width), mode="bilinear", align_corners=False)
    source = images.shape[1]
    if source == channels:
        return images
    if source == 3 and channels == 1:
        luma = torch.tensor([0.299, 0.587, 0.114], dtype=images.dtype, device=images.device)
        return (images * luma.view(1, 3, 1, 1)).sum(1, keepdim=True)
    if source == 1:
        return images.expand(-1, channels, -1, -1)
    raise ValueError(
        f"cannot convert {source}-channel prior images to image_shape channels={channels}; "
        "allowed: equal channels, 3 -> 1, 1 -> any"
    )


class AdaptedPrior(nn.Module):
    """A prior whose outputs are resized/converted to a victim's ``image_shape`` (see ``adapt_images``).

    Args:
        prior: any ``Generator``. image_shape: (C, H, W) the victim expects.
    """

    def __init__(self, prior: Generator, image_shape: tuple[int, int, int]) -> None:
        super().__init__()
        self.prior = prior
        self.latent_dim = prior.latent_dim
        self.num_classes = prior.num_classes
        channels, height, width = (int(s) for s in image_shape)
        self.image_shape = (channels, height, width)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        return adapt_images(self.prior(z, y), self.image_shape)

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.prior.sample(n, generator)


def adapt_prior(prior: Generator, image_shape: tuple[int, int, int] | torch.Size) -> Generator:
    """``prior`` itself when it already makes ``image_shape`` images, else an ``AdaptedPrior`` around it."""
    shape = tuple(int(s) for s in image_shape)
    if len(shape) != 3:
        raise ValueError(f"image_shape must be (C, H, W), got {shape}")
    if tuple(prior.image_shape) == shape:
        return prior
    return AdaptedPrior(prior, shape)  # type: ignore[arg-type, return-value]
