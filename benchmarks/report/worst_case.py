"""The worst case per victim, its bootstrap intervals over victims, and rank bands.

A mean over victims per attack followed by the best attack hides the victims one attack rebuilds and the others
miss. The auditor's upper bound is the **worst case per victim**: for every victim and seed, the best value of
every metric over all attacks of a setting (highest or lowest, as ``ggl.metrics.METRIC_TABLE`` says), averaged
over the victim's seeds. From it:

* ``psnr_above_baseline``: worst-case PSNR minus the victim's baseline (the ranking figure). The baseline is the
  better of the prior-only reference (the class mean or a prior sample of the class inferred from the defended
  update) and the control: the worst case, over the same attacks, of their runs on a control update that carries
  nothing about the victim (``benchmarks.cells``);
* ``pick_above_baseline``: the same for the **attacker's pick**, per victim and seed the reconstruction with the
  lowest common matching loss (``benchmarks.cells.MATCH_LOSS``), i.e. the one a server would choose without the
  private images;
* ``victims_recovered``: per victim, the share of its seeds whose worst-case SSIM is at least
  ``RECOVERED_THRESHOLD``; with one seed, 1 for a recovered victim and 0 otherwise;
* the deciding attack: per victim and seed, the attack that gave the worst-case PSNR, counted; ``cut_off`` counts
  the victims whose deciding row was still improving when its budget ran out.

Every PSNR is scored up to ``PSNR_EXACT`` (``saturate``): beyond an RMS error of one 8-bit grey level the victim is
rebuilt exactly, and the figures rank defenses, not the optimiser's floating-point floor. The rows keep their raw
PSNR (``rows.csv``).

A handful of victims leaves every mean uncertain, so each figure carries an expanded percentile bootstrap
interval over victims (``benchmarks.report.stats``: 2,000 resamples of the victims, a victim's seeds kept
together, a seed derived from the suite's name so reports regenerate byte for byte). Settings ranked next to each
other share a **band** unless the paired bootstrap interval of their per-victim difference (the same resampled
victims for both, only the victims both have) excludes 0: walking the ranked list, a new band starts at the first
setting whose paired difference with the current band's first setting excludes 0.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any

from ggl.metrics import METRIC_TABLE

from ..cells import MATCH_LOSS, STILL_IMPROVING
from ..store import CellRow
from .stats import bootstrap_interval, mean, paired_interval

RANKING_METRIC = "psnr"
"""The metric whose worst case, above the prior-only reference, ranks the leaderboard."""
PSNR_EXACT = 20 * math.log10(255)
"""PSNR (dB, images in [0, 1]) at which a reconstruction counts as exact: an RMS error of one 8-bit grey level
(48.13 dB). The report scores every PSNR above it as this value: the victim is already rebuilt to the precision of
its own 8-bit pixels, so a longer search cannot leak more, and ranking 55 dB against 75 dB would rank the
optimiser's floating-point floor, not the defense."""
RECOVERED_METRIC = "ssim"
RECOVERED_THRESHOLD = 0.6
"""SSIM at or above which a victim counts as recovered (``leaderboards/README.md`` says why 0.6)."""
ABOVE_PRIOR = "psnr_above_baseline"
PICK = "pick_above_baseline"
RECOVERED = "victims_recovered"


def saturate(row: CellRow) -> CellRow:
    """``row`` as the report scores it: PSNR above ``PSNR_EXACT`` becomes ``PSNR_EXACT``, and a row at that value
    is not ``still_improving`` (no budget can make it leak more). Rows below it are returned unchanged."""
    psnr = row.metrics.get(RANKING_METRIC, math.nan)
    if not psnr >= PSNR_EXACT:
        return row
    metrics = {**row.metrics, RANKING_METRIC: PSNR_EXACT}
    if STILL_IMPROVING in metrics:
        metrics[STILL_IMPROVING] = 0.0
    return replace(row, metrics=metrics)


@dataclass(frozen=True)
class Estimate:
    """A mean over victims with its bootstrap interval (NaN bounds when there is none)."""

    value: float
    low: float
    high: float
    victims: int

    def to_json(self) -> dict[str, Any]:
        """``value``, ``interval`` (``[low, high]``, or null) and the number of victims behind them."""
        interval = None if math.isnan(self.low) else [self.low, self.high]
        return {"value": self.value, "interval": interval, "victims": self.victims}


@dataclass(frozen=True)
class Choice:
    """One worst-case value of one victim and seed, and the row it comes from."""

    value: float
    attack: str
    config_hash: str
    code_version: str
    still_improving: bool = False


@dataclass
class VictimWorstCase:
    """One victim: worst-case metrics (means over its seeds of the best value over attacks) and their sources."""

    victim: int
    metrics: dict[str, float]
    reference_psnr: float
    reference: str | None
    recovered: float
    choices: dict[int, dict[str, Choice]]
    picks: dict[int, Choice]

    @property
    def pick_psnr(self) -> float:
        """PSNR of the attacker's pick, mean over seeds (NaN when no row has a matching loss)."""
        return mean(choice.value for choice in self.picks.values())

    @property
    def cut_off(self) -> bool:
        """Whether the row that gave the worst-case PSNR was still improving, in any seed."""
        return any(c[RANKING_METRIC].still_improving for c in self.choices.values() if RANKING_METRIC in c)

    def figure(self, name: str) -> float:
        """``psnr_above_baseline``, ``pick_above_baseline``, ``victims_recovered`` or a metric's worst case (NaN
        when absent)."""
        if name == ABOVE_PRIOR:
            return self.metrics.get(RANKING_METRIC, math.nan) - self.reference_psnr
        if name == PICK:
            return self.pick_psnr - self.reference_psnr
        if name == RECOVERED:
            return self.recovered
        return self.metrics.get(name, math.nan)

    def deciding(self) -> list[str]:
        """Per seed, the attack that gave the worst-case PSNR."""
        return [c[RANKING_METRIC].attack for _, c in sorted(self.choices.items()) if RANKING_METRIC in c]

    def to_json(self) -> dict[str, Any]:
        """The victim's worst case, its reference, and per seed which attack's row gave each value."""
        return {
            "victim": self.victim,
            ABOVE_PRIOR: self.figure(ABOVE_PRIOR),
            PICK: self.figure(PICK),
            "metrics": self.metrics,
            "recovered": self.recovered,
            "cut_off": self.cut_off,
            "baseline_psnr": self.reference_psnr,
            "baseline": self.reference,
            "seeds": [
                {
                    "seed": seed,
                    "metrics": {name: asdict(choice) for name, choice in chosen.items()},
                    "attackers_pick": asdict(self.picks[seed]) if seed in self.picks else None,
                }
                for seed, chosen in sorted(self.choices.items())
            ],
        }


@dataclass
class WorstCase:
    """A defense setting's (or a reference's) worst case per victim and the estimates over victims."""

    victims: list[VictimWorstCase]
    figures: dict[str, Estimate]
    deciding: list[tuple[str, int]]
    band: int = 0  # 0: in no band (no ranking figure)
    comparison: dict[str, Any] | None = None  # the paired difference that placed it in its band
    attacks: str = "all"  # which attacks it covers: "all", or "non-adaptive" when the simulation check failed

    @property
    def cut_off(self) -> int:
        """Victims whose worst case came from a search still improving when its budget ran out."""
        return sum(victim.cut_off for victim in self.victims)

    @property
    def leakage(self) -> float:
        """The ranking figure: mean worst-case PSNR above the prior (NaN when there is none)."""
        estimate = self.figures.get(ABOVE_PRIOR)
        return estimate.value if estimate is not None else math.nan

    def values(self, name: str) -> dict[int, float]:
        """Victim -> its value of figure ``name``, for the victims that have one."""
        return {v.victim: v.figure(name) for v in self.victims if not math.isnan(v.figure(name))}

    def to_json(self) -> dict[str, Any]:
        """The estimates with intervals, the deciding attacks with counts, every victim's values and sources."""
        return {
            **{n: self.figures[n].to_json() if n in self.figures else None for n in (ABOVE_PRIOR, PICK, RECOVERED)},
            "metrics": {n: e.to_json() for n, e in self.figures.items() if n not in (ABOVE_PRIOR, PICK, RECOVERED)},
            "deciding_attacks": [{"attack": attack, "count": count} for attack, count in self.deciding],
            "cut_off": self.cut_off,
            "attacks": self.attacks,
            "per_victim": [victim.to_json() for victim in self.victims],
        }


def _better(name: str, value: float, current: Choice | None) -> bool:
    """Whether ``value`` beats ``current`` in ``name``'s direction (the first of equals stays)."""
    if current is None:
        return True
    return value > current.value if METRIC_TABLE[name].higher_is_better else value < current.value


def _choice(row: CellRow, value: float) -> Choice:
    improving = row.metrics.get(STILL_IMPROVING, 0.0) == 1.0
    return Choice(value, row.attack_label, row.config_hash, row.code_version, improving)


def best_per_seed(groups: Sequence[Sequence[CellRow]]) -> dict[tuple[int, int], dict[str, Choice]]:
    """(victim, seed) -> metric -> the best value over the attacks' rows (``groups`` in suite order)."""
    best: dict[tuple[int, int], dict[str, Choice]] = defaultdict(dict)
    for rows in groups:
        for row in rows:
            chosen = best[(row.victim, row.seed)]
            for name, value in row.metrics.items():
                if name in METRIC_TABLE and not math.isnan(value) and _better(name, value, chosen.get(name)):
                    chosen[name] = _choice(row, value)
    return best


def attackers_pick(groups: Sequence[Sequence[CellRow]]) -> dict[tuple[int, int], Choice]:
    """(victim, seed) -> the PSNR of the row with the lowest matching loss (the first of equals stays)."""
    picks: dict[tuple[int, int], tuple[float, Choice]] = {}
    for rows in groups:
        for row in rows:
            loss = row.metrics.get(MATCH_LOSS, math.nan)
            psnr = row.metrics.get(RANKING_METRIC, math.nan)
            key = (row.victim, row.seed)
            if not (math.isnan(loss) or math.isnan(psnr)) and (key not in picks or loss < picks[key][0]):
                picks[key] = (loss, _choice(row, psnr))
    return {key: choice for key, (_, choice) in picks.items()}


def _victim(
    victim: int,
    choices: dict[int, dict[str, Choice]],
    picks: dict[int, Choice],
    reference: tuple[float, str] | None,
) -> VictimWorstCase:
    """One victim's worst case from its per-seed choices."""
    names = [name for name in METRIC_TABLE if any(name in chosen for chosen in choices.values())]
    metrics = {name: mean(c[name].value for c in choices.values() if name in c) for name in names}
    flags = [c[RECOVERED_METRIC].value >= RECOVERED_THRESHOLD for c in choices.values() if RECOVERED_METRIC in c]
    return VictimWorstCase(
        victim=victim,
        metrics=metrics,
        reference_psnr=reference[0] if reference else math.nan,
        reference=reference[1] if reference else None,
        recovered=mean(float(flag) for flag in flags),
        choices=dict(sorted(choices.items())),
        picks=dict(sorted(picks.items())),
    )


def _estimates(victims: Sequence[VictimWorstCase], seed: int) -> dict[str, Estimate]:
    """Mean and bootstrap interval over victims of every figure some victim has."""
    names = [ABOVE_PRIOR, PICK, *(n for n in METRIC_TABLE if any(n in v.metrics for v in victims)), RECOVERED]
    estimates = {}
    for name in names:
        values = [v.figure(name) for v in victims if not math.isnan(v.figure(name))]
        if values:
            estimates[name] = Estimate(mean(values), *bootstrap_interval(values, seed), len(values))
    return estimates


def worst_case(groups: Sequence[Sequence[CellRow]], references: dict[int, tuple[float, str]], seed: int) -> WorstCase:
    """The worst case per victim of the attacks' rows ``groups`` (in suite order) against each victim's reference.

    ``references`` maps a victim to its baseline PSNR and the baseline's label.
    """
    by_victim: dict[int, dict[int, dict[str, Choice]]] = defaultdict(dict)
    for (victim, row_seed), chosen in best_per_seed(groups).items():
        by_victim[victim][row_seed] = chosen
    picks: dict[int, dict[int, Choice]] = defaultdict(dict)
    for (victim, row_seed), choice in attackers_pick(groups).items():
        picks[victim][row_seed] = choice
    victims = [_victim(v, choices, picks[v], references.get(v)) for v, choices in sorted(by_victim.items())]
    order: dict[str, int] = {}
    for index, rows in enumerate(groups):
        if rows:
            order.setdefault(rows[0].attack_label, index)
    counts = Counter(attack for victim in victims for attack in victim.deciding())
    deciding = sorted(counts.items(), key=lambda item: (-item[1], order.get(item[0], len(order)), item[0]))
    return WorstCase(victims, _estimates(victims, seed), deciding)


def assign_bands(ranked: Sequence[tuple[str, WorstCase]], seed: int) -> None:
    """Number the bands of ``ranked`` ((label, worst case) in rank order; those without a ranking figure get none).

    A new band starts at the first setting whose paired difference in PSNR above baseline with the band's first
    setting has a bootstrap interval that excludes 0; fewer than 2 shared victims give no interval, so no new band.
    Each setting after the first records the comparison that placed it.
    """
    head: tuple[str, WorstCase] | None = None
    band = 0
    for label, case in ranked:
        if math.isnan(case.leakage):
            continue
        separated = head is None
        if head is not None:
            low, high = paired_interval(head[1].values(ABOVE_PRIOR), case.values(ABOVE_PRIOR), seed)
            separated = low > 0 or high < 0
            case.comparison = {"band_head": head[0], "difference_interval": [low, high], "new_band": separated}
        if separated:
            band += 1
            head = (label, case)
        case.band = band
