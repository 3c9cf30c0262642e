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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, Reconstruction, register_attack
from ggl.attacks.batched import ENGINES, JointObjective, PopulationObjective
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
    objective: PopulationObjective | JointObjective
    target_labels: list[torch.Tensor] = field(default_factory=list)
    trial_latents: dict[tuple[int, int], tuple[torch.Tensor, dict[str, Any]]] = field(default_factory=dict)


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

    joint_targets = True

    @classmethod
    def searches_together(cls, hparams: Mapping[str, Any]) -> bool:
        """Gradient-free searches only: a gradient search (GGL-Adam) differentiates its own losses in ``tell``,
        which chains sharing one autograd graph cannot do one after another."""
        search = str(hparams.get("search", "cma"))
        return not (search in SEARCHES and SEARCHES[search].uses_gradients)

    def candidates_per_pass(self) -> int:
        """A round's population of every chain, scored in one pass."""
        return self.hparams.population * self.chain_count

    def _make_search(self, trial: int) -> SearchStrategy:
        """Trial ``trial``'s latent search, seeded from ``seed`` and the trial."""
        hp = self.hparams
        return make_search(
            hp.search,
            self.target.batch_size * self.prior_model.latent_dim,
            hp.population,
            hp.budget // hp.restarts,
            seed=hp.seed * 1000 + trial,
            sigma=hp.sigma,
            **hp.search_options,
        )

    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        """The trial's latent search, seeded from ``seed`` and the trial; no Lightning optimiser (an empty list).
        Targets searched together run one search per target and trial (``chain_count``), in lockstep.

        A search strategy is an ask/tell minimiser, not a ``torch.optim.Optimizer``: CMA-ES and BO take no
        gradient step, and GGL-Adam steps its own chains inside ``tell``. Wrapping one as an optimiser would need a
        stand-in parameter and a closure that ignores Lightning's, so none is returned (Lightning accepts an empty
        list silently) and each Lightning step is one ask/evaluate/tell round. A trial then ends with its loader of
        ``iterations`` steps, since ``max_steps`` counts optimiser steps.
        """
        self.chain_searches = [self._make_search(self._trial_of(c)) for c in range(self.chain_count)]
        self.latent_search = self.chain_searches[0]
        return []

    def _trial_of(self, chain: int) -> int:
        """The restart a chain runs: its index within its target when chains run together, else the running trial."""
        return chain % self.chains_per_target if self.chain_count > 1 else self.current_trial

    def prepare(self, target: AttackTarget) -> None:
        labels = self.for_each_target(lambda _: self.resolve_labels())
        generator = adapt_prior(self.prior_model, target.image_shape)
        largest = max(int(each.max()) for each in labels)
        if generator.num_classes and largest >= generator.num_classes:
            raise ValueError(
                f"prior {self.hparams.prior!r} has {generator.num_classes} classes but label {largest} was "
                "inferred/given"
            )
        engine = self.hparams.engine
        joint = self.chain_count > 1
        objective = self.joint_objective(labels, engine) if joint else self.population_objective(labels[0], engine)
        self._state = _SearchState(labels[0], generator, objective, labels)

    def latents_to_inputs(self, latents: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """Candidates (P, B * d) -> normalised victim inputs (P, B, C, H, W); ``labels`` (P, B) per candidate
        (targets searched together), else the target's."""
        state = self._search_state()
        generator = state.generator
        count, batch = latents.shape[0], state.labels.numel()
        codes = self._shape_latents(latents).reshape(count * batch, -1)
        row_labels = state.labels.repeat(count) if labels is None else labels.reshape(-1)
        images = generator(codes, row_labels if generator.num_classes else None)
        normalized = self.target.normalization.normalize(images)
        return normalized.reshape(count, batch, *normalized.shape[1:])

    def _shape_latents(self, latents: torch.Tensor) -> torch.Tensor:
        batch = self._search_state().labels.numel()
        codes = latents.reshape(latents.shape[0], batch, -1)
        if self.hparams.latent_space == "sphere":
            codes = codes * math.sqrt(codes.shape[-1]) / codes.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return codes

    def population_loss(
        self, latents: torch.Tensor, create_graph: bool = False, chains: torch.Tensor | None = None
    ) -> torch.Tensor:
        """GGL's loss of each candidate latent (P, B * d) -> (P,): gradient distance + kl_weight * KL(z); with
        ``chains`` (P,), each candidate against the target of its chain (targets searched together).

        Spends P objective evaluations.
        """
        latents = latents.to(self.device)
        state = self._search_state()
        if chains is None:
            with torch.set_grad_enabled(create_graph):
                inputs = self.latents_to_inputs(latents)
            distance = state.objective(inputs, create_graph=create_graph)
            self.spend(latents.shape[0])
        else:
            groups = self.chain_groups[chains]
            labels = self.chain_labels(state.target_labels)[chains.to(self.device)]
            with torch.set_grad_enabled(create_graph):
                inputs = self.latents_to_inputs(latents, labels)
            assert isinstance(state.objective, JointObjective)
            distance = state.objective(inputs, groups, create_graph=create_graph)
            self.spend_chains(chains.tolist())
        codes = latents.reshape(latents.shape[0], state.labels.numel(), -1)
        return distance + self.hparams.kl_weight * latent_kl(codes).mean(1)

    def _search_state(self) -> _SearchState:
        if self._state is None:
            raise RuntimeError("GGL's search state exists only inside reconstruct()")
        return self._state

    def search_step(self, step: int) -> float | torch.Tensor:
        if self.chain_count == 1:
            search = self.latent_search
            if search.done:  # more rounds than the trial's budget allows (an explicit ``iterations``)
                return search.best_loss
            latents = search.ask()
            search.tell(latents, self.population_loss(latents, create_graph=search.uses_gradients))
            return search.best_loss
        active = [c for c, search in enumerate(self.chain_searches) if not search.done]
        if active:
            asked = [self.chain_searches[c].ask() for c in active]
            chains = torch.cat([torch.full((len(latents),), c) for c, latents in zip(active, asked)])
            losses = self.population_loss(torch.cat(asked), chains=chains)
            for c, latents, part in zip(active, asked, losses.split([len(a) for a in asked])):
                self.chain_searches[c].tell(latents, part)
        return torch.tensor([search.best_loss for search in self.chain_searches])

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        state = self._search_state()
        groups = self.chain_groups
        latents = torch.stack([search.best_latent for search in self.chain_searches]).to(self.device)
        labels = self.chain_labels(state.target_labels)
        with torch.no_grad():
            inputs = self.latents_to_inputs(latents, labels)
        for c, search in enumerate(self.chain_searches):
            state.trial_latents[(int(groups[c]), self._trial_of(c))] = (search.best_latent.clone(), search.describe())
        if self.chain_count == 1:
            return self.to_pixels(inputs[0]), state.labels, self.latent_search.best_loss
        losses = torch.tensor([search.best_loss for search in self.chain_searches])
        return self.to_pixels(inputs), labels, losses

    def reconstruct_together(self, targets: Sequence[AttackTarget], **run_options: Any) -> list[Reconstruction]:
        """See ``GradientInversionAttack.reconstruct_together``; each ``extras`` adds the best ``latent`` (B, d) as
        lists, ``search`` (the strategy's description) and ``labels_inferred``."""
        self._state = None
        try:
            results = super().reconstruct_together(targets, **run_options)
            state = self._search_state()
            for index, (target, result) in enumerate(zip(targets, results)):
                latent, description = state.trial_latents[(index, result.extras["best_trial"])]
                codes = self._shape_latents(latent.unsqueeze(0))[0]
                result.extras.update(
                    {"latent": codes.tolist(), "search": description, "labels_inferred": target.labels is None}
                )
        finally:
            self._state = None
        return results
