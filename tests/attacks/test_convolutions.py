"""The CPU convolution kernels of a reconstruction: the multiply-add count, the rule, the switch and its effect."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ggl.attacks import make_attack
from ggl.attacks.convolutions import (
    NATIVE_CONV_MACS,
    cpu_convolutions,
    largest_convolution_macs,
    native_convolutions,
)
from ggl.fl import make_victim


def test_largest_convolution_macs_counts_plain_grouped_and_transposed_layers() -> None:
    model = nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),  # 4 x 8 x 8 outputs x 27 = 6,912
        nn.Conv2d(4, 8, 3, padding=1, groups=2),  # 8 x 8 x 8 outputs x (2 x 9) = 9,216
        nn.ConvTranspose2d(8, 2, 2, stride=2),  # 8 x 8 x 8 inputs x (2 x 2 x 2) = 4,096
    )
    assert largest_convolution_macs(model, (3, 8, 8)) == 9216
    assert largest_convolution_macs(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), (3, 2, 2)) == 0
    # DLG's LeNet at 1 x 32 x 32: its two 12-to-12 5 x 5 convolutions on 8 x 8 outputs
    assert largest_convolution_macs(make_victim("lenet", 10, (1, 32, 32)), (1, 32, 32)) == 768 * 300


def test_counting_leaves_modes_and_running_statistics_alone() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    before = model[1].running_mean.clone()
    largest_convolution_macs(model, (1, 5, 5))
    assert all(module.training for module in model.modules())
    assert torch.equal(model[1].running_mean, before) and int(model[1].num_batches_tracked) == 0


@pytest.mark.parametrize(
    ("victim", "shape", "images", "native"),
    [
        ("lenet", (1, 32, 32), 1, True),
        ("lenet", (1, 32, 32), 4, True),  # 921,600 multiply-adds
        ("lenet", (1, 32, 32), 5, False),
        ("convnet", (3, 32, 32), 1, False),  # 4.7M in its second convolution
    ],
)
def test_the_rule_follows_the_largest_pass(victim: str, shape: tuple[int, int, int], images: int, native: bool) -> None:
    model = make_victim(victim, 10, shape)
    assert native_convolutions(model, shape, images) is native
    assert (largest_convolution_macs(model, shape) * images <= NATIVE_CONV_MACS) is native


def test_the_switch_is_restored_on_error() -> None:
    model = make_victim("lenet", 10, (1, 32, 32))
    assert torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="inside"):
        with cpu_convolutions(model, (1, 32, 32), 1) as native:
            assert native and not torch.backends.mkldnn.enabled
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled


def _matching_loss_and_input_gradient(model: nn.Module, target: list[torch.Tensor]) -> tuple[float, torch.Tensor]:
    """A gradient-matching loss of one fixed candidate and its gradient with respect to the pixels (double
    backward through every convolution)."""
    candidate = torch.randn(1, 1, 32, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
    parameters = list(model.parameters())
    loss = F.cross_entropy(model(candidate), torch.tensor([3]))
    trial = torch.autograd.grad(loss, parameters, create_graph=True)
    distance = sum(((a - b) ** 2).sum() for a, b in zip(trial, target))
    (gradient,) = torch.autograd.grad(distance, [candidate])
    return float(distance.detach()), gradient


def test_native_and_onednn_kernels_agree_on_a_double_backward() -> None:
    model = make_victim("lenet", 10, (1, 32, 32))
    private = torch.rand(1, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    target = list(torch.autograd.grad(F.cross_entropy(model(private), torch.tensor([3])), list(model.parameters())))
    onednn = _matching_loss_and_input_gradient(model, target)
    with cpu_convolutions(model, (1, 32, 32), 1):
        native = _matching_loss_and_input_gradient(model, target)
    assert native[0] == pytest.approx(onednn[0], rel=1e-5)
    assert (native[1] - onednn[1]).norm() <= 1e-5 * onednn[1].norm()


@pytest.mark.parametrize(
    ("spec", "native"),
    [
        ({"name": "idlg", "iterations": 1, "max_iter": 2}, True),
        ({"name": "ggl", "prior": "fashion-mnist-wgan", "search": "cma", "budget": 50, "population": 50}, False),
    ],
)
def test_a_reconstruction_searches_with_the_kernels_the_rule_picks(spec: dict, native: bool, make_case) -> None:
    case = make_case("lenet", index=0, seed=0)
    switch: list[bool] = []
    case.target.model.register_forward_hook(lambda module, args, output: switch.append(torch.backends.mkldnn.enabled))
    make_attack(**spec, seed=0).reconstruct(case.target)
    assert switch[0]  # counting the multiply-adds runs before the switch
    assert set(switch[1:]) == {not native}
    assert torch.backends.mkldnn.enabled
