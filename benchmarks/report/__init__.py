"""Reports from the results store alone: leaderboard tables (Markdown, CSV, JSON), plots, reconstruction grids.

``write_report(store, folder, suite)`` reads only the store and writes deterministic files (regenerating them from
the same store gives byte-identical output):

* ``leaderboard.{md,csv,json}``: one row per defense setting, ranked by the **worst-case PSNR above the prior**:
  per victim (and seed) the best PSNR over all attacks, minus the victim's prior-only reference (the better of the
  class-mean image and a random prior sample of the inferred class: what the attacker has without any gradient
  information beyond the label), averaged over victims. Beside it: the share of victims recovered (worst-case SSIM
  at least 0.6), the attacks that decided the worst case with counts, the worst case of every metric of
  ``ggl.metrics.METRIC_TABLE`` (in its direction), each with a 95% bootstrap interval over victims, rank bands from
  paired bootstrap differences, the utility cost (update cosine, accuracy drop), and the strongest attack on
  average with its mean for comparison. Lower leakage ranks first.
* ``attacks.{md,csv}``: every (defense, attack) pair with its metrics (means over victims), plus the prior-only
  reference rows.
* ``rows.csv``: every stored cell with its key, config hash, code version and metrics.
* ``rows.jsonl``: the rows of the report without images (cells, utility costs, failures, one JSON object a line,
  with the suite's configuration first; ``benchmarks.shipped``): a store rebuilt from it gives the same tables.
* failed cells (an error, or the per-cell time limit) with their reasons, under the leaderboard and in
  ``leaderboard.json``, when there are some; a defense setting whose every cell failed is listed unranked.
* ``victim.json``, when the suite trains its victim (``model.train``): the stage, its cache key and its train and
  test accuracy, as the run recorded them.
* ``privacy_utility.png``: worst-case leakage above the prior (with its interval) against utility cost;
  ``grids/*.png``: originals vs every attack and reference, one image per defense setting.

Every number in ``leaderboard.json`` lists the rows (victim, seed, config hash, code version) it comes from; every
victim's worst case names the attack whose row gave each value.

Modules: ``aggregate`` (rows -> ``Report``), ``worst_case`` (worst case per victim, bands), ``stats`` (means,
bootstrap), ``tables`` (Markdown, CSV, JSON), ``figures`` (PNGs).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from ggl.io import atomic_write, pretty_json

from ..cells import STAGE_META
from ..config import SuiteConfig
from ..shipped import ROWS_FILE, rows_text, store_records, write_rows
from ..store import ResultsStore
from .aggregate import (
    ATTAINABLE_REFERENCES,
    DefenseSummary,
    OffBoardEntry,
    PairSummary,
    Report,
    best_values,
    build_report,
    plain,
)
from .calibration import calibration_json, calibration_markdown
from .figures import privacy_utility_plot, reconstruction_grids, setting_has_images, slug
from .tables import (
    SCHEMA,
    attack_columns,
    attack_rows,
    attacks_markdown,
    csv_text,
    fmt,
    leaderboard_columns,
    leaderboard_csv_columns,
    leaderboard_json,
    leaderboard_markdown,
    leaderboard_rows,
    markdown_table,
    rows_csv,
)

REPORT_FILES = (
    "leaderboard.md",
    "leaderboard.csv",
    "leaderboard.json",
    "attacks.md",
    "attacks.csv",
    "rows.csv",
    ROWS_FILE,
    "privacy_utility.png",
)
"""The files every report has (besides ``grids/*.png``, one per defense setting)."""


def write_report(
    store: ResultsStore,
    folder: str | Path,
    suite: str | SuiteConfig,
    *,
    shipped: SuiteConfig | None = None,
    off_board: Sequence[OffBoardEntry] = (),
) -> list[Path]:
    """Write every report file of ``suite`` into ``folder``; returns their paths.

    A ``SuiteConfig`` reports exactly its own cells and utility options (``build_report``); a name, every stored row.
    ``rows.jsonl`` holds the rows of ``shipped`` (default: ``suite``), so a board that adds submissions to the
    standard settings still ships only the standard rows. ``off_board`` lists submissions the tables leave out, with
    why. A setting whose rows hold no images (imported from shipped rows) keeps the grid already in ``folder``.
    """
    folder = Path(folder)
    report = build_report(store, suite)
    report.off_board = list(off_board)
    suite_name = suite if isinstance(suite, str) else suite.name
    if shipped is None and isinstance(suite, SuiteConfig):
        shipped = suite
    outputs = {
        "leaderboard.md": leaderboard_markdown(report),
        "leaderboard.csv": csv_text(leaderboard_rows(report), leaderboard_csv_columns()),
        "leaderboard.json": pretty_json(leaderboard_json(report)),
        "attacks.md": attacks_markdown(report),
        "attacks.csv": csv_text(attack_rows(report), attack_columns()),
        "rows.csv": rows_csv(report),
    }
    stage = store.get_meta(f"{STAGE_META}{suite_name}")
    if stage is not None:
        outputs["victim.json"] = pretty_json(json.loads(stage))
    if report.calibration:
        outputs["calibration.md"] = calibration_markdown(report)
        outputs["calibration.json"] = pretty_json(calibration_json(report))
    rows = rows_text(suite_name, shipped, store_records(store, shipped if shipped is not None else suite_name))
    written = [atomic_write(folder / name, text) for name, text in outputs.items()]
    written.append(write_rows(folder / ROWS_FILE, rows))
    privacy_utility_plot(report, folder / "privacy_utility.png")
    written.append(folder / "privacy_utility.png")
    grids = folder / "grids"
    kept = {f"{slug(s.label)}.png" for s in report.defenses if s.pairs and not setting_has_images(report, s)}
    if grids.is_dir():
        for old in grids.glob("*.png"):
            if old.name not in kept:
                old.unlink()
    written += reconstruction_grids(report, grids)
    return written


__all__ = [
    "ATTAINABLE_REFERENCES",
    "REPORT_FILES",
    "SCHEMA",
    "DefenseSummary",
    "OffBoardEntry",
    "PairSummary",
    "Report",
    "attack_columns",
    "attack_rows",
    "attacks_markdown",
    "best_values",
    "build_report",
    "csv_text",
    "fmt",
    "leaderboard_columns",
    "leaderboard_csv_columns",
    "leaderboard_json",
    "leaderboard_markdown",
    "leaderboard_rows",
    "markdown_table",
    "plain",
    "privacy_utility_plot",
    "reconstruction_grids",
    "rows_csv",
    "slug",
    "write_report",
]
