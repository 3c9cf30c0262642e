"""The cell vocabulary: expansion covers the grid once, sharding deals every cell once, seeds and keys are stable."""

from __future__ import annotations

from collections import Counter

import pytest

from benchmarks.cells import Cell, code_version, expand_cells, seed_from, shard
from benchmarks.config import build_suite

SUITE = {
    "name": "tiny",
    "prior": None,
    "victims": {"count": 2},
    "seeds": [0, 1],
    "references": {"class_mean": True},
    "attacks": [{"name": "idlg", "iterations": 2}, {"name": "dlg", "iterations": 1}],
    "defenses": [{"name": "none"}, {"name": "gaussian", "sigma": [0.01, 0.1]}],
}


def test_expand_and_shard_cover_every_cell_once() -> None:
    cells = expand_cells(build_suite(SUITE, "tiny.yaml"))
    # victims x seeds x (1 reference + defenses x (1 label reference + attacks + their controls))
    assert len(cells) == 2 * 2 * (1 + 3 * (1 + 2 * 2))
    assert Counter(cell.kind for cell in cells) == {"reference": 2 * 2 * (1 + 3), "attack": 24, "control": 24}
    without = expand_cells(build_suite({**SUITE, "controls": False}, "tiny.yaml"))
    assert [c for c in cells if c.kind != "control"] == without
    assert len({cell.key() for cell in cells}) == len(cells)
    shares = [shard(cells, rank, 3) for rank in range(3)]
    assert Counter(cell.key() for share in shares for cell in share) == Counter(cell.key() for cell in cells)
    assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError):
        shard(cells, 3, 3)
    with pytest.raises(ValueError):
        shard(cells, 0, 0)


def test_cells_are_victim_major_with_references_first() -> None:
    cells = expand_cells(build_suite(SUITE, "tiny.yaml"))
    assert [c.victim for c in cells] == sorted(c.victim for c in cells)
    first: Cell = cells[0]
    assert first.kind == "reference" and first.defense is None and first.defense_json == "null"
    assert first.describe() == "victim 0 | - | prior only: class mean | seed 0"
    label_reference = cells[1]
    assert label_reference.kind == "reference" and label_reference.defense_json == '{"name":"none"}'
    attack = cells[2]
    assert attack.kind == "attack" and attack.key() == (0, '{"name":"none"}', attack.attack_json, 0)
    assert '"adaptive":true' in attack.attack_json
    control = cells[4]
    assert control.kind == "control" and control.attack == attack.attack and control.seed == attack.seed
    assert control.attack_json == '{"adaptive":true,"control":"same-class-other-image","iterations":2,"name":"idlg"}'
    assert control.describe() == "victim 0 | none | iDLG (control) | seed 0"


def test_seed_from_is_stable() -> None:
    assert seed_from("all", 0, {"name": "gaussian"}, 0) == seed_from("all", 0, {"name": "gaussian"}, 0)
    assert seed_from("all", 0, {"name": "gaussian"}, 0) != seed_from("all", 1, {"name": "gaussian"}, 0)
    # canonical JSON: key order does not matter; the value is a known 63-bit number (same on every machine)
    assert seed_from({"a": 1, "b": 2}) == seed_from({"b": 2, "a": 1})
    assert seed_from("all") == 858514341719384370


def test_code_version_names_the_checkout_or_the_package() -> None:
    assert code_version().startswith(("git:", "ggl-bench "))


def test_code_version_is_dirty_only_for_uncommitted_code(monkeypatch: pytest.MonkeyPatch) -> None:
    import benchmarks.cells

    calls: list[tuple[str, ...]] = []

    def fake_git(root: object, *arguments: str) -> str:
        calls.append(arguments)
        return {"describe": "abc1234", "status": status}[arguments[0]]

    monkeypatch.setattr(benchmarks.cells, "_git", fake_git)
    status = ""  # a rewritten report folder: git status over the code paths sees nothing
    assert code_version() == "git:abc1234"
    status = " M ggl/metrics.py"
    assert code_version() == "git:abc1234-dirty"
    assert calls[-1][-len(benchmarks.cells.CODE_PATHS) :] == benchmarks.cells.CODE_PATHS
