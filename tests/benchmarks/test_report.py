"""Reports: leakage above the prior, ranking, worst case over attacks, traceability, byte-identical output."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from benchmarks.report import REPORT_FILES, build_report, fmt, leaderboard_json, write_report
from benchmarks.store import CellRow, ResultsStore, VictimRow

NONE = {"name": "none"}
NOISE = {"name": "gaussian", "sigma": 0.1}


def put(
    store: ResultsStore,
    victim: int,
    defense: dict | None,
    attack: str,
    psnr: float,
    ssim: float,
    seed: int = 0,
    kind: str = "attack",
) -> None:
    store.put_cell(
        CellRow(
            suite="s",
            victim=victim,
            defense=defense,
            attack={"name": attack, "adaptive": True},
            seed=seed,
            kind=kind,
            defense_label="prior only" if defense is None else str(defense["name"]),
            attack_label=attack.split(":")[-1],
            config_hash="cfg1",
            code_version="v1",
            seconds=1.0,
            evaluations=10,
            metrics={"psnr": psnr, "ssim": ssim, "mse": 10 ** (-psnr / 10), "label_accuracy": 1.0},
            labels=[victim],
            images=np.full((1, 1, 4, 4), victim / 4, dtype=np.float32),
        )
    )


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    store = ResultsStore(tmp_path / "results.sqlite")
    for victim in range(2):
        store.put_victim(VictimRow("s", victim, [victim], [victim], np.zeros((1, 1, 4, 4), dtype=np.float32)))
    # prior-only references: class mean 14 / 16 dB, random sample 10 / 18 dB -> best reference 14 and 18
    put(store, 0, None, "reference:class-mean", 14.0, 0.3, kind="reference")
    put(store, 1, None, "reference:class-mean", 16.0, 0.3, kind="reference")
    put(store, 0, None, "reference:prior-sample", 10.0, 0.1, kind="reference")
    put(store, 1, None, "reference:prior-sample", 18.0, 0.1, kind="reference")
    put(store, 0, None, "reference:prior-ceiling", 30.0, 0.9, kind="reference")
    put(store, 1, None, "reference:prior-ceiling", 30.0, 0.9, kind="reference")
    # no defense: dlg 40 / 30 dB (gains 26, 12 -> 19); ggl 20 / 24 (gains 6, 6 -> 6) but the better SSIM
    put(store, 0, NONE, "dlg", 40.0, 0.5)
    put(store, 1, NONE, "dlg", 30.0, 0.5)
    put(store, 0, NONE, "ggl", 20.0, 0.8)
    put(store, 1, NONE, "ggl", 24.0, 0.8)
    # noise: dlg 12 / 16 (gains -2, -2), ggl 16 / 20 with two seeds on victim 0 (mean 15 -> gains 1, 2 -> 1.5)
    put(store, 0, NOISE, "dlg", 12.0, 0.1)
    put(store, 1, NOISE, "dlg", 16.0, 0.1)
    put(store, 0, NOISE, "ggl", 16.0, 0.4, seed=0)
    put(store, 0, NOISE, "ggl", 14.0, 0.4, seed=1)
    put(store, 1, NOISE, "ggl", 20.0, 0.4)
    store.put_utility(NOISE, {"seed": 0}, {"update_cosine": 0.7, "accuracy_drop": 0.05}, "cfg1", "v1", 1.0)
    yield store
    store.close()


def test_leakage_above_prior_and_ranking(store: ResultsStore) -> None:
    report = build_report(store, "s")
    assert [d.label for d in report.defenses] == ["gaussian", "none"]  # less leakage ranks first
    noise, clean = report.defenses
    assert noise.strongest.attack_label == "ggl" and noise.leakage == pytest.approx(1.5)
    assert clean.strongest.attack_label == "dlg" and clean.leakage == pytest.approx(19.0)
    assert clean.best["psnr"] == pytest.approx(35.0)  # best over attacks of the victim means
    assert clean.best["ssim"] == pytest.approx(0.8)  # from another attack than the PSNR
    assert clean.best["mse"] == pytest.approx(min(np.mean([10**-4, 10**-3]), np.mean([10**-2, 10**-2.4])))
    assert noise.utility_value("update_cosine") == 0.7 and clean.utility is None
    references = {r.attack_label: r for r in report.references}
    assert list(references) == ["class-mean", "prior-sample", "prior-ceiling"]
    assert references["class-mean"].psnr_gain == pytest.approx(-1.0)  # (14-14 + 16-18) / 2
    assert references["prior-ceiling"].psnr_gain == pytest.approx(14.0)


def test_every_number_is_traceable(store: ResultsStore) -> None:
    document = leaderboard_json(build_report(store, "s"))
    assert document["config_hashes"] == ["cfg1"] and document["code_versions"] == ["v1"]
    noise = document["leaderboard"][0]
    ggl = next(pair for pair in noise["attacks"] if pair["attack"] == "ggl")
    assert [(r["victim"], r["seed"]) for r in ggl["rows"]] == [(0, 0), (0, 1), (1, 0)]
    assert all(r["config_hash"] == "cfg1" and r["code_version"] == "v1" for r in ggl["rows"])
    assert noise["utility"]["config_hash"] == "cfg1"


def test_report_files_are_written_and_identical_when_regenerated(store: ResultsStore, tmp_path: Path) -> None:
    first, second = tmp_path / "a", tmp_path / "b"
    write_report(store, first, "s")
    write_report(store, second, "s")
    for name in (*REPORT_FILES, *(f"grids/{p.name}" for p in (first / "grids").glob("*.png"))):
        assert (first / name).read_bytes() == (second / name).read_bytes(), name
    assert len(list((first / "grids").glob("*.png"))) == 2
    markdown = (first / "leaderboard.md").read_text()
    assert "| 1 | gaussian | 0.700 | +0.050 | ggl | +1.50 |" in markdown
    assert "| ref | (any: prior only) | - | - | prior-ceiling | +14.00 |" in markdown
    rows = (first / "rows.csv").read_text().splitlines()
    assert len(rows) == 1 + 15
    assert json.loads((first / "leaderboard.json").read_text())["suite"] == "s"


def test_formatting_of_missing_and_infinite_values() -> None:
    assert fmt("psnr", None) == "-"
    assert fmt("psnr", float("inf")) == "inf"
    assert fmt("psnr_gain", 1.234) == "+1.23"


def test_unknown_suite_is_a_clear_error(store: ResultsStore) -> None:
    with pytest.raises(ValueError, match="suites stored: s"):
        build_report(store, "other")
