"""DP-SGD (Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133).

The client recomputes its update from the private batch: per-sample gradients (``torch.func.vmap`` over
``torch.func.grad`` of a ``functional_call``), each clipped to L2 norm ``max_grad_norm`` = C, summed, plus
Gaussian noise N(0, sigma^2 C^2) with sigma = ``noise_multiplier``, divided by the batch size B (as opacus does
with its expected batch size). ``privacy_guarantee`` gives the (epsilon, delta) of running it for a number of
steps at a sampling rate, from the RDP accountant of Google's ``dp-accounting`` package (Mironov, "Renyi
Differential Privacy", CSF 2017; sampled Gaussian mechanism, Mironov, Talwar, Zhang 2019).

Attacker-side simulation: the noise is zero-mean and its draw unknown, so it is not simulated (identity). With a
batch of one the per-sample clipping is simulated exactly (each trial is clipped to C, which is what the client
did to its single gradient); with B > 1 the trial is a batch mean and per-sample clipping cannot be reproduced
from it, so the trial is used as is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ggl.checks import non_negative_int
from ggl.defenses.base import (
    MAX_SCALE,
    SCALE_REASON,
    Defense,
    LinearSimulation,
    as_float,
    check_trials,
    clip_factors,
    group_norms,
    register_defense,
    sample_like,
)
from ggl.fl.client import SharedUpdate


def per_sample_gradients(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
    """Cross-entropy gradient of each sample separately: one tensor (B, *parameter.shape) per parameter.

    Aligned with ``model.parameters()``; the model's mode is respected and its ``.grad`` fields are untouched.
    """
    names = [name for name, _ in model.named_parameters()]
    parameters = tuple(p.detach() for p in model.parameters())
    buffers = {name: buffer.detach() for name, buffer in model.named_buffers()}

    def sample_loss(params: tuple[torch.Tensor, ...], image: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        state = {**buffers, **dict(zip(names, params))}
        logits = torch.func.functional_call(model, state, (image.unsqueeze(0),))
        return F.cross_entropy(logits, label.unsqueeze(0))

    with torch.enable_grad():
        gradients = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0, 0))(parameters, images, labels)
    return [g.detach() for g in gradients]


def clip_per_sample(per_sample: Sequence[torch.Tensor], max_grad_norm: float) -> list[torch.Tensor]:
    """Scale each sample's gradient (global norm over all tensors, leading dim = sample) to norm <= C."""
    factors = clip_factors(group_norms(per_sample, batched=True, per_layer=False), max_grad_norm)
    return [g * f.view(-1, *([1] * (g.ndim - 1))) for g, f in zip(per_sample, factors)]


@dataclass(frozen=True)
class PrivacyGuarantee:
    """(epsilon, delta)-DP of DP-SGD after ``steps`` steps at ``sample_rate`` with ``noise_multiplier``.

    ``order`` is the Renyi order that gave the tightest epsilon; ``accountant`` names the method.
    """

    epsilon: float
    delta: float
    steps: int
    sample_rate: float
    noise_multiplier: float
    order: float
    accountant: str = "rdp"


def privacy_guarantee(noise_multiplier: float, sample_rate: float, steps: int, delta: float = 1e-5) -> PrivacyGuarantee:
    """Epsilon at ``delta`` of ``steps`` DP-SGD steps with Poisson sampling rate ``sample_rate`` (RDP accountant).

    Args:
        noise_multiplier: sigma, > 0 (sigma = 0 gives epsilon = inf).
        sample_rate: probability q that a record is in a batch (batch size / dataset size), in (0, 1].
        steps: number of noisy steps, >= 0.
        delta: target delta, in (0, 1).
    """
    import dp_accounting

    sigma = as_float("privacy_guarantee", "noise_multiplier", noise_multiplier, low=0.0)
    rate = as_float("privacy_guarantee", "sample_rate", sample_rate, low=0.0, high=1.0, low_open=True)
    delta = as_float("privacy_guarantee", "delta", delta, low=0.0, high=1.0, low_open=True, high_open=True)
    steps = non_negative_int("privacy_guarantee: steps", steps)
    if steps == 0:
        return PrivacyGuarantee(0.0, delta, 0, rate, sigma, math.nan)
    if sigma == 0.0:
        return PrivacyGuarantee(math.inf, delta, steps, rate, sigma, math.nan)
    accountant = dp_accounting.rdp.RdpAccountant()
    sampled = dp_accounting.PoissonSampledDpEvent(rate, dp_accounting.GaussianDpEvent(sigma))
    accountant.compose(dp_accounting.SelfComposedDpEvent(sampled, steps))
    epsilon, order = accountant.get_epsilon_and_optimal_order(delta)
    return PrivacyGuarantee(float(epsilon), delta, steps, rate, sigma, float(order))


@register_defense
class DPSGD(Defense):
    """DP-SGD on the client's batch: per-sample clipping to C, Gaussian noise N(0, sigma^2 C^2), mean.

    Abadi et al., "Deep Learning with Differential Privacy", CCS 2016, arXiv 1607.00133. Needs the victim and
    its batch; the received update's gradients are replaced (it must be a FedSGD update of that batch).

    Args:
        max_grad_norm: per-sample clipping bound C, > 0 (default 1.0).
        noise_multiplier: sigma, >= 0 (default 1.0); the noise std on the summed gradient is sigma * C, which
            must be at most ``MAX_SCALE`` (1e6; a larger one overflows float32).
    """

    name = "dpsgd"
    parameters = ("max_grad_norm", "noise_multiplier")
    needs_batch = True
    fedsgd_only = True
    deterministic = False

    def __init__(self, max_grad_norm: float = 1.0, noise_multiplier: float = 1.0) -> None:
        self.max_grad_norm = as_float(self.name, "max_grad_norm", max_grad_norm, low=0.0, low_open=True)
        self.noise_multiplier = as_float(
            self.name, "noise_multiplier", noise_multiplier, low=0.0, high=MAX_SCALE, reason=SCALE_REASON
        )
        std = self.noise_multiplier * self.max_grad_norm
        if std > MAX_SCALE:
            raise ValueError(
                f"{self.name}: noise_multiplier * max_grad_norm (the noise std, {std:g}) must be at most "
                f"{MAX_SCALE:g} ({SCALE_REASON})"
            )

    def apply(
        self,
        update: SharedUpdate,
        *,
        model: nn.Module | None,
        images: torch.Tensor | None,
        labels: torch.Tensor | None,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        assert model is not None and images is not None and labels is not None
        batch = int(images.shape[0])
        clipped = clip_per_sample(per_sample_gradients(model, images, labels.long()), self.max_grad_norm)
        std = self.noise_multiplier * self.max_grad_norm
        return [(g.sum(0) + std * sample_like(g[0], generator, torch.randn)) / batch for g in clipped]

    def privacy(self, sample_rate: float, steps: int, delta: float = 1e-5) -> PrivacyGuarantee:
        """This setting's guarantee after ``steps`` steps at ``sample_rate`` (see ``privacy_guarantee``)."""
        return privacy_guarantee(self.noise_multiplier, sample_rate, steps, delta)

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Clip each trial to C when the batch is one sample; identity otherwise (noise is not simulated)."""
        check_trials(trial_gradients, received)
        if received.num_samples != 1:
            return list(trial_gradients)
        return clip_per_sample(trial_gradients, self.max_grad_norm)

    def linear_simulation(self, received: SharedUpdate) -> LinearSimulation:
        """``simulate`` as one clipping group over the whole update (one sample), else the identity."""
        if received.num_samples != 1:
            return LinearSimulation()
        return LinearSimulation(clipped=(tuple(range(len(received.gradients))),), bound=self.max_grad_norm)
