"""Deep Leakage from Gradients: L-BFGS on dummy pixels (and soft labels) to match the shared gradient."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, register_attack
from ggl.attacks.objective import distance_scale
from ggl.checks import positive_int, positive_number
from ggl.fl.labels import last_linear_indices

LOSS_PERCENT = 100.0
"""L-BFGS sees the gradient distance in percent of the received update's own size (see ``LBFGSGradientMatching``)."""


class LBFGSGradientMatching(GradientInversionAttack):
    """Shared machinery of DLG and iDLG: L-BFGS (no line search) on the dummy input, one call a search step.

    One search step is one ``LBFGS.step(closure)`` with up to ``max_iter`` inner iterations, through Lightning's
    optimiser under manual optimisation; every closure call is one objective evaluation. The last finite iterate
    is kept, so a diverging run returns its best-known point. Subclasses decide whether labels are optimised
    (``optimise_labels``).

    Scale-free stopping: L-BFGS's stopping tests are absolute (``tolerance_grad`` 1e-7 on the largest input
    gradient, ``tolerance_change`` 1e-9 on loss and step changes, and a fixed 1e-10 curvature threshold), so on a
    raw distance they act at a level set by the update's norm: norm clipping to a small bound shrinks the loss by
    orders of magnitude and the search stopped far from the optimum. L-BFGS therefore minimises the distance in
    percent of the received update's own size, ``100 * D(trial, received) / D(0, received)``
    (``ggl.attacks.objective.distance_scale``), which is unchanged when both gradients are rescaled together.
    The factor 100 keeps the tolerances about where they acted on the raw distance of undefended LeNet updates,
    whose mean squared layer norm is 61-121 on four of the five documented victims. Traces, losses and the choice
    between restarts stay in the metric's own units.

    Args:
        iterations: L-BFGS steps (300). lr: L-BFGS step size (1.0). max_iter: inner iterations per step (20,
            PyTorch's default, as in the reference code). history_size: L-BFGS memory (100).
        init_scale: std of the Gaussian start (1.0). ``shared``: restarts, budget, seed, adaptive, metric ("l2"),
            see ``GradientInversionAttack``.
    """

    optimise_labels: ClassVar[bool] = False

    def __init__(
        self,
        *,
        iterations: int = 300,
        lr: float = 1.0,
        max_iter: int = 20,
        history_size: int = 100,
        init_scale: float = 1.0,
        **shared: Any,
    ) -> None:
        lr, init_scale = positive_number("lr", lr), positive_number("init_scale", init_scale)
        max_iter, history_size = positive_int("max_iter", max_iter), positive_int("history_size", history_size)
        super().__init__(iterations=iterations, **shared)

    def configure_optimizers(self) -> torch.optim.LBFGS:
        """The trial's start (Gaussian images, and Gaussian label logits for DLG) from ``self.rng``, and L-BFGS."""
        target = self.target
        self.inputs = self.random_images(self.hparams.init_scale).requires_grad_(True)
        variables = [self.inputs]
        if self.optimise_labels:
            num_classes = target.update.gradients[last_linear_indices(target.model)[0]].shape[0]
            logits = torch.randn((target.batch_size, num_classes), generator=self.rng)
            self.label_logits = logits.to(self.device).requires_grad_(True)
            variables.append(self.label_logits)
        self.variables = variables
        self.best_iterate: tuple[float, list[torch.Tensor]] = (float("inf"), [v.detach().clone() for v in variables])
        self.last_step_iterations = self.hparams.max_iter
        self.lbfgs = torch.optim.LBFGS(
            variables, lr=self.hparams.lr, max_iter=self.hparams.max_iter, history_size=self.hparams.history_size
        )
        return self.lbfgs

    def prepare(self, target: AttackTarget) -> None:
        self.fixed_labels = None if self.optimise_labels else self.resolve_labels()
        scale = distance_scale(self.target_gradients, self.hparams.metric)
        self.loss_unit = scale / LOSS_PERCENT if math.isfinite(scale) and scale > 0 else 1.0

    def _labels(self) -> torch.Tensor:
        return self.label_logits if self.optimise_labels else self.fixed_labels  # type: ignore[return-value]

    def _closure(self) -> torch.Tensor:
        """The distance for the best-iterate record; L-BFGS gets it, and its gradient, in ``loss_unit`` units."""
        loss = self.gradient_loss(self.inputs, self._labels())
        scaled = loss / self.loss_unit
        gradients = torch.autograd.grad(scaled, self.variables)
        for variable, gradient in zip(self.variables, gradients):
            variable.grad = gradient
        value = float(loss.detach())
        if value < self.best_iterate[0]:  # NaN compares False: a diverged iterate is never kept
            self.best_iterate = (value, [v.detach().clone() for v in self.variables])
        return scaled.detach()

    def search_step(self, step: int) -> float:
        state = self.lbfgs.state[self.inputs]
        before = state.get("n_iter", 0)
        self.optimizers().step(closure=self._closure)  # type: ignore[union-attr]
        self.last_step_iterations = state.get("n_iter", 0) - before
        return self.best_iterate[0]

    def search_converged(self) -> bool:
        """L-BFGS ended the trial's last step before ``max_iter`` iterations: one of its tolerances was met."""
        return self.last_step_iterations < self.hparams.max_iter

    def _best_labels(self) -> torch.Tensor:
        if self.optimise_labels:
            return self.best_iterate[1][1].argmax(dim=-1)
        return self._labels()

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        loss, variables = self.best_iterate
        return self.to_pixels(variables[0]), self._best_labels(), loss


@register_attack("dlg")
class DLG(LBFGSGradientMatching):
    """Deep Leakage from Gradients (Zhu, Liu, Han, NeurIPS 2019, arXiv 1906.08935).

    Dummy images (Gaussian in the model's input space) and dummy soft labels (logits, softmax'd into the
    cross-entropy) are optimised jointly with L-BFGS to match the shared gradient in squared L2. The recovered
    labels are the argmax of the optimised soft labels. The search is unconstrained; pixels are clamped to [0, 1]
    only in the returned images. Arguments: see ``LBFGSGradientMatching``.
    Shapes: reconstructs B images (B, C, H, W) for an update of B samples.

    Example:
        >>> attack = make_attack("dlg", iterations=300, seed=0)
        >>> rec = attack.reconstruct(AttackTarget(model, update, image_shape=(1, 32, 32)))
    """

    optimise_labels = True
