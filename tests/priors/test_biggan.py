"""The BigGAN adapter on a tiny randomly initialised BigGAN-deep config saved in the package's file layout."""

from __future__ import annotations

import importlib.util
import json
from hashlib import sha256

import pytest
import torch

from ggl.priors import PriorNotFoundError, load_prior

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("pytorch_pretrained_biggan") is None,
    reason="pytorch-pretrained-biggan not installed (pip install --no-deps ...)",
)

TINY = {
    "output_dim": 16,
    "z_dim": 8,
    "class_embed_dim": 8,
    "channel_width": 4,
    "num_classes": 5,
    "layers": [[True, 16, 8], [False, 8, 4], [True, 4, 2], [False, 2, 1]],
    "attention_layer_position": 2,
    "eps": 1e-4,
    "n_stats": 51,
}


def _tiny_model():  # type: ignore[no-untyped-def]
    from ggl.priors.biggan import biggan_classes

    biggan, config = biggan_classes()
    torch.manual_seed(0)
    model = biggan(config.from_dict(TINY))
    with torch.no_grad():  # the package leaves these two uninitialised (pretrained weights overwrite them)
        model.generator.bn.weight.fill_(1.0)
        model.generator.bn.bias.zero_()
    return model.eval()


def _save(model, folder, weights="pytorch_model.bin", config="config.json") -> None:  # type: ignore[no-untyped-def]
    folder.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), folder / weights)
    (folder / config).write_text(json.dumps(TINY))


def test_loads_from_folder_and_conditions_on_labels(tmp_path) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_model()
    _save(model, tmp_path / "tiny")
    prior = load_prior("biggan-deep-256", path=tmp_path / "tiny", truncation=0.5, image_size=8)
    assert (prior.latent_dim, prior.num_classes, prior.image_shape) == (8, 5, (3, 8, 8))
    latents = prior.sample(3, torch.Generator().manual_seed(1))
    assert float(latents.abs().max()) <= 2 * 0.5
    labels = torch.tensor([0, 3, 4])
    images = prior(latents, labels)
    assert images.shape == (3, 3, 8, 8) and 0 <= float(images.min()) and float(images.max()) <= 1
    with torch.no_grad():
        native = (model(latents, torch.nn.functional.one_hot(labels, 5).float(), 0.5) + 1) / 2
    assert torch.allclose(images, torch.nn.functional.interpolate(native, size=(8, 8), mode="area"), atol=1e-5)
    assert not torch.allclose(prior(latents, torch.tensor([1, 1, 1])), images, atol=1e-3)
    with pytest.raises(ValueError, match="class-conditional"):
        prior(latents)
    with pytest.raises(ValueError, match="truncation"):
        load_prior("biggan-deep-256", path=tmp_path / "tiny", truncation=1.5)


def test_package_cache_and_ggl_cache(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    model = _tiny_model()
    root = "https://s3.amazonaws.com/models.huggingface.co/biggan/biggan-deep-256"
    weights = sha256(f"{root}-pytorch_model.bin".encode()).hexdigest() + ".etag"
    config = sha256(f"{root}-config.json".encode()).hexdigest()
    _save(model, tmp_path / "package_cache", weights, config)
    monkeypatch.setenv("GGL_CACHE", str(tmp_path / "empty"))
    prior = load_prior("biggan-deep-256", cache_dir=tmp_path / "package_cache", image_size=16)
    assert prior.image_shape == (3, 16, 16)
    _save(model, tmp_path / "ggl" / "biggan" / "biggan-deep-256")
    monkeypatch.setenv("GGL_CACHE", str(tmp_path / "ggl"))
    assert load_prior("biggan-deep-256", cache_dir=tmp_path / "nowhere").num_classes == 5


def test_missing_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("GGL_CACHE", str(tmp_path / "cache"))
    with pytest.raises(PriorNotFoundError, match="pytorch_model.bin") as error:
        load_prior("biggan-deep-256", cache_dir=tmp_path / "pkg")
    assert str(tmp_path / "cache" / "biggan" / "biggan-deep-256") in str(error.value)
    with pytest.raises(PriorNotFoundError, match="never downloaded|Nothing is downloaded"):
        load_prior("biggan-deep-256", path=tmp_path / "nothing")
