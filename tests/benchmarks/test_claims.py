"""GGL's claims: the suite validates, and the query over the store aggregates hand-made rows as documented."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from benchmarks.cells import expand_cells
from benchmarks.claims import HEADER, attack_key, defense_key, main, results_from_store, runs_from_rows, setting, table
from benchmarks.config import load_suite
from benchmarks.store import CellRow, ResultsStore, VictimRow

ROOT = Path(__file__).resolve().parents[2]
IMAGE = np.zeros((1, 1, 2, 2), dtype=np.float32)
GAUSSIAN = {"name": "gaussian", "sigma": 0.1}
CMA = {"name": "ggl", "prior": "fashion-mnist-wgan", "search": "cma", "budget": 1000, "population": 50}
IG = {"name": "inverting_gradients", "iterations": 1000}


def row(victim: int, attack: dict[str, Any], mse: float, defense: dict | None = GAUSSIAN, **extra: Any) -> CellRow:
    psnr = -10 * np.log10(mse)
    return CellRow(
        suite="ggl-claims",
        victim=victim,
        defense=defense,
        attack=attack,
        seed=extra.get("seed", 0),
        kind="reference" if defense is None else "attack",
        defense_label="-",
        attack_label="-",
        config_hash="c",
        code_version="v",
        seconds=extra.get("seconds", 2.0),
        evaluations=1000,
        metrics={"mse": mse, "psnr": float(psnr), "ssim": 1 - 10 * mse, "lpips": 0.5},
        labels=[3],
        images=IMAGE,
    )


def hand_made() -> tuple[list[CellRow], list[VictimRow]]:
    victims = [VictimRow("ggl-claims", 0, [44], [3], IMAGE), VictimRow("ggl-claims", 1, [37], [3], IMAGE)]
    cma, ig = {**CMA, "adaptive": False}, {**IG, "adaptive": False}
    rows = [
        row(0, {"name": "reference:class-mean", "adaptive": False}, 0.04, defense=None, seconds=0.0),
        row(1, {"name": "reference:class-mean", "adaptive": False}, 0.06, defense=None, seconds=0.0),
        row(0, cma, 0.01, seconds=3.0),
        row(1, cma, 0.03, seconds=5.0),
        row(0, ig, 0.02, seconds=10.0),
        row(1, ig, 0.02, seconds=20.0),
        row(1, ig, 0.5, seed=1),  # another seed: not read
    ]
    return rows, victims


def test_the_suite_is_the_claims_grid() -> None:
    suite = load_suite("ggl-claims")
    assert suite.model.name == "convnet" and suite.victims.count == 8 and suite.victims.batch_size == 1
    assert sorted((attack_key(a.spec), a.adaptive) for a in suite.attacks) == sorted(
        (key, flag) for key in ("ggl-cma", "ig", "ggl-adam", "ggl-bo") for flag in (False, True)
    )
    assert all(a.spec.get("budget", a.spec.get("iterations")) == 1000 for a in suite.attacks)
    assert [defense_key(d.spec) for d in suite.defenses] == ["gaussian-0.01", "gaussian-0.1", "sparsification-0.9"]
    assert any(r.name == "reference:class-mean" for r in suite.reference_attacks())
    attack_cells = [c for c in expand_cells(suite) if c.kind == "attack"]
    assert len(attack_cells) == 8 * 3 * 8
    assert setting(suite.to_dict()) == {
        "victims": 8,
        "victim_seed": 0,
        "victim": "convnet",
        "seed": 0,
        "prior": "fashion-mnist-wgan",
        "budget": 1000,
        "population": 50,
    }


def test_runs_are_keyed_as_the_claims_experiment() -> None:
    rows, victims = hand_made()
    runs = runs_from_rows(rows, victims)
    assert set(runs) == {
        "ggl-cma|gaussian-0.1|plain|44",
        "ggl-cma|gaussian-0.1|plain|37",
        "ig|gaussian-0.1|plain|44",
        "ig|gaussian-0.1|plain|37",
        "reference|gaussian-0.1|plain|44",
        "reference|gaussian-0.1|plain|37",
    }
    assert runs["ig|gaussian-0.1|plain|37"] == {
        "metrics": {"mse": 0.02, "psnr": pytest.approx(16.9897, abs=1e-4), "ssim": pytest.approx(0.8)},
        "label_correct": True,
        "evaluations": 1000,
        "seconds": 20.0,
    }
    assert "seconds" not in runs["reference|gaussian-0.1|plain|44"]


def test_table_counts_wins_and_pairs_means_over_common_victims() -> None:
    rows, victims = hand_made()
    results = {"config": {"victims": 2, "budget": 1000}, "runs": runs_from_rows(rows, victims)}
    text = table(results)
    claim1 = text.split("### Claim 2")[0].splitlines()
    plain = next(line for line in claim1 if line.startswith("| gaussian-0.1 | no |"))
    adaptive = next(line for line in claim1 if line.startswith("| gaussian-0.1 | yes (identity simulation"))
    # reference: mean MSE 0.05, SSIM 0.5; GGL-CMA: 0.02 / 0.8 / mean of 20 and 15.2 dB; IG: 0.02 / 0.8 / 17 dB
    assert "| 0.0500 / 0.500 / 13.1 (n=2) | 0.0200 / 0.800 / 17.6 (n=2) | 0.0200 / 0.800 / 17.0 (n=2) |" in plain
    # CMA wins on victim 44 (0.01 < 0.02), loses on 37 (0.03 > 0.02); SSIM likewise
    assert plain.endswith("| 1/2 (0.0200 vs 0.0200), 1/2 (0.800 vs 0.800) |")
    # noise, adaptive: no adaptive rows stored, so the non-adaptive ones stand in (identity simulation)
    assert adaptive.split(" | ")[2:] == plain.split(" | ")[2:]
    assert "| sparsification-0.9 | yes | not run | not run | not run | -, - |" in text
    assert "Mean wall time per reconstruction (shared 2-core CPU): GGL-CMA 4 s, Inverting Gradients 15 s." in text


def test_adaptive_noise_rows_are_used_when_stored() -> None:
    rows, victims = hand_made()
    rows.append(row(0, {**CMA, "adaptive": True}, 0.001))
    text = table({"runs": runs_from_rows(rows, victims)})
    adaptive = next(line for line in text.splitlines() if line.startswith("| gaussian-0.1 | yes"))
    assert "0.0010 / 0.990 / 30.0 (n=1)" in adaptive
    assert adaptive.endswith("| 1/1 (0.0010 vs 0.0200), 1/1 (0.990 vs 0.800) |")


def test_the_published_table_is_the_query_of_its_raw_results() -> None:
    published = (ROOT / "docs" / "ggl_claims.md").read_text()
    raw = json.loads((ROOT / "docs" / "ggl_claims.json").read_text())
    assert published.startswith(HEADER) and published.endswith(table(raw))


def test_command_line_reads_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows, victims = hand_made()
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for victim in victims:
            store.put_victim(victim)
        for cell in rows:
            store.put_cell(cell)
        results = results_from_store(store)
    assert results["config"]["victim"] == "convnet"  # no suite in the store's meta: the shipped suite's setting
    assert (results["config"]["config_hashes"], results["config"]["code_versions"]) == (["c"], ["v"])
    out, data = tmp_path / "claims.md", tmp_path / "claims.json"
    assert main(["--store", str(tmp_path), "--table", str(out), "--json", str(data)]) == 0
    assert out.read_text() == HEADER + table(results)
    assert json.loads(data.read_text())["runs"].keys() == results["runs"].keys()
    assert main(["--store", str(tmp_path / "nothing")]) == 2
    assert "no results store" in capsys.readouterr().err
    assert main(["--store", str(tmp_path), "--seed", "7"]) == 2
