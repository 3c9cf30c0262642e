"""Gradient quantization: stochastic uniform ``quantization(bits, scale=max|l2)`` (QSGD) and ``sign`` (signSGD).

``quantization``: per tensor, with s = 2**(bits-1) - 1 magnitude levels and a scale m (the tensor's largest
magnitude by default, its L2 norm for QSGD's original scaling), each entry becomes ``sign(g) * m * l / s`` where
``l`` is ``floor(s|g|/m)`` or that plus one, chosen at random so that the expectation is ``g`` (unbiased). The
2s + 1 values fit in ``bits`` bits. Attacker-side simulation: the identity, i.e. the deterministic expectation
``E[Q(t)] = t`` of the trial's quantization; like additive noise, the rounding noise is zero-mean and its draw
is unknown to the attacker.

``sign``: each tensor becomes ``sign(g) * mean(|g|)`` (signSGD, Bernstein et al., ICML 2018, arXiv 1802.04434,
rescaled by the layer's mean magnitude so that the step size stays comparable). Deterministic, so the simulation
computes exactly the same value; its gradient uses a straight-through estimator for the sign (identity) plus
the exact derivative of the mean magnitude, because the sign's own derivative is zero almost everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ggl.defenses.base import Defense, as_choice, as_int, check_trials, register_defense, sample_like
from ggl.fl.client import SharedUpdate

QUANTIZATION_SCALES = ("max", "l2")


def quantization_levels(bits: int) -> int:
    """Number s of non-zero magnitude levels for ``bits`` bits: ``2**(bits-1) - 1`` (plus sign and zero)."""
    return 2 ** (bits - 1) - 1


@register_defense
class Quantization(Defense):
    """Unbiased stochastic uniform quantization of every gradient tensor.

    QSGD (Alistarh et al., "QSGD: Communication-Efficient SGD via Gradient Quantization and Encoding",
    NeurIPS 2017, arXiv 1610.02132).

    Args:
        bits: bits per entry including the sign, in [2, 16] (default 8; 2 bits = ternary {-m, 0, m}).
        scale: ``max`` (default; m = the tensor's largest magnitude, so 8 bits are nearly lossless) or ``l2``
            (m = the tensor's L2 norm, QSGD's choice; much coarser on large tensors).
    """

    name = "quantization"
    parameters = ("bits", "scale")
    deterministic = False

    def __init__(self, bits: int = 8, scale: str = "max") -> None:
        self.bits = as_int(self.name, "bits", bits, low=2, high=16)
        self.scale = as_choice(self.name, "scale", scale, QUANTIZATION_SCALES)

    def quantize(self, gradient: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One tensor's quantization; its values lie on ``sign * m * l / s`` for integers 0 <= l <= s."""
        levels = quantization_levels(self.bits)
        magnitude = gradient.abs()
        m = magnitude.max() if self.scale == "max" else torch.linalg.vector_norm(gradient)
        if float(m) == 0.0:
            return gradient.clone()
        position = magnitude / m * levels
        lower = position.floor()
        level = lower + (sample_like(gradient, generator, torch.rand) < position - lower).to(gradient.dtype)
        return torch.sign(gradient) * m * level / levels

    def apply(self, update: SharedUpdate, *, generator: torch.Generator, **_: Any) -> list[torch.Tensor]:
        return [self.quantize(g, generator) for g in update.gradients]


def sign_compress(tensor: torch.Tensor, batched: bool) -> torch.Tensor:
    """``sign(t) * mean(|t|)`` per tensor, or per candidate over all but the leading dim when ``batched``."""
    if batched:
        scale = tensor.abs().flatten(1).mean(1).view(-1, *([1] * (tensor.ndim - 1)))
    else:
        scale = tensor.abs().mean()
    return torch.sign(tensor) * scale


@register_defense
class Sign(Defense):
    """signSGD with the layer's mean magnitude: each tensor becomes ``sign(g) * mean(|g|)``.

    signSGD (Bernstein et al., ICML 2018, arXiv 1802.04434); the mean-magnitude rescaling keeps the update's
    L1 norm. No parameters.
    """

    name = "sign"
    parameters = ()

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return [sign_compress(g, batched=False) for g in update.gradients]

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Exactly the defense's value; the sign's gradient passes straight through (identity)."""
        check_trials(trial_gradients, received)
        return [sign_compress(t, batched=True) + (t - t.detach()) for t in trial_gradients]
