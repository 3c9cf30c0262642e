"""The calibration checks: settings whose answer is known, each checked automatically with a pass/fail verdict.

A suite's ``calibration`` section names, per check, the defense settings it applies to. The checks are the
auditor's own test (run them before trusting a new attack or defense):

* ``same_as_none``: at batch size 1 clipping only rescales the update, so an adaptive attacker must leak as much as
  without a defense. Passes when the paired bootstrap interval of the per-victim difference in worst-case PSNR
  above baseline (setting minus ``none``) contains 0.
* ``no_information``: an update drowned in noise carries nothing, so the attacks must not beat their controls and
  the prior-only references. Passes when the interval of the worst-case PSNR above baseline reaches 0 or below.
* ``near_ceiling``: without a defense every attack must reach its ceiling. A pixel attack's ceiling is the image
  itself: it passes when its mean SSIM is at least the "recovered" threshold. A generative attack's ceiling is the
  prior's (its latent fitted to the known pixels): it passes when its mean PSNR is at most ``CEILING_TOLERANCE_DB``
  below the prior ceiling's.
"""

from __future__ import annotations

import math
from typing import Any

from ..config import REFERENCE_PREFIX
from .aggregate import DefenseSummary, Report, plain
from .stats import mean, paired_interval
from .tables import markdown_table
from .worst_case import ABOVE_PRIOR, RECOVERED_METRIC, RECOVERED_THRESHOLD

CEILING_TOLERANCE_DB = 3.0
"""How far (dB of mean PSNR) below the prior ceiling a generative attack may stay and still pass ``near_ceiling``."""
PIXEL_ATTACKS = ("dlg", "idlg", "inverting_gradients")
COLUMNS = ("check", "defense", "attack", "figure", "expected", "verdict")
HEADERS = {
    "check": "Check",
    "defense": "Defense",
    "attack": "Attack",
    "figure": "Measured",
    "expected": "Expected",
    "verdict": "Verdict",
}


def _interval_text(value: float, low: float, high: float) -> str:
    return f"{value:+.2f} [{low:+.2f}, {high:+.2f}] dB"


def _verdict(passed: bool | None) -> str:
    return "n/a" if passed is None else ("pass" if passed else "FAIL")


def _same_as_none(setting: DefenseSummary, none: DefenseSummary, seed: int) -> dict[str, Any]:
    first, second = none.worst.values(ABOVE_PRIOR), setting.worst.values(ABOVE_PRIOR)  # type: ignore[union-attr]
    common = sorted(set(first) & set(second))
    difference = mean(second[v] - first[v] for v in common)
    low, high = paired_interval(first, second, seed)
    passed = None if math.isnan(low) else low <= 0.0 <= high
    return {
        "attack": "worst case",
        "figure": f"difference from none {_interval_text(difference, low, high)}",
        "expected": "interval contains 0",
        "passed": passed,
    }


def _no_information(setting: DefenseSummary) -> dict[str, Any]:
    estimate = setting.worst.figures.get(ABOVE_PRIOR) if setting.worst else None
    if estimate is None:
        return {"attack": "worst case", "figure": "-", "expected": "interval reaches 0 or below", "passed": None}
    passed = None if math.isnan(estimate.low) else estimate.low <= 0.0
    return {
        "attack": "worst case",
        "figure": f"above baseline {_interval_text(estimate.value, estimate.low, estimate.high)}",
        "expected": "interval reaches 0 or below",
        "passed": passed,
    }


def _near_ceiling(setting: DefenseSummary, ceiling: float) -> list[dict[str, Any]]:
    results = []
    for pair in setting.pairs:
        if pair.attack["name"] in PIXEL_ATTACKS:
            ssim = pair.metrics.get(RECOVERED_METRIC, math.nan)
            figure, expected = f"mean SSIM {ssim:.3f}", f"≥ {RECOVERED_THRESHOLD:g}"
            passed = None if math.isnan(ssim) else ssim >= RECOVERED_THRESHOLD
        else:
            psnr = pair.metrics.get("psnr", math.nan)
            figure, expected = (
                f"mean PSNR {psnr:.2f} dB",
                f"≥ prior ceiling {ceiling:.2f} - {CEILING_TOLERANCE_DB:g} dB",
            )
            passed = None if math.isnan(psnr) or math.isnan(ceiling) else psnr >= ceiling - CEILING_TOLERANCE_DB
        results.append({"attack": pair.attack_label, "figure": figure, "expected": expected, "passed": passed})
    return results


def _prior_ceiling(report: Report) -> float:
    for reference in report.references:
        if reference.attack["name"] == REFERENCE_PREFIX + "prior-ceiling":
            return reference.metrics.get("psnr", math.nan)
    return math.nan


def calibration_results(report: Report) -> list[dict[str, Any]]:
    """One result per check, setting and (for ``near_ceiling``) attack: figure, expectation, passed (None: n/a)."""
    settings = {summary.label: summary for summary in report.defenses if summary.worst is not None}
    ceiling = _prior_ceiling(report)
    results = []
    for check, labels in report.calibration.items():
        for label in labels:
            setting = settings.get(label)
            if setting is None:
                found = [{"attack": "-", "figure": "no rows", "expected": "-", "passed": None}]
            elif check == "same_as_none":
                found = [_same_as_none(setting, settings["none"], report.bootstrap_seed)] if "none" in settings else []
            elif check == "no_information":
                found = [_no_information(setting)]
            else:
                found = _near_ceiling(setting, ceiling)
            results += [{"check": check, "defense": label, **item} for item in found]
    return results


def calibration_markdown(report: Report) -> str:
    """``calibration.md``: the checks with their verdicts, and how many passed."""
    results = calibration_results(report)
    rows = [{**{k: str(r[k]) for k in COLUMNS if k != "verdict"}, "verdict": _verdict(r["passed"])} for r in results]
    passed = sum(r["passed"] is True for r in results)
    return "\n".join(
        [
            f"# Calibration: suite `{report.suite}`",
            "",
            f"{passed} of {len(results)} checks pass. Settings whose answer is known, checked automatically "
            "(definitions in `benchmarks/report/calibration.py` and `docs/harness.md`). A failure means an attack "
            "was not given a fair chance (budget, restarts) or the pipeline is wrong: fix it before trusting a "
            "leaderboard.",
            "",
            markdown_table(rows, COLUMNS, HEADERS),
        ]
    )


def calibration_json(report: Report) -> dict[str, Any]:
    """``calibration.json``: every check's result (``passed`` null when it could not be decided)."""
    results = calibration_results(report)
    return plain({"suite": report.suite, "ceiling_tolerance_db": CEILING_TOLERANCE_DB, "checks": results})
