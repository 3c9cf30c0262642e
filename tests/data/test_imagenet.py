"""ImageNetDataModule on tiny copies in torchvision's layout (meta.bin + val/<wnid>/) and the plain folder layout."""

from __future__ import annotations

import pytest
import torch

from ggl.data import DATAMODULES, DataNotFoundError, ImageNetDataModule, make_datamodule
from ggl.data.imagenet import NORMALIZATIONS

from .conftest import write_imagenet_images, write_imagenet_meta

ALL_WNIDS = [f"n{index:08d}" for index in range(1000)]


def test_torchvision_layout_with_a_partial_copy_keeps_standard_indices(tmp_path) -> None:
    write_imagenet_meta(tmp_path, ALL_WNIDS)
    present = [ALL_WNIDS[7], ALL_WNIDS[3], ALL_WNIDS[998]]
    write_imagenet_images(tmp_path / "val", present, per_class=2)
    dm = make_datamodule("imagenet", data_root=tmp_path)
    assert DATAMODULES["imagenet"] is ImageNetDataModule
    dm.prepare_data()
    images, labels = dm.victim_batch(list(range(6)))
    assert images.shape == (6, 3, 224, 224) and dm.image_shape == (3, 224, 224)
    assert images.min() >= 0 and images.max() <= 1
    # ImageFolder sorts the present folders (3, 7, 998); the labels must be their standard indices.
    assert labels.tolist() == [3, 3, 7, 7, 998, 998]
    for image, label in zip(images, labels.tolist()):
        position = present.index(ALL_WNIDS[label])
        colour = torch.tensor([10 + 40 * position, 120, 250 - 40 * position], dtype=torch.float32) / 255
        torch.testing.assert_close(image.mean(dim=(1, 2)), colour, atol=3 / 255, rtol=0)
    assert dm.num_classes == 1000
    assert dm.normalization == NORMALIZATIONS["ggl"] and dm.normalization.mean == (0.5, 0.5, 0.5)
    assert not dm.has_public_split()


def test_plain_folder_layout_needs_all_classes(tmp_path) -> None:
    for wnid in ALL_WNIDS:
        (tmp_path / "val" / wnid).mkdir(parents=True)
    write_imagenet_images(tmp_path / "val", [ALL_WNIDS[0], ALL_WNIDS[1]])
    dm = ImageNetDataModule(tmp_path, normalization="imagenet")
    images, labels = dm.victim_batch([0, 1])
    assert images.shape == (2, 3, 224, 224) and labels.tolist() == [0, 1]
    assert dm.normalization.std == (0.229, 0.224, 0.225)
    assert len(dm.victim_indices(2, seed=0)) == 2 and dm.victim_indices(2, seed=1) == dm.victim_indices(2, seed=1)

    (tmp_path / "val" / ALL_WNIDS[500]).rmdir()
    with pytest.raises(DataNotFoundError, match="999 WordNet-ID class folders, not 1000.*meta.bin"):
        ImageNetDataModule(tmp_path).setup("predict")


def test_public_split_when_present(tmp_path) -> None:
    write_imagenet_meta(tmp_path, ALL_WNIDS)
    write_imagenet_images(tmp_path / "val", [ALL_WNIDS[5]])
    dm = ImageNetDataModule(tmp_path, batch_size=2)
    with pytest.raises(DataNotFoundError, match="no train split"):
        dm.setup("fit")
    write_imagenet_images(tmp_path / "train", [ALL_WNIDS[2], ALL_WNIDS[9]])
    dm = ImageNetDataModule(tmp_path, batch_size=2)
    assert dm.has_public_split()
    dm.setup()
    assert sorted(int(dm.public[i][1]) for i in range(len(dm.public))) == [2, 9]
    images, labels = next(iter(dm.train_dataloader()))
    assert images.shape == (2, 3, 224, 224)


@pytest.mark.parametrize("layout", ["none", "missing", "empty", "stray-folders"])
def test_missing_or_malformed_root_names_the_layout(tmp_path, layout: str) -> None:
    root = {"none": None, "missing": tmp_path / "nope"}.get(layout, tmp_path)
    if layout == "stray-folders":
        (tmp_path / "val" / "cats").mkdir(parents=True)
    dm = ImageNetDataModule(root)
    with pytest.raises(DataNotFoundError) as error:
        dm.prepare_data()
    message = str(error.value)
    for expected in ("ILSVRC2012_devkit_t12.tar.gz", "ILSVRC2012_img_val.tar", "ROOT/val/<wnid>/*.JPEG", "meta.bin"):
        assert expected in message


def test_unsorted_validation_images_get_a_hint(tmp_path) -> None:
    write_imagenet_images(tmp_path, ["val"])  # tmp_path/val/*.JPEG without class folders
    with pytest.raises(DataNotFoundError, match="holds images but no class folders"):
        ImageNetDataModule(tmp_path).prepare_data()


def test_folders_unknown_to_meta_are_rejected(tmp_path) -> None:
    write_imagenet_meta(tmp_path, ALL_WNIDS[:10])
    write_imagenet_images(tmp_path / "val", ["n99999999"])
    with pytest.raises(DataNotFoundError, match="n99999999"):
        ImageNetDataModule(tmp_path).setup("predict")


def test_corrupted_meta_file(tmp_path) -> None:
    (tmp_path / "meta.bin").write_bytes(b"not a torch file")
    write_imagenet_images(tmp_path / "val", [ALL_WNIDS[0]])
    with pytest.raises(DataNotFoundError, match="meta.bin is not the file torchvision's ImageNet writes"):
        ImageNetDataModule(tmp_path).setup("predict")


def test_bad_normalization_lists_the_allowed(tmp_path) -> None:
    with pytest.raises(ValueError, match="normalization must be one of ggl, imagenet"):
        ImageNetDataModule(tmp_path, normalization="cifar")
