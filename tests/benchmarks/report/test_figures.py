"""Figures: deterministic PNGs, collision-free file names, strength-ordered privacy-utility lines with strength
labels and 95% error bars, and grids with readable titles, PSNR/SSIM captions, labelled rows and whole batches."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from matplotlib.container import ErrorbarContainer
from scipy.stats import t

from benchmarks.report import figures
from benchmarks.report.aggregate import Report, build_report
from benchmarks.report.figures import (
    TITLE_WIDTH,
    privacy_utility_plot,
    reconstruction_grids,
    slug,
    strength_key,
    strength_parameters,
)
from benchmarks.report.worst_case import ABOVE_PRIOR
from benchmarks.store import CellRow, ResultsStore, VictimRow

from .conftest import NOISE, Put

LAPLACIAN = [{"name": "laplacian", "scale": scale} for scale in (0.01, 0.05, 0.2)]
CLIPPING = [{"name": "clipping", "bound": bound, "mode": "per_layer"} for bound in (0.25, 1.0)]
DROPS = {0.01: 0.06, 0.05: 0.01, 0.2: 0.03, 0.25: 0.02, 1.0: 0.04}
"""Accuracy drops chosen so that no family's x order is its strength order."""
LONG_ATTACK = "inverting-gradients-with-a-very-long-name"


def _recorded(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """The figures the drawing functions save, instead of PNG files."""
    saved: list[Any] = []
    monkeypatch.setattr(figures, "save_figure", lambda figure, path: saved.append(figure))
    return saved


@pytest.fixture
def sweep(store: ResultsStore, put_cell: Put) -> Report:
    """The shared store plus a laplacian and a clipping sweep, each attacked on both victims, with utility costs."""
    for spec in (*LAPLACIAN, *CLIPPING):
        strength = float(spec.get("scale", spec.get("bound")))
        for victim in range(2):
            put_cell(store, victim, spec, "dlg", 20.0 + 10 * strength + 3 * victim, 0.5)
        metrics = {"accuracy_drop": DROPS[strength], "accuracy_drop_std": 0.01, "update_cosine": 1 - strength}
        store.put_utility(spec, {"seed": 0}, {**metrics, "update_cosine_std": 0.02, "seeds": 3.0}, "cfg1", "v1", 1.0)
    return build_report(store, "s")


def test_slug_is_file_safe_stable_and_distinct() -> None:
    assert slug("gaussian(sigma=0.1)") == slug("gaussian(sigma=0.1)")
    assert slug("gaussian(sigma=0.1)").startswith("gaussian-sigma-0-1-")
    assert slug("a b") != slug("a-b") and slug("???").startswith("entry-")


def test_plot_and_grids_are_byte_identical_when_redrawn(store: ResultsStore, tmp_path: Path) -> None:
    report = build_report(store, "s")
    privacy_utility_plot(report, tmp_path / "a.png")
    privacy_utility_plot(report, tmp_path / "b.png")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    first = reconstruction_grids(report, tmp_path / "one")
    second = reconstruction_grids(report, tmp_path / "two")
    assert [p.name for p in first] == [f"{slug(d.label)}.png" for d in report.defenses]
    assert [p.read_bytes() for p in first] == [p.read_bytes() for p in second]
    assert (tmp_path / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_strength_is_the_varying_numeric_parameter_weakest_first() -> None:
    dpsgd = [{"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": m} for m in (1.0, 0.1)]
    assert strength_parameters(dpsgd) == ["noise_multiplier"]
    assert sorted(dpsgd, key=lambda s: strength_key(s, ["noise_multiplier"]))[0]["noise_multiplier"] == 0.1
    assert strength_parameters(CLIPPING) == ["bound"]  # "mode" is not a number
    assert max(CLIPPING, key=lambda s: strength_key(s, ["bound"]))["bound"] == 0.25  # a tighter bound is stronger
    assert strength_parameters([{"name": "quantization", "bits": 4, "scale": "max"}]) == ["bits"]
    assert strength_parameters([{"name": "sign"}]) == [] and strength_parameters([]) == []


def _line(axis: Any, family: str) -> ErrorbarContainer:
    (container,) = [c for c in axis.containers if isinstance(c, ErrorbarContainer) and c.get_label() == family]
    return container


def test_plot_joins_each_family_in_strength_order_with_labels_and_interval_bars(
    sweep: Report, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = _recorded(monkeypatch)
    privacy_utility_plot(sweep, tmp_path / "plot.png")
    (figure,) = saved
    drop_axis, cosine_axis = figure.axes
    assert drop_axis.get_ylabel() == "Worst-case PSNR above baseline (dB)"  # the leaderboard's ranking column
    half_width = t.ppf(0.975, 2) * 0.01 / math.sqrt(3)
    for family, parameter, values in (("laplacian", "scale", [0.01, 0.05, 0.2]), ("clipping", "bound", [1.0, 0.25])):
        members = {s.spec[parameter]: s for s in sweep.defenses if s.spec["name"] == family}
        summaries = [members[value] for value in values]  # weakest first: a larger scale, a smaller bound
        container = _line(drop_axis, f"{family} ({parameter})")
        data_line, _, (x_bars, y_bars) = container.lines
        xs, ys = list(data_line.get_xdata()), list(data_line.get_ydata())
        assert xs == [DROPS[v] for v in values] and xs != sorted(xs)  # not x order
        assert ys == pytest.approx([s.leakage for s in summaries])
        for summary, (low, high) in zip(summaries, ((seg[0][1], seg[1][1]) for seg in y_bars.get_segments())):
            estimate = summary.worst.figures[ABOVE_PRIOR]
            assert (low, high) == pytest.approx((estimate.low, estimate.high))
            assert estimate.low < estimate.high
        for x, segment in zip(xs, x_bars.get_segments()):
            assert (segment[0][0], segment[1][0]) == pytest.approx((x - half_width, x + half_width))
        texts = {(round(a.xy[0], 9), round(a.xy[1], 9)): a.get_text() for a in drop_axis.texts}
        assert [texts[(round(x, 9), round(y, 9))] for x, y in zip(xs, ys)] == [f"{v:g}" for v in values]
    cosine_line = _line(cosine_axis, "laplacian (scale)").lines[0]
    assert list(cosine_line.get_xdata()) == pytest.approx([0.99, 0.95, 0.8])
    assert {a.get_text() for a in cosine_axis.texts} >= {"0.01", "0.05", "0.2", "1", "0.25"}


def _grid_of(figures_saved: list[Any], report: Report, label: str) -> np.ndarray:
    """The axes of one defense setting's grid, as (rows, columns)."""
    index = [s.label for s in report.defenses if s.pairs].index(label)
    figure = figures_saved[index]
    columns = sum(1 for axis in figure.axes if axis.get_subplotspec().rowspan.start == 0)
    return np.array(figure.axes).reshape(-1, columns)


def test_grids_have_readable_titles_captions_and_row_labels(
    store: ResultsStore, put_cell: Put, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for victim, psnr in enumerate((11.0, 13.0)):
        put_cell(store, victim, NOISE, LONG_ATTACK, psnr, 0.25)
    report = build_report(store, "s")
    saved = _recorded(monkeypatch)
    reconstruction_grids(report, tmp_path)
    axes = _grid_of(saved, report, "gaussian")
    titles = [axis.get_title() for axis in axes[0]]
    assert all(axis.title.get_fontsize() >= 9 for axis in axes[0])
    long_title = titles[[title.replace("\n", "") for title in titles].index(LONG_ATTACK)]
    assert "\n" in long_title and all(len(line) <= TITLE_WIDTH for line in long_title.splitlines())
    assert [axis.get_ylabel() for axis in axes[:, 0]] == ["victim 0\nclass 0", "victim 1\nclass 1"]
    assert all(axis.yaxis.label.get_fontsize() >= 9 for axis in axes[:, 0])
    expected = {  # the fixture's seed-0 numbers: the prior-only references, the attacks on NOISE and their controls
        "original": (None, None),
        "class-mean": ((14.0, 0.3), (16.0, 0.3)),
        "prior-sample": ((10.0, 0.1), (18.0, 0.1)),
        "prior-ceiling": ((30.0, 0.9), (30.0, 0.9)),
        "dlg": ((12.0, 0.1), (16.0, 0.1)),
        "ggl": ((16.0, 0.4), (20.0, 0.4)),
        LONG_ATTACK: ((11.0, 0.25), (13.0, 0.25)),
    }
    assert [title.replace("\n", "") for title in titles] == list(expected)
    for column, numbers in enumerate(expected.values()):
        for row, pair in enumerate(numbers):
            caption = "" if pair is None else f"PSNR {pair[0]:.1f} dB\nSSIM {pair[1]:.2f}"
            assert axes[row][column].get_xlabel() == caption
            assert len(axes[row][column].images) == 1


def test_grids_draw_every_image_of_a_batch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = ResultsStore(tmp_path / "batch.sqlite")
    pixels = np.stack([np.full((1, 4, 4), 0.2), np.full((1, 4, 4), 0.8)]).astype(np.float32)
    for victim in range(2):
        store.put_victim(VictimRow("s", victim, [2 * victim, 2 * victim + 1], [victim, 3], pixels))
        store.put_cell(
            CellRow(
                suite="s",
                victim=victim,
                defense=NOISE,
                attack={"name": "dlg", "adaptive": True},
                seed=0,
                kind="attack",
                defense_label="gaussian",
                attack_label="dlg",
                config_hash="cfg1",
                code_version="v1",
                seconds=1.0,
                evaluations=10,
                metrics={"psnr": 12.0 + victim, "ssim": 0.5, "mse": 0.1, "label_accuracy": 1.0},
                labels=[victim, 3],
                images=pixels[::-1].copy(),
            )
        )
    report = build_report(store, "s")
    store.close()
    saved = _recorded(monkeypatch)
    reconstruction_grids(report, tmp_path)
    axes = _grid_of(saved, report, "gaussian")
    assert axes.shape == (2, 2)
    assert [axis.get_ylabel() for axis in axes[:, 0]] == ["victim 0\nclasses 0, 3", "victim 1\nclasses 1, 3"]
    for row in axes:
        original, reconstruction = row
        assert [image.get_array().mean() for image in original.images] == pytest.approx([0.2, 0.8])
        assert [image.get_array().mean() for image in reconstruction.images] == pytest.approx([0.8, 0.2])
        lefts = [image.get_extent()[0] for image in reconstruction.images]
        assert lefts[0] < lefts[1]  # side by side, not drawn over each other
    assert axes[1][1].get_xlabel() == "PSNR 13.0 dB\nSSIM 0.50"
