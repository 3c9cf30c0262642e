"""Gradient sparsification (GGL's "gradient compression", Lin et al.'s deep gradient compression, DLG's pruning).

``sparsification(ratio, mode=per_layer|global)`` keeps the ``1 - ratio`` fraction of entries with the largest
magnitude and zeroes the rest. Counts are exact: a group of n entries keeps ``n - floor(ratio * n)`` of them
(ties broken by ``torch.topk``), per tensor (``per_layer``, GGL's setting) or over the whole update (``global``).

Attacker-side simulation: multiply each trial by the received update's non-zero mask. For a trial equal to the
client's gradient this reproduces the defended update exactly (entries kept but exactly zero are zero either way).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from ggl.defenses.base import Defense, LinearSimulation, as_choice, as_float, check_trials, register_defense
from ggl.fl.client import SharedUpdate

SPARSIFICATION_MODES = ("per_layer", "global")


def kept_count(numel: int, ratio: float) -> int:
    """Entries kept out of ``numel`` when the ``ratio`` fraction is pruned: ``numel - floor(ratio * numel)``."""
    return numel - math.floor(ratio * numel + 1e-9)


def top_magnitude_mask(values: torch.Tensor, keep: int) -> torch.Tensor:
    """Boolean mask shaped like ``values`` selecting exactly ``keep`` entries of largest magnitude."""
    flat = values.reshape(-1)
    mask = torch.zeros(flat.shape, dtype=torch.bool, device=flat.device)
    if keep > 0:
        mask[torch.topk(flat.abs(), keep, sorted=False).indices] = True
    return mask.view_as(values)


@register_defense
class Sparsification(Defense):
    """Zero the ``ratio`` fraction of smallest-magnitude gradient entries.

    The "gradient compression" defense of DLG (Zhu et al., NeurIPS 2019, arXiv 1906.08935) and GGL (Li et al.,
    CVPR 2022, arXiv 2203.15696; per-layer, 20% pruned by default there); deep gradient compression (Lin et al.,
    ICLR 2018, arXiv 1712.01887).

    Args:
        ratio: fraction of entries set to zero, in [0, 1) (default 0.2).
        mode: ``per_layer`` (default; each tensor keeps its own top fraction) or ``global`` (one threshold for all).
    """

    name = "sparsification"
    parameters = ("ratio", "mode")

    def __init__(self, ratio: float = 0.2, mode: str = "per_layer") -> None:
        self.ratio = as_float(self.name, "ratio", ratio, low=0.0, high=1.0, high_open=True)
        self.mode = as_choice(self.name, "mode", mode, SPARSIFICATION_MODES)

    def masks(self, gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The boolean keep-masks for ``gradients`` (one per tensor)."""
        if self.mode == "per_layer":
            return [top_magnitude_mask(g, kept_count(g.numel(), self.ratio)) for g in gradients]
        flat = torch.cat([g.reshape(-1) for g in gradients])
        mask = top_magnitude_mask(flat, kept_count(flat.numel(), self.ratio))
        return [m.view_as(g) for m, g in zip(torch.split(mask, [g.numel() for g in gradients]), gradients)]

    def apply(self, update: SharedUpdate, **_: Any) -> list[torch.Tensor]:
        return [g * m for g, m in zip(update.gradients, self.masks(update.gradients))]

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Each trial times the received update's non-zero mask (broadcast over the population)."""
        check_trials(trial_gradients, received)
        return [t * (r != 0).to(t.dtype).unsqueeze(0) for t, r in zip(trial_gradients, received.gradients)]

    def linear_simulation(self, received: SharedUpdate) -> LinearSimulation:
        """``simulate`` as the received update's non-zero masks (tensors with no zero need none)."""
        masks = {i: (r != 0).to(r.dtype) for i, r in enumerate(received.gradients) if not bool((r != 0).all())}
        return LinearSimulation(masks=masks)
