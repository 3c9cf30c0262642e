"""Labeled Faces in the Wild (LFW): the 200-crop subset shipped inside scikit-image, so it needs no download.

``skimage.data.lfw_subset()`` holds 200 grayscale 25x25 crops as floats in [0, 1]: the first 100 are faces picked at
random from LFW, the last 100 non-faces cut from the backgrounds of the same photographs. Choices made here:

- Labels: face (1) / non-face (0), a binary task for the victim model, like GGL's binary CelebA attribute.
- Splits: the faces are split by their position in the shipped order: even positions (0, 2, ..., 98) go to the
  public split, odd positions (1, 3, ..., 99) are the 50 victims, so the public split (prior training, class means)
  never holds a victim. The public split also holds all 100 non-faces (150 images); the victims are faces only.
- Images: resized from 25 px to ``image_size`` (default 32) with bilinear interpolation, antialiased as in the
  embedded datamodule (antialiasing only acts below 25 px), then clamped to [0, 1]; 25 px keeps the shipped pixels.
- Normalisation: mean 0.3538, std 0.2868, the statistics of the public split at 25 px, used at every size (the
  embedded datamodule likewise uses its public split's statistics; resizing moves the std by under 3%).

LFW: Huang, Ramesh, Berg, Learned-Miller, "Labeled Faces in the Wild", UMass Amherst TR 07-49, 2007. The photographs
come from news sites; see ``docs/data.md`` for the licence notes. Nothing of it is shipped in this package.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import TensorDataset

from ggl.data.base import DataNotFoundError, VictimDataModule
from ggl.data.embedded import MAX_IMAGE_SIZE
from ggl.fl.normalization import Normalization

SHIPPED_SHAPE = (200, 25, 25)
"""Shape of ``skimage.data.lfw_subset()``: 100 faces, then 100 non-faces, 25x25 each."""
FACES = 100
PUBLIC_FACES: tuple[int, ...] = tuple(range(0, FACES, 2))
"""Shipped indices of the faces in the public split (even positions)."""
VICTIM_FACES: tuple[int, ...] = tuple(range(1, FACES, 2))
"""Shipped indices of the victims, in victim order (odd positions)."""
NON_FACES: tuple[int, ...] = tuple(range(FACES, SHIPPED_SHAPE[0]))
PUBLIC: tuple[int, ...] = PUBLIC_FACES + NON_FACES
"""Shipped indices of the public split, in public order."""
CLASSES = ("non-face", "face")
INSTALL = "pip install 'scikit-image>=0.21' (its wheel includes skimage/data/lfw_subset.npy)"


def lfw_subset() -> np.ndarray:
    """The shipped crops as float32 (200, 25, 25) in [0, 1].

    Raises:
        DataNotFoundError: scikit-image is not installed, or its ``lfw_subset.npy`` is missing or malformed.
    """
    try:
        from skimage import data
    except ImportError:
        raise DataNotFoundError(f"the lfw datamodule needs scikit-image, which is not installed: {INSTALL}") from None
    try:
        images = np.asarray(data.lfw_subset(), dtype=np.float32)
    except (ImportError, OSError, KeyError, ValueError) as error:  # no file and no pooch / offline / corrupted
        raise DataNotFoundError(
            f"scikit-image's LFW subset (skimage/data/lfw_subset.npy) could not be read ({error}); "
            f"reinstall scikit-image: {INSTALL}"
        ) from None
    if images.shape != SHIPPED_SHAPE or not (images.min() >= 0 and images.max() <= 1):
        raise DataNotFoundError(
            f"scikit-image's LFW subset holds an array of shape {images.shape}, expected {SHIPPED_SHAPE} with values "
            f"in [0, 1]; reinstall scikit-image: {INSTALL}"
        )
    return images


def _to_images(crops: np.ndarray, image_size: int) -> torch.Tensor:
    """float (N, 25, 25) -> float (N, 1, S, S) in [0, 1], resized bilinearly with antialiasing."""
    images = torch.as_tensor(crops).unsqueeze(1)
    resized = torch.nn.functional.interpolate(images, size=(image_size, image_size), mode="bilinear", antialias=True)
    return resized.clamp(0.0, 1.0)


class LFWFaces(VictimDataModule):
    """Face / non-face crops of LFW from scikit-image (see the module docstring for the splits and choices).

    Args:
        image_size: side of the images, an integer from 8 to 512 (default 32; 25 keeps the shipped pixels).
        batch_size, num_workers, seed: see ``VictimDataModule``.

    Example:
        >>> dm = LFWFaces()
        >>> images, labels = dm.victim_batch(dm.victim_indices(2))
        >>> tuple(images.shape), labels.tolist()
        ((2, 1, 32, 32), [1, 1])
    """

    name = "lfw"
    num_classes = 2
    classes = CLASSES
    normalization = Normalization((0.3538,), (0.2868,))

    def __init__(self, image_size: int = 32, batch_size: int = 64, num_workers: int = 0, seed: int = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers, seed=seed)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= MAX_IMAGE_SIZE:
            raise ValueError(f"image_size must be an integer from 8 to {MAX_IMAGE_SIZE}, got {image_size!r}")
        self.image_size = image_size
        self.image_shape = (1, image_size, image_size)

    def setup(self, stage: str | None = None) -> None:
        """Build both splits at once (200 small images) the first time either is needed."""
        if self.public is not None and self.victims is not None:
            return
        images = _to_images(lfw_subset(), self.image_size)
        self.victims = TensorDataset(images[list(VICTIM_FACES)], torch.ones(len(VICTIM_FACES), dtype=torch.long))
        labels = torch.tensor([int(index < FACES) for index in PUBLIC], dtype=torch.long)
        self.public = TensorDataset(images[list(PUBLIC)], labels)

    def class_means(self) -> torch.Tensor:
        """Mean public image of each class, (2, 1, S, S) in [0, 1] - the prior-only reference (no victim in it)."""
        self.setup("fit")
        assert self.public is not None
        images, labels = self.public.tensors  # type: ignore[attr-defined]
        return torch.stack([images[labels == c].mean(0) for c in range(self.num_classes)])
