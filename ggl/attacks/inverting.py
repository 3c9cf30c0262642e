"""Inverting Gradients: cosine gradient matching with a total-variation prior, signed Adam, box constraint."""

from __future__ import annotations

from typing import Any

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, register_attack
from ggl.attacks.batched import ENGINES
from ggl.attacks.objective import total_variation
from ggl.checks import boolean, non_negative_number, one_of, positive_number


@register_attack("inverting_gradients")
class InvertingGradients(GradientInversionAttack):
    """Inverting Gradients (Geiping, Bauermeister, Droege, Moeller, "Inverting Gradients - How easy is it to break
    privacy in federated learning?", NeurIPS 2020, arXiv 2003.14053).

    Minimises ``1 - cos(trial gradient, received gradient) + tv_weight * TV(x)`` over images x in the model's
    normalised input space with Adam fed the *sign* of the image gradient, a step decay by 0.1 at 3/8, 5/8 and 7/8
    of the iterations, and x projected onto the valid pixel box after every step. Each restart starts from a fresh
    Gaussian; the restart with the lowest final loss wins. Labels: known, else ``infer_labels``.

    With ``batch_restarts`` the restarts run together as one population: every step scores all R trials in one
    batched pass (``ggl.attacks.batched.PopulationObjective``, the defense simulation included) and steps one
    Adam over the stacked images. Adam, the step decay, the sign and the box act elementwise, so each trial follows
    the path it follows alone, from the same start; only float rounding differs (tested). A ``budget`` then stops
    all trials at the same step. ``reconstruct_together`` runs the restarts of several targets (an attack and its
    control) the same way, as one population (``joint_targets``).

    Args:
        iterations: Adam steps per restart (24,000 in the paper and in breaching's preset; hundreds to a few
            thousand are practical on a CPU). lr: Adam step size (0.1). tv_weight: total-variation weight (0.2,
            breaching's value for CIFAR ResNets). signed: use the gradient's sign (True). boxed: project onto the
            pixel box (True). lr_decay: the step decay (True). metric: gradient distance ("cosine").
            ``shared``: restarts (1), budget, seed, adaptive, see ``GradientInversionAttack``.
    Shapes: reconstructs B images (B, C, H, W) for an update of B samples.

    Example:
        >>> attack = make_attack("inverting_gradients", iterations=2000, restarts=2, tv_weight=0.05)
        >>> rec = attack.reconstruct(AttackTarget(model, update, image_shape=(1, 32, 32), normalization=norm))
    """

    def __init__(
        self,
        *,
        iterations: int = 24_000,
        lr: float = 0.1,
        tv_weight: float = 0.2,
        signed: bool = True,
        boxed: bool = True,
        lr_decay: bool = True,
        metric: str = "cosine",
        batch_restarts: bool = False,
        engine: str = "auto",
        **shared: Any,
    ) -> None:
        lr, tv_weight = positive_number("lr", lr), non_negative_number("tv_weight", tv_weight)
        signed, boxed, lr_decay = boolean("signed", signed), boolean("boxed", boxed), boolean("lr_decay", lr_decay)
        batch_restarts = boolean("batch_restarts", batch_restarts)
        engine = one_of("engine", engine, ["auto", *sorted(ENGINES)])
        super().__init__(iterations=iterations, metric=metric, **shared)

    joint_targets = True

    def parallel_trials(self) -> int:
        return self.hparams.restarts if self.hparams.batch_restarts else 1

    def configure_optimizers(self) -> tuple[list[torch.optim.Optimizer], list[torch.optim.lr_scheduler.LRScheduler]]:
        """A fresh Gaussian start from ``self.rng`` (R of them, stacked, for batched restarts); Adam with the step
        decay (``MultiStepLR``, stepped per step)."""
        starts = self.chain_starts(self.random_images)
        self.inputs = (torch.stack(starts) if len(starts) > 1 else starts[0]).requires_grad_(True)
        optimizer = torch.optim.Adam([self.inputs], lr=self.hparams.lr)
        fractions = (3 / 8, 5 / 8, 7 / 8) if self.hparams.lr_decay else ()
        milestones = [round(self.hparams.iterations * f) for f in fractions]
        return [optimizer], [torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)]

    def prepare(self, target: AttackTarget) -> None:
        self.target_labels = self.for_each_target(lambda _: self.resolve_labels())
        self.labels = self.target_labels[0]
        self.box = self.pixel_box()
        self.population = None
        if self.chain_count > 1:
            self.population = self.joint_objective(self.target_labels, self.hparams.engine)

    def loss(self, inputs: torch.Tensor) -> torch.Tensor:
        """The objective of ``inputs`` (B, C, H, W): gradient distance plus weighted total variation; of stacked
        restarts (R, B, C, H, W): the R objectives."""
        if self.population is None:
            loss = self.gradient_loss(inputs, self.labels)
            if self.hparams.tv_weight:
                loss = loss + self.hparams.tv_weight * total_variation(inputs).mean()
            return loss
        self.spend_chains(range(inputs.shape[0]))
        loss = self.population(inputs, self.chain_groups, create_graph=True)
        if self.hparams.tv_weight:
            images = inputs.reshape(-1, *inputs.shape[2:])
            loss = loss + self.hparams.tv_weight * total_variation(images).reshape(inputs.shape[:2]).mean(1)
        return loss

    def search_step(self, step: int) -> float | torch.Tensor:
        optimizer, scheduler = self.optimizers(), self.lr_schedulers()
        loss = self.loss(self.inputs)
        (gradient,) = torch.autograd.grad(loss.sum(), [self.inputs])
        self.inputs.grad = gradient.sign() if self.hparams.signed else gradient
        optimizer.step()  # type: ignore[union-attr]
        scheduler.step()  # type: ignore[union-attr]
        if self.hparams.boxed:
            with torch.no_grad():
                self.inputs.copy_(torch.maximum(torch.minimum(self.inputs, self.box[1]), self.box[0]))
        return loss.detach() if self.population is not None else float(loss.detach())

    def preview(self) -> torch.Tensor:
        return self.to_pixels(self.inputs.reshape(-1, *self.inputs.shape[-3:]))

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, Any]:
        final = self.loss(self.inputs).detach()
        if self.population is None:
            return self.to_pixels(self.inputs), self.labels, float(final)
        return self.to_pixels(self.inputs), self.chain_labels(self.target_labels), final
