"""Soteria: prune the representation feeding the last linear layer (Sun et al., CVPR 2021, arXiv 2012.06043).

The client scores each feature i of the representation r (the input of the victim's last ``nn.Linear``) by
``||dr_i/dx|| / |r_i|`` summed over the batch, and prunes the ``pruning_rate`` fraction with the smallest score,
i.e. the features whose removal moves a reconstruction ``x`` the most per unit of representation change
(largest ``|r_i| / ||dr_i/dx||``, the paper's bound on ``||x - x'||``). Pruning feature i zeroes column i of the
last linear layer's weight gradient; every other gradient is shared unchanged. This is the rule of the authors'
code (jeremy313/Soteria), generalised from its ResNet-18 to any victim ending in ``nn.Linear``: the
representation is captured with a forward hook on that layer, and the Jacobian row norms come from one batched
backward pass per chunk of features.

Attacker-side simulation: zero, in each trial, the weight-gradient columns that are all zero in the received
update (the pruning mask is visible in the zero pattern). Exact for a trial equal to the client's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from ggl.defenses.base import Defense, as_float, check_trials, register_defense
from ggl.fl.client import SharedUpdate
from ggl.fl.labels import last_linear_indices

FEATURE_CHUNK = 64
"""Features whose input-Jacobians are computed in one batched backward pass."""


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"soteria needs a victim ending in nn.Linear; {type(model).__name__} has none")
    return linears[-1]


def representation_scores(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soteria's per-feature score ``sum_b ||dr_bi/dx_b|| / |r_bi|`` (F,) and the representation r (B, F).

    Features that are zero for every sample score ``inf`` (never pruned; their column is zero anyway).
    The model's mode is respected (victims are in eval mode, so samples do not interact).
    """
    fc = _last_linear(model)
    captured: list[torch.Tensor] = []
    handle = fc.register_forward_hook(lambda module, inputs, output: captured.append(inputs[0]))
    inputs = images.detach().clone().requires_grad_(True)
    # Parameters are swapped for detached copies: only input-Jacobians are needed, not weight gradients.
    detached = {name: parameter.detach() for name, parameter in model.named_parameters()}
    try:
        with torch.enable_grad():
            torch.func.functional_call(model, detached, (inputs,))
    finally:
        handle.remove()
    representation = captured[-1]
    if representation.ndim != 2:
        raise ValueError(
            f"soteria needs a (B, F) input to the last linear layer, got shape {tuple(representation.shape)}"
        )
    batch, features = representation.shape
    jacobian_norms = torch.empty(features, batch, dtype=representation.dtype, device=representation.device)
    identity = torch.eye(features, dtype=representation.dtype, device=representation.device)
    for start in range(0, features, FEATURE_CHUNK):
        stop = min(start + FEATURE_CHUNK, features)
        cotangents = identity[start:stop].unsqueeze(1).expand(stop - start, batch, features)
        (rows,) = torch.autograd.grad(
            representation, inputs, grad_outputs=cotangents, retain_graph=stop < features, is_grads_batched=True
        )
        jacobian_norms[start:stop] = torch.linalg.vector_norm(rows.flatten(2), dim=2)
    magnitude = representation.detach().abs().T
    ratio = torch.where(magnitude > 0, jacobian_norms / magnitude.clamp_min(1e-30), torch.inf)
    return ratio.sum(1), representation.detach()


@register_defense
class Soteria(Defense):
    """Soteria (Sun et al., "Soteria: Provable Defense against Privacy Leakage in Federated Learning from
    Representation Perspective", CVPR 2021, arXiv 2012.06043).

    Needs the victim and its batch. Zeroes ``floor(pruning_rate * F)`` columns of the last linear layer's weight
    gradient, F = that layer's input features.

    Args:
        pruning_rate: fraction of representation features pruned, in [0, 1) (default 0.1, GGL's setting).
    """

    name = "soteria"
    parameters = ("pruning_rate",)
    needs_batch = True

    def __init__(self, pruning_rate: float = 0.1) -> None:
        self.pruning_rate = as_float(self.name, "pruning_rate", pruning_rate, low=0.0, high=1.0, high_open=True)

    def pruned_features(self, model: nn.Module, images: torch.Tensor) -> torch.Tensor:
        """Indices (sorted) of the pruned representation features for this batch."""
        scores, _ = representation_scores(model, images)
        count = math.floor(self.pruning_rate * scores.numel() + 1e-9)
        return torch.topk(scores, count, largest=False).indices.sort().values

    def apply(
        self,
        update: SharedUpdate,
        *,
        model: nn.Module | None,
        images: torch.Tensor | None,
        **_: Any,
    ) -> list[torch.Tensor]:
        assert model is not None and images is not None
        weight_index, _ = last_linear_indices(model)
        weight_gradient = update.gradients[weight_index]
        if tuple(weight_gradient.shape) != tuple(_last_linear(model).weight.shape):
            raise ValueError("soteria: the update does not match the model (last linear layer shapes differ)")
        keep = torch.ones(weight_gradient.shape[1], dtype=weight_gradient.dtype, device=weight_gradient.device)
        keep[self.pruned_features(model, images).to(keep.device)] = 0
        gradients = list(update.gradients)
        gradients[weight_index] = weight_gradient * keep
        return gradients

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Zero the columns of the last 2-D (linear weight) gradient that are all zero in the received update."""
        check_trials(trial_gradients, received)
        matrices = [index for index, g in enumerate(received.gradients) if g.ndim == 2]
        if not matrices:
            raise ValueError("soteria: the received update has no 2-D (linear weight) gradient")
        weight_index = matrices[-1]
        kept_columns = (received.gradients[weight_index] != 0).any(dim=0)
        simulated = list(trial_gradients)
        simulated[weight_index] = simulated[weight_index] * kept_columns.to(simulated[weight_index].dtype)
        return simulated
