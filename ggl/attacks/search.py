"""Latent-search strategies for GGL: ask a population of latents, evaluate it in one batched pass, tell the losses.

GGL (Li et al., "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage", CVPR 2022,
arXiv 2203.15696) searches a GAN's latent space with gradient-free optimisers (CMA-ES, Bayesian optimisation) and,
as a baseline, with Adam. Every strategy here has the same ask/tell interface over a population of P latents
(P, d), counts its budget in objective evaluations (one per latent scored), keeps the best latent seen, and is
reproducible from its seed. ``SEARCHES`` holds them by name; any nevergrad optimizer is reachable as ``ng:NAME``
(or by its plain nevergrad registry name):

    cma    CMA-ES as nevergrad's ``ParametrizedCMA(popsize=P, elitist=False)`` sets it up, driven through the ``cma``
           package directly (same latents, without nevergrad's per-candidate overhead): exactly P asks a generation
    bo     batched Bayesian optimisation with ``bayes_opt`` (1.4 API) in a random low-dimensional embedding of the
           latent space (REMBO, Wang et al. 2016, arXiv 1301.1942) inside a TuRBO-style trust region (Eriksson et
           al. 2019, arXiv 1910.01739), batches by the constant liar
    adam   P independent gradient-descent chains on z (``tell`` back-propagates the losses it receives)
"""

from __future__ import annotations

import contextlib
import functools
import math
import warnings
from collections import deque
from collections.abc import Callable
from typing import Any, ClassVar

import numpy as np
import torch

from ggl.checks import boolean, non_negative_number, positive_int, positive_number
from ggl.registry import Registry

SearchType = type["SearchStrategy"]


class SearchStrategy:
    """Ask/tell minimisation over latents of size ``dim`` with a population of ``population`` per round.

    Args:
        dim: latent size d. population: P, latents asked per round (the last round may ask fewer to keep to the
            budget). budget: total objective evaluations. seed: seeds every random choice.
        sigma: scale of the initial search distribution around z = 0 (1.0 = the generator's N(0, I) prior).
    Subclasses take ``dim, population, budget``, their own keyword arguments and ``**common`` (seed, sigma).
    ``ask() -> (p, d)``; ``tell(latents, losses (p,))``; ``best_latent``/``best_loss``: the lowest loss told so far;
    ``done``: the budget is spent. Gradient-based strategies (``uses_gradients``) ask for leaf tensors and expect
    differentiable losses in ``tell``.
    """

    name: ClassVar[str] = ""
    uses_gradients: ClassVar[bool] = False

    def __init__(self, dim: int, population: int, budget: int, *, seed: int = 0, sigma: float = 1.0) -> None:
        self.dim, self.population = positive_int("dim", dim), positive_int("population", population)
        self.budget = positive_int("budget", budget)
        self.seed, self.sigma = int(seed), positive_number("sigma", sigma)
        self.evaluations = 0
        self.best_latent = torch.zeros(self.dim)
        self.best_loss = math.inf

    @property
    def done(self) -> bool:
        return self.evaluations >= self.budget

    def _next_size(self) -> int:
        if self.done:
            raise RuntimeError(f"{self.name}: the budget of {self.budget} evaluations is spent")
        return min(self.population, self.budget - self.evaluations)

    def ask(self) -> torch.Tensor:
        """The next latents to evaluate, (p, d) float32 with p <= population."""
        raise NotImplementedError

    def tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        """Report the losses (p,) of the latents (p, d) returned by the last ``ask``."""
        if latents.ndim != 2 or losses.shape != latents.shape[:1]:
            raise ValueError(
                f"tell expects latents (p, {self.dim}) and losses (p,), got {tuple(latents.shape)} "
                f"and {tuple(losses.shape)}"
            )
        values = losses.detach().double().cpu()
        self.evaluations += int(values.numel())
        finite = torch.where(torch.isfinite(values), values, torch.full_like(values, math.inf))
        index = int(finite.argmin())
        if float(finite[index]) < self.best_loss:
            self.best_loss = float(finite[index])
            self.best_latent = latents[index].detach().float().cpu().clone()
        self._tell(latents, losses)

    def _tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """Plain data about the search as configured (and what it settled on)."""
        return {"name": self.name, "population": self.population, "budget": self.budget, "sigma": self.sigma}


SEARCHES: Registry[SearchType] = Registry("search")
"""Search strategies by name (``cma``, ``bo``, ``adam``, ``ng``); ``make_search`` also accepts ``ng:NAME``."""


def register_search(name: str) -> Callable[[SearchType], SearchType]:
    """Class decorator: ``SEARCHES.register(name)`` that also sets ``cls.name`` (the name ``describe`` reports)."""

    def decorate(cls: SearchType) -> SearchType:
        SEARCHES.add(name, cls)
        cls.name = name
        return cls

    return decorate


def _nevergrad_names() -> list[str]:
    import nevergrad as ng

    return sorted(ng.optimizers.registry)


def make_search(
    name: str, dim: int, population: int, budget: int, seed: int = 0, sigma: float = 1.0, **options: Any
) -> SearchStrategy:
    """A strategy by name: one of ``SEARCHES``, ``ng:NAME`` or a plain nevergrad registry name (e.g. ``TBPSA``)."""
    if name in SEARCHES and name != "ng":
        return SEARCHES[name](dim, population, budget, seed=seed, sigma=sigma, **options)
    optimizer = name[3:] if name.startswith("ng:") else name
    if optimizer not in _nevergrad_names():
        raise ValueError(
            f"unknown search {name!r}; allowed: {', '.join(sorted(s for s in SEARCHES if s != 'ng'))}, "
            "or ng:NAME / NAME for any optimizer in nevergrad.optimizers.registry"
        )
    return NevergradSearch(dim, population, budget, seed=seed, sigma=sigma, optimizer=optimizer, **options)


def minimize(search: SearchStrategy, objective: Callable[[torch.Tensor], torch.Tensor]) -> list[float]:
    """Run ``search`` until its budget is spent; ``objective`` maps latents (p, d) to losses (p,).

    Returns the best loss after each round (the trace); the result is ``search.best_latent``/``best_loss``.
    """
    trace = []
    while not search.done:
        latents = search.ask()
        search.tell(latents, objective(latents))
        trace.append(search.best_loss)
    return trace


@register_search("ng")
class NevergradSearch(SearchStrategy):
    """Any nevergrad optimizer over ``ng.p.Array(shape=(d,))`` with initial mutation scale ``sigma``.

    Args (beyond ``SearchStrategy``):
        optimizer: a name in ``nevergrad.optimizers.registry`` or a configured optimizer family
            (e.g. ``ng.optimizers.ParametrizedCMA(popsize=P, elitist=False)``).
    Created with ``budget`` and ``num_workers = population``; seeded through ``parametrization.random_state``.
    """

    def __init__(self, dim: int, population: int, budget: int, *, optimizer: Any = "CMA", **common: Any) -> None:
        super().__init__(dim, population, budget, **common)
        import nevergrad as ng

        if isinstance(optimizer, str):
            if optimizer not in ng.optimizers.registry:
                raise ValueError(f"unknown nevergrad optimizer {optimizer!r}; see nevergrad.optimizers.registry")
            family = ng.optimizers.registry[optimizer]
            self.optimizer_name = optimizer
        else:
            family = optimizer
            self.optimizer_name = getattr(optimizer, "name", type(optimizer).__name__)
        parametrization = ng.p.Array(init=np.zeros(self.dim)).set_mutation(sigma=self.sigma)
        parametrization.random_state = np.random.RandomState(self.seed)
        self.optimizer = family(parametrization=parametrization, budget=self.budget, num_workers=self.population)
        self.optimizer.parametrization.random_state = parametrization.random_state
        self._pending: list[Any] = []

    def ask(self) -> torch.Tensor:
        size = self._next_size()
        self._pending = [self.optimizer.ask() for _ in range(size)]
        return torch.as_tensor(np.stack([c.value for c in self._pending]), dtype=torch.float32)

    def _tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        if len(self._pending) != losses.numel():
            raise ValueError(f"tell got {losses.numel()} losses for {len(self._pending)} asked candidates")
        for candidate, loss in zip(self._pending, losses.detach().double().cpu().tolist()):
            self.optimizer.tell(candidate, loss if math.isfinite(loss) else 1e30)
        self._pending = []

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "optimizer": self.optimizer_name}


@register_search("cma")
class CMASearch(SearchStrategy):
    """CMA-ES (Hansen & Ostermeier 2001) through the ``cma`` package, set up exactly as nevergrad's
    ``ParametrizedCMA(popsize=P, elitist=False, scale=1.0)`` over ``ng.p.Array(init=0).set_mutation(sigma)``
    seeded with ``RandomState(seed)``: the same latents from the same seed (tested against nevergrad).

    Why not through nevergrad: its CMA wrapper rebuilds a parametrization normaliser on every ask and tell (about
    0.5 ms a candidate), most of the time of a 1,000-evaluation GGL search on LeNet. Starts at z = 0 with step
    size ``sigma`` (1.0 samples the generator's own N(0, I) at first) and keeps exactly P candidates a generation,
    so one batched evaluation closes one generation; a stopped CMA-ES (its own termination criteria) restarts
    from z = 0, as nevergrad's does.
    Args (beyond ``SearchStrategy``): diagonal: diagonal covariance (cheaper, sep-CMA) instead of full.
    """

    def __init__(self, dim: int, population: int, budget: int, *, diagonal: bool = False, **common: Any) -> None:
        super().__init__(dim, population, budget, **common)
        self.diagonal = boolean("diagonal", diagonal)
        self._rng = np.random.RandomState(self.seed)
        self._es: Any = None
        self._queue: deque[np.ndarray] = deque()
        self._pending: list[np.ndarray] = []
        self._told: list[tuple[np.ndarray, float]] = []

    @property
    def es(self) -> Any:
        """The running ``cma.CMAEvolutionStrategy`` (a fresh one when there is none or it has stopped)."""
        if self._es is None or self._es.stop():
            import cma

            options = {
                "popsize": self.population,
                "randn": self._rng.randn,
                "CMA_diagonal": self.diagonal,
                "verbose": -9,
                "seed": np.nan,
                "CMA_elitist": False,
            }
            self._es = cma.CMAEvolutionStrategy(np.zeros(self.dim), 1.0, inopts=options)
        return self._es

    @property
    def generation_size(self) -> int:
        """Candidates per CMA-ES generation (the ``cma`` package's popsize)."""
        return int(self.es.popsize)

    def ask(self) -> torch.Tensor:
        size = self._next_size()
        self._pending = []
        for _ in range(size):
            if not self._queue:
                self._queue.extend(self.es.ask())
            self._pending.append(self._queue.popleft())
        return torch.as_tensor(self.sigma * np.stack(self._pending), dtype=torch.float32)

    def _tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        if len(self._pending) != losses.numel():
            raise ValueError(f"tell got {losses.numel()} losses for {len(self._pending)} asked candidates")
        for point, loss in zip(self._pending, losses.detach().double().cpu().tolist()):
            self._told.append((point, loss if math.isfinite(loss) else 1e30))
            if len(self._told) >= self.es.popsize:
                points, values = zip(*self._told)
                with contextlib.suppress(RuntimeError, AssertionError):
                    self.es.tell(list(points), list(values))
                self._told = []
        self._pending = []

    def describe(self) -> dict[str, Any]:
        optimizer = "CMA-ES (diagonal)" if self.diagonal else "CMA-ES"
        return {**super().describe(), "optimizer": optimizer}


@register_search("adam")
class AdamSearch(SearchStrategy):
    """P independent Adam chains on z, started from N(0, sigma^2 I); one round scores and steps all chains.

    GGL's gradient baseline: lr 0.1 with a linear warm-up and cosine decay over the rounds the budget allows.
    ``ask`` returns the chains as a leaf tensor (P, d) with ``requires_grad``; ``tell`` needs losses built from
    it with a graph (e.g. ``PopulationObjective(..., create_graph=True)``) and takes one step.
    Args (beyond ``SearchStrategy``): lr: peak learning rate (0.1). warmup: fraction of rounds warming up (0.05).
    """

    uses_gradients = True

    def __init__(
        self, dim: int, population: int, budget: int, *, lr: float = 0.1, warmup: float = 0.05, **common: Any
    ) -> None:
        super().__init__(dim, population, budget, **common)
        self.lr, self.warmup = positive_number("lr", lr), non_negative_number("warmup", warmup)
        if not self.warmup < 1:
            raise ValueError(f"warmup must be in [0, 1), got {warmup!r}")
        rng = torch.Generator().manual_seed(self.seed)
        self.latents = (self.sigma * torch.randn(self.population, self.dim, generator=rng)).requires_grad_(True)
        self.rounds = max(1, self.budget // self.population)
        self.optimizer = torch.optim.Adam([self.latents], lr=self.lr)
        self._round = 0

    def _rate(self) -> float:
        progress = self._round / self.rounds
        if self.warmup and progress < self.warmup:
            return self.lr * (self._round + 1) / (self.warmup * self.rounds + 1)
        return 0.5 * self.lr * (1 + math.cos(math.pi * min(1.0, progress)))

    def ask(self) -> torch.Tensor:
        size = self._next_size()
        return self.latents if size == self.population else self.latents[:size]

    def _tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        if not losses.requires_grad:
            raise ValueError("adam: tell needs differentiable losses (evaluate with create_graph=True)")
        for group in self.optimizer.param_groups:
            group["lr"] = self._rate()
        self.optimizer.zero_grad()
        losses.sum().backward()
        self.optimizer.step()
        self._round += 1


@register_search("bo")
class BayesianSearch(SearchStrategy):
    """Batched Bayesian optimisation (``bayes_opt`` 1.4) in a random embedding, inside a trust region.

    A plain Gaussian process over a 128-d latent learns little from a few thousand points and refits slowly, so:
    latents are z = sigma * sqrt(d / k) * Q y with Q (d, k) random orthonormal columns (REMBO) and y in
    [-bound, bound]^k; the acquisition (UCB, ``bayes_opt.UtilityFunction``) is maximised in a TuRBO-1 trust
    region around the best y that doubles after 3 successive improving batches and halves after
    ``ceil(max(4, k) / batch)`` failing ones (restarting when it shrinks below 2^-7); the GP sees at most
    ``max_points`` observations nearest the region's centre. A batch of P is P ``suggest`` calls with the constant
    liar (each suggestion is registered with the worst observed target until the batch is scored). As in TuRBO,
    the acquisition is maximised over ``candidates`` random points of the region; ``bayes_opt``'s default also
    polishes with 10 L-BFGS-B runs on finite differences, which costs ~1.5 s a suggestion at k = 16 on a CPU core
    and is off by default (``polish`` sets the number of runs).

    Args (beyond ``SearchStrategy``): embedding_dim: k (16; k >= d searches z directly). bound: box half-width
        (2.0, as GGL's TuRBO). kappa: UCB exploration (2.576). max_points: GP training set cap (64).
        candidates: random points the acquisition is maximised over (10,000). polish: L-BFGS-B runs after (0).
    The first batch (and the first after a trust-region restart) is uniform random in the box.
    """

    def __init__(
        self,
        dim: int,
        population: int,
        budget: int,
        *,
        embedding_dim: int = 16,
        bound: float = 2.0,
        kappa: float = 2.576,
        max_points: int = 64,
        candidates: int = 10_000,
        polish: int = 0,
        **common: Any,
    ) -> None:
        super().__init__(dim, population, budget, **common)
        if positive_int("max_points", max_points) < 2:
            raise ValueError(f"max_points must be at least 2, got {max_points!r}")
        self.rng = np.random.RandomState(self.seed)
        self.k = min(positive_int("embedding_dim", embedding_dim), self.dim)
        if self.k == self.dim:
            self.embedding = np.eye(self.dim)
        else:
            q, _ = np.linalg.qr(self.rng.standard_normal((self.dim, self.k)))
            self.embedding = q * math.sqrt(self.dim / self.k)
        self.bound, self.kappa, self.max_points = positive_number("bound", bound), float(kappa), int(max_points)
        self.candidates, self.polish = positive_int("candidates", candidates), int(polish)
        self.observed_y: list[np.ndarray] = []
        self.observed_loss: list[float] = []
        self.length = 0.8
        self.successes = self.failures = 0
        self.restarts = 0
        self._region_best = math.inf
        self._pending: np.ndarray | None = None
        self._fresh = True

    def _to_latents(self, points: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(self.sigma * points @ self.embedding.T, dtype=torch.float32)

    def _suggest(self, size: int) -> np.ndarray:
        from bayes_opt import UtilityFunction

        ys, losses = np.asarray(self.observed_y), np.asarray(self.observed_loss)
        centre = ys[int(np.argmin(losses))]
        half = self.length * self.bound
        low, high = np.clip(centre - half, -self.bound, self.bound), np.clip(centre + half, -self.bound, self.bound)
        nearest = np.argsort(np.abs(ys - centre).max(1))[: self.max_points]
        names = [f"y{i:03d}" for i in range(self.k)]
        optimizer = _candidate_set_bo(self.candidates, self.polish)(
            f=None,
            pbounds={n: (lo, hi) for n, lo, hi in zip(names, low, high)},
            random_state=self.rng,
            verbose=0,
            allow_duplicate_points=True,
        )
        optimizer.set_gp_params(n_restarts_optimizer=0)
        targets = -losses[nearest]
        for point, target in zip(ys[nearest], targets):
            optimizer.register(dict(zip(names, point)), float(target))
        utility = UtilityFunction(kind="ucb", kappa=self.kappa)
        lie = float(targets.min())
        batch = []
        for _ in range(size):
            suggestion = optimizer.suggest(utility)
            batch.append(np.array([suggestion[n] for n in names]))
            optimizer.register(suggestion, lie)
        return np.stack(batch)

    def ask(self) -> torch.Tensor:
        size = self._next_size()
        if self._fresh:
            self._pending = self.rng.uniform(-self.bound, self.bound, (size, self.k))
        else:
            self._pending = self._suggest(size)
        return self._to_latents(self._pending)

    def _tell(self, latents: torch.Tensor, losses: torch.Tensor) -> None:
        assert self._pending is not None
        values = [v if math.isfinite(v) else 1e30 for v in losses.detach().double().cpu().tolist()]
        self.observed_y.extend(self._pending)
        self.observed_loss.extend(values)
        batch_best = min(values)
        if self._fresh:
            self._fresh = False
            self._region_best = batch_best
            return
        if batch_best < self._region_best - 1e-3 * abs(self._region_best):
            self.successes, self.failures = self.successes + 1, 0
            self._region_best = batch_best
        else:
            self.successes, self.failures = 0, self.failures + 1
        if self.successes >= 3:
            self.length, self.successes = min(2 * self.length, 1.6), 0
        if self.failures >= math.ceil(max(4, self.k) / max(1, len(values))):
            self.length, self.failures = self.length / 2, 0
        if self.length < 2**-7:  # TuRBO restart: forget the region, keep the global best
            self.restarts += 1
            self.length, self.successes, self.failures = 0.8, 0, 0
            self.observed_y, self.observed_loss = [], []
            self._fresh = True

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "embedding_dim": self.k,
            "candidates": self.candidates,
            "polish": self.polish,
            "bound": self.bound,
            "kappa": self.kappa,
            "max_points": self.max_points,
            "trust_region_restarts": self.restarts,
        }


@functools.cache
def _candidate_set_bo(candidates: int, polish: int) -> type:
    """``bayes_opt.BayesianOptimization`` whose ``suggest`` maximises the acquisition over ``candidates`` random
    points of the bounds plus ``polish`` L-BFGS-B runs (the library's defaults are 10,000 and 10)."""
    from bayes_opt import BayesianOptimization
    from bayes_opt.util import acq_max

    class CandidateSetBayesianOptimization(BayesianOptimization):  # type: ignore[misc]
        def suggest(self, utility_function: Any) -> dict[str, float]:
            if len(self.space) == 0:
                return self.space.array_to_params(self.space.random_sample())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self._gp.fit(self.space.params, self.space.target)
            suggestion = acq_max(
                ac=utility_function.utility,
                gp=self._gp,
                y_max=self.space.target.max(),
                bounds=self.space.bounds,
                random_state=self._random_state,
                n_warmup=candidates,
                n_iter=polish,
            )
            return self.space.array_to_params(suggestion)

    return CandidateSetBayesianOptimization
