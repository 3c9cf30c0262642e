"""The LFW face / non-face subset shipped with scikit-image: splits, labels, sizes, class means and errors."""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import pytest
import torch
from torch.utils.data import Dataset

from ggl.data import DataNotFoundError, LFWFaces, make_datamodule
from ggl.data.lfw import NON_FACES, PUBLIC, PUBLIC_FACES, VICTIM_FACES, lfw_subset

skimage_data = pytest.importorskip("skimage.data")


@pytest.fixture(scope="module")
def shipped() -> torch.Tensor:
    """The 200 shipped crops as (200, 1, 25, 25), straight from scikit-image."""
    return torch.as_tensor(np.asarray(skimage_data.lfw_subset(), dtype=np.float32)).unsqueeze(1)


def _stack(dataset: Dataset[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """All (image, label) items of a split, stacked."""
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([image for image, _ in items]), torch.tensor([int(label) for _, label in items])


@pytest.mark.parametrize("size", [32, 17, 64])
def test_shapes_and_range(size: int) -> None:
    dm = make_datamodule("lfw", image_size=size)
    dm.setup("fit")
    assert dm.image_shape == (1, size, size) and dm.num_classes == 2 and len(dm.classes) == 2
    assert len(dm.victims) == 50 and len(dm.public) == 150
    for images, _ in (_stack(dm.victims), _stack(dm.public)):
        assert images.shape[1:] == (1, size, size) and images.dtype == torch.float32
        assert images.min() >= 0 and images.max() <= 1 and images.std() > 0.1


def test_default_is_32_px_and_25_px_keeps_the_shipped_pixels(shipped: torch.Tensor) -> None:
    assert LFWFaces().image_shape == (1, 32, 32)
    native = LFWFaces(image_size=25)
    victims, _ = _stack(native._require("victims"))
    public, _ = _stack(native._require("public"))
    torch.testing.assert_close(victims, shipped[list(VICTIM_FACES)], rtol=0, atol=1e-6)
    torch.testing.assert_close(public, shipped[list(PUBLIC)], rtol=0, atol=1e-6)


@pytest.mark.parametrize("size", [12, 17, 40])
def test_resize_is_antialiased_bilinear_as_pil(size: int, shipped: torch.Tensor) -> None:
    """PIL's bilinear resize (antialiased when shrinking) of the shipped crops is the independent reference."""
    from PIL import Image

    victims, _ = _stack(LFWFaces(image_size=size)._require("victims"))
    reference = [
        np.asarray(Image.fromarray(crop[0].numpy(), mode="F").resize((size, size), Image.BILINEAR))
        for crop in shipped[list(VICTIM_FACES)]
    ]
    torch.testing.assert_close(victims[:, 0], torch.as_tensor(np.stack(reference)), rtol=0, atol=1e-5)


def test_labels_victims_are_faces_and_public_has_both_classes() -> None:
    dm = LFWFaces()
    images, labels = dm.victim_batch(list(range(50)))
    assert images.shape == (50, 1, 32, 32) and labels.tolist() == [1] * 50
    _, public_labels = _stack(dm._require("public"))
    assert public_labels.tolist() == [1] * 50 + [0] * 100


def test_public_and_victim_splits_are_disjoint(shipped: torch.Tensor) -> None:
    assert set(VICTIM_FACES).isdisjoint(PUBLIC) and len(set(PUBLIC)) == len(PUBLIC) == 150
    assert set(VICTIM_FACES) | set(PUBLIC_FACES) == set(range(100)) and set(NON_FACES) == set(range(100, 200))
    dm = LFWFaces(image_size=25)
    victims, _ = _stack(dm._require("victims"))
    public, _ = _stack(dm._require("public"))
    torch.testing.assert_close(victims, shipped[list(VICTIM_FACES)], rtol=0, atol=1e-6)
    distances = torch.cdist(victims.flatten(1), public.flatten(1), compute_mode="donot_use_mm_for_euclid_dist")
    assert distances.min() > 0.5  # no victim's pixels appear in the public split, not even nearly


def test_victim_indices_are_deterministic_and_within_the_victims() -> None:
    dm = LFWFaces(seed=3)
    chosen = dm.victim_indices(20)
    assert chosen == LFWFaces(seed=3).victim_indices(20) == dm.victim_indices(20, seed=3)
    assert chosen != dm.victim_indices(20, seed=4)
    assert len(set(chosen)) == 20 and all(0 <= i < 50 for i in chosen)
    assert sorted(dm.victim_indices(50)) == list(range(50))
    with pytest.raises(ValueError, match=r"count must be in \[1, 50\] for lfw"):
        dm.victim_indices(51)


@pytest.mark.parametrize("size", [25, 32])
def test_class_means_are_the_public_means(size: int, shipped: torch.Tensor) -> None:
    dm = LFWFaces(image_size=size)
    means = dm.class_means()
    assert means.shape == (2, 1, size, size) and means.min() >= 0 and means.max() <= 1
    images, labels = _stack(dm._require("public"))
    by_hand = torch.stack(
        [sum(images[i] for i in range(150) if labels[i] == c) / int((labels == c).sum()) for c in (0, 1)]
    )
    torch.testing.assert_close(means, by_hand)
    if size == 25:  # and equal to the shipped crops' means: non-faces, then the public faces only
        torch.testing.assert_close(means[0], shipped[100:].mean(0))
        torch.testing.assert_close(means[1], shipped[0:100:2].mean(0))
        assert not torch.allclose(means[1], shipped[:100].mean(0), atol=1e-3)  # the victims are left out


@pytest.mark.parametrize("size", [7, 513, 32.0, True, "32"])
def test_bad_image_size_is_refused(size: object) -> None:
    with pytest.raises(ValueError, match="image_size must be an integer from 8 to 512"):
        LFWFaces(image_size=size)  # type: ignore[arg-type]


def test_missing_scikit_image_names_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "skimage", None)
    with pytest.raises(DataNotFoundError, match=r"needs scikit-image.*pip install 'scikit-image>=0\.21'"):
        LFWFaces().setup("predict")


def test_missing_or_malformed_data_file_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_file():
        raise ModuleNotFoundError("The requested file is part of the scikit-image distribution, but requires pooch")

    monkeypatch.setattr(skimage_data, "lfw_subset", no_file)
    with pytest.raises(DataNotFoundError, match=r"lfw_subset\.npy\) could not be read \(.*pooch\); reinstall"):
        lfw_subset()
    monkeypatch.setattr(skimage_data, "lfw_subset", lambda: np.zeros((100, 25, 25)))
    with pytest.raises(DataNotFoundError, match=r"shape \(100, 25, 25\), expected \(200, 25, 25\)"):
        LFWFaces().class_means()
