"""Controls on real tiny cells: one per attack cell, built from another image of the inferred class, carrying
nothing about the victim; a defense whose ``simulate`` lies is caught and ranked by its non-adaptive attacks."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from benchmarks.cells import MATCH_LOSS, SIMULATION_OK, STILL_IMPROVING, Cell, expand_cells
from benchmarks.config import CONTROL, SuiteConfig, build_suite
from benchmarks.harness import Harness
from benchmarks.report.aggregate import build_report
from benchmarks.report.tables import leaderboard_json, leaderboard_markdown
from benchmarks.store import CellRow, ResultsStore
from ggl import plugins as loader
from ggl.fl import infer_labels, shared_update
from ggl.io import canonical_json

LIAR = "liar_defense:ScaleLiar"
LIAR_PLUGIN = '''
from ggl.defenses import Defense


class ScaleLiar(Defense):
    """Sends the clean update but claims to scale it by 1e-3."""

    name = "scale-liar"

    def apply(self, update, **_):
        return list(update.gradients)

    def simulate(self, trial_gradients, received):
        return [1e-3 * t for t in trial_gradients]
'''
NON_ADAPTIVE = "iDLG non-adaptive"
SUITE: dict[str, Any] = {
    "name": "controls",
    "datamodule": {"name": "embedded"},
    "model": {"name": "lenet", "seed": 0},
    "prior": None,
    "victims": {"count": 2, "seed": 0, "batch_size": 1},
    "seeds": [0],
    "references": {"class_mean": True},
    "utility": {"enabled": False},
    "attacks": [
        {"name": "idlg", "iterations": 2, "max_iter": 3},
        {"name": "idlg", "iterations": 2, "max_iter": 3, "adaptive": False, "label": NON_ADAPTIVE},
    ],
    "defenses": [{"name": "none"}, {"name": "gaussian", "sigma": 0.01}, {"name": LIAR}],
}


def quiet(suite: SuiteConfig, store: ResultsStore) -> Harness:
    return Harness(suite, store, device="cpu", progress=False, log=lambda message: None)


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    """The tiny suite computed once: two victims, none, gaussian and a lying plugin defense, iDLG both ways."""
    folder = tmp_path_factory.mktemp("controls")
    plugin = folder / "liar_defense.py"
    plugin.write_text(LIAR_PLUGIN)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(loader, "_PLUGINS", {})  # a fresh plugin table, dropped afterwards
        patch.setitem(sys.modules, loader.PLUGIN_MODULE_PREFIX + "liar_defense", None)  # removed afterwards
        assert loader.load_plugins([plugin]) == ["liar_defense"]
        harness = quiet(build_suite(SUITE, "controls.yaml"), ResultsStore(folder / "results.sqlite"))
        summary = harness.run()
        assert not summary.failed and summary.computed == len(expand_cells(harness.suite))
        yield harness
        harness.store.close()


def by_kind(rows: list[CellRow], kind: str) -> list[CellRow]:
    return [row for row in rows if row.kind == kind]


def cell_of(harness: Harness, row: CellRow) -> Cell:
    """The cell a stored row comes from."""
    [cell] = [cell for cell in expand_cells(harness.suite) if cell.key() == row.key]
    return cell


def dataset_indices(harness: Harness, image: torch.Tensor) -> list[int]:
    """Every index of the victims split whose image is ``image`` (C, H, W)."""
    images = harness.datamodule().victims.tensors[0]
    return [index for index in range(len(images)) if torch.equal(images[index], image)]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a - b) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def test_every_attack_cell_has_its_control(run: Harness) -> None:
    rows = run.store.cells("controls")
    attacks, controls = by_kind(rows, "attack"), by_kind(rows, "control")
    assert len(attacks) == 2 * 3 * 2 and len(controls) == len(attacks)  # victims x settings x attacks
    keyed = {row.key: row for row in controls}
    for attack in attacks:
        marked = canonical_json({**attack.attack, "control": CONTROL})
        control = keyed[(attack.victim, attack.defense_json, marked, attack.seed)]  # same victim, setting, seed
        assert control.kind == "control" and control.attack == {**attack.attack, "control": CONTROL}
        # the same attack and budget: only the control marker differs
        assert {k: v for k, v in control.attack.items() if k != "control"} == attack.attack
        assert control.attack["iterations"] == 2 and control.attack["max_iter"] == 3
        assert control.attack_label == f"{attack.attack_label} (control)"
        assert control.defense_label == attack.defense_label
        # the control's batch has the class inferred from the defended update, so iDLG reads off the same label
        assert control.labels == attack.labels
        assert {MATCH_LOSS, SIMULATION_OK, STILL_IMPROVING} <= set(control.metrics)
        assert 0.0 <= control.metrics[MATCH_LOSS] <= 2.0 and control.metrics[STILL_IMPROVING] in (0.0, 1.0)


def test_the_control_image_is_another_image_of_the_inferred_class(run: Harness, tmp_path: Path) -> None:
    victims = run._victim_indices()
    split = run.datamodule().victims.tensors
    fresh = quiet(run.suite, ResultsStore(tmp_path / "fresh.sqlite"))  # another run: the same draws
    for row in by_kind(run.store.cells("controls"), "control"):
        cell = cell_of(run, row)
        victim = run.victim(cell.victim)
        setting = run._setting(cell, victim)
        inferred = infer_labels(setting.defended, run.model()).cpu()
        assert torch.equal(setting.labels, inferred)
        assert inferred.tolist() == victim.labels.tolist()  # these defenses keep the label readable
        images = run._control_images(cell, inferred)
        assert images.shape == victim.images.shape
        [index] = dataset_indices(run, images[0])
        assert index not in victims and int(split[1][index]) == int(inferred[0])
        assert not torch.equal(images, victim.images)
        assert torch.equal(run._control_images(cell, inferred), images)  # deterministic
        assert torch.equal(fresh._control_images(cell, inferred), images)
    fresh.store.close()


def test_the_control_update_is_the_defended_update_of_the_control_image(run: Harness) -> None:
    normalize = run.datamodule().normalization.normalize
    for row in by_kind(run.store.cells("controls"), "control"):
        cell = cell_of(run, row)
        victim = run.victim(cell.victim)
        setting = run._setting(cell, victim)
        defended, control = setting.defended, run._control(cell, setting)
        assert not torch.allclose(control.flat(), defended.flat())
        labels = infer_labels(defended, run.model()).cpu()
        clean = shared_update(run.model(), normalize(run._control_images(cell, labels)), labels)
        if cell.defense.name in ("none", LIAR):  # both send the clean update of the control image
            assert torch.equal(control.flat(), clean.flat())
        else:  # gaussian: that update plus noise of sigma 0.01 (drawn from the control's own seed)
            noise = (control.flat() - clean.flat()).std()
            assert 0.008 < float(noise) < 0.012


def test_a_lying_simulation_is_flagged_and_ranked_by_non_adaptive_attacks(run: Harness) -> None:
    rows = [row for row in run.store.cells("controls") if row.kind != "reference"]
    for row in rows:
        assert row.metrics[SIMULATION_OK] == (0.0 if row.defense["name"] == LIAR else 1.0), row.defense_label
    report = build_report(run.store, run.suite)
    summaries = {summary.label: summary for summary in report.defenses}
    assert summaries[LIAR].simulation_failed and summaries[LIAR].worst.attacks == "non-adaptive"
    assert [summaries[s].worst.attacks for s in ("none", "gaussian(sigma=0.01)")] == ["all", "all"]
    entry = next(e for e in leaderboard_json(report)["leaderboard"] if e["defense"] == LIAR)
    assert entry["simulation_failed"] is True and entry["worst_case"]["attacks"] == "non-adaptive"
    assert [a["attack"] for a in entry["attacks"]] == ["iDLG", NON_ADAPTIVE]  # both still listed per attack
    # its worst case by hand from the non-adaptive rows: PSNR minus max(class mean, non-adaptive control)
    liar = [row for row in rows if row.defense["name"] == LIAR and not row.attack["adaptive"]]
    references = [r for r in run.store.cells("controls") if r.kind == "reference" and r.defense == {"name": LIAR}]
    for victim in entry["worst_case"]["per_victim"]:
        attack = next(r for r in liar if r.kind == "attack" and r.victim == victim["victim"])
        control = next(r for r in liar if r.kind == "control" and r.victim == victim["victim"])
        reference = next(r for r in references if r.victim == victim["victim"])
        baseline = max(reference.metrics["psnr"], control.metrics["psnr"])
        assert victim["baseline_psnr"] == pytest.approx(baseline)
        assert victim["psnr_above_baseline"] == pytest.approx(attack.metrics["psnr"] - baseline)
        assert victim["pick_above_baseline"] == pytest.approx(attack.metrics["psnr"] - baseline)  # one row to pick
        assert [s["metrics"]["psnr"]["attack"] for s in victim["seeds"]] == [NON_ADAPTIVE]
    assert entry["worst_case"]["deciding_attacks"] == [{"attack": NON_ADAPTIVE, "count": 2}]
    line = next(line for line in leaderboard_markdown(report).splitlines() if f"| {LIAR} |" in line)
    assert "simulation check failed: non-adaptive attacks only" in line
    honest = next(line for line in leaderboard_markdown(report).splitlines() if "| none |" in line)
    assert "simulation check failed" not in honest


def test_the_control_carries_nothing_about_the_victim(tmp_path: Path) -> None:
    suite = {
        **SUITE,
        "attacks": [{"name": "idlg", "iterations": 20, "max_iter": 20}],
        "defenses": [{"name": "none"}],
    }
    harness = quiet(build_suite(suite, "controls.yaml"), ResultsStore(tmp_path / "results.sqlite"))
    assert not harness.run().failed
    rows = harness.store.cells("controls")
    references = {r.victim: r.metrics["psnr"] for r in rows if r.kind == "reference" and r.defense is not None}
    for victim in range(2):
        [attack] = [r for r in by_kind(rows, "attack") if r.victim == victim]
        [control] = [r for r in by_kind(rows, "control") if r.victim == victim]
        # measured: the victim rebuilt at 28.6 and 39.1 dB from its own update (24.8 dB for the second on another
        # host of the same kind: 20 L-BFGS steps follow the CPU's float kernels); from the control update 9.6 and
        # 13.8 dB against the victim, below its class mean (13.8 and 16.6 dB)
        assert attack.metrics["psnr"] > 22.0 and control.metrics["psnr"] < 15.0
        assert control.metrics["psnr"] < references[victim] and attack.metrics["psnr"] - control.metrics["psnr"] > 8.0
        # the control update itself is informative: iDLG rebuilds the control image from it (measured 32.4, 41.6 dB)
        cell = cell_of(harness, control)
        image = harness._control_images(cell, torch.tensor(control.labels))
        assert psnr(torch.as_tensor(control.images), image) > 24.0
    report = leaderboard_json(build_report(harness.store, harness.suite))
    [none] = report["leaderboard"]
    for victim in none["worst_case"]["per_victim"]:  # the controls stay below the class mean: it is the baseline
        assert victim["baseline"] == "prior only: class mean"
        assert victim["baseline_psnr"] == pytest.approx(references[victim["victim"]])
    harness.store.close()
