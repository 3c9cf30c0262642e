"""CelebADataModule on a tiny CelebA written in torchvision's layout (the real loading code, fake files)."""

from __future__ import annotations

import pytest
import torch

from ggl.data import DATAMODULES, CelebADataModule, DataNotFoundError, make_datamodule
from ggl.data.celeba import ATTRIBUTES

from .conftest import CELEBA_SPLITS, _colour, accept_celeba_checksums, write_celeba

TEST_ROWS = [i for i, split in enumerate(CELEBA_SPLITS) if split == 2]
TRAIN_ROWS = [i for i, split in enumerate(CELEBA_SPLITS) if split == 0]


@pytest.mark.parametrize("image_size", [32, 64])
def test_victims_are_the_test_split_with_the_male_label(celeba_root, image_size: int) -> None:
    root, attributes = celeba_root
    dm = make_datamodule("celeba", data_root=root, image_size=image_size)
    assert DATAMODULES["celeba"] is CelebADataModule
    dm.prepare_data()
    images, labels = dm.victim_batch(list(range(len(TEST_ROWS))))
    assert images.shape == (len(TEST_ROWS), 3, image_size, image_size) == (len(TEST_ROWS), *dm.image_shape)
    assert images.min() >= 0 and images.max() <= 1
    expected = [(attributes[row, ATTRIBUTES.index("Male")] + 1) // 2 for row in TEST_ROWS]
    assert labels.tolist() == expected
    for image, row in zip(images, TEST_ROWS):  # each victim is the file its annotation row names
        colour = torch.tensor(_colour(row), dtype=torch.float32) / 255
        torch.testing.assert_close(image.mean(dim=(1, 2)), colour, atol=3 / 255, rtol=0)
    assert dm.num_classes == 2 and dm.classes == ("not Male", "Male")
    assert dm.normalization.mean == (0.5, 0.5, 0.5) and dm.normalization.std == (0.5, 0.5, 0.5)


def test_any_attribute_by_name_and_public_split(celeba_root) -> None:
    root, attributes = celeba_root
    dm = CelebADataModule(root / "celeba", attribute="Smiling", batch_size=2)  # ROOT/celeba itself is accepted
    dm.setup("fit")
    assert len(dm.public) == len(TRAIN_ROWS) and len(dm.victims) == len(TEST_ROWS)
    column = ATTRIBUTES.index("Smiling")
    assert [int(dm.public[i][1]) for i in range(len(TRAIN_ROWS))] == [
        (attributes[row, column] + 1) // 2 for row in TRAIN_ROWS
    ]
    batch, labels = next(iter(dm.train_dataloader()))
    assert batch.shape == (2, 3, 32, 32) and labels.shape == (2,)


def test_victim_selection_is_deterministic_by_seed(celeba_root) -> None:
    root, _ = celeba_root
    dm = CelebADataModule(root, seed=3)
    assert dm.victim_indices(3) == dm.victim_indices(3) == CelebADataModule(root, seed=3).victim_indices(3)
    assert dm.victim_indices(3) == dm.victim_indices(3, seed=3)
    orders = {tuple(dm.victim_indices(len(TEST_ROWS), seed=s)) for s in range(10)}
    assert len(orders) > 1 and all(sorted(order) == list(range(len(TEST_ROWS))) for order in orders)
    with pytest.raises(ValueError, match=r"count must be in \[1, 4\]"):
        dm.victim_indices(5)


def test_bad_arguments_list_the_allowed_values(tmp_path) -> None:
    with pytest.raises(ValueError, match="Male") as error:
        CelebADataModule(tmp_path, attribute="male")
    assert all(name in str(error.value) for name in ATTRIBUTES)
    with pytest.raises(ValueError, match="image_size must be one of 32, 64"):
        CelebADataModule(tmp_path, image_size=48)


@pytest.mark.parametrize("root", [None, "does-not-exist"])
def test_missing_root_names_the_expected_layout(tmp_path, root) -> None:
    dm = CelebADataModule(None if root is None else tmp_path / root)
    with pytest.raises(DataNotFoundError) as error:
        dm.victim_indices(1)
    message = str(error.value)
    for expected in ("img_align_celeba/*.jpg", "list_attr_celeba.txt", "list_eval_partition.txt"):
        assert expected in message


def test_incomplete_root_names_the_missing_files(tmp_path) -> None:
    write_celeba(tmp_path)
    (tmp_path / "celeba" / "list_eval_partition.txt").unlink()
    for image in (tmp_path / "celeba" / "img_align_celeba").iterdir():
        image.unlink()
    with pytest.raises(DataNotFoundError, match=r"missing list_eval_partition.txt, img_align_celeba/\*\.jpg"):
        CelebADataModule(tmp_path).prepare_data()


def test_annotation_files_with_wrong_checksums_are_named(tmp_path) -> None:
    write_celeba(tmp_path)  # checksums of the real release are not patched in: every fake file fails them
    with pytest.raises(DataNotFoundError, match="list_attr_celeba.txt.*MD5"):
        CelebADataModule(tmp_path).setup("predict")


def test_malformed_annotation_file(tmp_path, monkeypatch) -> None:
    write_celeba(tmp_path)
    partition = tmp_path / "celeba" / "list_eval_partition.txt"
    partition.write_text(partition.read_text().replace(" 2\n", " test\n", 1))
    accept_celeba_checksums(tmp_path / "celeba", monkeypatch)
    with pytest.raises(DataNotFoundError, match="malformed annotation file"):
        CelebADataModule(tmp_path).setup("predict")


def test_missing_image_of_the_split(celeba_root) -> None:
    root, _ = celeba_root
    (root / "celeba" / "img_align_celeba" / f"{TEST_ROWS[0] + 1:06d}.jpg").unlink()
    with pytest.raises(DataNotFoundError, match=f"{TEST_ROWS[0] + 1:06d}.jpg"):
        CelebADataModule(root).setup("predict")
