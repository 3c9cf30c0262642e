"""Figures: the privacy-utility plot and one reconstruction grid per defense setting, as deterministic PNGs.

PNGs are written without a ``Software`` tag at a fixed DPI, so the same store gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ggl.io import atomic_write, canonical_json

from ..config import short_hash
from .aggregate import DefenseSummary, Report
from .worst_case import ABOVE_PRIOR

UTILITY_AXES = (
    ("accuracy_drop", "accuracy drop (clean - defended)"),
    ("update_cosine", "cosine(defended update, clean update)"),
)
"""The two utility measures the privacy-utility plot puts on its x axes."""


def slug(text: str) -> str:
    """A file-name-safe version of a label, with a short hash so that distinct labels never collide."""
    base = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:60] or "entry"
    return f"{base}-{short_hash(text)[:6]}"


def _pyplot() -> Any:
    """``matplotlib.pyplot`` on the non-interactive Agg backend (imported only when a figure is drawn)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(figure: Any, path: Path) -> None:
    """Write ``figure`` as a PNG (100 dpi, no software tag) atomically."""
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, metadata={"Software": None})
    atomic_write(path, buffer.getvalue())


def _point(summary: DefenseSummary, utility_name: str) -> tuple[float, float, float, float] | None:
    """(utility, leakage, error below, error above) of one setting; None without a finite leakage or utility.

    The errors reach the bounds of the leakage's bootstrap interval (0 when it has none)."""
    x, y = summary.utility_value(utility_name), summary.leakage
    if x is None or not math.isfinite(y) or summary.worst is None:
        return None
    estimate = summary.worst.figures[ABOVE_PRIOR]
    if not (math.isfinite(estimate.low) and math.isfinite(estimate.high)):
        return x, y, 0.0, 0.0
    return x, y, y - estimate.low, estimate.high - y


def _plot_families(axis: Any, families: dict[str, list[DefenseSummary]], utility_name: str, title: str) -> None:
    """One line per defense family: worst-case leakage (95% interval as error bars) against one utility measure,
    sorted by that measure."""
    for family, members in sorted(families.items()):
        points = sorted(p for p in (_point(s, utility_name) for s in members) if p is not None)
        if points:
            xs, ys, below, above = zip(*points)
            axis.errorbar(xs, ys, yerr=[below, above], marker="o", capsize=3, label=family)
    axis.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel(title)
    axis.set_ylabel("worst-case PSNR above baseline (dB)")
    axis.grid(alpha=0.3)


def privacy_utility_plot(report: Report, path: Path) -> None:
    """Worst-case leakage above the prior (best attack per victim, with its 95% bootstrap interval) against accuracy
    drop and update cosine, one line a family."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    families: dict[str, list[DefenseSummary]] = defaultdict(list)
    for summary in report.defenses:
        families[str(summary.spec.get("name", summary.label))].append(summary)
    for axis, (utility_name, title) in zip(axes, UTILITY_AXES):
        _plot_families(axis, families, utility_name, title)
    axes[1].invert_xaxis()
    axes[0].set_title("leakage vs utility cost (lower-left is better)")
    axes[1].set_title("leakage vs update distortion")
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(handles, labels, loc="center right", fontsize=8)
    figure.suptitle(f"suite {report.suite}: worst case over attacks per victim, 95% bootstrap interval over victims")
    figure.tight_layout(rect=(0, 0, 0.86, 0.95))
    save_figure(figure, path)
    plt.close(figure)


def _show(axis: Any, picture: np.ndarray | None) -> None:
    """The first image of a (B, C, H, W) batch in one grid cell, grey or RGB; an empty cell when missing."""
    axis.set_xticks([])
    axis.set_yticks([])
    if picture is None:
        return
    first = np.clip(picture[0], 0, 1)
    if first.shape[0] == 1:
        axis.imshow(first[0], cmap="gray", vmin=0, vmax=1)
    else:
        axis.imshow(np.transpose(first, (1, 2, 0)))


def _grid(
    plt: Any,
    title: str,
    columns: list[tuple[str, str, str]],
    victims: list[int],
    originals: dict[int, np.ndarray],
    images: dict[tuple[str, str, int], np.ndarray],
) -> Any:
    """One figure: rows = victims, columns = (defense key, attack key, label); ``original`` is the truth."""
    figure, axes = plt.subplots(
        len(victims), len(columns), figsize=(1.3 * len(columns), 1.4 * len(victims) + 0.6), squeeze=False
    )
    for r, victim in enumerate(victims):
        for c, (defense_key, attack_key, label) in enumerate(columns):
            axis = axes[r][c]
            original = defense_key == "original"
            _show(axis, originals[victim] if original else images.get((defense_key, attack_key, victim)))
            if r == 0:
                axis.set_title(label, fontsize=6)
    figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    return figure


def reconstruction_grids(report: Report, folder: Path, max_victims: int = 8) -> list[Path]:
    """One PNG per defense setting with rows: rows = victims, columns = original, the prior-only references (the
    victim's, then the setting's own), the attacks, then their controls."""
    plt = _pyplot()
    seed = report.seeds[0] if report.seeds else None
    originals = {v.victim: v.images for v in report.originals}
    images = {(row.defense_json, row.attack_json, row.victim): row.images for row in report.rows if row.seed == seed}
    victims = sorted(originals)[:max_victims]
    reference_columns = [(canonical_json(None), canonical_json(r.attack), r.attack_label) for r in report.references]
    written = []
    for summary in (s for s in report.defenses if s.pairs):
        defense_json = canonical_json(summary.spec)
        own = {
            r.attack_json: r.attack_label
            for r in report.rows
            if r.kind == "reference" and r.defense_json == defense_json
        }
        columns = [
            ("original", "", "original"),
            *reference_columns,
            *[(defense_json, key, label) for key, label in own.items()],
            *[(defense_json, canonical_json(p.attack), p.attack_label) for p in (*summary.pairs, *summary.controls)],
        ]
        figure = _grid(plt, f"{report.suite}: {summary.label}", columns, victims, originals, images)
        path = folder / f"{slug(summary.label)}.png"
        save_figure(figure, path)
        plt.close(figure)
        written.append(path)
    return written
