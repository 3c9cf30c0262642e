"""The table across a suite's variants: how each defense's leakage moves along each protocol axis.

A suite with ``variants`` (``realistic``) runs each variant into its own store and report folder
(``REPORT/VARIANT/``, a complete leaderboard each). This module reads those folders' published files only
(``leaderboard.json`` and, for a trained victim, ``victim.json``), so the table is rebuilt from committed files,
and writes ``REPORT/axes.{md,json}``: one row per defense setting, one column per variant, each cell the worst-case
PSNR above the no-information baseline with its 95% interval over victims, and per variant its protocol, batch
size, victim stage (with its test accuracy), victims, and victim-settings whose deciding search was cut off.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ggl.io import atomic_write, pretty_json

from ..config import SuiteConfig, VariantConfig

VICTIM_FILE = "victim.json"
"""A variant report's trained-victim facts (stage, cache key, accuracies), written when the victim was trained."""


@dataclass(frozen=True)
class Column:
    """One variant as the table shows it."""

    name: str
    label: str
    axis: str
    protocol: str
    batch_size: int
    stage: str
    test_accuracy: float | None
    victims: int
    cut_off: int
    figures: Mapping[str, Mapping[str, Any]]  # defense label -> psnr_above_baseline {value, interval, victims}


def variant_column(variant: VariantConfig, config: SuiteConfig, folder: Path) -> Column:
    """The column of ``variant`` (resolved as ``config``) from its report folder; ``ValueError`` naming the missing
    file and the fix."""
    path = folder / "leaderboard.json"
    if not path.is_file():
        base = config.name.rsplit(".", 1)[0]
        raise ValueError(
            f"{path} is missing: run the variant first (python -m benchmarks.run --suite {base} "
            f"--variant {variant.name}), or its report (--report-only)"
        )
    board = json.loads(path.read_text(encoding="utf-8"))
    stage_path = folder / VICTIM_FILE
    stage = json.loads(stage_path.read_text(encoding="utf-8")) if stage_path.is_file() else None
    figures = {row["defense"]: row["worst_case"]["psnr_above_baseline"] for row in board["leaderboard"]}
    cut_off = sum(int(row["worst_case"].get("cut_off", 0)) for row in board["leaderboard"])
    return Column(
        name=variant.name,
        label=variant.label,
        axis=variant.axis,
        protocol=config.protocol.describe(),
        batch_size=config.victims.batch_size,
        stage=stage["stage"] if stage else "untrained",
        test_accuracy=stage["test_accuracy"] if stage else None,
        victims=int(board["victims"]),
        cut_off=cut_off,
        figures=figures,
    )


def figure_text(figure: Mapping[str, Any] | None) -> str:
    """``+4.00 [+3.10, +4.93]`` (no interval from one victim); ``n/a`` where the variant has no such setting or no
    figure."""
    if not figure or figure.get("value") is None or not math.isfinite(float(figure["value"])):
        return "n/a"
    if not figure.get("interval"):
        return f"{float(figure['value']):+.2f}"
    low, high = figure["interval"]
    return f"{float(figure['value']):+.2f} [{float(low):+.2f}, {float(high):+.2f}]"


def defense_order(columns: Sequence[Column]) -> list[str]:
    """Every defense setting once, in the order of the first variant that has it."""
    order: list[str] = []
    for column in columns:
        order.extend(label for label in column.figures if label not in order)
    return order


def axes_markdown(suite: SuiteConfig, columns: Sequence[Column]) -> str:
    """The table across variants, with the variants' facts above it."""
    lines = [
        f"# {suite.name}: leakage along each protocol axis",
        "",
        "Each cell: worst-case PSNR above the no-information baseline (dB; per victim the best of every attack, minus",
        "the better of the prior-only references and the no-information controls), mean over victims with its 95%",
        "bootstrap interval. Lower leaks less. Each column is a complete leaderboard in the folder of its name.",
        "",
        "| variant | axis | protocol | batch | victim stage | test accuracy | victims | cut-off victim-settings |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for column in columns:
        accuracy = "-" if column.test_accuracy is None else f"{column.test_accuracy:.3f}"
        lines.append(
            f"| [{column.label}]({column.name}/leaderboard.md) | {column.axis} | {column.protocol} | "
            f"{column.batch_size} | {column.stage} | {accuracy} | {column.victims} | {column.cut_off} |"
        )
    lines += ["", "| defense | " + " | ".join(column.label for column in columns) + " |"]
    lines.append("|---" * (len(columns) + 1) + "|")
    for defense in defense_order(columns):
        cells = [figure_text(column.figures.get(defense)) for column in columns]
        lines.append(f"| {defense} | " + " | ".join(cells) + " |")
    if any(defense not in column.figures for defense in defense_order(columns) for column in columns):
        lines += ["", "n/a: the setting is not in that variant's suite (see its leaderboard for why)."]
    return "\n".join(lines) + "\n"


def axes_json(suite: SuiteConfig, columns: Sequence[Column]) -> dict[str, Any]:
    """The same table as plain data."""
    return {
        "suite": suite.name,
        "figure": "worst_case.psnr_above_baseline (dB), mean over victims, 95% bootstrap interval",
        "variants": [
            {
                "name": column.name,
                "label": column.label,
                "axis": column.axis,
                "protocol": column.protocol,
                "batch_size": column.batch_size,
                "stage": column.stage,
                "test_accuracy": column.test_accuracy,
                "victims": column.victims,
                "cut_off": column.cut_off,
                "figures": dict(column.figures),
            }
            for column in columns
        ],
    }


def write_axes_report(suite: SuiteConfig, report_dir: str | Path, configs: Mapping[str, SuiteConfig]) -> list[Path]:
    """Write ``axes.md`` and ``axes.json`` into ``report_dir`` from its variants' report folders; ``configs`` holds
    each variant's resolved suite by variant name (``load_suite(..., variant=NAME)``)."""
    if not suite.variants:
        raise ValueError(f"suite {suite.name!r} has no variants, so there is no table across them")
    folder = Path(report_dir)
    columns = [variant_column(v, configs[v.name], folder / v.name) for v in suite.variants]
    return [
        atomic_write(folder / "axes.md", axes_markdown(suite, columns)),
        atomic_write(folder / "axes.json", pretty_json(axes_json(suite, columns))),
    ]
