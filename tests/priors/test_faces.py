"""The gan-face-generate face DCGAN, loaded from its package data without importing the package."""

from __future__ import annotations

import importlib.util
import sys

import pytest
import torch
import torch.nn.functional as F

from ggl.priors import PriorNotFoundError, load_prior
from ggl.priors.faces import FaceDCGAN, load_face_dcgan

needs_package = pytest.mark.skipif(
    importlib.util.find_spec("gan_face_generate") is None,
    reason="gan-face-generate not installed (pip install --no-deps gan-face-generate)",
)


def test_architecture_sizes() -> None:
    generator = FaceDCGAN().eval()
    assert generator(torch.randn(2, 100)).shape == (2, 3, 64, 64)
    assert FaceDCGAN(image_size=32).eval()(torch.randn(2, 100)).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="image_size"):
        FaceDCGAN(image_size=128)
    with pytest.raises(ValueError, match="z must be"):
        generator(torch.randn(2, 7))


def test_missing_weights_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(PriorNotFoundError, match="gan-face-generate"):
        load_face_dcgan(path=tmp_path / "weights.tar")
    torch.save({"other": 1}, tmp_path / "bad.tar")
    with pytest.raises(ValueError, match="netG_state_dict"):
        load_face_dcgan(path=tmp_path / "bad.tar")


@needs_package
def test_pretrained_faces_64_and_32() -> None:
    before = set(sys.modules)
    prior = load_prior("face-dcgan")
    assert not any(name.startswith("gan_face_generate") for name in set(sys.modules) - before)
    assert (prior.latent_dim, prior.num_classes, prior.image_shape) == (100, 0, (3, 64, 64))
    latents = prior.sample(4, torch.Generator().manual_seed(0))
    images = prior(latents)
    assert images.shape == (4, 3, 64, 64) and 0 <= float(images.min()) and float(images.max()) <= 1
    # trained weights give varied, non-degenerate faces: different latents give clearly different images
    assert float((images[0] - images[1]).abs().mean()) > 0.02 and float(images.std()) > 0.1
    small = load_prior("face-dcgan", image_size=32)
    assert torch.allclose(small(latents), F.avg_pool2d(images, 2), atol=1e-6)
