"""Figures: the privacy-utility plot and one reconstruction grid per defense setting, as deterministic PNGs.

The plot joins each defense family's settings from the weakest to the strongest, labels every point with its
strength and draws the 95% intervals of both coordinates. A grid labels every row with the victim's id and classes
and captions every reconstruction with its PSNR and SSIM, so a picture can be read without the tables.

PNGs are written without a ``Software`` tag at a fixed DPI, so the same store gives byte-identical files.
"""

from __future__ import annotations

import io
import math
import re
import textwrap
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import t

from ggl.io import atomic_write, canonical_json

from ..config import short_hash
from ..shipped import has_images
from .aggregate import DefenseSummary, Report
from .stats import LEVEL
from .worst_case import ABOVE_PRIOR

LEAKAGE_AXIS = "Worst-case PSNR above baseline (dB)"
"""The y axis of the privacy-utility plot: the leaderboard's ranking column."""
UTILITY_AXES = (
    ("accuracy_drop", "Accuracy drop (clean - defended)"),
    ("update_cosine", "Update cosine (defended vs clean update)"),
)
"""The two utility measures the privacy-utility plot puts on its x axes, named as the leaderboard's columns."""
STRONGER_WHEN_SMALLER = frozenset({"bound", "bits", "max_grad_norm"})
"""Defense parameters whose smaller values defend more: a tighter clipping bound, fewer quantization bits, a
tighter DP-SGD clipping norm. Every other numeric parameter (gaussian ``sigma``, laplacian ``scale``,
sparsification ``ratio``, soteria ``pruning_rate``, dpsgd ``noise_multiplier``, mixup ``k``) defends more as it
grows."""
TITLE_POINTS = 9
"""Font size of the grids' column titles and row labels."""
CAPTION_POINTS = 8
"""Font size of the PSNR / SSIM caption under each reconstruction tile."""
TITLE_WIDTH = 18
"""Characters per line of a grid's column title; longer attack names wrap."""


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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def strength_parameters(specs: Sequence[Mapping[str, Any]]) -> list[str]:
    """The parameters that set a family's strength: the numeric ones every setting has and whose values differ
    between its settings; for a family of one setting, all its numeric parameters (sorted by name)."""
    if not specs:
        return []
    shared = [
        name
        for name in sorted(set.intersection(*(set(spec) for spec in specs)) - {"name"})
        if all(_is_number(spec[name]) for spec in specs)
    ]
    varying = [name for name in shared if len({float(spec[name]) for spec in specs}) > 1]
    return varying or shared


def strength_key(spec: Mapping[str, Any], parameters: Sequence[str]) -> tuple[float, ...]:
    """Sort key from the weakest to the strongest setting of a family (``STRONGER_WHEN_SMALLER`` says which way
    each parameter goes)."""
    return tuple(-float(spec[name]) if name in STRONGER_WHEN_SMALLER else float(spec[name]) for name in parameters)


def strength_text(spec: Mapping[str, Any], parameters: Sequence[str]) -> str:
    """A setting's strength as its points are annotated: the values of ``parameters``, e.g. ``0.1`` or ``1, 0.1``."""
    return ", ".join(f"{float(spec[name]):g}" for name in parameters)


def _utility_interval(summary: DefenseSummary, name: str) -> float:
    """Half-width of the 95% t interval of a utility mean over its seeds (0 with one seed or no sd stored).

    The utility cost is a mean over a few training seeds with their sample sd (the leaderboard's ``± sd``); the
    interval of that mean is ``t(n - 1) * sd / sqrt(n)``."""
    metrics = summary.utility["metrics"] if summary.utility is not None else {}
    seeds, spread = metrics.get("seeds"), metrics.get(f"{name}_std")
    if seeds is None or spread is None or seeds < 2 or not math.isfinite(spread):
        return 0.0
    return float(t.ppf((1.0 + LEVEL) / 2.0, seeds - 1)) * float(spread) / math.sqrt(seeds)


@dataclass(frozen=True)
class PlotPoint:
    """One defense setting on one axis of the privacy-utility plot, with its error bars and strength label."""

    utility: float
    leakage: float
    utility_error: float
    below: float  # leakage minus the lower bound of its 95% bootstrap interval (0 without one)
    above: float  # the upper bound minus the leakage
    strength: str


def plot_point(summary: DefenseSummary, utility_name: str, parameters: Sequence[str]) -> PlotPoint | None:
    """One setting's point; None without a finite leakage or a utility value."""
    x, y = summary.utility_value(utility_name), summary.leakage
    if x is None or not math.isfinite(y) or summary.worst is None:
        return None
    estimate = summary.worst.figures[ABOVE_PRIOR]
    bounded = math.isfinite(estimate.low) and math.isfinite(estimate.high)
    return PlotPoint(
        x,
        y,
        _utility_interval(summary, utility_name),
        y - estimate.low if bounded else 0.0,
        estimate.high - y if bounded else 0.0,
        strength_text(summary.spec, parameters),
    )


def family_points(members: Sequence[DefenseSummary], utility_name: str) -> tuple[list[str], list[PlotPoint]]:
    """A family's strength parameters and its points from the weakest to the strongest setting.

    Joined in this order the line traces what tightening the defense buys in privacy and costs in utility; joined
    in x order it would zig-zag wherever the measured utility is not monotone in the strength (noise over a few
    seeds, or a cost that saturates)."""
    parameters = strength_parameters([member.spec for member in members])
    ordered = sorted(members, key=lambda member: (strength_key(member.spec, parameters), member.label))
    points = [plot_point(member, utility_name, parameters) for member in ordered]
    return parameters, [point for point in points if point is not None]


def _plot_families(axis: Any, families: dict[str, list[DefenseSummary]], utility_name: str, title: str) -> None:
    """One line per defense family, in the order of its strength, each point annotated with its strength value,
    with the 95% intervals of both coordinates as error bars."""
    for family, members in sorted(families.items()):
        parameters, points = family_points(members, utility_name)
        if not points:
            continue
        label = f"{family} ({', '.join(parameters)})" if parameters else family
        bars = axis.errorbar(
            [p.utility for p in points],
            [p.leakage for p in points],
            xerr=[p.utility_error for p in points],
            yerr=[[p.below for p in points], [p.above for p in points]],
            marker="o",
            markersize=4,
            capsize=3,
            linewidth=1.2,
            label=label,
        )
        colour = bars.lines[0].get_color()
        for index, point in enumerate(points):
            if point.strength:
                axis.annotate(
                    point.strength,
                    (point.utility, point.leakage),
                    xytext=(5, 4 if index % 2 == 0 else -10),
                    textcoords="offset points",
                    fontsize=8,
                    color=colour,
                )
    axis.axhline(0.0, color="grey", linestyle="--", linewidth=1)
    axis.set_xlabel(title)
    axis.set_ylabel(LEAKAGE_AXIS)
    axis.grid(alpha=0.3)


def privacy_utility_plot(report: Report, path: Path) -> None:
    """Worst-case leakage above the baseline (best attack per victim) against accuracy drop and update cosine: one
    line per family through its settings from the weakest to the strongest, 95% intervals as error bars."""
    plt = _pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(14, 6.4))
    families: dict[str, list[DefenseSummary]] = defaultdict(list)
    for summary in report.defenses:
        families[str(summary.spec.get("name", summary.label))].append(summary)
    for axis, (utility_name, title) in zip(axes, UTILITY_AXES):
        _plot_families(axis, families, utility_name, title)
    axes[1].invert_xaxis()
    axes[0].set_title("Leakage vs accuracy drop (lower left is better)", fontsize=11)
    axes[1].set_title("Leakage vs update cosine (lower left is better)", fontsize=11)
    handles, labels = axes[0].get_legend_handles_labels()
    if handles:
        figure.legend(
            handles,
            labels,
            loc="lower center",
            ncol=min(len(handles), 5),
            fontsize=9,
            title="defense family (strength parameter; points labelled with its value)",
            title_fontsize=9,
        )
    figure.suptitle(
        f"suite {report.suite}: worst case over attacks per victim, each family from its weakest to its strongest "
        "setting\nerror bars: 95% bootstrap interval over victims (leakage), 95% t interval over the utility seeds",
        fontsize=11,
    )
    figure.tight_layout(rect=(0, 0.14, 1, 1))
    save_figure(figure, path)
    plt.close(figure)


def _layout(count: int) -> tuple[int, int]:
    """(rows, columns) of a near-square arrangement of ``count`` images in one grid cell."""
    columns = math.ceil(math.sqrt(count))
    return math.ceil(count / columns), columns


def _show(axis: Any, picture: np.ndarray | None) -> None:
    """Every image of a (B, C, H, W) batch in one grid cell, grey or RGB, side by side (row-major in a near-square
    block); an empty cell when missing (a row imported from shipped rows has no images)."""
    axis.set_xticks([])
    axis.set_yticks([])
    if picture is None or not has_images(picture):
        return
    count, _, height, width = picture.shape
    rows, columns = _layout(count)
    gap = max(1, width // 16)
    for index, image in enumerate(np.clip(picture, 0, 1)):
        row, column = divmod(index, columns)
        left, top = column * (width + gap) - 0.5, row * (height + gap) - 0.5
        extent = (left, left + width, top + height, top)
        if image.shape[0] == 1:
            axis.imshow(image[0], cmap="gray", vmin=0, vmax=1, extent=extent)
        else:
            axis.imshow(np.transpose(image, (1, 2, 0)), extent=extent)
    axis.set_xlim(-0.5, columns * (width + gap) - gap - 0.5)
    axis.set_ylim(rows * (height + gap) - gap - 0.5, -0.5)


def tile_caption(metrics: Mapping[str, float]) -> str:
    """The text under a reconstruction tile: its PSNR and SSIM (``-`` when not measured)."""
    psnr, ssim = metrics.get("psnr"), metrics.get("ssim")
    return f"PSNR {'-' if psnr is None else f'{psnr:.1f} dB'}\nSSIM {'-' if ssim is None else f'{ssim:.2f}'}"


def row_label(victim: int, labels: Sequence[int]) -> str:
    """A grid row's label: the victim's id and the class of each of its images."""
    classes = ", ".join(str(label) for label in labels)
    return f"victim {victim}\n{'class' if len(labels) == 1 else 'classes'} {classes}"


@dataclass(frozen=True)
class Column:
    """One grid column: the rows it shows (defense and attack JSON; ``original`` for the truth) and its title."""

    defense: str
    attack: str
    title: str


def _grid(
    plt: Any,
    title: str,
    columns: Sequence[Column],
    victims: Sequence[int],
    report: Report,
    seed: int | None,
) -> Any:
    """One figure: rows = victims (labelled with id and classes), columns = the original then reconstructions, each
    reconstruction captioned with its PSNR and SSIM."""
    originals = {v.victim: v for v in report.originals}
    rows = {(r.defense_json, r.attack_json, r.victim): r for r in report.rows if r.seed == seed}
    batch = max((len(originals[v].labels) for v in victims), default=1)
    block_rows, block_columns = _layout(batch)
    figure, axes = plt.subplots(
        len(victims),
        len(columns),
        figsize=(0.3 + (0.6 + 0.9 * block_columns) * len(columns), 0.9 + (0.65 + 0.9 * block_rows) * len(victims)),
        squeeze=False,
        layout="constrained",
    )
    for r, victim in enumerate(victims):
        for c, column in enumerate(columns):
            axis = axes[r][c]
            if column.defense == "original":
                _show(axis, originals[victim].images)
                axis.set_ylabel(row_label(victim, originals[victim].labels), fontsize=TITLE_POINTS)
            else:
                row = rows.get((column.defense, column.attack, victim))
                _show(axis, None if row is None else row.images)
                if row is not None:
                    axis.set_xlabel(tile_caption(row.metrics), fontsize=CAPTION_POINTS)
            if r == 0:
                axis.set_title(textwrap.fill(column.title, TITLE_WIDTH), fontsize=TITLE_POINTS)
    figure.suptitle(title, fontsize=12)
    return figure


def grid_columns(report: Report, summary: DefenseSummary) -> list[Column]:
    """A setting's grid columns: the original, the prior-only references (the clean label's, then the setting's own,
    made from the label inferred from its defended update), its attacks, then their controls."""
    defense_json = canonical_json(summary.spec)
    own = {
        r.attack_json: r.attack_label for r in report.rows if r.kind == "reference" and r.defense_json == defense_json
    }
    return [
        Column("original", "", "original"),
        *[Column(canonical_json(None), canonical_json(r.attack), r.attack_label) for r in report.references],
        *[Column(defense_json, key, f"{label} (label from defended update)") for key, label in own.items()],
        *[Column(defense_json, canonical_json(p.attack), p.attack_label) for p in (*summary.pairs, *summary.controls)],
    ]


def setting_has_images(report: Report, summary: DefenseSummary) -> bool:
    """Whether any row of a defense setting holds a reconstruction (rows imported from shipped rows hold none)."""
    defense_json = canonical_json(summary.spec)
    return any(has_images(row.images) for row in report.rows if row.defense_json == defense_json)


def reconstruction_grids(report: Report, folder: Path, max_victims: int = 8) -> list[Path]:
    """One PNG per defense setting with reconstructions: rows = victims, columns = original, the prior-only
    references, the attacks, then their controls; the first seed's reconstructions, every image of a batch. A
    setting whose rows hold no images (imported from shipped rows) gets none."""
    plt = _pyplot()
    seed = report.seeds[0] if report.seeds else None
    victims = sorted(v.victim for v in report.originals)[:max_victims]
    written = []
    for summary in (s for s in report.defenses if s.pairs and victims and setting_has_images(report, s)):
        columns = grid_columns(report, summary)
        figure = _grid(plt, f"{report.suite}: {summary.label}", columns, victims, report, seed)
        path = folder / f"{slug(summary.label)}.png"
        save_figure(figure, path)
        plt.close(figure)
        written.append(path)
    return written
