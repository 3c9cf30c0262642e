"""BigGAN-deep as a GGL prior for ImageNet victims, over the ``pytorch-pretrained-biggan`` package.

Brock, Donahue, Simonyan, "Large Scale GAN Training for High Fidelity Natural Image Synthesis", ICLR 2019
(arXiv 1809.11096). GGL (arXiv 2203.15696) conditions biggan-deep-256 on the label inferred from the gradient and
area-resizes its output to the victim's 224 px. Nothing is downloaded here: the weights are read from a local
folder holding the package's ``pytorch_model.bin`` + ``config.json`` (``path=``), from
``$GGL_CACHE/biggan/<name>/``, or from the package's own download cache (``$PYTORCH_PRETRAINED_BIGGAN_CACHE``,
default ``~/.pytorch_pretrained_biggan``), in that order.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
import sys
import types
import warnings
from hashlib import sha256
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.checks import positive_int
from ggl.priors.base import PriorNotFoundError, freeze

WEIGHTS_NAME = "pytorch_model.bin"
CONFIG_NAME = "config.json"
DOWNLOAD_ROOT = "https://s3.amazonaws.com/models.huggingface.co/biggan"
MODEL_NAMES = ("biggan-deep-128", "biggan-deep-256", "biggan-deep-512")


@functools.lru_cache(maxsize=1)
def biggan_classes() -> tuple[type, type]:
    """``(BigGAN, BigGANConfig)`` from the installed ``pytorch-pretrained-biggan``, without its downloader.

    The package imports boto3, requests and tqdm at import time for downloads this prior never makes, so its
    ``model`` and ``config`` modules are loaded under a private name with an offline stand-in for ``file_utils``.
    """
    spec = importlib.util.find_spec("pytorch_pretrained_biggan")
    if spec is None or not spec.submodule_search_locations:
        raise PriorNotFoundError(
            "the BigGAN prior needs the 'pytorch-pretrained-biggan' package: "
            "`pip install --no-deps pytorch-pretrained-biggan` (or `pip install ggl-bench[biggan]`)"
        )
    private = "_ggl_pytorch_pretrained_biggan"
    if private not in sys.modules:
        namespace = types.ModuleType(private)
        namespace.__path__ = list(spec.submodule_search_locations)
        downloader = types.ModuleType(f"{private}.file_utils")
        downloader.cached_path = _offline_cached_path  # type: ignore[attr-defined]
        sys.modules[private] = namespace
        sys.modules[downloader.__name__] = downloader
    model = importlib.import_module(f"{private}.model")
    return model.BigGAN, model.BigGANConfig


def _offline_cached_path(url_or_filename: str, cache_dir: str | None = None) -> str:
    if os.path.exists(url_or_filename):
        return url_or_filename
    raise PriorNotFoundError(
        f"{url_or_filename!r} is not a local file and ggl-bench never downloads weights; "
        "see ggl.priors.biggan.locate_biggan for where to put them"
    )


def _ggl_cache_root() -> Path:
    return Path(os.environ.get("GGL_CACHE", Path.home() / ".cache" / "ggl-bench"))


def _package_cache_files(name: str, cache_dir: Path) -> tuple[Path, Path] | None:
    """The package cache names a download sha256(url)[.sha256(etag)]; find the weights and config of ``name``."""
    found = []
    for suffix in (f"{name}-pytorch_model.bin", f"{name}-config.json"):
        prefix = sha256(f"{DOWNLOAD_ROOT}/{suffix}".encode()).hexdigest()
        matches = sorted(p for p in cache_dir.glob(prefix + "*") if p.is_file() and not p.name.endswith(".json"))
        if not matches:
            return None
        found.append(matches[0])
    return found[0], found[1]


def locate_biggan(
    name: str = "biggan-deep-256", path: str | Path | None = None, cache_dir: str | Path | None = None
) -> tuple[Path, Path]:
    """(weights, config) files of a BigGAN, searched as the module docstring says; a clear error if absent."""
    looked: list[str] = []
    folders = [Path(path)] if path is not None else [_ggl_cache_root() / "biggan" / name]
    for folder in folders:
        weights, config = folder / WEIGHTS_NAME, folder / CONFIG_NAME
        if weights.is_file() and config.is_file():
            return weights, config
        looked.append(f"{folder}/{{{WEIGHTS_NAME},{CONFIG_NAME}}}")
    if path is None:
        package_cache = (
            Path(cache_dir)
            if cache_dir is not None
            else Path(os.environ.get("PYTORCH_PRETRAINED_BIGGAN_CACHE", Path.home() / ".pytorch_pretrained_biggan"))
        )
        files = _package_cache_files(name, package_cache)
        if files is not None:
            return files
        looked.append(f"{package_cache} (pytorch-pretrained-biggan's download cache)")
    raise PriorNotFoundError(
        f"BigGAN weights for {name!r} not found; looked in: {'; '.join(looked)}. Nothing is downloaded at run time: "
        f"put {DOWNLOAD_ROOT}/{name}-pytorch_model.bin as {WEIGHTS_NAME} and {DOWNLOAD_ROOT}/{name}-config.json as "
        f"{CONFIG_NAME} in {_ggl_cache_root() / 'biggan' / name} (or any folder given as path=...)"
    )


class BigGANPrior(nn.Module):
    """Class-conditional BigGAN-deep as a ``Generator``: z (N, z_dim), labels (N,) -> images (N, 3, S, S) in [0, 1].

    Args:
        model: a ``pytorch_pretrained_biggan.BigGAN``. truncation: in (0, 1]; scales ``sample`` and selects the
            generator's stored batch-norm statistics (GGL: 0.4 is the package's example; 1.0 is untruncated).
        image_size: output side, area-resized from the model's native resolution (224 for ImageNet victims).
    Labels are turned into one-hot class vectors; ``sample`` draws z from a normal truncated to [-2, 2] times
    ``truncation`` (the package's ``truncated_noise_sample``).
    """

    def __init__(self, model: nn.Module, truncation: float = 0.4, image_size: int = 224) -> None:
        super().__init__()
        if not 0 < truncation <= 1:
            raise ValueError(f"truncation must be in (0, 1], got {truncation}")
        positive_int("image_size", image_size)
        self.model = model
        self.truncation = float(truncation)
        config: Any = model.config
        self.latent_dim = int(config.z_dim)
        self.num_classes = int(config.num_classes)
        self.image_shape = (3, int(image_size), int(image_size))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            raise ValueError("BigGAN is class-conditional: pass labels y of shape (N,)")
        if z.ndim != 2 or z.shape[1] != self.latent_dim:
            raise ValueError(f"z must be (N, {self.latent_dim}), got shape {tuple(z.shape)}")
        labels = y.long().to(z.device)
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            raise ValueError(f"labels must be in 0..{self.num_classes - 1}")
        one_hot = F.one_hot(labels, self.num_classes).to(z.dtype)
        images = (self.model(z, one_hot, self.truncation) + 1) / 2
        size = self.image_shape[1:]
        if tuple(images.shape[-2:]) != size:
            shrinking = images.shape[-1] >= size[-1]
            images = F.interpolate(images, size=size, mode="area" if shrinking else "bilinear")
        return images

    def sample(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        """n latents from N(0, I) truncated to [-2, 2], times ``truncation``, on the model's device."""
        device = next(self.parameters()).device
        latents = torch.empty(n, self.latent_dim)
        nn.init.trunc_normal_(latents, a=-2.0, b=2.0, generator=generator)
        return (latents * self.truncation).to(device)


def load_biggan(
    name: str = "biggan-deep-256",
    path: str | Path | None = None,
    cache_dir: str | Path | None = None,
    truncation: float = 0.4,
    image_size: int = 224,
    map_location: str | torch.device = "cpu",
) -> BigGANPrior:
    """A ``BigGANPrior`` (eval mode, frozen) from local files; see the module docstring for where it looks."""
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown BigGAN {name!r}; allowed: {', '.join(MODEL_NAMES)}")
    biggan, biggan_config = biggan_classes()
    weights, config_file = locate_biggan(name, path, cache_dir)
    config = biggan_config.from_json_file(str(config_file))  # type: ignore[attr-defined]
    model = biggan(config)
    try:
        state = torch.load(weights, map_location=map_location, weights_only=True)
    except Exception as error:  # unpickling errors come in many types; report them as bad input
        raise ValueError(f"BigGAN weights {str(weights)!r} could not be read as a torch file: {error}") from None
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys:
        warnings.warn(
            f"BigGAN weights {weights} lack {len(result.missing_keys)} entries "
            f"(e.g. {result.missing_keys[:3]}); they keep their initial values",
            stacklevel=2,
        )
    return freeze(BigGANPrior(model, truncation, image_size))  # type: ignore[return-value]
