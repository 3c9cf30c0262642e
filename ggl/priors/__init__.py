"""Generative priors: the ``Generator`` protocol, DCGAN priors trained by the project, pretrained adapters, and
``load_prior(name_or_path)`` (``PRIORS``: fashion-mnist-wgan, face-dcgan, biggan-deep-256, or a checkpoint path)."""

from ggl.priors.base import Generator
from ggl.priors.dcgan import DCGANConfig, DCGANCritic, DCGANGenerator
from ggl.priors.registry import (
    PRIORS,
    AdaptedPrior,
    PriorNotFoundError,
    adapt_images,
    adapt_prior,
    load_dcgan_checkpoint,
    load_prior,
    register_prior,
)

__all__ = [
    "PRIORS",
    "AdaptedPrior",
    "DCGANConfig",
    "DCGANCritic",
    "DCGANGenerator",
    "Generator",
    "PriorNotFoundError",
    "adapt_images",
    "adapt_prior",
    "load_dcgan_checkpoint",
    "load_prior",
    "register_prior",
]
