"""Inverting Gradients: cosine gradient matching with a total-variation prior, signed Adam, box constraint."""

from __future__ import annotations

from pathlib import Path

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, register_attack
from ggl.attacks.objective import total_variation


@register_attack("inverting_gradients")
class InvertingGradients(GradientInversionAttack):
    """Inverting Gradients (Geiping, Bauermeister, Droege, Moeller, "Inverting Gradients - How easy is it to break
    privacy in federated learning?", NeurIPS 2020, arXiv 2003.14053).

    Minimises ``1 - cos(trial gradient, received gradient) + tv_weight * TV(x)`` over images x in the model's
    normalised input space with Adam fed the *sign* of the image gradient, a step decay by 0.1 at 3/8, 5/8 and 7/8
    of the iterations, and x projected onto the valid pixel box after every step. Each restart starts from a fresh
    Gaussian; the restart with the lowest final loss wins. Labels: known, else ``infer_labels``.

    Args:
        iterations: Adam steps per restart (24,000 in the paper and in breaching's preset; hundreds to a few
            thousand are practical on a CPU). lr: Adam step size (0.1). tv_weight: total-variation weight (0.2,
            breaching's value for CIFAR ResNets). signed: use the gradient's sign (True). boxed: project onto the
            pixel box (True). lr_decay: the step decay (True). restarts: trials (1). metric: gradient distance
            ("cosine"). budget, seed, adaptive and the run options: see ``GradientInversionAttack``.
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
        restarts: int = 1,
        budget: int | None = None,
        seed: int = 0,
        adaptive: bool = False,
        metric: str = "cosine",
        accelerator: str = "cpu",
        progress_bar: bool = False,
        log_dir: str | Path | None = None,
        log_every: int = 100,
    ) -> None:
        super().__init__(
            iterations=iterations,
            restarts=restarts,
            budget=budget,
            seed=seed,
            adaptive=adaptive,
            metric=metric,
            accelerator=accelerator,
            progress_bar=progress_bar,
            log_dir=log_dir,
            log_every=log_every,
        )
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise ValueError(f"lr must be a positive number, got {lr!r}")
        if isinstance(tv_weight, bool) or not isinstance(tv_weight, (int, float)) or not tv_weight >= 0:
            raise ValueError(f"tv_weight must be a non-negative number, got {tv_weight!r}")
        for field_name, value in (("signed", signed), ("boxed", boxed), ("lr_decay", lr_decay)):
            if not isinstance(value, bool):
                raise ValueError(f"{field_name} must be True or False, got {value!r}")
        self.lr = float(lr)
        self.tv_weight = float(tv_weight)
        self.signed = signed
        self.boxed = boxed
        self.lr_decay = lr_decay

    def setup_search(self, target: AttackTarget) -> None:
        self.labels = self.resolve_labels()
        self.box = self.pixel_box()

    def start_trial(self, trial: int) -> None:
        self.inputs = self.random_images().requires_grad_(True)
        self.optimizer = torch.optim.Adam([self.inputs], lr=self.lr)
        milestones = [round(self.iterations * f) for f in (3 / 8, 5 / 8, 7 / 8)] if self.lr_decay else []
        self.scheduler = torch.optim.lr_scheduler.MultiStepLR(self.optimizer, milestones=milestones, gamma=0.1)
        self.last_loss = float("inf")

    def loss(self, inputs: torch.Tensor) -> torch.Tensor:
        """The objective of ``inputs`` (B, C, H, W): gradient distance plus weighted total variation."""
        loss = self.gradient_loss(inputs, self.labels)
        if self.tv_weight:
            loss = loss + self.tv_weight * total_variation(inputs).mean()
        return loss

    def search_step(self, step: int) -> float:
        loss = self.loss(self.inputs)
        (gradient,) = torch.autograd.grad(loss, [self.inputs])
        self.inputs.grad = gradient.sign() if self.signed else gradient
        self.optimizer.step()
        self.scheduler.step()
        if self.boxed:
            with torch.no_grad():
                self.inputs.copy_(torch.maximum(torch.minimum(self.inputs, self.box[1]), self.box[0]))
        self.last_loss = float(loss.detach())
        return self.last_loss

    def preview(self) -> torch.Tensor:
        return self.to_pixels(self.inputs)

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        final = float(self.loss(self.inputs).detach())
        return self.to_pixels(self.inputs), self.labels, final
