"""Tables: formats and titles from the metric table, intervals and bands, traceable JSON, a new metric appearing
everywhere."""

from __future__ import annotations

import pytest

from benchmarks.report.aggregate import build_report
from benchmarks.report.tables import (
    attack_columns,
    attacks_markdown,
    csv_text,
    fmt,
    leaderboard_columns,
    leaderboard_csv_columns,
    leaderboard_json,
    leaderboard_markdown,
    leaderboard_rows,
    markdown_table,
    rows_csv,
)
from benchmarks.store import ResultsStore
from ggl.metrics import METRIC_TABLE, Metric


def test_formatting_of_missing_and_infinite_values() -> None:
    assert fmt("psnr", None) == "-"
    assert fmt("psnr", float("nan")) == "-"
    assert fmt("psnr", float("inf")) == "inf" and fmt("psnr", float("-inf")) == "-inf"
    assert fmt("psnr_gain", 1.234) == "+1.23"
    assert fmt("mse", 0.123456) == "0.1235" and fmt("something_else", 123456.0) == "1.235e+05"


def test_columns_and_titles_come_from_the_metric_table() -> None:
    assert leaderboard_columns() == (
        "rank", "band", "defense", "update_cosine", "accuracy_drop", "psnr_above_baseline", "pick_above_baseline",
        "victims_recovered", "deciding_attack", "flags", "psnr", "ssim", "mse", "lpips", "label_accuracy",
        "strongest_attack", "psnr_gain", "victims",
    )  # fmt: skip
    assert leaderboard_csv_columns()[:9] == (
        "rank", "band", "defense", "update_cosine", "accuracy_drop", "accuracy_drop_std",
        "psnr_above_baseline", "psnr_above_baseline_low", "psnr_above_baseline_high",
    )  # fmt: skip
    assert attack_columns() == (
        "defense", "attack", "psnr_gain", "mse", "psnr", "ssim", "lpips", "label_accuracy",
        "evaluations", "seconds", "victims",
    )  # fmt: skip
    header = markdown_table([], leaderboard_columns()).splitlines()[0]
    metrics = "| Worst-case PSNR | Worst-case SSIM | Worst-case MSE | Worst-case LPIPS | Worst-case label accuracy |"
    assert metrics in header
    assert (
        "| Worst-case PSNR above baseline (dB) | Attacker's pick PSNR above baseline (dB) "
        "| Victims recovered (SSIM ≥ 0.6) | Deciding attack (count) | Flags |"
    ) in header


def test_markdown_and_csv_tables(store: ResultsStore) -> None:
    report = build_report(store, "s")
    markdown = leaderboard_markdown(report)
    # gaussian: worst case per victim 15 (mean of seeds 16 and 14) and 20 dB -> +1 and +2 above the prior
    # no row has a matching loss, so there is no attacker's pick ("-"); no search was cut off (no flags)
    assert (
        "| 1 | 1 | gaussian | 0.700 | +0.050 | +1.50 [+1.00, +2.00] | - | 0.00 [0.00, 0.00] | ggl 3 | - |" in markdown
    )
    assert "| ggl | +1.50 | 2 |" in markdown  # the strongest attack on average, for comparison
    assert "| ref | - | (any: prior only) | - | - | +14.00 [+12.00, +16.00] | - | 1.00 [1.00, 1.00] |" in markdown
    assert "Best PSNR" not in markdown and "a new band starts" in markdown
    assert "| Defense | Attack | PSNR above prior (dB) | MSE | PSNR | SSIM | LPIPS |" in attacks_markdown(report)
    lines = csv_text(leaderboard_rows(report), leaderboard_csv_columns()).splitlines()
    assert lines[0].startswith("rank,band,defense,update_cosine") and len(lines) == 1 + 2 + 3
    assert lines[1].startswith("1,1,gaussian,0.700,+0.050,-,+1.50,+1.00,+2.00,-,-,-,0.00,0.00,0.00,ggl 3,-,")
    assert markdown_table([{"defense": "a|b"}], ["defense"]).splitlines()[-1] == "| a\\|b |"


def test_every_number_is_traceable(store: ResultsStore) -> None:
    document = leaderboard_json(build_report(store, "s"))
    assert document["config_hashes"] == ["cfg1"] and document["code_versions"] == ["v1"]
    noise = document["leaderboard"][0]
    ggl = next(pair for pair in noise["attacks"] if pair["attack"] == "ggl")
    assert [(r["victim"], r["seed"]) for r in ggl["rows"]] == [(0, 0), (0, 1), (1, 0)]
    assert all(r["config_hash"] == "cfg1" and r["code_version"] == "v1" for r in ggl["rows"])
    assert noise["utility"]["config_hash"] == "cfg1"
    worst = noise["worst_case"]
    assert worst["psnr_above_baseline"] == {"value": 1.5, "interval": [1.0, 2.0], "victims": 2}
    assert worst["deciding_attacks"] == [{"attack": "ggl", "count": 3}]  # victim-seed pairs
    first = worst["per_victim"][0]
    assert (first["victim"], first["psnr_above_baseline"], first["baseline"]) == (0, 1.0, "class-mean")
    assert [(s["seed"], s["metrics"]["psnr"]["attack"], s["metrics"]["psnr"]["value"]) for s in first["seeds"]] == [
        (0, "ggl", 16.0),
        (1, "ggl", 14.0),
    ]
    assert first["seeds"][0]["metrics"]["psnr"]["config_hash"] == "cfg1"
    assert noise["band"] == 1 and document["leaderboard"][1]["band_comparison"]["band_head"] == "gaussian"
    assert document["definitions"]["victims_recovered"] == {"metric": "ssim", "threshold": 0.6}
    assert document["references"][0]["worst_case"]["psnr_above_baseline"]["value"] == -1.0


def test_rows_csv_lists_every_cell_and_metric(store: ResultsStore) -> None:
    lines = rows_csv(build_report(store, "s")).splitlines()
    assert len(lines) == 1 + 15
    assert lines[0].endswith(",labels,label_accuracy,mse,psnr,ssim")


def test_a_metric_added_to_the_table_appears_in_every_table(
    store: ResultsStore, put_cell, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(METRIC_TABLE, "l1", Metric("l1", "L1", False, "{:.5f}", lambda *args: None))
    put_cell(store, 0, {"name": "sign"}, "dlg", 20.0, 0.2, l1=0.25)
    put_cell(store, 1, {"name": "sign"}, "dlg", 22.0, 0.2, l1=0.5)
    report = build_report(store, "s")
    sign = next(d for d in report.defenses if d.label == "sign")
    assert sign.best["l1"] == pytest.approx(0.375)
    assert "l1" in leaderboard_columns() and "l1" in attack_columns()
    assert "| Worst-case LPIPS | Worst-case L1 | Worst-case label accuracy |" in leaderboard_markdown(report)
    assert "| sign | dlg | " in attacks_markdown(report) and "| 0.37500 |" in attacks_markdown(report)
    entry = next(e for e in leaderboard_json(report)["leaderboard"] if e["defense"] == "sign")
    assert entry["best"]["l1"] == 0.375
    assert entry["worst_case"]["metrics"]["l1"]["value"] == 0.375
