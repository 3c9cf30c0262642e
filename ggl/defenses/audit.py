"""Check a defense's attacker-side simulation against the update it actually sends.

Adaptive attacks trust ``Defense.simulate``: they pass their trial gradients through it and compare the result
with the received update. A defense whose simulation misstates what it does (say, it sends the clean update but
claims to scale it by 1e-3) starves those attacks of signal and looks private without being so. The harness
knows the client's true gradient, so it can hold every defense to the one point where the truth is known: the
simulation of the clean gradient must explain the defended update.

``check_simulation`` calls the defense ``draws`` times on the clean update, each time with a fresh generator
(seeds derived from ``seed``), and forms for each draw the residual
``r_d = defended_d - simulate([clean], received=defended_d)``, all in float64.

- Deterministic defenses (every draw identical): the simulation must reproduce the update, so the statistic is
  the relative residual ``||r|| / max(||defended||, ||simulated||)`` (0 when both are zero; never above 2) and
  the check passes at or below ``RELATIVE_TOLERANCE`` (1e-4). float32 carries about 7 significant digits; an
  honest simulation that recomputes norms or masks in another summation order differs by about 1e-7 relative,
  while a misstatement that matters for privacy is of order one. 1e-4 leaves at least a thousandfold margin either way.
- Random defenses: the simulation gives the expected update (zero-mean noise, QSGD's unbiased rounding and
  DP-SGD's noise are not simulated), so the mean residual must be zero up to its own spread. The statistic is
  ``||mean_d r_d||^2 / (sum_i s_i^2 / draws)``, with ``s_i^2`` the unbiased per-coordinate variance of the
  residuals over the draws. Under an honest simulation numerator and denominator have the same expectation, so
  the ratio is near 1: with the noise spread over k effectively independent coordinates it follows an
  F(k, k * (draws - 1)) law. With 8 draws, ``NOISE_RATIO_THRESHOLD`` = 4 is exceeded with probability 2e-4
  for k = 10, 5e-7 for k = 20 and 1e-14 for k = 50; per-entry noise on a model's thousands of parameters has
  k in the thousands (at most 1.11 over 300 seeds for the noise, quantization and DP-SGD families on LeNet).
  Randomness confined to a few scalars (k near 1, e.g. MixUp's weights) can exceed 4 by chance (9% at k = 1).
  A misstatement b (the bias of the residual) adds about ``draws * ||b||^2 / sum_i var_i`` to the ratio, so it
  is caught once its squared norm exceeds about 3 / draws of the total noise variance; smaller misstatements
  hide in the noise (more draws sharpen the check). The ratio is ``inf`` only when the residuals do not vary
  at all but their mean is not zero.

The check is necessary, not sufficient: it tests the simulation at the true gradient only, so a simulation that
ignores its trials and returns the received update passes it.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from ggl.checks import non_negative_int
from ggl.defenses.base import Defense, non_finite
from ggl.fl.client import SharedUpdate

RELATIVE_TOLERANCE = 1e-4
"""Largest relative residual ``||r|| / max(||defended||, ||simulated||)`` a deterministic defense may leave."""

NOISE_RATIO_THRESHOLD = 4.0
"""Largest ``||mean residual||^2 / (total residual variance / draws)`` a random defense may show (null mean ~1)."""

TINY = torch.finfo(torch.float64).tiny


@dataclass(frozen=True)
class SimulationCheck:
    """The verdict of ``check_simulation``.

    Attributes:
        passed: the simulation of the clean gradient explains the defended update.
        deterministic: every draw of the defense gave the same update (decides which statistic applies).
        statistic: the relative residual (deterministic) or the noise ratio (random); see the module docstring.
        threshold: the largest passing statistic (``RELATIVE_TOLERANCE`` or ``NOISE_RATIO_THRESHOLD``).
        draws: how many times the defense was applied.
        detail: one line saying what was measured and what it means.
    """

    passed: bool
    deterministic: bool
    statistic: float
    threshold: float
    draws: int
    detail: str

    def to_json(self) -> dict[str, Any]:
        """Plain data: the fields by name."""
        return asdict(self)


def draw_seed(seed: int, draw: int) -> int:
    """The 63-bit generator seed of draw ``draw`` of a check run with ``seed`` (distinct per draw, stable)."""
    digest = hashlib.sha256(f"simulation-check:{seed}:{draw}".encode()).hexdigest()
    return int(digest[:15], 16)


def check_simulation(
    defense: Defense,
    update: SharedUpdate,
    *,
    model: nn.Module | None = None,
    images: torch.Tensor | None = None,
    labels: torch.Tensor | None = None,
    seed: int = 0,
    draws: int = 8,
) -> SimulationCheck:
    """Whether ``defense.simulate`` of the clean ``update`` explains what ``defense`` sends (module docstring).

    Args:
        defense: the defense under test.
        update: the client's clean update.
        model, images, labels: the victim and its private batch, passed to the defense.
        seed: non-negative integer from which the generator of each draw is derived.
        draws: how many times the defense is applied, an integer >= 2.

    Raises:
        ValueError: naming ``seed`` or ``draws`` when out of range, or naming the defense when ``simulate``
            returns tensors that do not match the update or are non-finite (a broken simulation, not a verdict).
    """
    seed = non_negative_int("seed", seed)
    if isinstance(draws, bool) or not isinstance(draws, int) or draws < 2:
        raise ValueError(f"draws must be an integer >= 2 (a random defense needs a spread), got {draws!r}")
    first: torch.Tensor | None = None
    scale = 0.0
    deterministic = True
    moments = _Moments()
    for draw in range(draws):
        generator = torch.Generator().manual_seed(draw_seed(seed, draw))
        defended = defense(update, model=model, images=images, labels=labels, generator=generator)
        simulated = _simulate_clean(defense, update, defended)
        flat = defended.flat().double()
        if first is None:
            first = flat
            scale = max(float(torch.linalg.vector_norm(flat)), float(torch.linalg.vector_norm(simulated)))
        deterministic = deterministic and torch.equal(flat, first)
        moments.add(flat - simulated)
    if deterministic:
        return _deterministic_verdict(defense.name, moments, scale, draws)
    return _random_verdict(defense.name, moments, draws)


def _simulate_clean(defense: Defense, update: SharedUpdate, defended: SharedUpdate) -> torch.Tensor:
    """``simulate`` of the clean gradient (P = 1) given the defended update, flat in float64."""
    trials = [g.detach().unsqueeze(0) for g in update.gradients]
    with torch.no_grad():
        simulated = defense.simulate(trials, defended)
    if not isinstance(simulated, (list, tuple)) or len(simulated) != len(trials):
        raise ValueError(f"defense {defense.name!r}: simulate must return one tensor per gradient")
    for index, (out, trial) in enumerate(zip(simulated, trials)):
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(trial.shape):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise ValueError(
                f"defense {defense.name!r}: simulate returned {shape} for gradients[{index}], "
                f"expected {tuple(trial.shape)}"
            )
    bad = non_finite(simulated)
    if bad:
        raise ValueError(f"defense {defense.name!r}: simulate of the clean gradient gave non-finite values in {bad}")
    return torch.cat([s.detach().reshape(-1).double() for s in simulated])


class _Moments:
    """Running mean and summed squared deviations of the residual vectors (Welford, float64)."""

    def __init__(self) -> None:
        self.count = 0
        self.mean: torch.Tensor | None = None
        self.squares: torch.Tensor | None = None

    def add(self, residual: torch.Tensor) -> None:
        self.count += 1
        if self.mean is None or self.squares is None:
            self.mean, self.squares = residual.clone(), torch.zeros_like(residual)
            return
        delta = residual - self.mean
        self.mean += delta / self.count
        self.squares += delta * (residual - self.mean)


def _deterministic_verdict(name: str, moments: _Moments, scale: float, draws: int) -> SimulationCheck:
    """Relative residual of the (identical) draws, ``scale`` = max(||defended||, ||simulated||), against the
    tolerance."""
    assert moments.mean is not None
    residual = float(torch.linalg.vector_norm(moments.mean))
    statistic = residual / max(scale, TINY) if residual > 0 else 0.0
    passed = statistic <= RELATIVE_TOLERANCE
    verdict = "reproduces" if passed else "does not reproduce"
    detail = (
        f"{name} is deterministic and its simulation of the clean gradient {verdict} the defended update "
        f"(relative residual {statistic:.3g}, tolerance {RELATIVE_TOLERANCE:g})"
    )
    return SimulationCheck(passed, True, statistic, RELATIVE_TOLERANCE, draws, detail)


def _random_verdict(name: str, moments: _Moments, draws: int) -> SimulationCheck:
    """Squared mean residual over its expected size under an honest simulation, against the threshold."""
    assert moments.mean is not None and moments.squares is not None
    bias = float(moments.mean.pow(2).sum())
    noise = float(moments.squares.sum()) / (draws - 1) / draws
    statistic = _ratio(bias, noise)
    passed = statistic <= NOISE_RATIO_THRESHOLD
    verdict = "is consistent with" if passed else "is not"
    detail = (
        f"{name} is random and its simulation of the clean gradient {verdict} the expected defended update "
        f"(squared mean residual {statistic:.3g} times its noise level over {draws} draws, threshold "
        f"{NOISE_RATIO_THRESHOLD:g})"
    )
    return SimulationCheck(passed, False, statistic, NOISE_RATIO_THRESHOLD, draws, detail)


def _ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` for non-negative values, with 0/0 = 0 and x/0 = inf."""
    if numerator == 0.0:
        return 0.0
    if denominator == 0.0:
        return math.inf
    return numerator / denominator
