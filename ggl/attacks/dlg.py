"""Deep Leakage from Gradients: L-BFGS on dummy pixels (and soft labels) to match the shared gradient."""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, register_attack
from ggl.attacks.batched import ENGINES
from ggl.attacks.lbfgs import BatchedLBFGS
from ggl.attacks.objective import distance_scale
from ggl.checks import boolean, one_of, positive_int, positive_number
from ggl.fl.labels import last_linear_indices

LOSS_PERCENT = 100.0
"""L-BFGS sees the gradient distance in percent of the received update's own size (see ``LBFGSGradientMatching``)."""


class LBFGSGradientMatching(GradientInversionAttack):
    """Shared machinery of DLG and iDLG: L-BFGS (no line search) on the dummy input, one call a search step.

    One search step is one L-BFGS step with up to ``max_iter`` inner iterations (``ggl.attacks.lbfgs.BatchedLBFGS``
    with one chain: ``torch.optim.LBFGS``'s rule, its direction in compact form, which costs a fraction of the
    two-loop recursion's time with 100 stored pairs); every closure call is one objective evaluation. The last
    finite iterate is kept, so a diverging run returns its best-known point. Subclasses decide whether labels are
    optimised (``optimise_labels``).

    Scale-free stopping: L-BFGS's stopping tests are absolute (``tolerance_grad`` 1e-7 on the largest input
    gradient, ``tolerance_change`` 1e-9 on loss and step changes, and a fixed 1e-10 curvature threshold), so on a
    raw distance they act at a level set by the update's norm: norm clipping to a small bound shrinks the loss by
    orders of magnitude and the search stopped far from the optimum. L-BFGS therefore minimises the distance in
    percent of the received update's own size, ``100 * D(trial, received) / D(0, received)``
    (``ggl.attacks.objective.distance_scale``), which is unchanged when both gradients are rescaled together.
    The factor 100 keeps the tolerances about where they acted on the raw distance of undefended LeNet updates,
    whose mean squared layer norm is 61-121 on four of the five documented victims. Traces, losses and the choice
    between restarts stay in the metric's own units.

    With ``batch_restarts`` the R restarts run as R chains of one ``ggl.attacks.lbfgs.BatchedLBFGS``: each keeps
    its own history and tolerances (the rule of ``torch.optim.LBFGS``), and every evaluation scores all chains
    that need one as one population (``ggl.attacks.batched.PopulationObjective``, the defense simulation included;
    DLG's soft labels per chain). Each chain follows the path it follows alone, from the same start, up to float
    rounding (tested). A ``budget`` then stops all chains at the same step. FedSGD only for DLG.
    ``reconstruct_together`` runs the restarts of several targets (an attack and its control) as chains of one
    ``BatchedLBFGS`` the same way (``joint_targets``), each target in its own loss unit; without a ``budget``, since
    chains of different targets spend unevenly and one run could not stop each target where its own run stops.

    Args:
        iterations: L-BFGS steps (300). lr: L-BFGS step size (1.0). max_iter: inner iterations per step (20,
            PyTorch's default, as in the reference code). history_size: L-BFGS memory (100).
        init_scale: std of the Gaussian start (1.0). batch_restarts: run the restarts as one population (False).
        engine: the population engine for batched restarts ("auto"). ``shared``: restarts, budget, seed, adaptive,
            metric ("l2"), see ``GradientInversionAttack``.
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
        batch_restarts: bool = False,
        engine: str = "auto",
        **shared: Any,
    ) -> None:
        lr, init_scale = positive_number("lr", lr), positive_number("init_scale", init_scale)
        max_iter, history_size = positive_int("max_iter", max_iter), positive_int("history_size", history_size)
        batch_restarts = boolean("batch_restarts", batch_restarts)
        engine = one_of("engine", engine, ["auto", *sorted(ENGINES)])
        super().__init__(iterations=iterations, **shared)

    joint_targets = True

    def parallel_trials(self) -> int:
        return self.hparams.restarts if self.hparams.batch_restarts else 1

    def _start(self) -> list[torch.Tensor]:
        """One trial's start from ``self.rng``: Gaussian images, then (DLG) Gaussian label logits."""
        target = self.target
        start = [self.random_images(self.hparams.init_scale)]
        if self.optimise_labels:
            num_classes = target.update.gradients[last_linear_indices(target.model)[0]].shape[0]
            start.append(torch.randn((target.batch_size, num_classes), generator=self.rng).to(self.device))
        return start

    def configure_optimizers(self) -> torch.optim.Optimizer:
        """The chains' starts, stacked (R, ...) even for one chain, and their ``BatchedLBFGS``."""
        trials = self.chain_count
        starts = self.chain_starts(self._start)
        self.variables = [torch.stack(column).requires_grad_(True) for column in zip(*starts)]
        self.inputs = self.variables[0]
        if self.optimise_labels:
            self.label_logits = self.variables[1]
        initial = [v.detach().clone() for v in self.variables]
        self.best_iterates = [(float("inf"), [v[r] for v in initial]) for r in range(trials)]
        self.last_step_iterations = [self.hparams.max_iter] * trials
        options = {"lr": self.hparams.lr, "max_iter": self.hparams.max_iter, "history_size": self.hparams.history_size}
        self.lbfgs = BatchedLBFGS(self.variables, trials, **options)
        return self.lbfgs

    def prepare(self, target: AttackTarget) -> None:
        labels = self.for_each_target(lambda _: None if self.optimise_labels else self.resolve_labels())
        self.target_labels = labels
        self.fixed_labels = labels[0]
        units = self.for_each_target(lambda _: self._loss_unit())
        self.loss_unit = units[0]
        self.chain_units = None  # one target: every chain in the scalar unit, as the sequential closure
        if len(units) > 1:
            self.chain_units = torch.tensor(units, device=self.device)[self.chain_groups.to(self.device)]
        self.population = None
        if self.chain_count > 1:
            if self.optimise_labels and not target.protocol.is_fedsgd:
                raise ValueError(f"{self.name}: batch_restarts optimises labels per chain, which needs FedSGD")
            if len(labels) > 1 and self.hparams.budget is not None:
                raise ValueError(
                    f"{self.name}: targets searched together need budget=None (L-BFGS chains of different targets "
                    "spend unevenly); reconstruct each target alone to cap its evaluations"
                )
            self.population = self.joint_objective(labels, self.hparams.engine)

    def _loss_unit(self) -> float:
        """What L-BFGS sees as one unit of the distance: 1% of the received update's own size (see above)."""
        scale = distance_scale(self.target_gradients, self.hparams.metric)
        return scale / LOSS_PERCENT if math.isfinite(scale) and scale > 0 else 1.0

    def _closure(self, chains: list[int]) -> torch.Tensor:
        """The single chain's distance (``chains`` is always [0]), through the serial objective, for the
        best-iterate record; L-BFGS gets it, and its gradient, in ``loss_unit`` units."""
        labels = self.label_logits[0] if self.optimise_labels else self.fixed_labels
        loss = self.gradient_loss(self.inputs[0], labels)
        scaled = loss / self.loss_unit
        gradients = torch.autograd.grad(scaled, self.variables)
        for variable, gradient in zip(self.variables, gradients):
            variable.grad = gradient
        self._record(0, float(loss.detach()), [v[0].detach() for v in self.variables])
        return scaled.detach().reshape(1)

    def _chain_closure(self, chains: list[int]) -> torch.Tensor:
        """``_closure`` for the listed chains of batched restarts, scored as one population."""
        assert self.population is not None
        rows = torch.tensor(chains, device=self.device)
        images = self.inputs[rows]
        soft_labels = self.label_logits[rows] if self.optimise_labels else None
        self.spend_chains(chains)
        groups = self.chain_groups[rows.cpu()]
        losses = self.population(images, groups, create_graph=True, soft_labels=soft_labels)
        scaled = losses / (self.loss_unit if self.chain_units is None else self.chain_units[rows].to(losses))
        gradients = torch.autograd.grad(scaled.sum(), self.variables)
        for variable, gradient in zip(self.variables, gradients):
            variable.grad = gradient
        for chain, value in zip(chains, losses.detach().tolist()):
            self._record(chain, value, [v[chain].detach() for v in self.variables])
        return scaled.detach()

    def _record(self, trial: int, value: float, variables: list[torch.Tensor]) -> None:
        """Keep the iterate when it beats the trial's best (NaN compares False: a diverged iterate is never kept)."""
        if value < self.best_iterates[trial][0]:
            self.best_iterates[trial] = (value, [v.clone() for v in variables])

    def search_step(self, step: int) -> float | torch.Tensor:
        self.lbfgs.step(self._closure if self.population is None else self._chain_closure)
        self.last_step_iterations = list(self.lbfgs.last_step_iterations)
        if self.population is not None:
            return torch.tensor([best for best, _ in self.best_iterates])
        return self.best_iterates[0][0]

    def search_converged(self) -> bool | list[bool]:
        """L-BFGS ended the trial's last step before ``max_iter`` iterations: one of its tolerances was met (one
        answer per chain for batched restarts)."""
        converged = [count < self.hparams.max_iter for count in self.last_step_iterations]
        return converged if self.population is not None else converged[0]

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        images = torch.stack([variables[0] for _, variables in self.best_iterates])
        losses = torch.tensor([loss for loss, _ in self.best_iterates])
        if self.optimise_labels:
            labels = torch.stack([variables[1] for _, variables in self.best_iterates]).argmax(dim=-1)
        else:
            labels = self.chain_labels(self.target_labels)
        if self.population is not None:
            return self.to_pixels(images), labels, losses
        return self.to_pixels(images[0]), labels[0], float(losses[0])


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
