"""load_prior: registered names, checkpoint paths, clear errors; adapting a prior to a victim's image shape."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ggl.priors import (
    PRIORS,
    DCGANConfig,
    DCGANGenerator,
    PriorNotFoundError,
    adapt_images,
    adapt_prior,
    load_prior,
    register_prior,
)
from ggl.priors.registry import embedded_prior_path
from ggl.priors.training import save_prior


def test_registered_names() -> None:
    assert {"fashion-mnist-wgan", "face-dcgan", "biggan-deep-256"} <= set(PRIORS)


@pytest.mark.skipif(not embedded_prior_path().is_file(), reason="embedded prior asset not present")
def test_embedded_prior_shapes_range_and_frozen() -> None:
    prior = load_prior("fashion-mnist-wgan")
    assert (prior.latent_dim, prior.num_classes, prior.image_shape) == (128, 10, (1, 32, 32))
    assert not prior.training
    assert not any(p.requires_grad for p in prior.parameters())
    latents = prior.sample(6, torch.Generator().manual_seed(0))
    images = prior(latents, torch.arange(6))
    assert images.shape == (6, 1, 32, 32)
    assert 0 <= float(images.min()) and float(images.max()) <= 1
    # eval mode: an image does not depend on the rest of the population
    assert torch.allclose(prior(latents[:1], torch.arange(1)), images[:1], atol=1e-6)
    with pytest.raises(ValueError, match="class-conditional"):
        prior(latents)


def _tiny_checkpoint(tmp_path, seed: int = 0):  # type: ignore[no-untyped-def]
    torch.manual_seed(seed)
    config = DCGANConfig(latent_dim=8, num_classes=3, channels=1, image_size=8, width=8, embedding_dim=4)
    generator = DCGANGenerator(config).eval()
    checkpoint = {
        "format": "ggl-dcgan-v1",
        "config": config.to_dict(),
        "state_dict": generator.state_dict(),
        "training": {"seed": seed},
    }
    return generator, save_prior(checkpoint, tmp_path / "tiny.pt")


def test_checkpoint_path_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    original, path = _tiny_checkpoint(tmp_path)
    loaded = load_prior(str(path))
    latents, labels = torch.randn(4, 8), torch.tensor([0, 1, 2, 0])
    assert torch.allclose(loaded(latents, labels), original(latents, labels))
    assert loaded.training_info == {"seed": 0}


def test_errors_name_what_is_allowed(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValueError, match="unknown prior 'no-such-prior'; allowed: .*fashion-mnist-wgan.*or a path"):
        load_prior("no-such-prior")
    with pytest.raises(ValueError, match="did you mean 'face-dcgan'"):
        load_prior("face-dcgen")
    with pytest.raises(PriorNotFoundError, match="train_prior"):
        load_prior(str(tmp_path / "missing.pt"))
    torch.save({"format": "something-else"}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="ggl-dcgan-v1"):
        load_prior(tmp_path / "other.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ValueError, match="could not be read"):
        load_prior(tmp_path / "junk.pt")
    with pytest.raises(PriorNotFoundError, match="reinstall"):
        load_prior("fashion-mnist-wgan", path=tmp_path / "gone.pt")


def test_register_prior_refuses_duplicates() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_prior("fashion-mnist-wgan")(lambda: None)  # type: ignore[arg-type, return-value]


def test_adapt_images_resize_and_channels() -> None:
    images = torch.rand(2, 3, 64, 64)
    small = adapt_images(images, (3, 32, 32))
    assert torch.allclose(small, F.avg_pool2d(images, 2), atol=1e-6)
    grey = adapt_images(images, (1, 64, 64))
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert torch.allclose(grey[:, 0], expected, atol=1e-6)
    rgb = adapt_images(torch.rand(2, 1, 8, 8), (3, 16, 16))
    assert rgb.shape == (2, 3, 16, 16) and torch.equal(rgb[:, 0], rgb[:, 2])
    assert adapt_images(images, (3, 64, 64)) is images
    with pytest.raises(ValueError, match="channels"):
        adapt_images(torch.rand(1, 2, 8, 8), (3, 8, 8))


def test_adapt_prior(tmp_path) -> None:  # type: ignore[no-untyped-def]
    original, path = _tiny_checkpoint(tmp_path)
    prior = load_prior(path)
    assert adapt_prior(prior, (1, 8, 8)) is prior
    adapted = adapt_prior(prior, (3, 4, 4))
    assert (adapted.latent_dim, adapted.num_classes, adapted.image_shape) == (8, 3, (3, 4, 4))
    latents, labels = torch.randn(2, 8), torch.tensor([1, 2])
    expected = F.avg_pool2d(original(latents, labels), 2).expand(-1, 3, -1, -1)
    assert torch.allclose(adapted(latents, labels), expected, atol=1e-6)
    assert adapted.sample(5).shape == (5, 8)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"config": None}, "field 'config' is missing"),
        ({"config": [8, 3]}, "field 'config' is a list"),
        ({"config": {"latent_dim": 8, "depth": 2}}, "field 'config.depth' is unknown"),
        ({"config": {"latent_dim": "eight"}}, "field 'config.latent_dim' must be a positive integer"),
        ({"config": {"image_size": 12}}, "field 'config.image_size' must be a power of two"),
        ({"config": {"width": 10**9}}, "field 'state_dict.blocks.0.weight' has shape"),
        ({"state_dict": None}, "field 'state_dict' must be a mapping"),
        ({"training": 3}, "field 'training' must be a mapping"),
    ],
)
def test_malformed_checkpoint_names_the_file_and_field(tmp_path, change, field) -> None:  # type: ignore[no-untyped-def]
    _, path = _tiny_checkpoint(tmp_path)
    checkpoint = torch.load(path, weights_only=True)
    for key, value in change.items():
        if key == "config" and isinstance(value, dict):
            value = {**checkpoint["config"], **value}
        if value is None:
            checkpoint.pop(key)
        else:
            checkpoint[key] = value
    torch.save(checkpoint, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match=f"prior checkpoint '{tmp_path / 'bad.pt'}': {field}"):
        load_prior(tmp_path / "bad.pt")
