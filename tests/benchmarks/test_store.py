"""Results store: atomic rows, no duplicates, refused files, checksums, claims, failures, read-only reading."""

from __future__ import annotations

import os
import shutil
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from benchmarks.store import (
    FAILED,
    FINISHED,
    HELD,
    SCHEMA_VERSION,
    CellClaims,
    CellRow,
    ClaimOwner,
    FailureRow,
    ResultsStore,
    StoreError,
    VictimRow,
    existing_store,
)


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


# ---------------------------------------------------------------------------------------------------- opening
def test_a_new_store_is_created_whole(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "new" / "results.sqlite") as store:
        assert store.get_meta("schema_version") == SCHEMA_VERSION
    assert sorted(p.name for p in (tmp_path / "new").iterdir()) == ["results.sqlite"]  # no partial file left


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"", "an empty file"),
        (b"this is not a database" * 100, "not an SQLite file"),
    ],
)
def test_an_empty_or_foreign_file_is_refused_and_left_alone(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "results.sqlite"
    path.write_bytes(content)
    for readonly in (False, True):
        with pytest.raises(StoreError, match=message) as error:
            ResultsStore(path, readonly=readonly)
        assert str(path) in str(error.value) and "--out" in str(error.value)
    assert path.read_bytes() == content  # never adopted: no schema written into it


def test_a_foreign_or_newer_sqlite_file_is_refused(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign.sqlite"
    with sqlite3.connect(foreign) as connection:
        connection.execute("CREATE TABLE photos (name TEXT)")
    with pytest.raises(StoreError, match=r"not a ggl-bench results store .*tables: photos"):
        ResultsStore(foreign)
    newer = tmp_path / "newer.sqlite"
    ResultsStore(newer).close()
    with sqlite3.connect(newer) as connection:
        connection.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    with pytest.raises(StoreError, match="schema version 99, newer than this code"):
        ResultsStore(newer)


def test_read_only_store_writes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.put_cell(row())
    os.utime(path, (1_000_000_000, 1_000_000_000))
    before = (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path)))
    with existing_store(tmp_path) as store:
        assert store.count("s") == 1 and store.cells("s")[0].metrics["psnr"] == 12.5
        with pytest.raises(StoreError, match="read-only"):
            store.put_cell(row(victim=1))
    assert (path.read_bytes(), path.stat().st_mtime_ns, sorted(os.listdir(tmp_path))) == before


def test_read_only_store_sees_rows_still_in_the_write_ahead_log(tmp_path: Path) -> None:
    path = tmp_path / "results.sqlite"
    writer = ResultsStore(path)
    writer.put_cell(row())  # committed, still in results.sqlite-wal while the writer is open (as after kill -9)
    with existing_store(tmp_path) as reader:
        assert reader.count("s") == 1
    writer.close()


def test_read_only_store_reads_the_log_a_killed_run_left_without_adding_files(tmp_path: Path) -> None:
    writer = ResultsStore(tmp_path / "run" / "results.sqlite")
    writer._connection.execute("PRAGMA wal_autocheckpoint = 0")
    writer.put_cell(row())
    left = tmp_path / "left"  # what kill -9 leaves: the store and its log, no live index
    left.mkdir()
    for name in ("results.sqlite", "results.sqlite-wal"):
        shutil.copyfile(tmp_path / "run" / name, left / name)
    writer.close()
    before = {p.name: p.read_bytes() for p in left.iterdir()}
    with existing_store(left) as store:
        assert store.count("s") == 1
    assert {p.name: p.read_bytes() for p in left.iterdir()} == before


def test_a_read_only_file_is_refused_for_writing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "results.sqlite"
    ResultsStore(path).close()
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # as for a user without write permission
    with pytest.raises(StoreError, match="is read-only; make it and its folder writable"):
        ResultsStore(path)


# -------------------------------------------------------------------------------------------------- checksums
def tamper(path: Path, sql: str) -> None:
    """Change a stored row behind the store's back; ``IMAGE`` stands for victim 1's image with one byte changed."""
    with sqlite3.connect(path) as connection:
        if "IMAGE" in sql:
            image = bytearray(connection.execute("SELECT images FROM cells WHERE victim = 1").fetchone()[0])
            image[-1] ^= 1
            connection.execute(sql.replace("IMAGE", "?"), (bytes(image),))
        else:
            connection.execute(sql)


@pytest.mark.parametrize(
    ("sql", "table"),
    [
        ("UPDATE cells SET metrics = replace(metrics, '12.5', '13.5') WHERE victim = 1", "cells"),
        ("UPDATE cells SET images = IMAGE WHERE victim = 1", "cells"),
        ("UPDATE cells SET checksum = NULL WHERE victim = 1", "cells"),
        ("UPDATE victims SET labels = '[4]'", "victims"),
        ("UPDATE utility SET metrics = '{\"update_cosine\":0.9}'", "utility"),
        ("UPDATE failures SET reason = 'nothing happened'", "failures"),
    ],
)
def test_a_changed_row_is_named(tmp_path: Path, sql: str, table: str) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.put_cell(row(victim=0))
        store.put_cell(row(victim=1))
        store.put_victim(VictimRow("s", 0, [5], [3], np.ones((1, 1, 4, 4), dtype=np.float32)))
        store.put_utility({"name": "none"}, {"seed": 0}, {"update_cosine": 1.0}, "abc", "test", 1.0)
        store.put_failure(failure(victim=2))
    tamper(path, sql)
    read = {"cells": "cells", "victims": "victims", "utility": "utility_records", "failures": "failures"}[table]
    with ResultsStore(path, readonly=True) as store:
        with pytest.raises(StoreError, match=rf"the {table} row \(.*\) (does not match its checksum|has no checksum)"):
            getattr(store, read)()


def test_legacy_store_is_read_unverified_then_gets_checksums(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "results.sqlite"
    with ResultsStore(path) as store:
        store.put_cell(row())
    with sqlite3.connect(path) as connection:  # what the code before checksums wrote
        connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        for table in ("cells", "victims", "utility"):
            connection.execute(f"ALTER TABLE {table} DROP COLUMN checksum")
        connection.execute("DROP TABLE claims")
        connection.execute("DROP TABLE failures")
    with existing_store(tmp_path) as store:
        assert store.count("s") == 1 and store.cells("s")[0].metrics["psnr"] == 12.5 and store.failures() == []
    assert "written before row checksums" in capsys.readouterr().err
    with ResultsStore(path) as store:  # a writer brings it to schema 2
        assert store.get_meta("schema_version") == SCHEMA_VERSION and store.put_cell(row(victim=1))
    assert "checksums added to its 1 rows" in capsys.readouterr().err
    tamper(path, "UPDATE cells SET seconds = 9.0 WHERE victim = 0")
    with existing_store(tmp_path) as store, pytest.raises(StoreError, match="does not match its checksum"):
        store.cells()


# ----------------------------------------------------------------------------------------- claims and failures
def failure(victim: int = 0) -> FailureRow:
    return FailureRow(
        "s", victim, {"name": "gaussian", "sigma": 0.01}, {"name": "idlg"}, 0, "attack", "g", "idlg", "abc", "t", "boom"
    )


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_claims_keep_a_cell_to_one_live_run(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        me, other = ClaimOwner.new(), ClaimOwner("other", os.getpid(), socket.gethostname())
        key = row().key
        assert store.take_claim("s", key, other) is None
        assert store.take_claim("s", key, me) == (HELD, f"pid {os.getpid()} on {socket.gethostname()}")
        assert store.take_claim("s", key, other) is None  # its own claim again
        store.put_cell(row())  # the row releases the claim
        assert store.claims() == [] and store.take_claim("s", key, me) == (FINISHED, "")


def test_claims_of_dead_or_silent_owners_are_taken_over(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        me = ClaimOwner.new()
        dead = ClaimOwner("killed", dead_pid(), socket.gethostname())
        assert store.take_claim("s", row(victim=0).key, dead) is None
        assert store.take_claim("s", row(victim=0).key, me) is None  # its pid is gone: kill -9
        elsewhere = ClaimOwner("remote", 1, "another-host")
        assert store.take_claim("s", row(victim=1).key, elsewhere) is None
        assert store.take_claim("s", row(victim=1).key, me, ttl=60.0)[0] == HELD  # beating recently
        time.sleep(0.05)
        assert store.take_claim("s", row(victim=1).key, me, ttl=0.01) is None  # no heartbeat for ttl seconds
        assert {c[1] for c in store.claims()} == {me.id}
        store.release_claims(me)
        assert store.claims() == []


def test_heartbeat_keeps_claims_fresh(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        with CellClaims(store, "s", ttl=60.0, beat=0.05) as claims:
            assert claims.take(row().key) is None
            first = store.claims()[0][4]
            time.sleep(0.3)
            assert store.claims()[0][4] > first
        assert store.claims() == []  # leaving releases what is left


def test_failures_are_recorded_replaced_and_cleared(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        owner = ClaimOwner.new()
        store.take_claim("s", failure().key, owner)
        store.put_failure(failure(), owner)
        assert [f.reason for f in store.failures("s")] == ["boom"] and store.claims() == []
        store.put_failure(FailureRow(**{**failure().__dict__, "reason": "again"}))
        assert [f.reason for f in store.failures("s")] == ["again"]
        assert store.take_claim("s", failure().key, owner, retry_failed=False) == (FAILED, "again")
        done = CellRow(**{**row().__dict__, "defense": failure().defense, "attack": failure().attack})
        assert done.key == failure().key
        store.put_cell(done)
        assert store.failures("s") == []
        store.put_failure(failure())  # a late failure of a finished cell is not recorded
        assert store.failures("s") == []


def test_utility_rows_by_options(tmp_path: Path) -> None:
    with ResultsStore(tmp_path / "r.sqlite") as store:
        spec = {"name": "gaussian", "sigma": 0.1}
        store.put_utility(spec, {"seed": 0}, {"update_cosine": 0.5}, "abc", "test", 2.0)
        store.put_utility(spec, {"seed": 0, "rounds": 9}, {"update_cosine": 0.9}, "def", "test", 2.0)
        assert store.utilities({"seed": 0, "rounds": 9})['{"name":"gaussian","sigma":0.1}']["metrics"] == {
            "update_cosine": 0.9
        }
        assert store.utilities({"seed": 1}) == {}


def test_a_second_store_on_an_open_file_keeps_the_first_ones_log(tmp_path: Path) -> None:
    """Reopening a store file in a process that has it open must not strip the first connection's locks (POSIX
    drops a process's locks when any descriptor of the file closes): another process closing its connection would
    then delete the live log, and every row written since would be lost."""
    path = tmp_path / "results.sqlite"
    first = ResultsStore(path)
    first.set_meta("before", "1")
    ResultsStore(path).close()
    code = f"from benchmarks.store import ResultsStore; ResultsStore({str(path)!r}).close()"
    root = Path(__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    assert Path(f"{path}-wal").exists() and Path(f"{path}-shm").exists()
    first.set_meta("after", "1")
    first.close()
    with ResultsStore(path) as reopened:
        assert (reopened.get_meta("before"), reopened.get_meta("after")) == ("1", "1")
