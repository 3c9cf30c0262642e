"""Figures: deterministic PNGs, one reconstruction grid per defense setting, collision-free file names."""

from __future__ import annotations

from pathlib import Path

from benchmarks.report.aggregate import build_report
from benchmarks.report.figures import privacy_utility_plot, reconstruction_grids, slug
from benchmarks.store import ResultsStore


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
