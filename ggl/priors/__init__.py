"""Generative priors: the ``Generator`` protocol, DCGAN priors trained by the project, and their training."""

from ggl.priors.base import Generator
from ggl.priors.dcgan import DCGANConfig, DCGANCritic, DCGANGenerator

__all__ = ["DCGANConfig", "DCGANCritic", "DCGANGenerator", "Generator"]
