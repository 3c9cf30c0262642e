"""Hostile and malformed results stores, through the ``benchmarks.run`` command.

Every case starts from a good store of a tiny suite (two victims, three defense settings, two attacks that are
stand-ins without Lightning) and breaks it one way. A store that cannot be trusted is refused: exit 2, a message
naming the file (and the row, for a changed one) and the fix, no traceback, and the store file left exactly as it
was, so no row is lost. The others are handled: a deleted row is recomputed with the same numbers, a log left by a
killed run is read, stale claims are taken over, rows of another configuration are left out of the report but
kept, a run in which every cell fails still writes its report. Two concurrent runs and ``kill -9`` are in the slow
set (real processes).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

import benchmarks.harness
from benchmarks.cells import expand_cells
from benchmarks.config import load_suite
from benchmarks.run import main
from benchmarks.store import STORE_NAME

ROOT = Path(__file__).resolve().parents[2]
TINY = [
    "--set",
    "victims.count=2",
    "--set",
    "prior=null",
    "--set",
    "utility.enabled=false",
    "--set",
    "attacks=[{name: idlg, iterations: 2, max_iter: 3}, {name: dlg, iterations: 1, max_iter: 3}]",
    "--set",
    "defenses=[{name: none}, {name: gaussian, sigma: [0.01, 0.1]}]",
]
OPTIONS = ["--no-progress", "--no-tensorboard"]
TOTAL = len(expand_cells(load_suite("smoke", TINY[1::2])))
CELL_COLUMNS = "suite, victim, defense, attack, seed"


class TinyAttack:
    """A stand-in for an attack: a grey image, deterministic, without Lightning (so a case takes a second)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail

    def reconstruct(self, target: Any, **options: Any) -> Any:
        from ggl.attacks import Reconstruction

        if self.fail:
            raise RuntimeError("attack exploded")
        return Reconstruction(torch.full((1, *target.image_shape), 0.5), torch.zeros(1, dtype=torch.long), [], 1, 0.0)


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with the good store of the tiny suite (every cell finished)."""
    out = tmp_path_factory.mktemp("good")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(benchmarks.harness, "make_attack", lambda **params: TinyAttack())
        assert main(["--suite", "smoke", "--out", str(out), *OPTIONS, *TINY]) == 0
    return out


@pytest.fixture
def out(good: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A copy of the good store to break; the stand-in attacks stay in place for the case's command."""
    monkeypatch.setattr(benchmarks.harness, "make_attack", lambda **params: TinyAttack())
    folder = tmp_path / "out"
    folder.mkdir()
    shutil.copyfile(good / STORE_NAME, folder / STORE_NAME)
    return folder


def raw_rows(path: Path) -> list[tuple]:
    """Every cell row as SQLite holds it (key and metrics), read past the store's own checks from a copy of the file
    and its log (so reading adds nothing beside the store)."""
    with tempfile.TemporaryDirectory() as scratch:
        copy = Path(scratch) / path.name
        shutil.copyfile(path, copy)
        if Path(f"{path}-wal").is_file():
            shutil.copyfile(f"{path}-wal", f"{copy}-wal")
        connection = sqlite3.connect(copy)
        try:
            return sorted(connection.execute(f"SELECT {CELL_COLUMNS}, metrics FROM cells").fetchall())
        finally:
            connection.close()


def fingerprint(folder: Path) -> dict[str, str]:
    """SHA-256 of every file in ``folder`` (not below it)."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir() if p.is_file()}


@contextmanager
def edit(path: Path) -> Iterator[sqlite3.Connection]:
    """A plain SQLite connection to ``path``, committed and closed on leaving (so no log is left open)."""
    connection = sqlite3.connect(path)
    try:
        with connection:
            yield connection
    finally:
        connection.close()


def sql(statement: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def prepare(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with edit(out / STORE_NAME) as connection:
            connection.execute(statement)

    return prepare


def replace_store(content: bytes | None) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def prepare(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        (out / STORE_NAME).unlink()
        if content is not None:
            (out / STORE_NAME).write_bytes(content)

    return prepare


def foreign_database(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (out / STORE_NAME).unlink()
    with edit(out / STORE_NAME) as connection:
        connection.execute("CREATE TABLE photos (name TEXT, data BLOB)")
        connection.execute("INSERT INTO photos VALUES ('cat', x'00ff')")


def database_without_tables(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (out / STORE_NAME).unlink()
    with edit(out / STORE_NAME) as connection:
        connection.execute("PRAGMA user_version = 7")


def change_a_metric_digit(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with edit(out / STORE_NAME) as connection:
        rowid, metrics = connection.execute("SELECT rowid, metrics FROM cells ORDER BY rowid LIMIT 1").fetchone()
        index = max(i for i, c in enumerate(metrics) if c.isdigit())
        changed = metrics[:index] + str((int(metrics[index]) + 1) % 10) + metrics[index + 1 :]
        connection.execute("UPDATE cells SET metrics = ? WHERE rowid = ?", (changed, rowid))


def change_a_byte(table: str) -> Callable[[Path, pytest.MonkeyPatch], None]:
    def prepare(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        with edit(out / STORE_NAME) as connection:
            rowid, image = connection.execute(f"SELECT rowid, images FROM {table} ORDER BY rowid LIMIT 1").fetchone()
            changed = bytearray(image)
            changed[-1] ^= 0x01
            connection.execute(f"UPDATE {table} SET images = ? WHERE rowid = ?", (bytes(changed), rowid))

    return prepare


def truncate(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = (out / STORE_NAME).read_bytes()
    (out / STORE_NAME).write_bytes(data[: len(data) // 2])


def folder_in_its_place(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (out / STORE_NAME).unlink()
    (out / STORE_NAME).mkdir()


def link_to_dev_null(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (out / STORE_NAME).unlink()
    (out / STORE_NAME).symlink_to("/dev/null")


def read_only(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (out / STORE_NAME).chmod(0o444)
    monkeypatch.setattr(os, "access", lambda *args, **kwargs: False)  # root may write anyway: seen as a user


def nothing(out: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pass


ROW_WITHOUT_CHECKSUM = (
    "INSERT INTO cells SELECT suite, victim, defense, attack, 9, kind, defense_label, attack_label, config_hash,"
    " code_version, seconds, evaluations, metrics, labels, images, finished_at, NULL FROM cells LIMIT 1"
)


@dataclass(frozen=True)
class Refused:
    """A hostile store and the command that must refuse it with exit 2 and a message matching ``message``."""

    name: str
    prepare: Callable[[Path, pytest.MonkeyPatch], None]
    command: str  # "run" (compute, then report) or "report" (--report-only)
    message: str
    extra: tuple[str, ...] = ()
    untouched: bool = True  # the store file stays byte for byte (a run refused only at its report records its suite)


REFUSED = [
    Refused("0-byte file, run", replace_store(b""), "run", r"is damaged or not a ggl-bench store \(an empty file\)"),
    Refused("0-byte file, --report-only", replace_store(b""), "report", r"\(an empty file\)"),
    Refused("text file", replace_store(b"suite,victim,psnr\nsmoke,0,12.5\n"), "run", "not an SQLite file"),
    Refused("random bytes", replace_store(random.Random(0).randbytes(65536)), "report", "not an SQLite file"),
    Refused("foreign SQLite database", foreign_database, "run", r"not a ggl-bench results store .*tables: photos"),
    Refused("SQLite file without tables", database_without_tables, "run", "not a ggl-bench results store"),
    Refused("newer schema version", sql("UPDATE meta SET value = '3' WHERE key = 'schema_version'"), "run", "newer"),
    Refused("changed metric digit", change_a_metric_digit, "report", r"the cells row \(.*\) does not match"),
    Refused("changed metric digit, run", change_a_metric_digit, "run", r"cells row \(.*\) does not match", (), False),
    Refused("changed reconstruction byte", change_a_byte("cells"), "report", r"the cells row .* does not match"),
    Refused("changed ground-truth byte", change_a_byte("victims"), "report", r"the victims row .* does not match"),
    Refused("changed inferred labels", sql("UPDATE cells SET labels = '[9]' WHERE rowid = 2"), "report", "cells row"),
    Refused("row moved to another victim", sql("UPDATE cells SET victim = 7 WHERE rowid = 3"), "report", "victim 7"),
    Refused("row inserted without checksum", sql(ROW_WITHOUT_CHECKSUM), "report", r"seed 9\) has no checksum"),
    Refused("checksum column dropped", sql("ALTER TABLE cells DROP COLUMN checksum"), "report", "damaged"),
    Refused("truncated file", truncate, "report", "damaged"),
    Refused("a folder named results.sqlite", folder_in_its_place, "run", "is not a file"),
    Refused("a link to /dev/null", link_to_dev_null, "report", "is not a file"),
    Refused("read-only store, run", read_only, "run", "is read-only; make it and its folder writable"),
    Refused("store of another victim setup", nothing, "run", "different victims", ("--set", "victims.batch_size=2")),
    Refused("no store, --report-only", replace_store(None), "report", "no results store"),
]


def command(out: Path, kind: str, extra: tuple[str, ...] = ()) -> list[str]:
    """``benchmarks.run``'s arguments: a run of the tiny suite into ``out``, or its ``--report-only``."""
    only = ["--report-only"] if kind == "report" else []
    return ["--suite", "smoke", "--out", str(out), *OPTIONS, *TINY, *extra, *only]


@pytest.mark.parametrize("case", REFUSED, ids=[case.name for case in REFUSED])
def test_a_hostile_store_is_refused_with_exit_2_and_kept_as_it_was(
    case: Refused, out: Path, good: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    case.prepare(out, monkeypatch)
    store = out / STORE_NAME
    try:
        rows: list[tuple] | None = raw_rows(store)
    except (OSError, sqlite3.Error):
        rows = None  # no store, or not one SQLite can read
    before = fingerprint(out)
    capsys.readouterr()
    assert main(command(out, case.command, case.extra)) == 2
    error = capsys.readouterr().err
    assert "\nerror: " in f"\n{error}" and "Traceback" not in error, error
    assert re.search(case.message, error), error
    assert str(store) in error or case.name.startswith("store of another"), error
    after = fingerprint(out)
    if not case.untouched:
        after.pop(STORE_NAME), before.pop(STORE_NAME)
    assert after == before  # nothing written: not the store (its rows are checked below), not a report
    if rows is not None:
        assert raw_rows(store) == rows and len({r[:5] for r in rows}) == len(rows)  # rows lost: 0, duplicates: 0


# -------------------------------------------------------------------------------------------- handled inputs
def test_a_deleted_row_is_recomputed_with_the_same_numbers(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = raw_rows(out / STORE_NAME)
    sql("DELETE FROM cells WHERE rowid = 5")(out, pytest.MonkeyPatch())
    capsys.readouterr()
    assert main(command(out, "run")) == 0
    assert f"{TOTAL - 1} already in the store, 1 computed" in capsys.readouterr().err
    assert raw_rows(out / STORE_NAME) == rows


def test_a_store_from_before_checksums_is_reported_as_it_is(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with edit(out / STORE_NAME) as connection:
        connection.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
        for table in ("cells", "victims", "utility"):
            connection.execute(f"ALTER TABLE {table} DROP COLUMN checksum")
        connection.execute("DROP TABLE claims")
        connection.execute("DROP TABLE failures")
    before = fingerprint(out)
    assert main(command(out, "report")) == 0
    assert "written before row checksums" in capsys.readouterr().err
    assert {k: v for k, v in fingerprint(out).items() if k == STORE_NAME} == {STORE_NAME: before[STORE_NAME]}
    assert main(command(out, "run")) == 0  # a run that writes adds the checksums
    assert "checksums added to its" in capsys.readouterr().err
    assert len(raw_rows(out / STORE_NAME)) == TOTAL


def test_rows_only_in_the_log_of_a_killed_run_are_reported(out: Path, tmp_path: Path) -> None:
    rows = raw_rows(out / STORE_NAME)
    killed = tmp_path / "killed"
    killed.mkdir()
    writer = sqlite3.connect(out / STORE_NAME, isolation_level=None)
    writer.execute("PRAGMA wal_autocheckpoint = 0")
    saved = writer.execute("SELECT * FROM cells WHERE rowid = 1").fetchone()
    writer.execute("DELETE FROM cells WHERE rowid = 1")
    writer.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    writer.execute(f"INSERT INTO cells VALUES ({', '.join('?' * len(saved))})", saved)  # only in the log now
    for name in (STORE_NAME, f"{STORE_NAME}-wal"):
        shutil.copyfile(out / name, killed / name)
    writer.close()
    before = fingerprint(killed)
    assert main(command(killed, "report")) == 0
    assert len((killed / "rows.csv").read_text().splitlines()) == 1 + TOTAL
    assert {k: fingerprint(killed)[k] for k in before} == before
    assert raw_rows(killed / STORE_NAME) == rows


def test_claims_of_dead_or_impossible_owners_are_taken_over(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with edit(out / STORE_NAME) as connection:
        key = connection.execute(f"SELECT {CELL_COLUMNS} FROM cells WHERE rowid = 4").fetchone()
        connection.execute("DELETE FROM cells WHERE rowid IN (4, 6)")
        second = connection.execute(f"SELECT {CELL_COLUMNS} FROM cells WHERE rowid = 7").fetchone()
        connection.execute("DELETE FROM cells WHERE rowid = 7")
        connection.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, 'ghost', 0, 'here', 1e12)", key)
        connection.execute("INSERT INTO claims VALUES (?, ?, ?, ?, ?, 'old', 99, 'elsewhere', 0)", second)
    capsys.readouterr()
    assert main(command(out, "run")) == 0
    assert f"{TOTAL - 3} already in the store, 3 computed" in capsys.readouterr().err
    assert len(raw_rows(out / STORE_NAME)) == TOTAL


def test_rows_of_another_configuration_are_kept_and_left_out(out: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = raw_rows(out / STORE_NAME)
    bigger = ("--set", "attacks.1.iterations=2")  # a rerun with another budget into the same store
    assert main(command(out, "run", bigger)) == 0
    markdown = (out / "leaderboard.md").read_text()
    # the changed attack's 2 victims x 3 settings, each an attack and a control cell
    assert "12 stored rows of this suite belong to another configuration" in markdown
    assert len((out / "rows.csv").read_text().splitlines()) == 1 + TOTAL
    assert set(rows) <= set(raw_rows(out / STORE_NAME)) and len(raw_rows(out / STORE_NAME)) == TOTAL + 12
    assert main(command(out, "report")) == 0  # the first configuration's report: its own rows only
    assert len((out / "rows.csv").read_text().splitlines()) == 1 + TOTAL


def test_a_run_in_which_every_cell_fails_writes_its_report(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(benchmarks.harness, "make_attack", lambda **params: TinyAttack(fail=True))
    out = tmp_path / "failing"
    no_references = ("--set", "references.class_mean=false")
    assert main(command(out, "run", no_references)) == 1
    error = capsys.readouterr().err
    assert "Traceback" not in error.split("cell failed")[0] and "24 failed" in error  # 12 attacks, 12 controls
    markdown = (out / "leaderboard.md").read_text()
    assert "**Every cell failed**" in markdown and markdown.count("RuntimeError: attack exploded") == 24
    failed_row = next(line for line in markdown.splitlines() if "gaussian(sigma=0.1)" in line)
    assert failed_row.startswith("| - | - | gaussian(sigma=0.1) |") and "all cells failed" in failed_row


# ------------------------------------------------------------------------------------------ real processes
def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "benchmarks.run", "--suite", "smoke", "--out", str(out), *OPTIONS, *TINY, *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _computed(stderr: str) -> int:
    line = next(line for line in stderr.splitlines() if " cells: " in line)
    return int(line.split(" already in the store, ")[1].split(" computed")[0])


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_cell_once(tmp_path: Path) -> None:
    out = tmp_path / "shared"
    runs = [
        subprocess.Popen(_cli(out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    errors = [run.communicate(timeout=900)[1] for run in runs]
    assert [run.returncode for run in runs] == [0, 0], errors
    assert sum(_computed(error) for error in errors) == TOTAL  # none computed twice
    rows = raw_rows(out / STORE_NAME)
    assert len(rows) == TOTAL == len({r[:5] for r in rows})  # none lost, none duplicated


@pytest.mark.slow
def test_kill_9_mid_run_then_resume_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    process = subprocess.Popen(_cli(out), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and len(_rows_or_none(out)) < 4:
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    first = _rows_or_none(out)
    assert 4 <= len(first) < TOTAL
    result = subprocess.run(_cli(out), cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr
    assert _computed(result.stderr) == TOTAL - len(first)  # the killed run's claim was taken over at once
    rows = raw_rows(out / STORE_NAME)
    assert len(rows) == TOTAL == len({r[:5] for r in rows}) and set(first) <= set(rows)


def _rows_or_none(out: Path) -> list[tuple]:
    try:
        return raw_rows(out / STORE_NAME) if (out / STORE_NAME).is_file() else []
    except sqlite3.Error:
        return []


@pytest.fixture(autouse=True)
def no_leftovers(tmp_path: Path) -> Iterator[None]:
    """No partial file of a store creation is ever left behind."""
    yield
    assert not list(tmp_path.rglob("*.partial"))
