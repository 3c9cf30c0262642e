"""Results store: atomic rows, no duplicates, clear errors for damaged stores and changed setups."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from benchmarks.store import CellRow, ResultsStore, StoreError, VictimRow, existing_store


def row(victim: int = 0, attack: str = "idlg", psnr: float = 12.5) -> CellRow:
    return CellRow(
        suite="s",
        victim=victim,
        defense={"name": "gaussian", "sigma": 0.01},
        attack={"name": attack},
        seed=0,
        kind="attack",
        defense_label="gaussian(sigma=0.01)",
        attack_label=attack,
        config_hash="abc",
        code_version="test",
        seconds=1.5,
        evaluations=7,
        metrics={"psnr": psnr, "mse": 0.1},
        labels=[3],
        images=np.linspace(0, 1, 16, dtype=np.float32).reshape(1, 1, 4, 4),
    )


def test_round_trip_and_no_duplicates(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        assert store.put_cell(row())
        assert not store.put_cell(row(psnr=99.0))  # the first result of a key is kept
        assert store.put_cell(row(victim=1))
        store.put_victim(VictimRow("s", 0, [5], [3], np.ones((1, 1, 4, 4), dtype=np.float32)))
        cells = store.cells("s")
    assert [c.victim for c in cells] == [0, 1]
    assert cells[0].metrics == {"psnr": 12.5, "mse": 0.1}
    np.testing.assert_array_equal(cells[0].images, row().images)
    with ResultsStore(tmp_path / "r.sqlite") as again:  # committed rows survive closing
        assert again.count("s") == 2
        assert again.finished_keys("s") == {
            (0, cells[0].defense_json, '{"name":"idlg"}', 0),
            (1, cells[0].defense_json, '{"name":"idlg"}', 0),
        }
        assert again.victims("s")[0].indices == [5]


def test_damaged_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(StoreError, match="damaged"):
        ResultsStore(path)
    with pytest.raises(StoreError, match="no results store"):
        existing_store(tmp_path / "elsewhere")


def test_truncated_store_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        for victim in range(50):
            store.put_cell(row(victim=victim))
        store._connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(StoreError, match="damaged"):
        with ResultsStore(path) as store:
            store.cells("s")


def test_context_must_match(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.claim_context("s", {"model": "lenet", "victims": {"batch_size": 1}})
        store.claim_context("s", {"model": "lenet", "victims": {"batch_size": 1}})
        with pytest.raises(StoreError, match="victims"):
            store.claim_context("s", {"model": "lenet", "victims": {"batch_size": 4}})


def test_utility_cache(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        spec = {"name": "gaussian", "sigma": 0.1}
        assert store.utility(spec, {"seed": 0}) is None
        store.put_utility(spec, {"seed": 0}, {"update_cosine": 0.5}, "abc", "test", 2.0)
        assert store.utility(spec, {"seed": 0})["metrics"] == {"update_cosine": 0.5}
        assert store.utility(spec, {"seed": 1}) is None
