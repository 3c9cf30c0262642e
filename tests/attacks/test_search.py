"""Latent-search strategies: each improves a quadratic, keeps its budget, and is reproducible from its seed."""

from __future__ import annotations

import pytest
import torch

from ggl.attacks.search import SEARCHES, CMASearch, make_search, minimize

DIM = 12
OPTIMUM = torch.randn(DIM, generator=torch.Generator().manual_seed(5))


def quadratic(latents: torch.Tensor) -> torch.Tensor:
    return (latents - OPTIMUM).pow(2).sum(1)


START = float(quadratic(torch.zeros(1, DIM)))  # the loss at z = 0, where every strategy is centred

CASES = [
    ("cma", 10, 200, {}),
    ("adam", 10, 200, {}),
    ("bo", 5, 40, {}),
    ("ng:TwoPointsDE", 10, 200, {}),
    ("DiagonalCMA", 10, 200, {}),
]


@pytest.mark.parametrize(("name", "population", "budget", "options"), CASES)
def test_improves_quadratic_within_budget(name: str, population: int, budget: int, options: dict) -> None:
    search = make_search(name, DIM, population, budget, seed=0, **options)
    trace = minimize(search, quadratic)
    assert search.evaluations == budget
    assert search.best_loss < 0.6 * START  # measured over seeds 0-4: at most 0.52 * START (bo)
    assert float(quadratic(search.best_latent.unsqueeze(0))) == pytest.approx(search.best_loss, rel=1e-5)
    assert all(later <= earlier for earlier, later in zip(trace, trace[1:]))


@pytest.mark.parametrize(("name", "population", "budget", "options"), CASES[:3])
def test_reproducible_from_seed(name: str, population: int, budget: int, options: dict) -> None:
    def run(seed: int) -> torch.Tensor:
        search = make_search(name, DIM, population, min(budget, 3 * population), seed=seed, **options)
        minimize(search, quadratic)
        return search.best_latent

    assert torch.equal(run(3), run(3))
    assert not torch.equal(run(3), run(4))


def test_cma_asks_exactly_the_population_every_generation() -> None:
    population = 7
    search = make_search("cma", DIM, population, 10 * population, seed=0)
    assert isinstance(search, CMASearch)
    for _ in range(10):
        latents = search.ask()
        assert latents.shape == (population, DIM)
        search.tell(latents, quadratic(latents))
        assert search.generation_size == population
    assert search.done


def test_last_round_keeps_to_the_budget() -> None:
    search = make_search("cma", DIM, 8, 20, seed=0)
    sizes = []
    while not search.done:
        latents = search.ask()
        sizes.append(latents.shape[0])
        search.tell(latents, quadratic(latents))
    assert sizes == [8, 8, 4] and search.evaluations == 20
    with pytest.raises(RuntimeError, match="budget"):
        search.ask()


def test_bad_names_and_inputs() -> None:
    with pytest.raises(ValueError, match="cma"):
        make_search("no-such-search", DIM, 4, 8)
    with pytest.raises(ValueError, match="population"):
        make_search("cma", DIM, 0, 8)
    adam = make_search("adam", DIM, 4, 8)
    latents = adam.ask()
    with pytest.raises(ValueError, match="differentiable"):
        adam.tell(latents, quadratic(latents).detach())
    assert {"cma", "bo", "adam"} <= set(SEARCHES)
