"""Soteria: prune the representation feeding the last linear layer (Sun et al., CVPR 2021, arXiv 2012.06043).

The client scores each feature i of the representation r (the input of the victim's last ``nn.Linear``) by
``||dr_i/dx|| / |r_i|`` summed over the batch, and prunes the ``pruning_rate`` fraction with the smallest score,
i.e. the features whose removal moves a reconstruction ``x`` the most per unit of representation change
(largest ``|r_i| / ||dr_i/dx||``, the paper's bound on ``||x - x'||``). Pruning feature i zeroes column i of the
last linear layer's weight gradient; every other gradient is shared unchanged. This is the rule of the authors'
code (jeremy313/Soteria), generalised from its ResNet-18 to any victim ending in ``nn.Linear``: the
representation is captured with a forward hook on that layer, and the Jacobian row norms come from batched
reverse-mode (one product a feature) or forward-mode (one product an input pixel) passes, whichever is fewer.

Attacker-side simulation: zero, in each trial, the weight-gradient columns that are all zero in the received
update (the pruning mask is visible in the zero pattern). Exact for a trial equal to the client's gradient.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from ggl.defenses.base import Defense, LinearSimulation, as_float, check_trials, register_defense
from ggl.fl.client import SharedUpdate
from ggl.fl.labels import last_linear_indices

JACOBIAN_CHUNK = 64
"""Jacobian-vector (or vector-Jacobian) products computed in one batched pass."""


def _last_linear(model: nn.Module) -> nn.Linear:
    linears = [module for module in model.modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise ValueError(f"soteria needs a victim ending in nn.Linear; {type(model).__name__} has none")
    return linears[-1]


def _representation_function(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """``x -> r``: the input of the last linear layer, captured by a forward hook, with detached parameters
    (only input-Jacobians are needed, never weight gradients)."""
    fc = _last_linear(model)
    detached = {name: parameter.detach() for name, parameter in model.named_parameters()}

    def representation(inputs: torch.Tensor) -> torch.Tensor:
        captured: list[torch.Tensor] = []
        handle = fc.register_forward_hook(lambda module, args, output: captured.append(args[0]))
        try:
            torch.func.functional_call(model, detached, (inputs,))
        finally:
            handle.remove()
        if captured[-1].ndim != 2:
            raise ValueError(
                f"soteria needs a (B, F) input to the last linear layer, got shape {tuple(captured[-1].shape)}"
            )
        return captured[-1]

    return representation


def _row_norms_reverse(function: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """(F, B) norms of ``dr_bi/dx_b`` from batched vector-Jacobian products, one per feature."""
    inputs = images.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        representation = function(inputs)
    batch, features = representation.shape
    norms = torch.empty(features, batch, dtype=representation.dtype, device=representation.device)
    identity = torch.eye(features, dtype=representation.dtype, device=representation.device)
    for start in range(0, features, JACOBIAN_CHUNK):
        stop = min(start + JACOBIAN_CHUNK, features)
        cotangents = identity[start:stop].unsqueeze(1).expand(stop - start, batch, features)
        (rows,) = torch.autograd.grad(
            representation, inputs, grad_outputs=cotangents, retain_graph=stop < features, is_grads_batched=True
        )
        norms[start:stop] = torch.linalg.vector_norm(rows.flatten(2), dim=2)
    return norms


def _row_norms_forward(function: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor) -> torch.Tensor:
    """(F, B) norms of ``dr_bi/dx_b`` from batched Jacobian-vector products, one per input entry."""
    batch, dimensions = images.shape[0], images[0].numel()
    identity = torch.eye(dimensions, dtype=images.dtype, device=images.device)
    squares: torch.Tensor | None = None

    def column(tangent: torch.Tensor) -> torch.Tensor:
        return torch.func.jvp(function, (images,), (tangent,))[1]

    for start in range(0, dimensions, JACOBIAN_CHUNK):
        stop = min(start + JACOBIAN_CHUNK, dimensions)
        tangents = identity[start:stop].view(stop - start, 1, *images.shape[1:]).expand(-1, batch, *images.shape[1:])
        chunk = torch.func.vmap(column)(tangents).pow(2).sum(0)  # (B, F)
        squares = chunk if squares is None else squares + chunk
    assert squares is not None
    return squares.sqrt().T


def representation_scores(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Soteria's per-feature score ``sum_b ||dr_bi/dx_b|| / |r_bi|`` (F,) and the representation r (B, F).

    The Jacobian of r with respect to each input is F x D (D = C*H*W); its row norms come from F reverse-mode
    or D forward-mode products, whichever is fewer. Features that are zero for every sample score ``inf``
    (never pruned; their column is zero anyway). The model's mode is respected (victims are in eval mode, so
    samples do not interact).
    """
    function = _representation_function(model)
    with torch.no_grad():
        representation = function(images.detach())
    features, dimensions = representation.shape[1], images[0].numel()
    if dimensions < features:
        norms = _row_norms_forward(function, images.detach())
    else:
        norms = _row_norms_reverse(function, images)
    magnitude = representation.abs().T
    ratio = torch.where(magnitude > 0, norms / magnitude.clamp_min(1e-30), torch.inf)
    return ratio.sum(1), representation


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
        weight_index = last_linear_indices(model)[0]
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
        return self.linear_simulation(received).apply(trial_gradients)

    def linear_simulation(self, received: SharedUpdate) -> LinearSimulation:
        """``simulate`` as a column mask on the last 2-D (linear weight) gradient."""
        matrices = [index for index, g in enumerate(received.gradients) if g.ndim == 2]
        if not matrices:
            raise ValueError("soteria: the received update has no 2-D (linear weight) gradient")
        weight = received.gradients[matrices[-1]]
        kept_columns = (weight != 0).any(dim=0)
        return LinearSimulation(masks={matrices[-1]: kept_columns.to(weight.dtype).expand_as(weight)})
