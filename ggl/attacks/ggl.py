"""Generative Gradient Leakage: search a GAN's latent space for the images whose gradient matches the shared one.

Li, Zhang, Liu, Liu, "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage", CVPR 2022
(arXiv 2203.15696). The server infers the labels from the last layer's gradient, then minimises over latents z

    D(T(grad L(norm(G(z, y_hat)), y_hat)), g') + kl_weight * KL(z)

with G a generator trained on public data, D the gradient distance (squared L2 per layer, averaged), T the
attacker-side simulation of the client's defense (``adaptive=True``; the identity otherwise) and KL GGL's pull of
each latent's mean to 0 and variance to 1. The search is any strategy of ``ggl.attacks.search`` (CMA-ES by default)
and a whole population is scored in one batched pass (``PopulationObjective``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, Reconstruction, register_attack
from ggl.attacks.batched import ENGINES, PopulationObjective
from ggl.attacks.objective import latent_kl
from ggl.attacks.search import SEARCHES, SearchStrategy, make_search
from ggl.checks import non_negative_number, one_of, positive_int, positive_number
from ggl.priors.base import Generator
from ggl.priors.registry import adapt_prior, load_prior


@dataclass
class _SearchState:
    """What one ``reconstruct`` call searches with: labels, the adapted prior, the objective, trial results."""

    labels: torch.Tensor
    generator: Generator
    objective: PopulationObjective
    trial_latents: dict[int, tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict)


LATENT_SPACES = ("normal", "sphere")


@register_attack("ggl")
class GGL(GradientInversionAttack):
    """GGL (arXiv 2203.15696): latent search in a generative prior, batched, optionally adaptive to the defense.

    Args:
        prior: a name in ``ggl.priors.PRIORS`` or a path to a prior checkpoint ("fashion-mnist-wgan"); its output
            is adapted to the victim's ``image_shape`` and normalised with ``target.normalization``.
        search: "cma" (default), "bo", "adam", "ng:NAME" or a nevergrad optimizer name (``ggl.attacks.search``).
        budget: objective evaluations over all restarts (2000). population: P latents a round (50).
        restarts: independent searches, each with budget // restarts evaluations; the lowest loss wins (1).
        sigma: initial scale of the search around z = 0 (0.5; 1.0 is the prior's own N(0, I)); CMA-ES's initial
            step size, Adam's and BO's initial spread; 0.5 beat 1.0 on prior-generated victims (docs/ggl.md).
        kl_weight: weight of the latent KL term (0.1, as the paper).
        latent_space: "normal" (z as searched, GGL) or "sphere" (z rescaled to norm sqrt(d), the shell where a
            Gaussian latent's mass lies, before the generator).
        search_options: extra keyword arguments of the strategy (e.g. ``{"lr": 0.05}`` for adam).
        engine: ``PopulationObjective`` engine ("auto").
        iterations: rounds per restart; derived from budget, population and restarts when None.
        ``shared``: adaptive, metric ("l2"), seed, see ``GradientInversionAttack``.
    Shapes: a batch of B images is searched as one latent of B * latent_dim numbers per candidate.

    Example:
        >>> attack = make_attack("ggl", prior="fashion-mnist-wgan", search="cma", budget=2000, population=50)
        >>> rec = attack.reconstruct(AttackTarget(model, update, image_shape=(1, 32, 32), normalization=norm))
        >>> rec.images, rec.extras["latent"], rec.extras["loss"]
    """

    def __init__(
        self,
        *,
        prior: str | Path = "fashion-mnist-wgan",
        search: str = "cma",
        budget: int = 2000,
        population: int = 50,
        restarts: int = 1,
        sigma: float = 0.5,
        kl_weight: float = 0.1,
        latent_space: str = "normal",
        search_options: dict[str, Any] | None = None,
        engine: str = "auto",
        iterations: int | None = None,
        **shared: Any,
    ) -> None:
        budget, population = positive_int("budget", budget), positive_int("population", population)
        restarts = positive_int("restarts", restarts)
        if budget < restarts:
            raise ValueError(f"budget ({budget}) must be at least restarts ({restarts})")
        one_of("latent_space", latent_space, LATENT_SPACES)
        one_of("engine", engine, ["auto", *sorted(ENGINES)])
        sigma, kl_weight = positive_number("sigma", sigma), non_negative_number("kl_weight", kl_weight)
        if search not in SEARCHES or search == "ng":
            make_search(search, 1, 1, 1)  # validates the name (ng:NAME / nevergrad names) with a clear error
        prior, search_options = str(prior), dict(search_options or {})
        if iterations is None:
            iterations = math.ceil((budget // restarts) / population)
        super().__init__(iterations=iterations, restarts=restarts, budget=budget, **shared)
        self.prior_model = load_prior(prior)
        self._state: _SearchState | None = None

    # ------------------------------------------------------------------------------------------------ search

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The trial's latent search, seeded from ``seed`` and the trial; no Lightning optimiser (an empty list).

        A search strategy is an ask/tell minimiser, not a ``torch.optim.Optimizer``: CMA-ES and BO take no
        gradient step, and GGL-Adam steps its own chains inside ``tell``. Wrapping one as an optimiser would need a
        stand-in parameter and a closure that ignores Lightning's, so none is returned (Lightning accepts an empty
        list silently) and each Lightning step is one ask/evaluate/tell round. A trial then ends with its loader of
        ``iterations`` steps, since ``max_steps`` counts optimiser steps.
        """
        hp = self.hparams
        self.latent_search = make_search(
            hp.search,
            self.target.batch_size * self.prior_model.latent_dim,
            hp.population,
            hp.budget // hp.restarts,
            seed=hp.seed * 1000 + self.current_trial,
            sigma=hp.sigma,
            **hp.search_options,
        )
        return []

    def prepare(self, target: AttackTarget) -> None:
        labels = self.resolve_labels()
        generator = adapt_prior(self.prior_model, target.image_shape)
        if generator.num_classes and int(labels.max()) >= generator.num_classes:
            raise ValueError(
                f"prior {self.hparams.prior!r} has {generator.num_classes} classes but label "
                f"{int(labels.max())} was inferred/given"
            )
        objective = self.population_objective(labels, self.hparams.engine)
        self._state = _SearchState(labels, generator, objective)

    def latents_to_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """Candidates (P, B * d) -> normalised victim inputs (P, B, C, H, W)."""
        state = self._search_state()
        generator, labels = state.generator, state.labels
        count, batch = latents.shape[0], labels.numel()
        codes = self._shape_latents(latents).reshape(count * batch, -1)
        images = generator(codes, labels.repeat(count) if generator.num_classes else None)
        normalized = self.target.normalization.normalize(images)
        return normalized.reshape(count, batch, *normalized.shape[1:])

    def _shape_latents(self, latents: torch.Tensor) -> torch.Tensor:
        batch = self._search_state().labels.numel()
        codes = latents.reshape(latents.shape[0], batch, -1)
        if self.hparams.latent_space == "sphere":
            codes = codes * math.sqrt(codes.shape[-1]) / codes.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return codes

    def population_loss(self, latents: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """GGL's loss of each candidate latent (P, B * d) -> (P,): gradient distance + kl_weight * KL(z).

        Spends P objective evaluations.
        """
        latents = latents.to(self.device)
        with torch.set_grad_enabled(create_graph):
            inputs = self.latents_to_inputs(latents)
        state = self._search_state()
        distance = state.objective(inputs, create_graph=create_graph)
        self.spend(latents.shape[0])
        codes = latents.reshape(latents.shape[0], state.labels.numel(), -1)
        return distance + self.hparams.kl_weight * latent_kl(codes).mean(1)

    def _search_state(self) -> _SearchState:
        if self._state is None:
            raise RuntimeError("GGL's search state exists only inside reconstruct()")
        return self._state

    def search_step(self, step: int) -> float:
        search = self.latent_search
        if search.done:  # more rounds than the trial's budget allows (an explicit ``iterations``)
            return search.best_loss
        latents = search.ask()
        search.tell(latents, self.population_loss(latents, create_graph=search.uses_gradients))
        return search.best_loss

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        search: SearchStrategy = self.latent_search
        latent = search.best_latent.unsqueeze(0)
        with torch.no_grad():
            inputs = self.latents_to_inputs(latent.to(self.device))[0]
        state = self._search_state()
        state.trial_latents[self.current_trial] = (search.best_latent.clone(), search.describe())
        return self.to_pixels(inputs), state.labels, search.best_loss

    def reconstruct(self, target: AttackTarget, **run_options: Any) -> Reconstruction:
        """See ``GradientInversionAttack.reconstruct``; ``extras`` adds the best ``latent`` (B, d) as lists,
        ``search`` (the strategy's description) and ``labels_inferred``."""
        self._state = None
        try:
            result = super().reconstruct(target, **run_options)
            latent, description = self._search_state().trial_latents[result.extras["best_trial"]]
            codes = self._shape_latents(latent.unsqueeze(0))[0]
        finally:
            self._state = None
        result.extras.update(
            {"latent": codes.tolist(), "search": description, "labels_inferred": target.labels is None}
        )
        return result
