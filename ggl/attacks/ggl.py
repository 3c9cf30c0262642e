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

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ggl.attacks.base import AttackTarget, GradientInversionAttack, Reconstruction, register_attack
from ggl.attacks.batched import PopulationObjective
from ggl.attacks.objective import latent_kl
from ggl.attacks.search import SEARCHES, SearchStrategy, make_search
from ggl.priors.base import Generator
from ggl.priors.registry import adapt_prior, load_prior


@dataclass
class _SearchState:
    """What one ``reconstruct`` call searches with: labels, the adapted prior, the objective, trial results."""

    labels: torch.Tensor
    generator: Generator
    objective: PopulationObjective
    search: SearchStrategy | None = None
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
        engine: ``PopulationObjective`` engine ("auto"). adaptive, metric, seed: see ``GradientInversionAttack``.
        iterations: rounds per restart; derived from budget, population and restarts when None.
    Shapes: a batch of B images is searched as one latent of B * latent_dim numbers per candidate.

    Example:
        >>> attack = make_attack("ggl", prior="fashion-mnist-wgan", search="cma", budget=2000, population=50)
        >>> rec = attack.reconstruct(AttackTarget(model, update, image_shape=(1, 32, 32), normalization=norm))
        >>> rec.images, rec.extras["latent"], rec.extras["loss"]
    """

    def __init__(
        self,
        *,
        prior: str = "fashion-mnist-wgan",
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
        adaptive: bool = False,
        metric: str = "l2",
        seed: int = 0,
        accelerator: str = "cpu",
        progress_bar: bool = False,
        log_dir: str | None = None,
        log_every: int = 100,
    ) -> None:
        for field_name, value in (("budget", budget), ("population", population), ("restarts", restarts)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{field_name} must be a positive integer, got {value!r}")
        if budget < restarts:
            raise ValueError(f"budget ({budget}) must be at least restarts ({restarts})")
        if latent_space not in LATENT_SPACES:
            raise ValueError(f"latent_space must be one of {', '.join(LATENT_SPACES)}, got {latent_space!r}")
        if not (isinstance(kl_weight, (int, float)) and kl_weight >= 0):
            raise ValueError(f"kl_weight must be a non-negative number, got {kl_weight!r}")
        if search not in SEARCHES or search == "ng":
            make_search(search, 1, 1, 1)  # validates the name (ng:NAME / nevergrad names) with a clear error
        rounds = math.ceil((budget // restarts) / population)
        super().__init__(
            iterations=rounds if iterations is None else iterations,
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
        self.prior = str(prior)
        self.search = search
        self.population = int(population)
        self.sigma = float(sigma)
        self.kl_weight = float(kl_weight)
        self.latent_space = latent_space
        self.search_options = dict(search_options or {})
        self.engine = engine
        self.prior_model = load_prior(self.prior)
        self._state: _SearchState | None = None

    # ------------------------------------------------------------------------------------------------ search

    def setup_search(self, target: AttackTarget) -> None:
        labels = self.resolve_labels()
        generator = adapt_prior(self.prior_model, target.image_shape)
        if generator.num_classes and int(labels.max()) >= generator.num_classes:
            raise ValueError(
                f"prior {self.prior!r} has {generator.num_classes} classes but label "
                f"{int(labels.max())} was inferred/given"
            )
        simulate = None
        if self.adaptive and target.defense is not None:
            simulate = functools.partial(target.defense.simulate, received=self._received_update())
        objective = PopulationObjective(
            self.victim, self.target_gradients, labels, metric=self.metric, simulate=simulate, engine=self.engine
        )
        self._state = _SearchState(labels, generator, objective)

    def start_trial(self, trial: int) -> None:
        state = self._search_state()
        dim = state.labels.numel() * state.generator.latent_dim
        trial_budget = self.budget // self.restarts  # type: ignore[operator]
        state.search = make_search(
            self.search,
            dim,
            self.population,
            trial_budget,
            seed=self.seed * 1000 + trial,
            sigma=self.sigma,
            **self.search_options,
        )

    def latents_to_inputs(self, latents: torch.Tensor) -> torch.Tensor:
        """Candidates (P, B * d) -> normalised victim inputs (P, B, C, H, W)."""
        state = self._search_state()
        generator, labels = state.generator, state.labels
        count, batch = latents.shape[0], labels.numel()
        codes = self._shape_latents(latents).reshape(count * batch, -1)
        images = generator(codes, labels.repeat(count) if generator.num_classes else None)
        normalized = self.target.normalization.normalize(images)  # type: ignore[union-attr]
        return normalized.reshape(count, batch, *normalized.shape[1:])

    def _shape_latents(self, latents: torch.Tensor) -> torch.Tensor:
        batch = self._search_state().labels.numel()
        codes = latents.reshape(latents.shape[0], batch, -1)
        if self.latent_space == "sphere":
            codes = codes * math.sqrt(codes.shape[-1]) / codes.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        return codes

    def population_loss(self, latents: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """GGL's loss of each candidate latent (P, B * d) -> (P,): gradient distance + kl_weight * KL(z)."""
        latents = latents.to(self.device)
        with torch.set_grad_enabled(create_graph):
            inputs = self.latents_to_inputs(latents)
        state = self._search_state()
        distance = state.objective(inputs, create_graph=create_graph)
        codes = latents.reshape(latents.shape[0], state.labels.numel(), -1)
        return distance + self.kl_weight * latent_kl(codes).mean(1)

    def _search_state(self) -> _SearchState:
        if self._state is None:
            raise RuntimeError("GGL's search state exists only inside reconstruct()")
        return self._state

    def _strategy(self) -> SearchStrategy:
        search = self._search_state().search
        if search is None:
            raise RuntimeError("GGL's search strategy is made in start_trial()")
        return search

    def search_step(self, step: int) -> float:
        search = self._strategy()
        if search.done:  # more rounds than the trial's budget allows (an explicit ``iterations``)
            return search.best_loss
        latents = search.ask()
        losses = self.population_loss(latents, create_graph=search.uses_gradients)
        search.tell(latents, losses)
        self.evaluations += int(losses.numel())
        return search.best_loss

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        search = self._strategy()
        latent = search.best_latent.unsqueeze(0)
        with torch.no_grad():
            inputs = self.latents_to_inputs(latent.to(self.device))[0]
        state = self._search_state()
        state.trial_latents[self._trial] = (search.best_latent.clone(), search.describe())
        return self.to_pixels(inputs), state.labels, search.best_loss

    def reconstruct(self, target: AttackTarget, *args: Any, **kwargs: Any) -> Reconstruction:
        """See ``GradientInversionAttack.reconstruct``; ``extras`` adds the best ``latent`` (B, d) as lists,
        ``search`` (the strategy's description) and ``labels_inferred``."""
        self._state = None
        result = super().reconstruct(target, *args, **kwargs)
        latent, description = self._search_state().trial_latents[result.extras["best_trial"]]
        codes = self._shape_latents(latent.unsqueeze(0))[0]
        result.extras.update(
            {"latent": codes.tolist(), "search": description, "labels_inferred": target.labels is None}
        )
        self._state = None
        return result
