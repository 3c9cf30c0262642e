"""Reports from the results store alone: leaderboard tables (Markdown, CSV, JSON), plots, reconstruction grids.

``write_report(store, folder, suite)`` reads only the store and writes deterministic files (regenerating them from
the same store gives byte-identical output):

* ``leaderboard.{md,csv,json}``: one row per defense setting, ranked by the **leakage above the prior**: the mean
  over victims of ``PSNR(strongest attack) - PSNR(best prior-only reference)``, where the prior-only reference of a
  victim is the better of the class-mean image and a random prior sample of the inferred class (what the
  attacker has without any gradient information beyond the label). The strongest attack of a setting is the one
  with the largest such gain; the best value of every metric over attacks (lowest MSE and LPIPS, highest PSNR and
  SSIM) and the utility cost (update cosine, accuracy drop) are shown beside it. Lower leakage ranks first.
* ``attacks.{md,csv}``: every (defense, attack) pair with its metrics, plus the prior-only reference rows.
* ``rows.csv``: every stored cell with its key, config hash, code version and metrics.
* ``privacy_utility.png``: leakage above the prior against utility cost; ``grids/*.png``: originals vs every
  attack and reference, one image per defense setting.

Every number in ``leaderboard.json`` lists the rows (victim, seed, config hash, code version) it comes from.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.config import REFERENCE_KINDS, REFERENCE_PREFIX, canonical_json, short_hash
from benchmarks.store import CellRow, ResultsStore

SCHEMA = "ggl-bench-leaderboard-v1"
IMAGE_METRICS = ("mse", "psnr", "ssim", "lpips")
HIGHER_IS_BETTER = {"mse": False, "psnr": True, "ssim": True, "lpips": False, "label_accuracy": True}
ATTAINABLE_REFERENCES = (REFERENCE_PREFIX + "class-mean", REFERENCE_PREFIX + "prior-sample")
"""References an attacker can produce from the label alone; the leakage baseline is the best of them."""
FORMATS = {
    "mse": "{:.4f}",
    "psnr": "{:.2f}",
    "ssim": "{:.3f}",
    "lpips": "{:.3f}",
    "label_accuracy": "{:.2f}",
    "psnr_gain": "{:+.2f}",
    "update_cosine": "{:.3f}",
    "accuracy_drop": "{:+.3f}",
    "seconds": "{:.1f}",
    "evaluations": "{:.0f}",
    "reference_psnr": "{:.2f}",
}
REPORT_FILES = (
    "leaderboard.md",
    "leaderboard.csv",
    "leaderboard.json",
    "attacks.md",
    "attacks.csv",
    "rows.csv",
    "privacy_utility.png",
)


def fmt(name: str, value: float | None) -> str:
    """A number as the tables show it (``-`` when absent, ``inf`` when infinite)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    return FORMATS.get(name, "{:.4g}").format(value)


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


def _mean(values: Iterable[float]) -> float:
    items = list(values)
    if not items:
        return math.nan
    infinite = {v for v in items if math.isinf(v)}
    if infinite:
        return infinite.pop() if len(infinite) == 1 else math.nan
    return math.fsum(items) / len(items)


def slug(text: str) -> str:
    """A file-name-safe version of a label, with a short hash so that distinct labels never collide."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entry"
    return f"{base}-{short_hash(text)[:6]}"


# ----------------------------------------------------------------------------------------------------------------
# Aggregation


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
    """One defense setting: its pairs, its strongest attack, its utility."""

    label: str
    spec: dict[str, Any]
    pairs: list[PairSummary]
    utility: dict[str, Any] | None
    strongest: PairSummary | None
    best: dict[str, float]
    rank: int = 0

    @property
    def leakage(self) -> float:
        return self.strongest.psnr_gain if self.strongest is not None else math.nan

    def utility_value(self, name: str) -> float | None:
        if self.utility is None:
            return None
        value = self.utility["metrics"].get(name)
        return None if value is None else float(value)


@dataclass
class Report:
    """Everything the report files show, computed from the rows of one suite."""

    suite: str
    description: str
    defenses: list[DefenseSummary]
    references: list[PairSummary]
    victims: int
    seeds: list[int]
    config_hashes: list[str]
    code_versions: list[str]


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
        result[victim] = {name: _mean(item.metrics[name] for item in items if name in item.metrics) for name in names}
    return result


def _summarise(rows: Sequence[CellRow], reference_psnr: dict[int, float]) -> PairSummary:
    victims = _per_victim(rows)
    names = sorted({name for values in victims.values() for name in values})
    metrics = {name: _mean(values[name] for values in victims.values() if name in values) for name in names}
    gains = [
        values["psnr"] - reference_psnr[v] for v, values in victims.items() if "psnr" in values and v in reference_psnr
    ]
    first = rows[0]
    return PairSummary(
        attack_label=first.attack_label,
        attack=first.attack,
        kind=first.kind,
        metrics=metrics,
        psnr_gain=_mean(gains),
        victims=len(victims),
        seconds=_mean(r.seconds for r in rows),
        evaluations=_mean(float(r.evaluations) for r in rows),
        rows=[_row_ref(r) for r in sorted(rows, key=lambda r: (r.victim, r.seed))],
    )


def _attack_order(suite_config: dict[str, Any] | None) -> dict[str, int]:
    order: dict[str, int] = {}
    if suite_config:
        for index, attack in enumerate(suite_config.get("attacks", [])):
            key = canonical_json({**attack["spec"], "adaptive": attack["adaptive"]})
            order.setdefault(key, index)
    return order


def build_report(store: ResultsStore, suite: str) -> Report:
    """Aggregate the rows of ``suite`` (see the module docstring for the definitions)."""
    rows = store.cells(suite)
    if not rows:
        raise ValueError(
            f"the results store {store.path} has no rows for suite {suite!r}; "
            f"suites stored: {', '.join(store.suites()) or 'none'}"
        )
    meta = store.get_meta(f"suite:{suite}")
    suite_config = json.loads(meta) if meta else None
    references = [r for r in rows if r.kind == "reference"]
    attacks = [r for r in rows if r.kind != "reference"]

    by_reference: dict[str, list[CellRow]] = defaultdict(list)
    for row in references:
        by_reference[row.attack_json].append(row)
    attainable: dict[int, float] = {}
    for rows_of_kind in by_reference.values():
        if rows_of_kind[0].attack["name"] not in ATTAINABLE_REFERENCES:
            continue
        for victim, values in _per_victim(rows_of_kind).items():
            if "psnr" in values:
                attainable[victim] = max(attainable.get(victim, -math.inf), values["psnr"])
    kind_order = {REFERENCE_PREFIX + kind: index for index, kind in enumerate(REFERENCE_KINDS)}
    reference_summaries = [
        _summarise(items, attainable)
        for _, items in sorted(
            by_reference.items(), key=lambda item: (kind_order.get(item[1][0].attack["name"], 99), item[0])
        )
    ]

    order = _attack_order(suite_config)
    by_defense: dict[str, dict[str, list[CellRow]]] = defaultdict(lambda: defaultdict(list))
    for row in attacks:
        by_defense[row.defense_json][row.attack_json].append(row)
    utilities = store.utilities()
    defenses: list[DefenseSummary] = []
    for defense_json, pairs in by_defense.items():
        summaries = [
            _summarise(items, attainable)
            for key, items in sorted(
                pairs.items(), key=lambda item: (order.get(item[0], len(order)), item[1][0].attack_label, item[0])
            )
        ]
        ranked = [s for s in summaries if not math.isnan(s.psnr_gain)]
        strongest = max(ranked, key=lambda s: (s.psnr_gain, s.attack_label)) if ranked else None
        best: dict[str, float] = {}
        for name in (*IMAGE_METRICS, "label_accuracy"):
            candidates = [s.metrics[name] for s in summaries if name in s.metrics and not math.isnan(s.metrics[name])]
            if candidates:
                best[name] = max(candidates) if HIGHER_IS_BETTER[name] else min(candidates)
        first = next(iter(pairs.values()))[0]
        defenses.append(
            DefenseSummary(
                first.defense_label, first.defense or {}, summaries, utilities.get(defense_json), strongest, best
            )
        )

    def sort_key(summary: DefenseSummary) -> tuple[Any, ...]:
        leakage = summary.leakage
        drop = summary.utility_value("accuracy_drop")
        return (
            math.isnan(leakage),
            leakage if not math.isnan(leakage) else 0.0,
            drop if drop is not None else math.inf,
            summary.label,
        )

    defenses.sort(key=sort_key)
    for index, summary in enumerate(defenses, start=1):
        summary.rank = index
    return Report(
        suite=suite,
        description=str((suite_config or {}).get("description", "")),
        defenses=defenses,
        references=reference_summaries,
        victims=len({r.victim for r in rows}),
        seeds=sorted({r.seed for r in rows}),
        config_hashes=sorted({r.config_hash for r in rows}),
        code_versions=sorted({r.code_version for r in rows}),
    )


# ----------------------------------------------------------------------------------------------------------------
# Tables

LEADERBOARD_COLUMNS = (
    "rank",
    "defense",
    "update_cosine",
    "accuracy_drop",
    "strongest_attack",
    "psnr_gain",
    "psnr",
    "ssim",
    "mse",
    "lpips",
    "label_accuracy",
    "victims",
)
HEADERS = {
    "rank": "Rank",
    "defense": "Defense",
    "update_cosine": "Update cosine",
    "accuracy_drop": "Accuracy drop",
    "strongest_attack": "Strongest attack",
    "psnr_gain": "PSNR above prior (dB)",
    "psnr": "Best PSNR",
    "ssim": "Best SSIM",
    "mse": "Lowest MSE",
    "lpips": "Lowest LPIPS",
    "label_accuracy": "Label accuracy",
    "victims": "Victims",
    "attack": "Attack",
    "evaluations": "Evaluations",
    "seconds": "Seconds",
    "reference_psnr": "Prior-only PSNR",
}


def leaderboard_rows(report: Report) -> list[dict[str, str]]:
    """The leaderboard as formatted strings, reference rows last."""
    table = []
    for summary in report.defenses:
        strongest = summary.strongest
        table.append(
            {
                "rank": str(summary.rank),
                "defense": summary.label,
                "update_cosine": fmt("update_cosine", summary.utility_value("update_cosine")),
                "accuracy_drop": fmt("accuracy_drop", summary.utility_value("accuracy_drop")),
                "strongest_attack": strongest.attack_label if strongest else "-",
                "psnr_gain": fmt("psnr_gain", summary.leakage),
                **{name: fmt(name, summary.best.get(name)) for name in (*IMAGE_METRICS, "label_accuracy")},
                "victims": str(max((p.victims for p in summary.pairs), default=0)),
            }
        )
    for reference in report.references:
        table.append(
            {
                "rank": "ref",
                "defense": "(any: prior only)",
                "update_cosine": "-",
                "accuracy_drop": "-",
                "strongest_attack": reference.attack_label,
                "psnr_gain": fmt("psnr_gain", reference.psnr_gain),
                **{name: fmt(name, reference.metrics.get(name)) for name in (*IMAGE_METRICS, "label_accuracy")},
                "victims": str(reference.victims),
            }
        )
    return table


def attack_rows(report: Report) -> list[dict[str, str]]:
    """Per-attack breakdown: every (defense, attack) pair, then the prior-only references."""
    columns = ("mse", "psnr", "ssim", "lpips", "label_accuracy")
    table = []
    for summary in report.defenses:
        for pair in summary.pairs:
            table.append(
                {
                    "defense": summary.label,
                    "attack": pair.attack_label,
                    "psnr_gain": fmt("psnr_gain", pair.psnr_gain),
                    **{name: fmt(name, pair.metrics.get(name)) for name in columns},
                    "evaluations": fmt("evaluations", pair.evaluations),
                    "seconds": fmt("seconds", pair.seconds),
                    "victims": str(pair.victims),
                }
            )
    for reference in report.references:
        table.append(
            {
                "defense": "(any: prior only)",
                "attack": reference.attack_label,
                "psnr_gain": fmt("psnr_gain", reference.psnr_gain),
                **{name: fmt(name, reference.metrics.get(name)) for name in columns},
                "evaluations": fmt("evaluations", reference.evaluations),
                "seconds": fmt("seconds", reference.seconds),
                "victims": str(reference.victims),
            }
        )
    return table


PAIR_HEADERS = {**HEADERS, "mse": "MSE", "psnr": "PSNR", "ssim": "SSIM", "lpips": "LPIPS"}


def markdown_table(rows: Sequence[dict[str, str]], columns: Sequence[str], headers: dict[str, str] = HEADERS) -> str:
    lines = [
        "| " + " | ".join(headers.get(c, c) for c in columns) + " |",
        "|" + "|".join("---" if c in ("defense", "attack", "strongest_attack") else "---:" for c in columns) + "|",
    ]
    for row in rows:
        lines.append("| " + " | ".join(row[c].replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def csv_text(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    return buffer.getvalue()


def leaderboard_markdown(report: Report) -> str:
    """The leaderboard page: provenance, the ranked table, the definition of the ranking."""
    lines = [f"# Leaderboard: suite `{report.suite}`", ""]
    if report.description:
        lines += [report.description.strip(), ""]
    lines += [
        f"Victims: {report.victims}; seeds: {', '.join(map(str, report.seeds))}; "
        f"config hash: {', '.join(report.config_hashes)}; code: {', '.join(report.code_versions)}.",
        "",
        "Ranked by **PSNR above prior**: the mean over victims of the strongest attack's PSNR minus the best "
        "prior-only reference PSNR of that victim (class-mean image or random prior sample of the inferred class). "
        "Lower is more private; near or below 0 dB the attack recovers no more than the prior alone. "
        "Best PSNR/SSIM/MSE/LPIPS are the best values over attacks (worst case for the defense). "
        "Rows marked `ref` are the prior-only references (no gradient used beyond the label).",
        "",
        markdown_table(leaderboard_rows(report), LEADERBOARD_COLUMNS),
        "Per-attack breakdown: [attacks.md](attacks.md). Every number's rows: [leaderboard.json](leaderboard.json), "
        "[rows.csv](rows.csv).",
        "",
    ]
    return "\n".join(lines)


ATTACK_COLUMNS = (
    "defense",
    "attack",
    "psnr_gain",
    "mse",
    "psnr",
    "ssim",
    "lpips",
    "label_accuracy",
    "evaluations",
    "seconds",
    "victims",
)


def attacks_markdown(report: Report) -> str:
    return "\n".join(
        [
            f"# Per-attack breakdown: suite `{report.suite}`",
            "",
            "Means over victims (and seeds). `PSNR above prior` as in the leaderboard.",
            "",
            markdown_table(attack_rows(report), ATTACK_COLUMNS, PAIR_HEADERS),
        ]
    )


def leaderboard_json(report: Report) -> dict[str, Any]:
    entries = []
    for summary in report.defenses:
        entries.append(
            {
                "rank": summary.rank,
                "defense": summary.label,
                "spec": summary.spec,
                "utility": summary.utility,
                "strongest_attack": summary.strongest.attack_label if summary.strongest else None,
                "psnr_gain_over_prior": summary.leakage,
                "best": summary.best,
                "attacks": [pair.to_json() for pair in summary.pairs],
            }
        )
    return plain(
        {
            "schema": SCHEMA,
            "suite": report.suite,
            "victims": report.victims,
            "seeds": report.seeds,
            "config_hashes": report.config_hashes,
            "code_versions": report.code_versions,
            "ranking": "psnr_gain_over_prior of the strongest attack, ascending (lower = more private)",
            "references": [reference.to_json() for reference in report.references],
            "leaderboard": entries,
        }
    )


def rows_csv(store: ResultsStore, suite: str) -> str:
    rows = store.cells(suite)
    names = sorted({name for row in rows for name in row.metrics})
    columns = [
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
        *names,
    ]
    records = []
    for row in rows:
        records.append(
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
        )
    return csv_text(records, columns)


# ----------------------------------------------------------------------------------------------------------------
# Pictures


def _save_figure(figure: Any, path: Path) -> None:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    _write_atomic(path, buffer.getvalue())


def privacy_utility_plot(report: Report, path: Path) -> None:
    """Leakage above the prior (strongest attack) against accuracy drop and update cosine, one line a family."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    families: dict[str, list[DefenseSummary]] = defaultdict(list)
    for summary in report.defenses:
        families[str(summary.spec.get("name", summary.label))].append(summary)
    for axis, utility_name, title in (
        (axes[0], "accuracy_drop", "accuracy drop (clean - defended)"),
        (axes[1], "update_cosine", "cosine(defended update, clean update)"),
    ):
        for family, members in sorted(families.items()):
            points = [(s.utility_value(utility_name), s.leakage) for s in members]
            points = sorted((x, y) for x, y in points if x is not None and not math.isnan(y) and math.isfinite(y))
            if points:
                xs, ys = zip(*points)
                axis.plot(xs, ys, marker="o", label=family)
        axis.axhline(0.0, color="grey", linestyle="--", linewidth=1)
        axis.set_xlabel(title)
        axis.set_ylabel("PSNR above prior-only reference (dB)")
        axis.grid(alpha=0.3)
    axes[1].invert_xaxis()
    axes[0].set_title("leakage vs utility cost (lower-left is better)")
    axes[1].set_title("leakage vs update distortion")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.suptitle(f"suite {report.suite}: strongest attack per defense setting")
    figure.tight_layout(rect=(0, 0, 0.86, 0.95))
    _save_figure(figure, path)
    plt.close(figure)


def reconstruction_grids(store: ResultsStore, report: Report, folder: Path, max_victims: int = 8) -> list[Path]:
    """One PNG per defense setting: rows = victims, columns = original, prior-only references, every attack."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = store.cells(report.suite)
    seed = report.seeds[0]
    originals = {v.victim: v.images for v in store.victims(report.suite)}
    images: dict[tuple[str, str, int], np.ndarray] = {}
    for row in rows:
        if row.seed == seed:
            images[(row.defense_json, row.attack_json, row.victim)] = row.images
    victims = sorted(originals)[:max_victims]
    written = []
    reference_columns = [(canonical_json(None), canonical_json(r.attack), r.attack_label) for r in report.references]
    for summary in report.defenses:
        defense_json = canonical_json(summary.spec)
        columns = [
            ("original", "", "original"),
            *reference_columns,
            *[(defense_json, canonical_json(p.attack), p.attack_label) for p in summary.pairs],
        ]
        figure, axes = plt.subplots(
            len(victims), len(columns), figsize=(1.3 * len(columns), 1.4 * len(victims) + 0.6), squeeze=False
        )
        for r, victim in enumerate(victims):
            for c, (defense_key, attack_key, label) in enumerate(columns):
                axis = axes[r][c]
                axis.set_xticks([])
                axis.set_yticks([])
                picture = (
                    originals[victim] if defense_key == "original" else images.get((defense_key, attack_key, victim))
                )
                if picture is not None:
                    first = np.clip(picture[0], 0, 1)
                    if first.shape[0] == 1:
                        axis.imshow(first[0], cmap="gray", vmin=0, vmax=1)
                    else:
                        axis.imshow(np.transpose(first, (1, 2, 0)))
                if r == 0:
                    axis.set_title(label, fontsize=6)
        figure.suptitle(f"{report.suite}: {summary.label}", fontsize=9)
        figure.tight_layout()
        path = folder / f"{slug(summary.label)}.png"
        _save_figure(figure, path)
        plt.close(figure)
        written.append(path)
    return written


# ----------------------------------------------------------------------------------------------------------------


def _write_atomic(path: Path, data: bytes | str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_bytes(data.encode() if isinstance(data, str) else data)
    partial.replace(path)


def write_report(store: ResultsStore, folder: str | Path, suite: str) -> list[Path]:
    """Write every report file of ``suite`` into ``folder``; returns their paths."""
    folder = Path(folder)
    report = build_report(store, suite)
    outputs = {
        "leaderboard.md": leaderboard_markdown(report),
        "leaderboard.csv": csv_text(leaderboard_rows(report), LEADERBOARD_COLUMNS),
        "leaderboard.json": json.dumps(leaderboard_json(report), indent=2, sort_keys=True) + "\n",
        "attacks.md": attacks_markdown(report),
        "attacks.csv": csv_text(attack_rows(report), ATTACK_COLUMNS),
        "rows.csv": rows_csv(store, suite),
    }
    written = []
    for name, text in outputs.items():
        _write_atomic(folder / name, text)
        written.append(folder / name)
    privacy_utility_plot(report, folder / "privacy_utility.png")
    written.append(folder / "privacy_utility.png")
    grids = folder / "grids"
    if grids.is_dir():
        for old in grids.glob("*.png"):
            old.unlink()
    written += reconstruction_grids(store, report, grids)
    return written
