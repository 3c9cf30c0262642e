"""Aggregation: the rows of one suite become per-pair and per-defense summaries, ranked by worst-case leakage.

The prior-only reference of a victim under a defense setting is the better (higher PSNR) of the class-mean image
and a random prior sample of the class inferred from the defended update (what the attacker has without any
gradient information beyond the label). The **baseline** is the better of that reference and the control (the
worst case of the same attacks run on a control update that carries nothing about the victim). A defense
setting's leakage is the mean over victims of its **worst case per victim** above the baseline: per victim and
seed the best PSNR over all attacks (``benchmarks.report.worst_case``), with bootstrap intervals over victims and
rank bands. Lower leakage ranks first. A setting whose ``simulate`` failed the harness's simulation check
(``benchmarks.cells.SIMULATION_OK``) is ranked by its non-adaptive attacks (and their controls) only: adaptive
attacks trust a description the check showed to be false.

Per attack (``PairSummary``) the figures are means over victims: ``psnr_gain`` is the mean of the attack's PSNR
above each victim's reference; the strongest attack is the one with the largest mean gain, and ``best`` holds the
best per-attack mean of every metric of ``ggl.metrics.METRIC_TABLE`` (in the direction the table gives). These
are not the worst case: an attack that wins some victims and loses others can hide behind its mean.

A report shows one configuration: given a ``SuiteConfig`` it takes exactly that suite's cells (rows of other
budgets, defenses, victims or seeds in the same store are left out and counted) and the utility costs computed with
its utility options. Failed cells are listed; a defense setting whose every cell failed is shown, unranked.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from ggl.io import canonical_json
from ggl.metrics import METRIC_TABLE

from ..cells import SIMULATION_OK, CellKey, expand_cells
from ..config import REFERENCE_KINDS, REFERENCE_PREFIX, SuiteConfig
from ..store import CellRow, FailureRow, ResultsStore, VictimRow
from .stats import bootstrap_seed, mean
from .worst_case import RANKING_METRIC, WorstCase, assign_bands, best_per_seed, saturate, worst_case

ATTAINABLE_REFERENCES = (REFERENCE_PREFIX + "class-mean", REFERENCE_PREFIX + "prior-sample")
"""References an attacker can produce from the label alone; the leakage baseline is the best of them."""


def plain(value: Any) -> Any:
    """JSON-safe data: non-finite floats become strings, numbers are rounded to 10 significant digits."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return float(f"{value:.10g}")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


@dataclass
class PairSummary:
    """One (defense, attack) pair over victims and seeds."""

    attack_label: str
    attack: dict[str, Any]
    kind: str
    metrics: dict[str, float]
    psnr_gain: float
    victims: int
    seconds: float
    evaluations: float
    rows: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """The pair as ``leaderboard.json`` lists it, with the rows every number comes from."""
        return plain(
            {
                "attack": self.attack_label,
                "spec": self.attack,
                "kind": self.kind,
                "metrics": self.metrics,
                "psnr_gain_over_prior": self.psnr_gain,
                "victims": self.victims,
                "mean_seconds": self.seconds,
                "mean_evaluations": self.evaluations,
                "rows": self.rows,
            }
        )


@dataclass
class DefenseSummary:
    """One defense setting: its pairs, its strongest attack on average, its worst case per victim, its utility."""

    label: str
    spec: dict[str, Any]
    pairs: list[PairSummary]
    utility: dict[str, Any] | None
    strongest: PairSummary | None
    best: dict[str, float]
    worst: WorstCase | None = None  # None: every cell of the setting failed
    rank: int = 0  # 0: unranked (every cell of the setting failed)
    failures: list[FailureRow] = field(default_factory=list)
    controls: list[PairSummary] = field(default_factory=list)
    simulation_failed: bool = False  # its simulate failed the check: ranked by non-adaptive attacks only

    @property
    def unrankable(self) -> bool:
        """Its simulation failed the check and the suite has no non-adaptive attack to rank it by."""
        return self.simulation_failed and self.worst is not None and not self.worst.victims

    @property
    def leakage(self) -> float:
        """The ranking figure: mean over victims of the worst-case PSNR above the baseline (NaN when there is none)."""
        return self.worst.leakage if self.worst is not None else math.nan

    @property
    def mean_leakage(self) -> float:
        """Mean PSNR above the prior of the strongest attack on average (NaN when no attack has one)."""
        return self.strongest.psnr_gain if self.strongest is not None else math.nan

    def utility_value(self, name: str) -> float | None:
        """One utility metric (``update_cosine``, ``accuracy_drop``), or None when not computed."""
        if self.utility is None:
            return None
        value = self.utility["metrics"].get(name)
        return None if value is None else float(value)


@dataclass(frozen=True)
class OffBoardEntry:
    """A submission the tables leave out: its name, its file, the configurations it was evaluated on, and why."""

    name: str
    file: str
    config_hashes: tuple[str, ...]
    reason: str


@dataclass
class Report:
    """Everything the report files show, computed from the rows of one suite."""

    suite: str
    description: str
    defenses: list[DefenseSummary]
    references: list[PairSummary]
    reference_worst: list[WorstCase]  # one per reference, in the order of ``references``
    victims: int
    seeds: list[int]
    config_hashes: list[str]
    code_versions: list[str]
    rows: list[CellRow] = field(default_factory=list)
    failures: list[FailureRow] = field(default_factory=list)
    originals: list[VictimRow] = field(default_factory=list)
    left_out: int = 0  # stored rows of this suite that belong to another configuration
    bootstrap_seed: int = 0
    calibration: dict[str, list[str]] = field(default_factory=dict)  # check -> defense labels (the suite's)
    off_board: list[OffBoardEntry] = field(default_factory=list)  # submissions not on this board, with why


def _row_ref(row: CellRow) -> dict[str, Any]:
    return {"victim": row.victim, "seed": row.seed, "config_hash": row.config_hash, "code_version": row.code_version}


def _per_victim(rows: Sequence[CellRow]) -> dict[int, dict[str, float]]:
    """Mean over seeds of each metric, per victim."""
    grouped: dict[int, list[CellRow]] = defaultdict(list)
    for row in rows:
        grouped[row.victim].append(row)
    result = {}
    for victim, items in sorted(grouped.items()):
        names = sorted({name for item in items for name in item.metrics})
        result[victim] = {name: mean(item.metrics[name] for item in items if name in item.metrics) for name in names}
    return result


def _summarise(rows: Sequence[CellRow], references: dict[int, tuple[float, str]]) -> PairSummary:
    """Means over victims of the per-victim means, and the PSNR gain over each victim's reference."""
    victims = _per_victim(rows)
    names = sorted({name for values in victims.values() for name in values})
    metrics = {name: mean(values[name] for values in victims.values() if name in values) for name in names}
    gains = [values["psnr"] - references[v][0] for v, values in victims.items() if "psnr" in values and v in references]
    first = rows[0]
    return PairSummary(
        attack_label=first.attack_label,
        attack=first.attack,
        kind=first.kind,
        metrics=metrics,
        psnr_gain=mean(gains),
        victims=len(victims),
        seconds=mean(r.seconds for r in rows),
        evaluations=mean(float(r.evaluations) for r in rows),
        rows=[_row_ref(r) for r in sorted(rows, key=lambda r: (r.victim, r.seed))],
    )


def _attack_order(suite_config: dict[str, Any] | None) -> dict[str, int]:
    """Position of each attack key in the suite file, so tables list attacks as the suite does."""
    order: dict[str, int] = {}
    if suite_config:
        for index, attack in enumerate(suite_config.get("attacks", [])):
            key = canonical_json({**attack["spec"], "adaptive": attack["adaptive"]})
            order.setdefault(key, index)
    return order


def _attainable_psnr(by_reference: dict[str, list[CellRow]]) -> dict[int, tuple[float, str]]:
    """Per victim, the best PSNR (mean over seeds) of the references an attacker can produce from the label alone,
    and that reference's label."""
    attainable: dict[int, tuple[float, str]] = {}
    for key in sorted(by_reference):
        rows_of_kind = by_reference[key]
        if rows_of_kind[0].attack["name"] not in ATTAINABLE_REFERENCES:
            continue
        for victim, values in _per_victim(rows_of_kind).items():
            if "psnr" in values and values["psnr"] > attainable.get(victim, (-math.inf, ""))[0]:
                attainable[victim] = (values["psnr"], rows_of_kind[0].attack_label)
    return attainable


def _references(
    by_reference: dict[str, list[CellRow]], attainable: dict[int, tuple[float, str]], seed: int
) -> tuple[list[PairSummary], list[WorstCase]]:
    """One summary and one worst case per reference kind, in the order of ``REFERENCE_KINDS``."""
    kind_order = {REFERENCE_PREFIX + kind: index for index, kind in enumerate(REFERENCE_KINDS)}
    ordered = sorted(by_reference.items(), key=lambda item: (kind_order.get(item[1][0].attack["name"], 99), item[0]))
    return [_summarise(rows, attainable) for _, rows in ordered], [
        worst_case([rows], attainable, seed) for _, rows in ordered
    ]


def best_values(summaries: Sequence[PairSummary]) -> dict[str, float]:
    """The best value of every table metric over ``summaries`` (highest or lowest, as ``METRIC_TABLE`` says)."""
    best: dict[str, float] = {}
    for name, metric in METRIC_TABLE.items():
        candidates = [s.metrics[name] for s in summaries if name in s.metrics and not math.isnan(s.metrics[name])]
        if candidates:
            best[name] = max(candidates) if metric.higher_is_better else min(candidates)
    return best


@dataclass
class SettingRows:
    """One defense setting's rows by kind, each a dict from attack JSON to rows."""

    attacks: dict[str, list[CellRow]] = field(default_factory=lambda: defaultdict(list))
    controls: dict[str, list[CellRow]] = field(default_factory=lambda: defaultdict(list))
    references: dict[str, list[CellRow]] = field(default_factory=lambda: defaultdict(list))

    def add(self, row: CellRow) -> None:
        kinds = {"attack": self.attacks, "control": self.controls, "reference": self.references}
        kinds[row.kind][row.attack_json].append(row)

    @property
    def simulation_failed(self) -> bool:
        """Whether any attack row records that the defense's simulation failed the check."""
        return any(r.metrics.get(SIMULATION_OK, 1.0) == 0.0 for rows in self.attacks.values() for r in rows)


def _non_adaptive(pairs: dict[str, list[CellRow]]) -> dict[str, list[CellRow]]:
    return {key: rows for key, rows in pairs.items() if not rows[0].attack.get("adaptive", False)}


def _baseline(
    attainable: dict[int, tuple[float, str]], controls: Sequence[Sequence[CellRow]]
) -> dict[int, tuple[float, str]]:
    """Per victim the better of the prior-only reference and the control's worst-case PSNR (mean over seeds)."""
    per_victim: dict[int, list[float]] = defaultdict(list)
    for (victim, _), chosen in sorted(best_per_seed(controls).items()):
        if RANKING_METRIC in chosen:
            per_victim[victim].append(chosen[RANKING_METRIC].value)
    baseline = dict(attainable)
    for victim, values in per_victim.items():
        control = mean(values)
        if control > baseline.get(victim, (-math.inf, ""))[0]:
            baseline[victim] = (control, "control")
    return baseline


def _ordered(pairs: dict[str, list[CellRow]], order: dict[str, int]) -> list[list[CellRow]]:
    """The pairs' rows in suite order (a control's attack keeps its attack's place)."""

    def place(item: tuple[str, list[CellRow]]) -> tuple[Any, ...]:
        attack = {k: v for k, v in item[1][0].attack.items() if k != "control"}
        return (order.get(canonical_json(attack), len(order)), item[1][0].attack_label, item[0])

    return [rows for _, rows in sorted(pairs.items(), key=place)]


def _defense_summary(
    setting: SettingRows,
    order: dict[str, int],
    attainable: dict[int, tuple[float, str]],
    utility: dict[str, Any] | None,
    seed: int,
) -> DefenseSummary:
    """Summarise one defense setting's pairs (in suite order), pick its strongest attack, take its worst case above
    the baseline (non-adaptive attacks only when its simulation failed the check)."""
    if setting.references:
        attainable = _attainable_psnr(setting.references)
    ordered = _ordered(setting.attacks, order)
    summaries = [_summarise(items, attainable) for items in ordered]
    failed = setting.simulation_failed
    attacks = _ordered(_non_adaptive(setting.attacks), order) if failed else ordered
    controls = _ordered(_non_adaptive(setting.controls) if failed else setting.controls, order)
    ranked = [s for s in summaries if not math.isnan(s.psnr_gain)]
    strongest = max(ranked, key=lambda s: (s.psnr_gain, s.attack_label)) if ranked else None
    first = ordered[0][0]
    worst = worst_case(attacks, _baseline(attainable, controls), seed)
    worst.attacks = "non-adaptive" if failed else "all"
    return DefenseSummary(
        first.defense_label,
        first.defense or {},
        summaries,
        utility,
        strongest,
        best_values(summaries),
        worst,
        controls=[_summarise(items, attainable) for items in _ordered(setting.controls, order)],
        simulation_failed=failed,
    )


def _rank_key(summary: DefenseSummary) -> tuple[Any, ...]:
    """Settings with rows first, known leakage first, lower worst-case leakage first, then smaller accuracy drop,
    then label."""
    leakage = summary.leakage
    drop = summary.utility_value("accuracy_drop")
    return (
        not summary.pairs,
        summary.unrankable,
        math.isnan(leakage),
        leakage if not math.isnan(leakage) else 0.0,
        drop if drop is not None else math.inf,
        summary.label,
    )


def _scope(suite: str | SuiteConfig) -> tuple[str, frozenset[CellKey] | None, dict[str, Any] | None]:
    """The suite's name, the keys of its cells and its utility options (None and None for a bare name)."""
    if isinstance(suite, str):
        return suite, None, None
    keys = frozenset(cell.key() for cell in expand_cells(suite))
    return suite.name, keys, {"seed": suite.utility.seed, **dict(suite.utility.options)}


def _utilities(
    store: ResultsStore, suite_config: dict[str, Any] | None, options: dict[str, Any] | None
) -> dict[str, dict[str, Any]]:
    """Utility costs by defense JSON, computed with ``options`` (default: those the suite was last run with)."""
    if options is None and suite_config and "utility" in suite_config:
        options = {"seed": suite_config["utility"]["seed"], **suite_config["utility"]["options"]}
    return store.utilities(options)


def _defense_summaries(
    by_defense: dict[str, SettingRows],
    failures: Sequence[FailureRow],
    order: dict[str, int],
    attainable: dict[int, tuple[float, str]],
    utilities: dict[str, dict[str, Any]],
    seed: int,
) -> list[DefenseSummary]:
    """Every defense setting with rows or failed cells, ranked and banded; one whose every cell failed comes last,
    unranked."""
    failed: dict[str, list[FailureRow]] = defaultdict(list)
    for failure in failures:
        if failure.kind != "reference":
            failed[canonical_json(failure.defense)].append(failure)
    defenses = []
    attacked = [key for key, setting in by_defense.items() if setting.attacks]
    for defense_json in [*attacked, *(key for key in failed if key not in attacked)]:
        utility = utilities.get(defense_json)
        if defense_json in attacked:
            summary = _defense_summary(by_defense[defense_json], order, attainable, utility, seed)
        else:
            first = failed[defense_json][0]
            summary = DefenseSummary(first.defense_label, first.defense or {}, [], utility, None, {})
        summary.failures = failed.get(defense_json, [])
        defenses.append(summary)
    defenses.sort(key=_rank_key)
    for index, summary in enumerate((s for s in defenses if s.pairs and not s.unrankable), start=1):
        summary.rank = index
    assign_bands([(s.label, s.worst) for s in defenses if s.worst is not None], seed)
    return defenses


def distinct_labels(rows: Sequence[CellRow]) -> list[CellRow]:
    """The rows with one label per attack: a non-adaptive attack that shares its label with another attack (rows
    stored before labels told them apart) is shown as ``LABEL non-adaptive``."""
    keys: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        keys[_attack_part(row.attack_label)].add(
            canonical_json({k: v for k, v in row.attack.items() if k != "control"})
        )
    return [
        replace(row, attack_label=_non_adaptive_label(row.attack_label))
        if len(keys[_attack_part(row.attack_label)]) > 1 and row.attack.get("adaptive") is False
        else row
        for row in rows
    ]


CONTROL_SUFFIX = " (control)"


def _attack_part(label: str) -> str:
    return label[: -len(CONTROL_SUFFIX)] if label.endswith(CONTROL_SUFFIX) else label


def _non_adaptive_label(label: str) -> str:
    return f"{_attack_part(label)} non-adaptive" + (CONTROL_SUFFIX if label.endswith(CONTROL_SUFFIX) else "")


def _calibration(suite: str | SuiteConfig, suite_config: dict[str, Any] | None) -> dict[str, list[str]]:
    """The calibration checks of the suite given, or of the suite as last run (a bare name)."""
    checks = suite.calibration if isinstance(suite, SuiteConfig) else (suite_config or {}).get("calibration", {})
    return {check: list(labels) for check, labels in checks.items()}


def build_report(store: ResultsStore, suite: str | SuiteConfig) -> Report:
    """Aggregate the rows of ``suite`` (see the module docstring for the definitions).

    A ``SuiteConfig`` reports exactly its own cells and utility options; a suite name, every stored row of that
    suite and the utility options it was last run with. Everything is read (and checked) here, before any file of
    the report is written.
    """
    name, keys, options = _scope(suite)
    stored = store.cells(name)
    rows = [row for row in stored if keys is None or row.key in keys]
    failures = [failure for failure in store.failures(name) if keys is None or failure.key in keys]
    if not rows and not failures:
        other = f" as configured now ({len(stored)} stored rows are of another configuration)" if stored else ""
        raise ValueError(
            f"the results store {store.path} has no rows for suite {name!r}{other}; "
            f"suites stored: {', '.join(store.suites()) or 'none'}"
        )
    meta = store.get_meta(f"suite:{name}")
    suite_config = json.loads(meta) if meta else None
    rows = distinct_labels(rows)
    by_reference: dict[str, list[CellRow]] = defaultdict(list)
    by_defense: dict[str, SettingRows] = defaultdict(SettingRows)
    for row in map(saturate, rows):
        if row.kind == "reference" and row.defense is None:
            by_reference[row.attack_json].append(row)
        else:
            by_defense[row.defense_json].add(row)
    attainable = _attainable_psnr(by_reference)
    seed = bootstrap_seed(name)
    utilities = _utilities(store, suite_config, options)
    defenses = _defense_summaries(by_defense, failures, _attack_order(suite_config), attainable, utilities, seed)
    references, reference_worst = _references(by_reference, attainable, seed)
    return Report(
        suite=name,
        description=str((suite_config or {}).get("description", "")),
        defenses=defenses,
        references=references,
        reference_worst=reference_worst,
        victims=len({r.victim for r in rows}),
        seeds=sorted({r.seed for r in rows}),
        config_hashes=sorted({r.config_hash for r in rows}),
        code_versions=sorted({r.code_version for r in rows}),
        rows=rows,
        failures=failures,
        originals=store.victims(name),
        left_out=len(stored) - len(rows),
        bootstrap_seed=seed,
        calibration=_calibration(suite, suite_config),
    )
