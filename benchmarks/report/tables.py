"""Tables: the leaderboard and the per-attack breakdown as Markdown, CSV and JSON, and every stored row as CSV.

Metric columns, their titles, directions and number formats come from ``ggl.metrics.METRIC_TABLE``: a metric
added there appears in every table. The leaderboard shows the worst case per victim (``worst_case``): worst-case
PSNR above the baseline, the attacker's pick above the baseline, victims recovered, the deciding attacks and the
flags (cut-off searches, a failed simulation check), then the worst case of each image metric (the
higher-is-better ones first: ``Worst-case PSNR``, then the lower-is-better ones: ``Worst-case MSE``) and of the
label metrics, each with its bootstrap interval (Markdown: ``+9.61 [+4.20, +15.00]``; CSV: ``_low`` and ``_high``
columns); then the strongest attack on average and its mean for comparison. ``attacks.{md,csv}`` keep the
per-attack means. Failed cells are listed below the leaderboard (and in ``leaderboard.json``) only when there are
some.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from typing import Any

from ggl.metrics import METRIC_TABLE

from ..store import FailureRow
from .aggregate import OffBoardEntry, PairSummary, Report, plain
from .stats import LEVEL, RESAMPLES
from .worst_case import (
    ABOVE_PRIOR,
    PICK,
    PSNR_EXACT,
    RECOVERED,
    RECOVERED_METRIC,
    RECOVERED_THRESHOLD,
    Estimate,
    WorstCase,
)

SCHEMA = "ggl-bench-leaderboard-v2"
PRIOR_ONLY = "(any: prior only)"
REPORT_FORMATS = {
    "psnr_gain": "{:+.2f}",
    ABOVE_PRIOR: "{:+.2f}",
    PICK: "{:+.2f}",
    RECOVERED: "{:.2f}",
    "update_cosine": "{:.3f}",
    "accuracy_drop": "{:+.3f}",
    "accuracy_drop_std": "{:.3f}",
    "seconds": "{:.1f}",
    "evaluations": "{:.0f}",
}
"""Number formats of the report's own columns; the metrics' formats are in ``METRIC_TABLE``."""
HEADERS = {
    "rank": "Rank",
    "band": "Band",
    "defense": "Defense",
    "update_cosine": "Update cosine",
    "accuracy_drop": "Accuracy drop (± sd over seeds)",
    "accuracy_drop_std": "Accuracy drop sd",
    "strongest_attack": "Strongest attack",
    "psnr_gain": "PSNR above prior (dB)",
    "victims": "Victims",
    "attack": "Attack",
    "evaluations": "Evaluations",
    "seconds": "Seconds",
    "victim": "Victim",
    "seed": "Seed",
    "reason": "Reason",
    "entry": "Entry",
    "file": "File",
    "evaluated_on": "Evaluated on (config hash)",
}
"""Titles of the report's own columns; metric titles come from ``METRIC_TABLE``."""
TEXT_COLUMNS = (
    "defense",
    "attack",
    "strongest_attack",
    "deciding_attack",
    "flags",
    "reason",
    "check",
    "figure",
    "expected",
    "verdict",
    "entry",
    "file",
    "evaluated_on",
)
FAILURE_COLUMNS = ("defense", "attack", "victim", "seed", "reason")
OFF_BOARD_COLUMNS = ("entry", "file", "evaluated_on", "reason")


def fmt(name: str, value: float | None) -> str:
    """A number as the tables show it (``-`` when absent, ``inf`` when infinite)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    metric = METRIC_TABLE.get(name)
    pattern = metric.format if metric is not None else REPORT_FORMATS.get(name, "{:.4g}")
    return pattern.format(value)


def pair_metric_columns() -> tuple[str, ...]:
    """Metric columns of the per-attack table: every table metric, in table order."""
    return tuple(METRIC_TABLE)


def leaderboard_metric_columns() -> tuple[str, ...]:
    """Metric columns of the leaderboard: image metrics, higher-is-better first, then the label metrics."""
    image = [m for m in METRIC_TABLE.values() if m.per_image]
    labels = [m.name for m in METRIC_TABLE.values() if not m.per_image]
    return (*(m.name for m in image if m.higher_is_better), *(m.name for m in image if not m.higher_is_better), *labels)


def figure_columns() -> tuple[str, ...]:
    """Leaderboard columns that are worst-case estimates over victims, each with a bootstrap interval."""
    return (ABOVE_PRIOR, PICK, RECOVERED, *leaderboard_metric_columns())


def leaderboard_columns() -> tuple[str, ...]:
    """Columns of ``leaderboard.md`` (an estimate's cell also holds its interval)."""
    return (
        "rank",
        "band",
        "defense",
        "update_cosine",
        "accuracy_drop",
        ABOVE_PRIOR,
        PICK,
        RECOVERED,
        "deciding_attack",
        "flags",
        *leaderboard_metric_columns(),
        "strongest_attack",
        "psnr_gain",
        "victims",
    )


def leaderboard_csv_columns() -> tuple[str, ...]:
    """Columns of ``leaderboard.csv``: those of the Markdown table, each estimate followed by ``_low``, ``_high``."""
    figures = set(figure_columns())
    spreads = {"accuracy_drop": ("accuracy_drop", "accuracy_drop_std")}
    return tuple(
        part
        for c in leaderboard_columns()
        for part in ((c, f"{c}_low", f"{c}_high") if c in figures else spreads.get(c, (c,)))
    )


def attack_columns() -> tuple[str, ...]:
    """Columns of ``attacks.{md,csv}``."""
    return ("defense", "attack", "psnr_gain", *pair_metric_columns(), "evaluations", "seconds", "victims")


def leaderboard_headers() -> dict[str, str]:
    """Leaderboard titles: every metric column is ``Worst-case X``; the worst case's own columns say their terms."""
    ranking = METRIC_TABLE["psnr"].title
    recovered = f"{METRIC_TABLE[RECOVERED_METRIC].title} ≥ {RECOVERED_THRESHOLD:g}"
    return {
        **HEADERS,
        **{m.name: f"Worst-case {m.title if m.per_image else m.title.lower()}" for m in METRIC_TABLE.values()},
        ABOVE_PRIOR: f"Worst-case {ranking} above baseline (dB)",
        PICK: f"Attacker's pick {ranking} above baseline (dB)",
        RECOVERED: f"Victims recovered ({recovered})",
        "deciding_attack": "Deciding attack (count)",
        "flags": "Flags",
        "strongest_attack": "Best attack on average",
        "psnr_gain": f"Its mean {ranking} above prior (dB)",
    }


def pair_headers() -> dict[str, str]:
    """Per-attack titles: a metric's own title."""
    return {**HEADERS, **{m.name: m.title for m in METRIC_TABLE.values()}}


def _no_attack(pairs: Sequence[PairSummary]) -> str:
    """The strongest-attack cell of a setting without one: no attack has a PSNR gain, or every cell failed."""
    return "-" if pairs else "all cells failed"


def reason_text(reason: str, limit: int = 160) -> str:
    """A failure's reason on one line, at most ``limit`` characters."""
    line = " ".join(reason.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def failure_rows(failures: Sequence[FailureRow]) -> list[dict[str, str]]:
    """Failed cells as table rows."""
    return [
        {
            "defense": f.defense_label,
            "attack": f.attack_label,
            "victim": str(f.victim),
            "seed": str(f.seed),
            "reason": reason_text(f.reason),
        }
        for f in failures
    ]


def off_board_rows(entries: Sequence[OffBoardEntry]) -> list[dict[str, str]]:
    """Submissions the tables leave out, as table rows."""
    return [
        {
            "entry": entry.name,
            "file": entry.file,
            "evaluated_on": ", ".join(entry.config_hashes) or "-",
            "reason": entry.reason,
        }
        for entry in entries
    ]


def _estimate_cells(name: str, estimate: Estimate | None) -> dict[str, str]:
    """An estimate's value and interval bounds as table cells (``-`` when absent)."""
    if estimate is None:
        return {name: "-", f"{name}_low": "-", f"{name}_high": "-"}
    return {
        name: fmt(name, estimate.value),
        f"{name}_low": fmt(name, estimate.low),
        f"{name}_high": fmt(name, estimate.high),
    }


def deciding_text(worst: WorstCase | None) -> str:
    """The deciding attacks with their counts, most often first: ``DLG 5, iDLG 3``."""
    return ", ".join(f"{attack} {count}" for attack, count in worst.deciding) if worst and worst.deciding else "-"


def flags_text(worst: WorstCase | None) -> str:
    """A setting's flags: victims whose deciding search was cut off, a failed simulation check ("-": none)."""
    if worst is None:
        return "-"
    flags = []
    if worst.attacks != "all":
        only = f"{worst.attacks} attacks only" if worst.victims else f"no {worst.attacks} attack in the suite, unranked"
        flags.append(f"simulation check failed: {only}")
    if worst.cut_off:
        flags.append(f"cut off {worst.cut_off}/{len(worst.victims)}")
    return "; ".join(flags) or "-"


def _worst_cells(worst: WorstCase | None) -> dict[str, str]:
    """The worst-case cells of a leaderboard row: band, deciding attacks, flags, every estimate with its interval."""
    cells = {
        "band": str(worst.band) if worst and worst.band else "-",
        "deciding_attack": deciding_text(worst),
        "flags": flags_text(worst),
    }
    for name in figure_columns():
        cells.update(_estimate_cells(name, worst.figures.get(name) if worst else None))
    return cells


def leaderboard_rows(report: Report) -> list[dict[str, str]]:
    """The leaderboard as formatted strings (the CSV's cells), reference rows last."""
    table = []
    for summary in report.defenses:
        strongest = summary.strongest
        table.append(
            {
                "rank": str(summary.rank) if summary.rank else "-",
                "defense": summary.label,
                "update_cosine": fmt("update_cosine", summary.utility_value("update_cosine")),
                "accuracy_drop": fmt("accuracy_drop", summary.utility_value("accuracy_drop")),
                "accuracy_drop_std": fmt("accuracy_drop_std", summary.utility_value("accuracy_drop_std")),
                **_worst_cells(summary.worst),
                "strongest_attack": strongest.attack_label if strongest else _no_attack(summary.pairs),
                "psnr_gain": fmt("psnr_gain", summary.mean_leakage),
                "victims": str(max((p.victims for p in summary.pairs), default=0)),
            }
        )
    for reference, worst in zip(report.references, report.reference_worst):
        table.append(
            {
                "rank": "ref",
                "defense": PRIOR_ONLY,
                "update_cosine": "-",
                "accuracy_drop": "-",
                "accuracy_drop_std": "-",
                **_worst_cells(worst),
                "band": "-",
                "strongest_attack": reference.attack_label,
                "psnr_gain": fmt("psnr_gain", reference.psnr_gain),
                "victims": str(reference.victims),
            }
        )
    return table


def with_intervals(row: dict[str, str]) -> dict[str, str]:
    """A leaderboard row for Markdown: each estimate as ``value [low, high]``, or its value alone without one."""
    cells = dict(row)
    if row.get("accuracy_drop_std", "-") != "-":
        cells["accuracy_drop"] = f"{row['accuracy_drop']} ± {row['accuracy_drop_std']}"
    for name in figure_columns():
        if row[f"{name}_low"] != "-":
            cells[name] = f"{row[name]} [{row[f'{name}_low']}, {row[f'{name}_high']}]"
    return cells


def _pair_row(defense: str, pair: PairSummary) -> dict[str, str]:
    return {
        "defense": defense,
        "attack": pair.attack_label,
        "psnr_gain": fmt("psnr_gain", pair.psnr_gain),
        **{name: fmt(name, pair.metrics.get(name)) for name in pair_metric_columns()},
        "evaluations": fmt("evaluations", pair.evaluations),
        "seconds": fmt("seconds", pair.seconds),
        "victims": str(pair.victims),
    }


def attack_rows(report: Report) -> list[dict[str, str]]:
    """Per-attack breakdown: every (defense, attack) pair and its control, then the prior-only references."""
    table = [
        _pair_row(summary.label, pair) for summary in report.defenses for pair in (*summary.pairs, *summary.controls)
    ]
    return table + [_pair_row(PRIOR_ONLY, reference) for reference in report.references]


def markdown_table(
    rows: Sequence[dict[str, str]], columns: Sequence[str], headers: dict[str, str] | None = None
) -> str:
    """A Markdown table: text columns left-aligned, numbers right-aligned, ``|`` in cells escaped.

    ``headers`` maps columns to titles (default: the leaderboard's)."""
    headers = leaderboard_headers() if headers is None else headers
    lines = [
        "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" if c in TEXT_COLUMNS else "---:" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    """CSV with a header row and ``\\n`` line ends; keys outside ``columns`` are left out."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def definitions_text() -> str:
    """The leaderboard page's paragraph on what its columns mean."""
    recovered = f"{METRIC_TABLE[RECOVERED_METRIC].title} ≥ {RECOVERED_THRESHOLD:g}"
    return (
        "Ranked by **worst-case PSNR above baseline**: per victim (and seed) the best PSNR over all attacks, minus "
        f"that victim's baseline, averaged over victims; a PSNR above {PSNR_EXACT:.2f} dB (an RMS error of one 8-bit "
        "grey level: the image is rebuilt exactly) counts as that value, so full leaks tie instead of ranking the "
        "optimiser's floating-point floor (the raw values are in rows.csv). The **baseline** is the better of the "
        "prior-only reference (the class-mean image or a random prior sample of the class inferred from the defended "
        "update) and the "
        "**control**: the best PSNR of the same attacks, budgets and seeds run on a control update, the defended "
        "update of another image of the inferred class, which carries nothing about the victim. Lower is more "
        "private; near or below 0 dB no attack recovers more than it would without the victim's update. "
        "**Attacker's pick**: the same figure for the reconstruction a server would choose without the private "
        "images, per victim the one with the lowest matching loss (1 - cosine between its plain gradient and the "
        "defended update) over all attacks. Every worst-case metric is, per victim, the best value over attacks in "
        f"that metric's direction, averaged over victims. **Victims recovered**: the share of victims with worst-case "
        f"{recovered}. **Deciding attack**: how many victims (victim-seed pairs) each attack gave the worst-case "
        f"PSNR. `[low, high]`: {LEVEL:.0%} bootstrap interval over victims ({RESAMPLES:,} resamples, a victim's "
        "seeds kept together, a fixed seed; percentiles widened for few victims, Hesterberg's expanded percentile "
        "interval). It covers the choice of victims, not the attacks' own randomness. **Band**: a new band starts "
        "at the first setting whose paired bootstrap interval of the per-victim difference from the band's first "
        "setting excludes 0; the order within a band is not established by these victims. The best attack on "
        "average and its mean PSNR above the prior-only reference are shown for comparison (per-attack means and "
        "the controls: [attacks.md](attacks.md)); they understate the worst case. **Flags**: `cut off k/n`, the "
        "search that gave k of n victims their worst case was still improving when its budget ran out (the "
        "figure may understate the leakage); `simulation check failed`, the defense's own `simulate` does not "
        "reproduce its update from the client's true gradient, so only the non-adaptive attacks, which do not "
        "use it, rank it. Rows marked `ref` are the prior-only references of the clean update's label (no "
        "gradient used beyond the label)."
    )


def leaderboard_markdown(report: Report) -> str:
    """The leaderboard page: provenance, the definitions, the ranked table."""
    lines = [f"# Leaderboard: suite `{report.suite}`", ""]
    if report.description:
        lines += [report.description.strip(), ""]
    lines += _provenance(report)
    rows = [with_intervals(row) for row in leaderboard_rows(report)]
    lines += [
        definitions_text(),
        "",
        markdown_table(rows, leaderboard_columns(), leaderboard_headers()),
        "Per-attack breakdown: [attacks.md](attacks.md). Every number's rows, every victim's worst case: "
        "[leaderboard.json](leaderboard.json), [rows.csv](rows.csv).",
        "",
    ]
    if report.failures:
        lines += [
            "## Failed cells",
            "",
            f"{len(report.failures)} cells failed and are in no table above; running the suite again retries them.",
            "",
            markdown_table(failure_rows(report.failures), FAILURE_COLUMNS, HEADERS),
        ]
    if report.off_board:
        lines += [
            "## Submissions not on this configuration",
            "",
            "These entries are in no table above: they have no evaluation on this board's suite configuration. "
            "Evaluating them again with `python -m benchmarks.submit` puts them on it.",
            "",
            markdown_table(off_board_rows(report.off_board), OFF_BOARD_COLUMNS, HEADERS),
        ]
    return "\n".join(lines)


def _provenance(report: Report) -> list[str]:
    """The leaderboard's lines on what its rows are (and, when there are some, on rows left out)."""
    if report.rows:
        lines = [
            f"Victims: {report.victims}; seeds: {', '.join(map(str, report.seeds))}; "
            f"config hash: {', '.join(report.config_hashes)}; code: {', '.join(report.code_versions)}.",
            "",
        ]
    else:
        lines = ["**Every cell failed**: nothing is ranked; the failed cells are listed below.", ""]
    if report.left_out:
        lines += [
            f"{report.left_out} stored rows of this suite belong to another configuration (other attacks, budgets, "
            "defenses, victims or seeds) and are left out; `--report-only` with that configuration shows them.",
            "",
        ]
    return lines


def attacks_markdown(report: Report) -> str:
    """The per-attack page."""
    return "\n".join(
        [
            f"# Per-attack breakdown: suite `{report.suite}`",
            "",
            "Means over victims (and seeds). `PSNR above prior`: above the prior-only reference of the class inferred "
            "from the defended update. Rows marked `(control)` are the attack run on the control update.",
            "",
            markdown_table(attack_rows(report), attack_columns(), pair_headers()),
        ]
    )


def definitions_json(report: Report) -> dict[str, Any]:
    """The definitions behind ``leaderboard.json``'s worst-case fields, with the bootstrap's seed."""
    return {
        "worst_case": "per victim and seed, the best value of each metric over all attacks (in the metric's "
        "direction), averaged over the victim's seeds; psnr_above_baseline subtracts the victim's baseline, the "
        "better of the prior-only reference (label inferred from the defended update) and the control (the same "
        "attacks on the defended update of another image of the inferred class)",
        "attackers_pick": "per victim and seed, the row with the lowest match_loss (1 - cosine between the "
        "reconstruction's plain gradient and the defended update) over all attacks; pick_above_baseline as above",
        "cut_off": "victims whose worst case came from a row whose search was still improving at the end of its "
        "budget (ggl.attacks still_improving)",
        "simulation_check": "attacks = non-adaptive when the defense's simulate failed ggl.defenses.check_simulation",
        "victims_recovered": {"metric": RECOVERED_METRIC, "threshold": RECOVERED_THRESHOLD},
        "bootstrap": {
            "method": "expanded percentile bootstrap of the mean over victims (Hesterberg 2015: percentiles "
            "Phi(-/+ sqrt(n/(n-1)) t(n-1, (1+level)/2)) of the resampled means); a victim's seeds resampled together",
            "resamples": RESAMPLES,
            "level": LEVEL,
            "seed": report.bootstrap_seed,
        },
        "bands": "in rank order, a new band starts at the first setting whose paired bootstrap interval of the "
        "per-victim difference in psnr_above_baseline from the band's first setting (victims both have) excludes 0",
        "psnr_gain_over_prior": "mean over victims of the strongest attack on average (not the worst case)",
    }


def leaderboard_json(report: Report) -> dict[str, Any]:
    """``leaderboard.json``: the ranking with every number's spec, utility, worst case per victim and source rows."""
    entries = [
        {
            "rank": summary.rank or None,
            "band": (summary.worst.band or None) if summary.worst else None,
            "defense": summary.label,
            "spec": summary.spec,
            "utility": summary.utility,
            "worst_case": summary.worst.to_json() if summary.worst else None,
            "band_comparison": summary.worst.comparison if summary.worst else None,
            "strongest_attack": summary.strongest.attack_label if summary.strongest else None,
            "psnr_gain_over_prior": summary.mean_leakage,
            "best": summary.best,
            "simulation_failed": summary.simulation_failed,
            "attacks": [pair.to_json() for pair in summary.pairs],
            "controls": [pair.to_json() for pair in summary.controls],
        }
        for summary in report.defenses
    ]
    references = [
        {**reference.to_json(), "worst_case": worst.to_json()}
        for reference, worst in zip(report.references, report.reference_worst)
    ]
    document = {
        "schema": SCHEMA,
        "suite": report.suite,
        "victims": report.victims,
        "seeds": report.seeds,
        "config_hashes": report.config_hashes,
        "code_versions": report.code_versions,
        "ranking": "worst_case.psnr_above_baseline.value, ascending (lower = more private); ties by accuracy drop",
        "definitions": definitions_json(report),
        "references": references,
        "leaderboard": entries,
    }
    if report.failures:
        document["failed_cells"] = [failure_json(failure) for failure in report.failures]
    if report.left_out:
        document["rows_of_other_configurations"] = report.left_out
    if report.off_board:
        document["submissions_not_on_this_configuration"] = [
            {"name": e.name, "file": e.file, "config_hashes": list(e.config_hashes), "reason": e.reason}
            for e in report.off_board
        ]
    return plain(document)


def failure_json(failure: FailureRow) -> dict[str, Any]:
    """One failed cell as ``leaderboard.json`` lists it."""
    return {
        "defense": failure.defense_label,
        "defense_spec": failure.defense,
        "attack": failure.attack_label,
        "attack_spec": failure.attack,
        "victim": failure.victim,
        "seed": failure.seed,
        "reason": failure.reason,
        "failed_at": failure.failed_at,
        "config_hash": failure.config_hash,
        "code_version": failure.code_version,
    }


ROW_COLUMNS = (
    "suite",
    "victim",
    "defense",
    "attack",
    "seed",
    "kind",
    "defense_label",
    "attack_label",
    "config_hash",
    "code_version",
    "seconds",
    "evaluations",
    "labels",
)
"""Columns of ``rows.csv`` before the metrics (every metric stored, sorted by name)."""


def rows_csv(report: Report) -> str:
    """``rows.csv``: every row of the report with its key, provenance and metrics."""
    rows = report.rows
    names = sorted({name for row in rows for name in row.metrics})
    records = [
        {
            "suite": row.suite,
            "victim": row.victim,
            "defense": row.defense_json,
            "attack": row.attack_json,
            "seed": row.seed,
            "kind": row.kind,
            "defense_label": row.defense_label,
            "attack_label": row.attack_label,
            "config_hash": row.config_hash,
            "code_version": row.code_version,
            "seconds": f"{row.seconds:.3f}",
            "evaluations": row.evaluations,
            "labels": " ".join(map(str, row.labels)),
            **{name: f"{row.metrics[name]:.6g}" if name in row.metrics else "" for name in names},
        }
        for row in rows
    ]
    return csv_text(records, [*ROW_COLUMNS, *names])
