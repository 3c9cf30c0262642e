"""An offline face prior: the pretrained DCGAN shipped by the ``gan-face-generate`` package (MIT licence).

The package (PyPI ``gan-face-generate``, trained on DigiFace-1M) carries its generator weights as package data in
``gan_face_generate/weights.tar``, a torch zip checkpoint ``{"netG_state_dict": ...}``. Its own modules import
training-only dependencies, so this module never imports it: the weights file is located with
``importlib.util.find_spec`` (install with ``pip install --no-deps gan-face-generate``) and loaded into
``FaceDCGAN``, an independent implementation of the same architecture (Radford et al., "Unsupervised
Representation Learning with Deep Convolutional GANs", arXiv 1511.06434: 100-d z, five transposed convolutions
4 -> 64 px, BatchNorm + ReLU, tanh, 64 feature maps at the last layer).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ggl.priors.base import PriorNotFoundError, freeze

PACKAGE = "gan-face-generate"
WEIGHTS_FILE = "weights.tar"
STATE_KEY = "netG_state_dict"


class FaceDCGAN(nn.Module):
    """DCGAN face generator: z (N, 100) -> images (N, 3, S, S) in [0, 1], S = 64 (native) or smaller by area resizing.

    Args:
        latent_dim: size of z (100 for the pretrained weights). features: feature maps of the last block (64).
        channels: output channels (3). image_size: output side; 64 is native, other sizes are area-resized
            (32 gives GGL's CelebA resolution).
    The unconditional generator ignores ``y``. Module names (``main.<index>``) match the package's checkpoint.
    """

    def __init__(self, latent_dim: int = 100, features: int = 64, channels: int = 3, image_size: int = 64) -> None:
        super().__init__()
        if image_size < 1 or image_size > 64:
            raise ValueError(f"image_size must be in 1..64 (64 native, smaller by area resizing), got {image_size}")
        self.latent_dim = latent_dim
        self.num_classes = 0
        self.image_shape = (channels, image_size, image_size)
        widths = [features * 8, features * 4, features * 2, features]
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(latent_dim, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
        ]
        for wide, narrow in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(wide, narrow, 4, 2, 1, bias=False), nn.BatchNorm2d(narrow), nn.ReLU()]
        layers += [nn.ConvTranspose2d(widths[-1], channels, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}), got shape {tuple(z.shape)}")
        images = (self.main(z[:, :, None, None]) + 1) / 2
        if images.shape[-1] != self.image_shape[-1]:
            images = F.interpolate(images, size=self.image_shape[1:], mode="area")
        return images

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents from N(0, I) on the generator's device."""
        device = next(self.parameters()).device
        return torch.randn(n, self.latent_dim, generator=generator).to(device)


def face_weights_path() -> Path:
    """Path of ``weights.tar`` inside the installed ``gan_face_generate`` package, found without importing it."""
    spec = importlib.util.find_spec("gan_face_generate")
    if spec is None or not spec.submodule_search_locations:
        raise PriorNotFoundError(
            f"the face prior needs the {PACKAGE!r} package for its weights: "
            f"`pip install --no-deps {PACKAGE}` (or `pip install ggl-bench[faces]`), "
            "or pass path=/path/to/weights.tar"
        )
    for location in spec.submodule_search_locations:
        candidate = Path(location) / WEIGHTS_FILE
        if candidate.is_file():
            return candidate
    raise PriorNotFoundError(
        f"{PACKAGE!r} is installed at {list(spec.submodule_search_locations)} but has no {WEIGHTS_FILE}; "
        f"reinstall it (`pip install --no-deps --force-reinstall {PACKAGE}`) or pass path=/path/to/weights.tar"
    )


def load_face_dcgan(
    path: str | Path | None = None, image_size: int = 64, map_location: str | torch.device = "cpu"
) -> FaceDCGAN:
    """The pretrained face DCGAN (eval mode, frozen), 64 px native or ``image_size`` px by area resizing.

    Args:
        path: a ``weights.tar`` (torch checkpoint holding ``netG_state_dict``); default: the installed package's.
        image_size: output side (64 native; 32 for CelebA-style victims). map_location: where tensors load.
    """
    weights = Path(path) if path is not None else face_weights_path()
    if not weights.is_file():
        raise PriorNotFoundError(
            f"face prior weights {str(weights)!r} do not exist; `pip install --no-deps {PACKAGE}` ships them"
        )
    try:
        checkpoint = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types; report them as bad input
        raise ValueError(f"face prior weights {str(weights)!r} could not be read as a torch file: {error}") from None
    if not isinstance(checkpoint, dict) or STATE_KEY not in checkpoint:
        keys = sorted(checkpoint) if isinstance(checkpoint, dict) else type(checkpoint).__name__
        raise ValueError(f"face prior weights {str(weights)!r} have no {STATE_KEY!r} entry (found {keys})")
    state = checkpoint[STATE_KEY]
    latent_dim, top_width = state["main.0.weight"].shape[:2]
    channels = state[max((k for k in state if k.endswith(".weight")), key=lambda k: int(k.split(".")[1]))].shape[1]
    generator = FaceDCGAN(int(latent_dim), int(top_width) // 8, int(channels), image_size)
    generator.load_state_dict(state)
    return freeze(generator)  # type: ignore[return-value]
