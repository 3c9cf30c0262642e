"""Aggregation: leakage above the prior, ranking, best per-attack means in the metric table's directions."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.report.aggregate import best_values, build_report
from benchmarks.store import ResultsStore
from ggl import metrics
from ggl.metrics import METRIC_TABLE


def test_leakage_above_prior_and_ranking(store: ResultsStore) -> None:
    report = build_report(store, "s")
    assert [d.label for d in report.defenses] == ["gaussian", "none"]  # less leakage ranks first
    noise, clean = report.defenses
    assert noise.strongest.attack_label == "ggl" and noise.leakage == pytest.approx(1.5)
    assert clean.strongest.attack_label == "dlg" and clean.leakage == pytest.approx(19.0)
    assert clean.mean_leakage == pytest.approx(19.0)  # here dlg is also the best attack of every victim
    assert clean.best["psnr"] == pytest.approx(35.0)  # best over attacks of the victim means
    assert clean.best["ssim"] == pytest.approx(0.8)  # from another attack than the PSNR
    assert clean.best["mse"] == pytest.approx(min(np.mean([10**-4, 10**-3]), np.mean([10**-2, 10**-2.4])))
    assert noise.utility_value("update_cosine") == 0.7 and clean.utility is None
    references = {r.attack_label: r for r in report.references}
    assert list(references) == ["class-mean", "prior-sample", "prior-ceiling"]
    assert references["class-mean"].psnr_gain == pytest.approx(-1.0)  # (14-14 + 16-18) / 2
    assert references["prior-ceiling"].psnr_gain == pytest.approx(14.0)


def test_best_values_follow_the_metric_table(store: ResultsStore, monkeypatch: pytest.MonkeyPatch) -> None:
    clean = build_report(store, "s").defenses[1]
    assert set(clean.best) == set(METRIC_TABLE) - {"lpips"}  # no row has lpips
    assert best_values(clean.pairs) == clean.best
    flipped = metrics.Metric("ssim", "SSIM", False, "{:.3f}", METRIC_TABLE["ssim"].compute)
    monkeypatch.setitem(METRIC_TABLE, "ssim", flipped)
    assert best_values(clean.pairs)["ssim"] == pytest.approx(0.5)  # now the lowest SSIM is the worst case


def test_unknown_suite_is_a_clear_error(store: ResultsStore) -> None:
    with pytest.raises(ValueError, match="suites stored: s"):
        build_report(store, "other")
