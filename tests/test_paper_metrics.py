"""The GGL paper's metrics (MSE-I and PSNR on the [-1, 1] scale, MSE-R on penultimate features) by hand."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ggl.metrics import (
    mse_representation,
    mse_signed_unit,
    penultimate_features,
    per_image_metrics,
    psnr_signed_unit,
)

pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def test_constant_images_by_hand() -> None:
    reconstructed, original = torch.full((1, 3, 4, 4), 0.5), torch.full((1, 3, 4, 4), 0.75)
    usual = per_image_metrics(reconstructed, original, metrics=("mse", "psnr"))
    assert usual["mse"].item() == pytest.approx(0.0625)
    assert usual["psnr"].item() == pytest.approx(12.0412, abs=1e-4)
    assert mse_signed_unit(reconstructed, original).item() == pytest.approx(0.25)
    assert psnr_signed_unit(reconstructed, original).item() == pytest.approx(6.0206, abs=1e-4)
    assert usual["psnr"].item() - psnr_signed_unit(reconstructed, original).item() == pytest.approx(10 * math.log10(4))


def test_per_image_values_clamping_and_floor() -> None:
    original = torch.zeros(2, 1, 4, 4)
    reconstructed = torch.stack([torch.full((1, 4, 4), 0.1), torch.full((1, 4, 4), 1.7)])  # 1.7 is clamped to 1
    values = mse_signed_unit(reconstructed, original, match=False)
    assert values.shape == (2,) and values.dtype == torch.float64
    assert values.tolist() == pytest.approx([0.04, 4.0])
    assert psnr_signed_unit(reconstructed, original, match=False).tolist() == pytest.approx(
        [-10 * math.log10(0.04), -10 * math.log10(4.0)]
    )
    assert psnr_signed_unit(original, original).tolist() == pytest.approx([100.0, 100.0])  # MSE floored at 1e-10


def test_batches_are_matched_like_the_other_metrics() -> None:
    original = torch.stack([torch.full((1, 4, 4), 0.0), torch.full((1, 4, 4), 1.0)])
    swapped = original.flip(0) + 0.0
    assert mse_signed_unit(swapped, original).tolist() == [0.0, 0.0]
    assert mse_signed_unit(swapped, original, match=False).tolist() == [4.0, 4.0]
    with pytest.raises(ValueError, match="same shape"):
        mse_signed_unit(torch.zeros(1, 1, 4, 4), torch.zeros(1, 1, 5, 5))


class Probe(nn.Module):
    """Features ``2 x`` (a known linear map) feed a head; a second Linear before them must not be hooked."""

    def __init__(self) -> None:
        super().__init__()
        self.early = nn.Linear(3, 3)
        self.norm = nn.BatchNorm1d(3)
        self.head = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.early(x)  # called, but its input is not the penultimate representation
        self.norm(x)  # updates running statistics in training mode
        return self.head(2 * x)


class Unused(nn.Module):
    """Holds a Linear layer that its forward never calls."""

    def __init__(self) -> None:
        super().__init__()
        self.head = nn.Linear(3, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


@pytest.mark.parametrize("training", [False, True])
def test_mse_representation_by_hand(training: bool) -> None:
    model = Probe().train(training)
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    reconstruction = torch.tensor([[1.0, 2.0, 3.0], [0.0, 0.0, 0.0]])
    original = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0]])
    assert penultimate_features(model, reconstruction).tolist() == [[2.0, 4.0, 6.0], [0.0, 0.0, 0.0]]
    values = mse_representation(model, reconstruction, original)
    # differences 2 * (0, 0, -1) and 2 * (-1, -1, -1): means of squares 4/3 and 4
    assert values.dtype == torch.float64 and values.tolist() == pytest.approx([4 / 3, 4.0])
    assert model.training is training
    assert all(torch.equal(buffers[name], b) for name, b in model.named_buffers())
    assert not model.head._forward_pre_hooks  # the hook is removed
    assert all(p.grad is None for p in model.parameters())


def test_mse_representation_refuses_what_it_cannot_score() -> None:
    with pytest.raises(ValueError, match="no nn.Linear"):
        mse_representation(nn.Conv2d(1, 1, 1), torch.zeros(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    with pytest.raises(ValueError, match="same shape"):
        mse_representation(Probe(), torch.zeros(2, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="not called"):
        mse_representation(Unused(), torch.zeros(1, 3), torch.zeros(1, 3))
