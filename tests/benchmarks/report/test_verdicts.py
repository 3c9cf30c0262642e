"""The report's verdicts on hand-made rows: the attacker's pick, the control in the baseline, a failed simulation
check, cut-off searches, and the intervals and bands around them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.cells import MATCH_LOSS, SIMULATION_OK, STILL_IMPROVING
from benchmarks.config import CONTROL
from benchmarks.report.aggregate import DefenseSummary, Report, build_report
from benchmarks.report.stats import bootstrap_interval, bootstrap_seed
from benchmarks.report.tables import leaderboard_json, leaderboard_markdown
from benchmarks.report.worst_case import ABOVE_PRIOR, PICK
from benchmarks.store import CellRow, ResultsStore

NOISE = {"name": "gaussian", "sigma": 0.1}
CLIP = {"name": "clipping", "bound": 1.0}
LIAR = {"name": "liar"}
MEAN = "prior only: class mean"
SAMPLE = "prior only: random sample"


def put(
    store: ResultsStore,
    victim: int,
    defense: dict[str, Any] | None,
    attack: str,
    psnr: float,
    *,
    seed: int = 0,
    kind: str = "attack",
    adaptive: bool = True,
    **metrics: float,
) -> None:
    """Store one row of suite ``s``. ``attack`` is the label; a reference's label names its kind; a control row
    is the attack's key plus the control marker, labelled ``attack (control)``."""
    if kind == "reference":
        name = {MEAN: "reference:class-mean", SAMPLE: "reference:prior-sample"}[attack]
        spec: dict[str, Any] = {"name": name, "adaptive": False}
    else:
        spec = {"name": attack, "iterations": 5, "adaptive": adaptive}
    if kind == "control":
        spec["control"] = CONTROL
    store.put_cell(
        CellRow(
            suite="s",
            victim=victim,
            defense=defense,
            attack=spec,
            seed=seed,
            kind=kind,
            defense_label="prior only" if defense is None else str(defense["name"]),
            attack_label=f"{attack} (control)" if kind == "control" else attack,
            config_hash="cfg1",
            code_version="v1",
            seconds=1.0,
            evaluations=10,
            metrics={"psnr": psnr, "ssim": 0.3, "mse": 10 ** (-psnr / 10), **metrics},
            labels=[victim],
            images=np.zeros((1, 1, 4, 4), dtype=np.float32),
        )
    )


def reference(store: ResultsStore, victim: int, defense: dict[str, Any], psnr: float, seeds: int = 1) -> None:
    """The class-mean reference of ``defense`` (and a worse prior sample), per seed."""
    for seed in range(seeds):
        put(store, victim, defense, MEAN, psnr, seed=seed, kind="reference")
        put(store, victim, defense, SAMPLE, psnr - 5.0, seed=seed, kind="reference")


@pytest.fixture
def store(tmp_path: Path) -> ResultsStore:
    return ResultsStore(tmp_path / "results.sqlite")


def setting(report: Report, label: str) -> DefenseSummary:
    return next(summary for summary in report.defenses if summary.label == label)


def entry(report: Report, label: str) -> dict[str, Any]:
    return next(e for e in leaderboard_json(report)["leaderboard"] if e["defense"] == label)


def markdown_row(report: Report, label: str) -> list[str]:
    """The leaderboard's Markdown row of ``label``, cell by cell."""
    line = next(line for line in leaderboard_markdown(report).splitlines() if f" | {label} | " in line)
    return [cell.strip() for cell in line.strip("|").split("|")]


FLAGS = 9  # the Flags column of the Markdown leaderboard (after rank, band, defense, utility x2, three figures, ...)


def test_the_attackers_pick_is_the_lowest_matching_loss_not_the_best_psnr(store: ResultsStore) -> None:
    # class-mean references 12 and 14 dB (prior samples 5 dB worse); no controls
    reference(store, 0, NOISE, 12.0)
    reference(store, 1, NOISE, 14.0)
    # victim 0: dlg 30 dB with matching loss 0.4, ggl 20 dB with 0.1 -> worst case 30, the pick ggl's 20
    put(store, 0, NOISE, "dlg", 30.0, **{MATCH_LOSS: 0.4})
    put(store, 0, NOISE, "ggl", 20.0, **{MATCH_LOSS: 0.1})
    # victim 1: dlg 26 dB with 0.05, ggl 22 dB with 0.2 -> worst case and pick both dlg's 26
    put(store, 1, NOISE, "dlg", 26.0, **{MATCH_LOSS: 0.05})
    put(store, 1, NOISE, "ggl", 22.0, **{MATCH_LOSS: 0.2})
    report = build_report(store, "s")
    worst = setting(report, "gaussian").worst
    assert worst.values(ABOVE_PRIOR) == pytest.approx({0: 18.0, 1: 12.0})  # 30 - 12, 26 - 14
    assert worst.values(PICK) == pytest.approx({0: 8.0, 1: 12.0})  # 20 - 12, 26 - 14
    assert worst.figures[ABOVE_PRIOR].value == pytest.approx(15.0) and worst.figures[PICK].value == pytest.approx(10.0)
    victims = entry(report, "gaussian")["worst_case"]["per_victim"]
    picks = [(s["attackers_pick"]["attack"], s["attackers_pick"]["value"]) for v in victims for s in v["seeds"]]
    assert picks == [("ggl", 20.0), ("dlg", 26.0)]
    assert [v["seeds"][0]["metrics"]["psnr"]["attack"] for v in victims] == ["dlg", "dlg"]
    assert [v[PICK] for v in victims] == [8.0, 12.0]
    assert markdown_row(report, "gaussian")[5:7] == ["+15.00 [+12.00, +18.00]", "+10.00 [+8.00, +12.00]"]


def test_the_pick_is_averaged_over_seeds_and_ignores_rows_without_a_matching_loss(store: ResultsStore) -> None:
    reference(store, 0, NOISE, 10.0, seeds=2)
    # seed 0: dlg 25 (loss 0.3) and ggl 15 (loss 0.2) -> pick 15; seed 1: dlg 24 (loss 0.1), ggl 30 (no loss) -> 24
    put(store, 0, NOISE, "dlg", 25.0, seed=0, **{MATCH_LOSS: 0.3})
    put(store, 0, NOISE, "ggl", 15.0, seed=0, **{MATCH_LOSS: 0.2})
    put(store, 0, NOISE, "dlg", 24.0, seed=1, **{MATCH_LOSS: 0.1})
    put(store, 0, NOISE, "ggl", 30.0, seed=1)
    worst = setting(build_report(store, "s"), "gaussian").worst
    assert worst.values(PICK) == pytest.approx({0: 9.5})  # (15 + 24) / 2 - 10
    assert worst.values(ABOVE_PRIOR) == pytest.approx({0: 17.5})  # (25 + 30) / 2 - 10


def test_a_higher_control_raises_the_baseline_a_lower_one_leaves_the_reference(store: ResultsStore) -> None:
    # victim 0, two seeds: class mean 12 dB; attacks dlg 30 / 28, ggl 20 / 20 -> worst case (30 + 28) / 2 = 29
    reference(store, 0, NOISE, 12.0, seeds=2)
    for seed, dlg in enumerate([30.0, 28.0]):
        put(store, 0, NOISE, "dlg", dlg, seed=seed)
        put(store, 0, NOISE, "ggl", 20.0, seed=seed)
    # its controls: dlg 16 / 12, ggl 13 / 15 -> per seed the best, 16 and 15, averaged: 15.5 > 12, so the control is
    # the baseline (a mean per attack first would give 14)
    for seed, (dlg, ggl) in enumerate([(16.0, 13.0), (12.0, 15.0)]):
        put(store, 0, NOISE, "dlg", dlg, seed=seed, kind="control")
        put(store, 0, NOISE, "ggl", ggl, seed=seed, kind="control")
    # victim 1, one seed: class mean 14 dB; attacks 26 and 22; controls 10 and 11 -> the reference stays
    reference(store, 1, NOISE, 14.0)
    put(store, 1, NOISE, "dlg", 26.0)
    put(store, 1, NOISE, "ggl", 22.0)
    put(store, 1, NOISE, "dlg", 10.0, kind="control")
    put(store, 1, NOISE, "ggl", 11.0, kind="control")
    report = build_report(store, "s")
    noise = setting(report, "gaussian")
    assert noise.worst.values(ABOVE_PRIOR) == pytest.approx({0: 13.5, 1: 12.0})  # 29 - 15.5, 26 - 14
    assert noise.leakage == pytest.approx(12.75)
    victims = entry(report, "gaussian")["worst_case"]["per_victim"]
    assert [(v["baseline"], v["baseline_psnr"], v[ABOVE_PRIOR]) for v in victims] == [
        ("control", 15.5, 13.5),
        (MEAN, 14.0, 12.0),
    ]
    # the controls never enter the worst case itself, only the baseline
    assert noise.worst.deciding == [("dlg", 3)]
    assert [c.attack_label for c in noise.controls] == ["dlg (control)", "ggl (control)"]
    # the strongest attack on average is still measured against the reference alone: dlg (29 - 12 + 26 - 14) / 2
    assert noise.strongest.attack_label == "dlg" and noise.mean_leakage == pytest.approx(14.5)


def test_a_control_above_the_attacks_gives_a_negative_figure(store: ResultsStore) -> None:
    # class means 12 and 14; attacks 13 and 15 dB; controls 18 and 16 -> baselines 18 and 16: -5 and -1
    for victim, (ref, attack, control) in enumerate([(12.0, 13.0, 18.0), (14.0, 15.0, 16.0)]):
        reference(store, victim, CLIP, ref)
        put(store, victim, CLIP, "dlg", attack)
        put(store, victim, CLIP, "dlg", control, kind="control")
    clip = setting(build_report(store, "s"), "clipping")
    assert clip.worst.values(ABOVE_PRIOR) == pytest.approx({0: -5.0, 1: -1.0}) and clip.leakage == pytest.approx(-3.0)
    assert [v.reference for v in clip.worst.victims] == ["control", "control"]


def liar_store(
    store: ResultsStore, simulation_ok: float, improving: frozenset[tuple[int, str]] = frozenset()
) -> ResultsStore:
    """Two settings of two victims, class means 12 dB everywhere.

    gaussian (honest): dlg (adaptive) 16 / 18 dB, controls 10 -> +4 and +6, leakage +5.
    liar: ggl (adaptive) 14 / 15 dB with controls 25 / 24 (its adaptive controls inflate the baseline); dlg
    (non-adaptive) 22 / 24 dB with controls 11 / 10. With every row: worst case 22 / 24 against baselines 25 / 24
    -> -3 and 0, leakage -1.5, ranked first. Non-adaptive rows only: baselines 12 / 12 -> +10 and +12, leakage +11.
    ``improving``: (victim, attack) pairs of the liar whose rows were still improving when their budget ran out.
    """
    for victim in range(2):
        for defense in (NOISE, LIAR):
            reference(store, victim, defense, 12.0)
        put(store, victim, NOISE, "dlg", [16.0, 18.0][victim], **{SIMULATION_OK: 1.0, MATCH_LOSS: 0.2})
        put(store, victim, NOISE, "dlg", 10.0, kind="control", **{SIMULATION_OK: 1.0})
        ok = {SIMULATION_OK: simulation_ok}
        cut = {attack: {STILL_IMPROVING: float((victim, attack) in improving)} for attack in ("dlg", "ggl")}
        put(store, victim, LIAR, "ggl", [14.0, 15.0][victim], **ok, **cut["ggl"], **{MATCH_LOSS: 0.01})
        put(store, victim, LIAR, "ggl", [25.0, 24.0][victim], kind="control", **ok)
        put(store, victim, LIAR, "dlg", [22.0, 24.0][victim], adaptive=False, **ok, **cut["dlg"], **{MATCH_LOSS: 0.3})
        put(store, victim, LIAR, "dlg", [11.0, 10.0][victim], kind="control", adaptive=False, **ok)
    return store


def test_a_failed_simulation_check_ranks_by_non_adaptive_attacks_only(tmp_path: Path) -> None:
    trusted = build_report(liar_store(ResultsStore(tmp_path / "trusted.sqlite"), 1.0), "s")
    assert [(s.label, s.rank) for s in trusted.defenses] == [("liar", 1), ("gaussian", 2)]
    assert setting(trusted, "liar").leakage == pytest.approx(-1.5)
    assert setting(trusted, "liar").worst.attacks == "all" and markdown_row(trusted, "liar")[FLAGS] == "-"

    report = build_report(liar_store(ResultsStore(tmp_path / "caught.sqlite"), 0.0), "s")
    assert [(s.label, s.rank) for s in report.defenses] == [("gaussian", 1), ("liar", 2)]  # no longer most private
    liar, noise = setting(report, "liar"), setting(report, "gaussian")
    assert liar.simulation_failed and liar.worst.attacks == "non-adaptive"
    assert not noise.simulation_failed and noise.worst.attacks == "all"
    assert noise.leakage == pytest.approx(5.0) and liar.leakage == pytest.approx(11.0)
    assert liar.worst.values(ABOVE_PRIOR) == pytest.approx({0: 10.0, 1: 12.0})
    # the pick too comes from the non-adaptive rows: ggl's lower matching loss no longer counts (22 - 12, 24 - 12)
    assert liar.worst.values(PICK) == pytest.approx({0: 10.0, 1: 12.0})
    # the gaussian setting's dlg is adaptive: the liar's non-adaptive dlg is labelled apart from it
    assert liar.worst.deciding == [("dlg non-adaptive", 2)]
    assert [v.reference for v in liar.worst.victims] == [MEAN, MEAN]  # the adaptive controls (25, 24) left out
    # the per-attack tables still list every attack and control
    assert [p.attack_label for p in liar.pairs] == ["dlg non-adaptive", "ggl"] and len(liar.controls) == 2
    document = entry(report, "liar")
    assert document["simulation_failed"] is True and document["worst_case"]["attacks"] == "non-adaptive"
    assert entry(report, "gaussian")["simulation_failed"] is False
    assert markdown_row(report, "liar")[FLAGS] == "simulation check failed: non-adaptive attacks only"
    assert markdown_row(report, "gaussian")[FLAGS] == "-"
    assert "`simulation check failed`" in leaderboard_markdown(report)  # defined in the page's paragraph


def test_cut_off_searches_are_counted_and_flagged(store: ResultsStore) -> None:
    # three victims (class mean 10 dB): the row giving the worst-case PSNR was still improving for victims 0 and 2;
    # victim 1's still-improving row is not its worst case
    improving = {STILL_IMPROVING: 1.0}
    done = {STILL_IMPROVING: 0.0}
    for victim, (dlg, ggl, dlg_flag, ggl_flag) in enumerate(
        [(20.0, 15.0, improving, done), (20.0, 15.0, done, improving), (14.0, 18.0, done, improving)]
    ):
        reference(store, victim, CLIP, 10.0)
        put(store, victim, CLIP, "dlg", dlg, **dlg_flag)
        put(store, victim, CLIP, "ggl", ggl, **ggl_flag)
    report = build_report(store, "s")
    clip = setting(report, "clipping")
    assert clip.worst.cut_off == 2 and [v.cut_off for v in clip.worst.victims] == [True, False, True]
    document = entry(report, "clipping")["worst_case"]
    assert document["cut_off"] == 2 and [v["cut_off"] for v in document["per_victim"]] == [True, False, True]
    assert markdown_row(report, "clipping")[FLAGS] == "cut off 2/3"


def test_both_flags_together(tmp_path: Path) -> None:
    # victim 0's deciding (non-adaptive) dlg row was still improving; victim 1's adaptive ggl row too, but the
    # failed check leaves it out of the worst case
    store = liar_store(ResultsStore(tmp_path / "results.sqlite"), 0.0, frozenset({(0, "dlg"), (1, "ggl")}))
    report = build_report(store, "s")
    assert setting(report, "liar").worst.cut_off == 1
    flags = markdown_row(report, "liar")[FLAGS]
    assert flags == "simulation check failed: non-adaptive attacks only; cut off 1/2"


def test_intervals_and_bands_remain(tmp_path: Path) -> None:
    report = build_report(liar_store(ResultsStore(tmp_path / "results.sqlite"), 0.0), "s")
    seed = bootstrap_seed("s")
    noise, liar = setting(report, "gaussian"), setting(report, "liar")
    for summary, above, pick in ((noise, [4.0, 6.0], [4.0, 6.0]), (liar, [10.0, 12.0], [10.0, 12.0])):
        for name, values in ((ABOVE_PRIOR, above), (PICK, pick)):
            estimate = summary.worst.figures[name]
            assert estimate.victims == 2
            assert [estimate.low, estimate.high] == pytest.approx(list(bootstrap_interval(values, seed)))
            assert estimate.low < estimate.value < estimate.high
    document = entry(report, "gaussian")["worst_case"]
    assert document[ABOVE_PRIOR]["interval"] is not None and document[PICK]["interval"] is not None
    assert markdown_row(report, "gaussian")[5] == "+5.00 [+4.00, +6.00]"
    # bands: the paired differences (+6, +6) over two victims give the interval [6, 6], which excludes 0
    assert [(s.label, s.worst.band) for s in report.defenses] == [("gaussian", 1), ("liar", 2)]
    assert liar.worst.comparison == {"band_head": "gaussian", "difference_interval": [6.0, 6.0], "new_band": True}
    assert markdown_row(report, "liar")[:3] == ["2", "2", "liar"]


def test_a_failed_check_without_non_adaptive_attacks_leaves_the_setting_unranked(store: ResultsStore) -> None:
    for victim in range(2):
        for defense in (NOISE, LIAR):
            reference(store, victim, defense, 12.0)
        put(store, victim, NOISE, "dlg", 16.0, **{SIMULATION_OK: 1.0})
        put(store, victim, LIAR, "ggl", 13.0, **{SIMULATION_OK: 0.0})
    report = build_report(store, "s")
    # the liar's only attack trusts its simulate: nothing is left to rank it by, so it is listed last, unranked
    assert [(s.label, s.rank) for s in report.defenses] == [("gaussian", 1), ("liar", 0)]
    row = markdown_row(report, "liar")
    assert row[0] == "-" and row[FLAGS] == "simulation check failed: no non-adaptive attack in the suite, unranked"


def test_attacks_that_share_a_label_are_told_apart(store: ResultsStore) -> None:
    reference(store, 0, NOISE, 12.0)
    put(store, 0, NOISE, "ggl", 20.0)
    put(store, 0, NOISE, "ggl", 18.0, adaptive=False)
    put(store, 0, NOISE, "ggl", 13.0, kind="control", adaptive=False)
    report = build_report(store, "s")
    summary = setting(report, "gaussian")
    assert [p.attack_label for p in summary.pairs] == ["ggl", "ggl non-adaptive"]
    assert [p.attack_label for p in summary.controls] == ["ggl non-adaptive (control)"]
