"""The calibration suite: its checks parse, run at a tiny size, and decide pass/fail from the report's numbers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.config import SuiteError, build_suite, load_suite
from benchmarks.report.calibration import CEILING_TOLERANCE_DB
from benchmarks.run import main

TINY = [
    "--set",
    "victims.count=2",
    "--set",
    "attacks=[{name: idlg, iterations: 2, max_iter: 5}, "
    "{name: ggl, prior: fashion-mnist-wgan, search: cma, budget: 40, population: 20}]",
    "--set",
    "references.ceiling_steps=10",
]


def test_checks_name_settings_of_the_suite() -> None:
    suite = load_suite("calibration")
    assert suite.calibration["near_ceiling"] == ("none",)
    assert len(suite.calibration["same_as_none"]) == 4
    data = {"name": "c", "attacks": [{"name": "idlg", "iterations": 1}], "defenses": [{"name": "none"}]}
    with pytest.raises(SuiteError, match=r"calibration\.no_information.*gaussian\(sigma=1\)"):
        build_suite({**data, "calibration": {"no_information": ["gaussian(sigma=1)"]}}, "c.yaml")
    with pytest.raises(SuiteError, match=r"calibration\.typo.*unknown field"):
        build_suite({**data, "calibration": {"typo": ["none"]}}, "c.yaml")
    clipping_only = {**data, "defenses": [{"name": "clipping", "bound": 1.0}]}
    with pytest.raises(SuiteError, match="needs the setting 'none'"):
        build_suite({**clipping_only, "calibration": {"same_as_none": ["clipping(bound=1)"]}}, "c.yaml")


def test_tiny_calibration_run_decides_every_check_from_its_numbers(tmp_path: Path) -> None:
    out = tmp_path / "calibration"
    assert main(["--suite", "calibration", "--out", str(out), "--no-progress", *TINY]) == 0
    checks = json.loads((out / "calibration.json").read_text())["checks"]
    board = {entry["defense"]: entry for entry in json.loads((out / "leaderboard.json").read_text())["leaderboard"]}
    assert [c["check"] for c in checks] == ["same_as_none"] * 4 + ["no_information"] + ["near_ceiling"] * 2
    for check in checks:
        assert check["passed"] in (True, False)
    noise = next(c for c in checks if c["check"] == "no_information")
    low = board["gaussian(sigma=10)"]["worst_case"]["psnr_above_baseline"]["interval"][0]
    assert noise["passed"] == (low <= 0.0)
    ceiling = json.loads((out / "leaderboard.json").read_text())["references"][-1]
    assert ceiling["attack"] == "prior ceiling (pixels known)"
    ggl = next(c for c in checks if c["attack"] == "GGL (cma)")
    ggl_psnr = next(a for a in board["none"]["attacks"] if a["attack"] == "GGL (cma)")["metrics"]["psnr"]
    assert ggl["passed"] == (ggl_psnr >= ceiling["metrics"]["psnr"] - CEILING_TOLERANCE_DB)
    markdown = (out / "calibration.md").read_text()
    passed = sum(c["passed"] for c in checks)
    assert f"{passed} of 7 checks pass" in markdown and markdown.count("| pass |") == passed
    assert markdown.count("| FAIL |") == 7 - passed
