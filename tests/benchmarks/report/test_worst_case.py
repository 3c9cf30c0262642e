"""The worst case per victim, victims recovered, bootstrap intervals, rank bands, and deterministic reports."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from scipy.stats import norm, t

from benchmarks.report.aggregate import build_report
from benchmarks.report.stats import bootstrap_interval, bootstrap_seed, expanded_tail, paired_interval
from benchmarks.report.tables import leaderboard_json
from benchmarks.report.worst_case import ABOVE_PRIOR, PSNR_EXACT, RECOVERED, RECOVERED_THRESHOLD
from benchmarks.store import ResultsStore
from ggl.io import pretty_json

CLIP = {"name": "clipping", "bound": 1.0}


def direct_interval(values: list[float], seed: int) -> list[float]:
    """The bootstrap written out with numpy: 2,000 resamples of the victims, the expanded percentiles of a 95%
    interval (Hesterberg: the 2.5th and 97.5th widened by sqrt(n / (n - 1)) and Student's t)."""
    data = np.asarray(values)
    indices = np.random.default_rng(seed).integers(0, len(data), size=(2000, len(data)))
    tail = 100 * norm.cdf(-np.sqrt(len(data) / (len(data) - 1)) * t.ppf(0.975, len(data) - 1))
    return list(np.percentile(data[indices].mean(axis=1), [tail, 100 - tail]))


def test_worst_case_takes_the_best_attack_per_victim(store: ResultsStore, put_cell) -> None:
    # references 14 and 18 dB; dlg wins victim 0 (30 dB), ggl wins victim 1 (28 dB)
    put_cell(store, 0, CLIP, "dlg", 30.0, 0.6)
    put_cell(store, 1, CLIP, "dlg", 15.0, 0.1)
    put_cell(store, 0, CLIP, "ggl", 15.0, 0.2)
    put_cell(store, 1, CLIP, "ggl", 28.0, 0.59)
    clip = next(d for d in build_report(store, "s").defenses if d.label == "clipping")
    assert clip.strongest.attack_label == "dlg" and clip.mean_leakage == pytest.approx(6.5)  # (16 - 3) / 2
    assert clip.leakage == pytest.approx(13.0)  # (30 - 14 + 28 - 18) / 2: the best attack of each victim
    assert clip.worst.values(ABOVE_PRIOR) == pytest.approx({0: 16.0, 1: 10.0})
    assert clip.worst.figures["psnr"].value == pytest.approx(29.0) and clip.best["psnr"] == pytest.approx(22.5)
    assert clip.worst.figures["mse"].value == pytest.approx(np.mean([10**-3, 10**-2.8]))
    assert clip.worst.deciding == [("dlg", 1), ("ggl", 1)]
    assert [v.choices[0]["psnr"].attack for v in clip.worst.victims] == ["dlg", "ggl"]
    # victims recovered: SSIM 0.6 counts (at the threshold), 0.59 does not
    assert RECOVERED_THRESHOLD == 0.6
    assert clip.worst.values(RECOVERED) == {0: 1.0, 1: 0.0}
    assert clip.worst.figures[RECOVERED].value == pytest.approx(0.5)


def test_a_victims_seeds_are_averaged_before_the_bootstrap(store: ResultsStore) -> None:
    noise = build_report(store, "s").defenses[0]
    assert noise.label == "gaussian"
    assert noise.worst.values(ABOVE_PRIOR) == pytest.approx({0: 1.0, 1: 2.0})  # victim 0: seeds 16 and 14 dB
    assert noise.worst.figures[ABOVE_PRIOR].victims == 2
    assert noise.worst.deciding == [("ggl", 3)]  # counted over victim-seed pairs


def test_bootstrap_interval_is_the_direct_numpy_computation(store: ResultsStore, put_cell) -> None:
    values = [3.0, -1.5, 7.25, 0.5, 2.0, 11.0]
    assert list(bootstrap_interval(values, 1234)) == direct_interval(values, 1234)
    assert 0.5 < expanded_tail(8) < 0.6 and 2.3 < expanded_tail(1000) < 2.5  # widened for few victims, 2.5% for many
    assert np.isnan(bootstrap_interval([1.0], 1)).all() and np.isnan(bootstrap_interval([1.0, np.inf], 1)).all()
    assert paired_interval({0: 1.0, 1: 2.0, 2: 5.0}, {1: 4.0, 2: 6.0, 3: 9.0}, 7) == bootstrap_interval([2.0, 1.0], 7)
    put_cell(store, 0, CLIP, "dlg", 30.0, 0.6)
    put_cell(store, 1, CLIP, "dlg", 15.0, 0.1)
    put_cell(store, 0, CLIP, "ggl", 15.0, 0.2)
    put_cell(store, 1, CLIP, "ggl", 28.0, 0.59)
    report = build_report(store, "s")
    clip = next(d for d in report.defenses if d.label == "clipping")
    assert report.bootstrap_seed == bootstrap_seed("s") != bootstrap_seed("t")
    estimate = clip.worst.figures[ABOVE_PRIOR]
    assert [estimate.low, estimate.high] == direct_interval([16.0, 10.0], bootstrap_seed("s"))


def banded_store(path: Path, put_cell) -> ResultsStore:
    """Six victims (reference 10 dB each): two close settings and one clearly leakier."""
    store = ResultsStore(path)
    settings = [
        ({"name": "gaussian", "sigma": 1.0}, [12.0, 13.0, 11.0, 12.5, 11.5, 12.0]),
        ({"name": "gaussian", "sigma": 2.0}, [12.5, 12.0, 11.5, 12.0, 12.0, 11.8]),
        ({"name": "none"}, [30.0, 32.0, 31.0, 29.0, 30.0, 31.0]),
    ]
    for victim in range(6):
        put_cell(store, victim, None, "reference:class-mean", 10.0, 0.3, kind="reference")
        for defense, values in settings:
            put_cell(store, victim, defense, "dlg", values[victim], 0.5)
    return store


def test_bands_split_only_where_the_paired_difference_excludes_zero(tmp_path: Path, put_cell) -> None:
    store = banded_store(tmp_path / "bands.sqlite", put_cell)
    report = build_report(store, "s")
    ranked = [(d.spec.get("sigma"), d.rank, d.worst.band) for d in report.defenses]
    assert ranked == [(2.0, 1, 1), (1.0, 2, 1), (None, 3, 2)]  # the two gaussians overlap; none leaks clearly more
    close, overlapping, leaky = (d.worst for d in report.defenses)
    assert overlapping.comparison["new_band"] is False and overlapping.comparison["band_head"] == "gaussian"
    low, high = overlapping.comparison["difference_interval"]
    assert low < 0 < high
    assert leaky.comparison["new_band"] is True and leaky.comparison["difference_interval"][0] > 0
    assert close.comparison is None
    store.close()


def test_two_builds_give_identical_json(tmp_path: Path, put_cell) -> None:
    store = banded_store(tmp_path / "bands.sqlite", put_cell)
    first = pretty_json(leaderboard_json(build_report(store, "s")))
    second = pretty_json(leaderboard_json(build_report(store, "s")))
    assert first == second and '"band": 2' in first
    store.close()


def test_psnr_is_scored_up_to_exact_recovery(store: ResultsStore, put_cell) -> None:
    """Above an RMS error of one 8-bit grey level (48.13 dB) every PSNR scores the same, and a row that got there is
    not flagged as cut off; the rows keep their raw values."""
    assert PSNR_EXACT == pytest.approx(48.1308, abs=1e-4)
    put_cell(store, 0, CLIP, "dlg", 75.0, 1.0, still_improving=1.0)  # far past exact: scored 48.13, not cut off
    put_cell(store, 1, CLIP, "dlg", 40.0, 0.9, still_improving=1.0)  # below it: unchanged, cut off
    report = build_report(store, "s")
    clip = next(d for d in report.defenses if d.label == "clipping")
    assert clip.worst.values(ABOVE_PRIOR) == pytest.approx({0: PSNR_EXACT - 14.0, 1: 40.0 - 18.0})
    assert [v.cut_off for v in clip.worst.victims] == [False, True]
    assert sorted(r.metrics["psnr"] for r in report.rows if r.attack_label == "dlg" and r.defense == CLIP) == [
        40.0,
        75.0,
    ]
