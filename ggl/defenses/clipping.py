"""Norm clipping: ``clipping(bound, mode=global|per_layer)`` scales the update so its L2 norm is at most ``bound``.

Attacker-side simulation (the attacker knows ``bound`` and sees the received norms). For each clipping group
(the whole update in ``global`` mode, each tensor in ``per_layer`` mode) it reads the received norm ``n``:

- ``n < bound`` (relative tolerance 1e-4): the client's gradient was shorter than the bound and nothing was
  clipped, so the trial is compared as is (identity). Trials longer than the bound are not shortened: they
  cannot have produced an unclipped update, and the objective should say so.
- otherwise the group was clipped: each trial is clipped exactly as the client clipped,
  ``t * min(1, bound / ||t||)``, which puts every long trial on the received norm (``n == bound``) so that only
  its direction is compared. This is GGL's "clip to the norm of the received gradient" rule made exact.

For a trial equal to the client's gradient the simulation reproduces the defended update exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ggl.defenses.base import (
    Defense,
    LinearSimulation,
    as_choice,
    as_float,
    check_trials,
    clip_factors,
    group_norms,
    register_defense,
)
from ggl.fl.client import SharedUpdate

CLIPPING_MODES = ("global", "per_layer")
NORM_TOLERANCE = 1e-4
"""Relative tolerance under which a received norm counts as "below the bound" (unclipped)."""


@register_defense
class Clipping(Defense):
    """Clip the update's L2 norm to ``bound``: ``g * min(1, bound / ||g||)``.

    The norm is the global norm over all tensors (``mode="global"``, GGL's setting with bound 4) or each
    tensor's own norm (``mode="per_layer"``). As used against leakage in GGL (Li et al., CVPR 2022,
    arXiv 2203.15696); the clipping step of DP-FedAvg (McMahan et al., ICLR 2018, arXiv 1710.06963).

    Args:
        bound: the largest allowed L2 norm, > 0 (default 4.0).
        mode: ``global`` (default) or ``per_layer``.
    """

    name = "clipping"
    parameters = ("bound", "mode")

    def __init__(self, bound: float = 4.0, mode: str = "global") -> None:
        self.bound = as_float(self.name, "bound", bound, low=0.0, low_open=True)
        self.mode = as_choice(self.name, "mode", mode, CLIPPING_MODES)

    def _clip(self, tensors: Sequence[torch.Tensor], batched: bool) -> list[torch.Tensor]:
        norms = group_norms(tensors, batched=batched, per_layer=self.mode == "per_layer")
        factors = clip_factors(norms, self.bound)
        if batched:
            return [t * f.view(-1, *([1] * (t.ndim - 1))) for t, f in zip(tensors, factors)]
        return [t * f for t, f in zip(tensors, factors)]

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return self._clip(update.gradients, batched=False)

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Identity for groups the received norm shows unclipped; the defense's own clipping for the others."""
        check_trials(trial_gradients, received)
        received_norms = group_norms(received.gradients, batched=False, per_layer=self.mode == "per_layer")
        clipped = self._clip(trial_gradients, batched=True)
        return [
            trial if float(norm) < self.bound * (1 - NORM_TOLERANCE) else trial_clipped
            for trial, trial_clipped, norm in zip(trial_gradients, clipped, received_norms)
        ]

    def linear_simulation(self, received: SharedUpdate) -> LinearSimulation:
        """``simulate`` as clipping groups: the whole update, or each tensor, whose received norm reached the bound."""
        norms = group_norms(received.gradients, batched=False, per_layer=self.mode == "per_layer")
        reached = [i for i, norm in enumerate(norms) if not float(norm) < self.bound * (1 - NORM_TOLERANCE)]
        groups = tuple((i,) for i in reached) if self.mode == "per_layer" else ((tuple(reached),) if reached else ())
        return LinearSimulation(clipped=groups, bound=self.bound)
