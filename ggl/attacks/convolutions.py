"""Which kernels an attack's CPU convolutions use: oneDNN's, or PyTorch's native im2col and matrix product.

PyTorch runs CPU convolutions through oneDNN by default. Its kernels win on large convolutions but pay a fixed
cost per call, tens of microseconds, that dominates tiny ones, and a gradient-matching evaluation is mostly tiny
calls: one candidate's forward, first and second backward through DLG's LeNet (12 channels, 1 x 32 x 32) is about
fifteen convolution calls of at most 230,400 multiply-adds each. Measured on the 2-core development machine
(``docs/engine.md``), one such evaluation took 4.95 ms with oneDNN and 2.43 ms with the native kernels
on one thread (3.56 against 3.08 ms on two), while ConvNet at batch 1 (4.7M multiply-adds in its largest
convolution), ResNet-18 and LeNet populations of 10 or more candidates ran faster with oneDNN (0.35-0.94x natively).

``cpu_convolutions`` therefore turns oneDNN off for the duration of one reconstruction when one evaluation pass's
largest convolution does at most ``NATIVE_CONV_MACS`` multiply-adds: the victim's largest convolution for one
image times the images a pass scores (candidates x batch). The choice follows from the model, the input shape
and the attack's hyperparameters alone, never from a timing, so a run stays reproducible from its config; the
two kernels agree to float rounding (tested). CUDA convolutions never consult the switch.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

NATIVE_CONV_MACS = 1_000_000
"""Largest multiply-adds of one convolution call at which the native kernels are used (the measured crossover:
LeNet's 230,400 per image ran faster natively for up to 4 images a pass and slower for 10)."""


def largest_convolution_macs(model: nn.Module, image_shape: tuple[int, ...]) -> int:
    """Multiply-adds of ``model``'s largest convolution for one input of ``image_shape`` (C, H, W); 0 without
    convolutions. Found with one forward pass of zeros, in eval mode and without gradients; the model's modes are
    restored and its weights untouched."""
    sizes: list[int] = []

    def record(layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> None:
        assert isinstance(layer, nn.modules.conv._ConvNd)
        positions = args[0] if layer.transposed else output
        sizes.append(positions[0].numel() * layer.weight[0].numel())

    convolutions = [m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)]
    if not convolutions:
        return 0
    modes = {module: module.training for module in model.modules()}
    hooks = [layer.register_forward_hook(record) for layer in convolutions]
    parameter = next(model.parameters())
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, *image_shape, dtype=parameter.dtype, device=parameter.device))
    finally:
        for hook in hooks:
            hook.remove()
        for module, training in modes.items():
            module.training = training
    return max(sizes, default=0)


def native_convolutions(model: nn.Module, image_shape: tuple[int, ...], images_per_pass: int) -> bool:
    """Whether a pass of ``images_per_pass`` inputs through ``model`` should use the native CPU kernels."""
    largest = largest_convolution_macs(model, image_shape)
    return 0 < largest * images_per_pass <= NATIVE_CONV_MACS


@contextmanager
def cpu_convolutions(model: nn.Module, image_shape: tuple[int, ...], images_per_pass: int) -> Iterator[bool]:
    """Within the block, CPU convolutions use the native kernels when ``native_convolutions`` says so (oneDNN's
    switch off, restored on exit, also on error); yields whether they do."""
    native = native_convolutions(model, image_shape, images_per_pass)
    enabled = torch.backends.mkldnn.enabled
    if native:
        torch.backends.mkldnn.enabled = False
    try:
        yield native
    finally:
        torch.backends.mkldnn.enabled = enabled
