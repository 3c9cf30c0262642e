"""GGL's Table 3 beside ours: the paper's data, the [-1, 1] PSNR scale, grouping of store rows and the verdicts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.store import CellRow, ResultsStore
from benchmarks.table3 import (
    GGL,
    MSE_FLOOR,
    ggl_wins,
    load_paper,
    main,
    ours_from_rows,
    signed_unit_psnr,
    spec_json,
    suite_dataset,
    table3_markdown,
    table3_rows,
)

IMAGE = np.zeros((1, 1, 2, 2), dtype=np.float32)
NOISE = {"name": "gaussian", "sigma": 0.1}
CLIP = {"name": "clipping", "bound": 4}  # an int, as a suite may spell it: matches the paper's 4.0
CMA = {"name": "ggl", "prior": "p.pt", "search": "cma", "budget": 100}
BO = {"name": "ggl", "prior": "p.pt", "search": "bo", "budget": 100}
IG = {"name": "inverting_gradients", "iterations": 100}
DLG = {"name": "dlg", "iterations": 100}


def row(
    victim: int, attack: dict[str, Any], adaptive: bool, mse: float, defense: dict | None = NOISE, **metrics: float
):
    return CellRow(
        suite="paper-celeba",
        victim=victim,
        defense=defense,
        attack={**attack, "adaptive": adaptive},
        seed=0,
        kind="attack" if defense is not None else "reference",
        defense_label="-",
        attack_label="-",
        config_hash="c",
        code_version="v",
        seconds=1.0,
        evaluations=100,
        metrics={"mse": mse, "psnr": -10 * math.log10(mse), **metrics},
        labels=[1],
        images=IMAGE,
    )


def test_the_paper_data_is_consistent_with_its_conventions() -> None:
    paper = load_paper()
    assert paper["source"]["arxiv"] == "2203.15696" and paper["source"]["table"] == 3
    assert [d["spec"] for d in paper["defenses"]] == [
        {"name": "gaussian", "sigma": 0.1},
        {"name": "clipping", "bound": 4.0},
        {"name": "sparsification", "ratio": 0.9},
        {"name": "soteria", "pruning_rate": 0.8},
    ]
    assert {a["key"]: a["name"] for a in paper["attacks"]} == {
        "DLG": "dlg",
        "iDLG": "idlg",
        "IG": "inverting_gradients",
        "GI": None,
        "GGL": "ggl",
    }
    cells = [cell for data in paper["results"].values() for column in data.values() for cell in column.values()]
    assert len(cells) == 2 * 4 * 5
    # every printed PSNR is -10 log10 of the printed MSE-I, up to the rounding of MSE-I to 4 decimals
    assert all(abs(cell["psnr"] - signed_unit_psnr(cell["mse_i"])) < 0.005 for cell in cells)
    assert paper["results"]["CelebA"]["clip-4"]["IG"] == {
        "mse_i": 0.0543,
        "psnr": 12.6517,
        "lpips": 0.2998,
        "mse_r": 0.0003,
    }


def test_the_papers_own_verdicts() -> None:
    paper = load_paper()
    verdicts = {
        (data, column): ggl_wins(cells)
        for data, columns in paper["results"].items()
        for column, cells in columns.items()
    }
    assert verdicts == {
        (data, column): column != "clip-4"
        for data in ("CelebA", "ImageNet")
        for column in ("noise-0.1", "clip-4", "sparsify-90", "soteria-80")
    }
    assert ggl_wins({GGL: {"psnr": 5.0}}) is None and ggl_wins({"IG": {"psnr": 5.0}, "DLG": {"psnr": 1.0}}) is None
    assert ggl_wins({GGL: {"psnr": 5.0}, "IG": {"psnr": 5.0}}) is False  # a tie is not a win


def test_paper_scale_conversion() -> None:
    assert signed_unit_psnr(0.25) == pytest.approx(6.0206, abs=1e-4)  # MSE 0.0625 on [0, 1]: 12.04 dB usually
    assert signed_unit_psnr(0.0) == pytest.approx(-10 * math.log10(MSE_FLOOR))
    ours = ours_from_rows([row(0, IG, False, 0.01), row(1, IG, False, 0.04, lpips=0.5, mse_r=0.2)])
    cell = ours[(spec_json(NOISE), "inverting_gradients")]
    assert cell["mse_i"] == pytest.approx(0.1)  # mean of 4 x 0.01 and 4 x 0.04
    assert cell["psnr"] == pytest.approx(10.0)  # of the mean MSE-I, like the paper (mean per-image PSNR: 10.97)
    assert cell["victims"] == 2
    assert "lpips" not in cell and "mse_r" not in cell  # victim 0 lacks them: no mean over other victims


def test_grouping_prefers_non_adaptive_then_cma() -> None:
    rows = [
        row(0, IG, True, 0.001),  # adaptive IG: the non-adaptive rows are used instead
        row(0, IG, False, 0.02, lpips=0.4, mse_r=0.3),
        row(1, IG, False, 0.03, lpips=0.6, mse_r=0.1),
        row(0, CMA, True, 0.005),  # only adaptive rows under clipping: used
        row(0, CMA, True, 0.005, defense=CLIP),
        row(0, BO, False, 0.002),  # non-adaptive BO beats adaptive CMA in preference
        row(0, CMA, False, 0.01),
        row(0, DLG, False, 0.5, defense=None),  # a reference row: ignored
    ]
    ours = ours_from_rows(rows)
    assert set(ours) == {
        (spec_json(NOISE), "inverting_gradients"),
        (spec_json(NOISE), "ggl"),
        (spec_json(CLIP), "ggl"),
    }
    ig = ours[(spec_json(NOISE), "inverting_gradients")]
    assert ig["mse_i"] == pytest.approx(0.1) and ig["lpips"] == pytest.approx(0.5) and ig["mse_r"] == pytest.approx(0.2)
    assert ig["attack"]["adaptive"] is False
    assert ours[(spec_json(NOISE), "ggl")]["attack"] == {**CMA, "adaptive": False}
    assert ours[(spec_json(CLIP), "ggl")]["attack"] == {**CMA, "adaptive": True}
    assert spec_json({"name": "clipping", "bound": 4}) == spec_json({"name": "clipping", "bound": 4.0})


def test_verdicts_both_ways_and_gi_shown_as_dash() -> None:
    rows = [
        row(0, CMA, False, 0.01),  # noise: GGL (PSNR 13.98 on the paper's scale) beats IG (3.98) as in the paper
        row(0, IG, False, 0.1),
        row(0, CMA, False, 0.01, defense=CLIP),  # clipping: GGL beats IG here, but IG won in the paper
        row(0, IG, False, 0.1, defense=CLIP),
        row(0, DLG, False, 0.2, defense={"name": "sparsification", "ratio": 0.9}),  # no GGL here: n/a
    ]
    columns = {c["defense"]: c for c in table3_rows(load_paper(), ours_from_rows(rows), "CelebA")}
    noise, clip = columns["noise-0.1"], columns["clip-4"]
    assert noise["compared"] == ["IG", GGL] and noise["paper_ggl_wins"] and noise["ours_ggl_wins"]
    assert noise["verdict"] == "holds"
    assert clip["paper_ggl_wins"] is False and clip["ours_ggl_wins"] is True and clip["verdict"] == "does not hold"
    assert columns["sparsify-90"]["verdict"] == "n/a" and columns["soteria-80"]["verdict"] == "n/a"
    assert columns["soteria-80"]["paper_ggl_wins_all"] is True
    gi = next(cell for cell in noise["cells"] if cell["attack"] == "GI")
    assert gi["implemented"] is False and gi["ours"] is None
    page = table3_markdown(load_paper(), ours_from_rows(rows), "CelebA")
    assert "| noise σ = 0.1 | GI | 0.5738 / 2.41 / 0.830 / 0.0023 | - | not implemented here |" in page
    assert "| clipping bound 4 | GGL | 0.0760 / 11.19 / 0.167 / 0.0015 | 0.0400 / 13.98 / - / - (n=1) |" in page
    assert "| noise σ = 0.1 | DLG | 0.6479 / 1.88 / 0.820 / 0.0021 | not run |" in page
    assert "| clipping bound 4 | IG, GGL | no | yes | no | does not hold |" in page
    with pytest.raises(ValueError, match="CelebA, ImageNet"):
        table3_rows(load_paper(), {}, "MNIST")


def test_suite_dataset() -> None:
    assert suite_dataset(json.dumps({"datamodule": {"name": "imagenet"}}), "s") == "ImageNet"
    with pytest.raises(ValueError, match="datamodule 'mnist'"):
        suite_dataset(json.dumps({"datamodule": {"name": "mnist"}}), "s")
    with pytest.raises(ValueError, match="no record of the suite"):
        suite_dataset(None, "s")


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for cell in (row(0, CMA, False, 0.01), row(0, IG, False, 0.1)):
            store.put_cell(cell)
        store.put_cell(replace(row(0, IG, False, 0.1), suite="unrecorded"))
        store.set_meta("suite:paper-celeba", json.dumps({"datamodule": {"name": "celeba"}}))
    out = tmp_path / "table3.md"
    assert main(["--store", str(tmp_path), "--suite", "paper-celeba", "--out", str(out)]) == 0
    assert (
        "# GGL's Table 3 (CelebA)" in out.read_text() and "| noise σ = 0.1 | IG, GGL | yes | yes |" in out.read_text()
    )
    assert main(["--store", str(tmp_path), "--suite", "paper-celeba", "--dataset", "ImageNet", "--out", str(out)]) == 0
    assert "# GGL's Table 3 (ImageNet)" in out.read_text()
    for argv, message in (
        (["--suite", "other"], "no attack rows of suite 'other'"),
        (["--dataset", "MNIST"], "--dataset must be one of CelebA, ImageNet"),
        (["--out", str(tmp_path)], "is a folder"),
        (["--store", str(tmp_path / "nothing")], "no results store"),
        (["--suite", "unrecorded"], "no record of the suite"),
    ):
        defaults = {"--store": str(tmp_path), "--suite": "paper-celeba", "--out": str(out)}
        defaults.update(dict(zip(argv[::2], argv[1::2])))
        assert main([item for pair in defaults.items() for item in pair]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and err.count("\n") == 1
