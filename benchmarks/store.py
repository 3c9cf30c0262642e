"""The results store: one SQLite file per run, one row per finished cell, each committed atomically.

A cell's key is (suite, victim index, defense spec JSON, attack spec JSON, seed). A row holds the key, the labels
shown in tables, the config hash, the code version, seconds, objective evaluations, every metric (JSON), the
reconstruction (an ``.npy`` blob in the same row, so image and numbers land together or not at all) and the
inferred labels. The ground-truth victims live in their own table, written before any of their cells.

SQLite in WAL mode with a busy timeout lets several processes (ranks) write to one file; a process killed at any
moment (even ``kill -9``) leaves every committed row intact and no partial one, so a restarted run skips exactly
the finished cells. Rows are inserted with ``INSERT OR IGNORE``: a cell is never duplicated.

* **Checksums**: every row (cell, victim, utility, failure) carries the SHA-256 of its columns (a blob counted by
  its own SHA-256), checked whenever it is read: a row changed after it was written stops the reader with a
  ``StoreError`` naming it. Stores written before checksums (schema 1) are read with their rows unverified (said
  on stderr) and get checksums at the next run that writes to them.
* **Claims**: a run claims a cell (owner, pid, host, heartbeat) before computing it, so two runs on one store never
  compute the same cell; a claim whose owner died (its pid is gone on this host, or no heartbeat for ``CLAIM_TTL``
  seconds) is taken over.
* **Failures**: a failed cell's key, labels and reason, cleared when the cell later finishes.
* **Opening**: a missing store is created whole (the schema is built in a temporary file and linked into place); an
  empty, non-SQLite, foreign, newer or damaged file is refused with a ``StoreError`` naming the file and the fix.
  ``readonly=True`` (``--report-only``) opens with SQLite's ``mode=ro`` (``immutable=1`` when no write-ahead log
  exists; a log a killed run left without its index is read from a private temporary copy) and never creates or
  changes the store or its log (beside a log, SQLite's shared-memory index is used as by any reader).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggl.io import canonical_json

SCHEMA_VERSION = "2"
LEGACY_VERSION = "1"
STORE_NAME = "results.sqlite"
CLAIM_TTL = 300.0
"""Seconds without a heartbeat after which another run may take a cell over (owners on other hosts)."""
HEARTBEAT_SECONDS = 30.0
FINISHED, FAILED, HELD = "finished", "failed", "held"
"""Why ``take_claim`` gives a cell to no one: it has its row, it failed, another live run holds it."""
SQLITE_HEADER = b"SQLite format 3\x00"
FIX = "move it away (the run starts afresh) or give another --out"
_OPEN_HERE: dict[tuple[int, int], int] = {}
"""Store files (device, inode) this process has open connections to, with their count. POSIX drops every lock a
process holds on a file when it closes *any* descriptor of it, so a file already open here is never read again with
a plain ``open()``: that would strip the SQLite connection's locks and let another process delete its live log."""

Key = tuple[int, str, str, int]
"""(victim, defense JSON, attack JSON, seed): a cell's key within its suite (``benchmarks.cells.CellKey``)."""

_KEY_COLUMNS = ("suite", "victim", "defense", "attack", "seed")
_COLUMNS = {
    "victims": ("suite", "victim", "indices", "labels", "images"),
    "cells": (
        *_KEY_COLUMNS,
        *("kind", "defense_label", "attack_label", "config_hash", "code_version", "seconds", "evaluations"),
        *("metrics", "labels", "images", "finished_at"),
    ),
    "utility": ("defense", "options", "metrics", "config_hash", "code_version", "seconds"),
    "failures": (
        *_KEY_COLUMNS,
        *("kind", "defense_label", "attack_label", "config_hash", "code_version", "reason", "failed_at"),
    ),
}
"""The columns of every checksummed table, in checksum order; each table's key columns come first."""
_KEY_LENGTH = {"victims": 2, "cells": 5, "utility": 2, "failures": 5}

_LEGACY_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE victims (
    suite TEXT NOT NULL, victim INTEGER NOT NULL, indices TEXT NOT NULL, labels TEXT NOT NULL,
    images BLOB NOT NULL, PRIMARY KEY (suite, victim));
CREATE TABLE cells (
    suite TEXT NOT NULL, victim INTEGER NOT NULL, defense TEXT NOT NULL, attack TEXT NOT NULL,
    seed INTEGER NOT NULL, kind TEXT NOT NULL, defense_label TEXT NOT NULL, attack_label TEXT NOT NULL,
    config_hash TEXT NOT NULL, code_version TEXT NOT NULL, seconds REAL NOT NULL, evaluations INTEGER NOT NULL,
    metrics TEXT NOT NULL, labels TEXT NOT NULL, images BLOB NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (suite, victim, defense, attack, seed));
CREATE TABLE utility (
    defense TEXT NOT NULL, options TEXT NOT NULL, metrics TEXT NOT NULL, config_hash TEXT NOT NULL,
    code_version TEXT NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (defense, options));
"""
_SCHEMA_2 = (
    "ALTER TABLE victims ADD COLUMN checksum TEXT",
    "ALTER TABLE cells ADD COLUMN checksum TEXT",
    "ALTER TABLE utility ADD COLUMN checksum TEXT",
    "CREATE TABLE claims (suite TEXT NOT NULL, victim INTEGER NOT NULL, defense TEXT NOT NULL, attack TEXT NOT NULL,"
    " seed INTEGER NOT NULL, owner TEXT NOT NULL, pid INTEGER NOT NULL, host TEXT NOT NULL, heartbeat REAL NOT NULL,"
    " PRIMARY KEY (suite, victim, defense, attack, seed))",
    "CREATE TABLE failures (suite TEXT NOT NULL, victim INTEGER NOT NULL, defense TEXT NOT NULL,"
    " attack TEXT NOT NULL, seed INTEGER NOT NULL, kind TEXT NOT NULL, defense_label TEXT NOT NULL,"
    " attack_label TEXT NOT NULL, config_hash TEXT NOT NULL, code_version TEXT NOT NULL, reason TEXT NOT NULL,"
    " failed_at TEXT NOT NULL, checksum TEXT, PRIMARY KEY (suite, victim, defense, attack, seed))",
)
"""Schema 1 -> 2: checksum columns, the claims and failures tables (a new store is schema 1 plus these)."""


class StoreError(RuntimeError):
    """The results store cannot be used (damaged, not a store, made for a different setup)."""


def encode_array(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (deterministic, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


def row_checksum(table: str, values: Sequence[Any]) -> str:
    """SHA-256 of a row's columns as stored (blobs by their own SHA-256), with the table's name."""
    plain = [hashlib.sha256(v).hexdigest() if isinstance(v, (bytes, memoryview)) else v for v in values]
    return hashlib.sha256(canonical_json([table, *plain]).encode()).hexdigest()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


@dataclass(frozen=True)
class CellIdentity:
    """What names a cell in the store and in reports: its key, kind, display labels and provenance."""

    suite: str
    victim: int
    defense: dict[str, Any] | None
    attack: dict[str, Any]
    seed: int
    kind: str
    defense_label: str
    attack_label: str
    config_hash: str
    code_version: str


@dataclass(frozen=True)
class CellRow(CellIdentity):
    """One finished cell as stored. ``defense`` is ``None`` for prior-only reference rows."""

    seconds: float
    evaluations: int
    metrics: dict[str, float]
    labels: list[int]
    images: np.ndarray = field(repr=False)

    @property
    def defense_json(self) -> str:
        """The defense spec as stored in the cell key (canonical JSON; ``null`` for references)."""
        return canonical_json(self.defense)

    @property
    def attack_json(self) -> str:
        """The attack spec as stored in the cell key (canonical JSON)."""
        return canonical_json(self.attack)

    @property
    def key(self) -> Key:
        """(victim, defense JSON, attack JSON, seed)."""
        return (self.victim, self.defense_json, self.attack_json, self.seed)


@dataclass(frozen=True)
class FailureRow(CellIdentity):
    """A cell that failed (an error, or the per-cell time limit) and has no row: its key, labels and reason."""

    reason: str
    failed_at: str = ""

    @property
    def key(self) -> Key:
        """(victim, defense JSON, attack JSON, seed)."""
        return (self.victim, canonical_json(self.defense), canonical_json(self.attack), self.seed)


@dataclass(frozen=True)
class VictimRow:
    """The ground truth of one victim: dataset indices, labels, images (B, C, H, W) in [0, 1]."""

    suite: str
    victim: int
    indices: list[int]
    labels: list[int]
    images: np.ndarray = field(repr=False)


@dataclass(frozen=True)
class ClaimOwner:
    """Who holds a claim: one run (a fresh id), its process and host."""

    id: str
    pid: int
    host: str

    @classmethod
    def new(cls) -> ClaimOwner:
        return cls(uuid.uuid4().hex, os.getpid(), socket.gethostname())


def _stale(pid: int, host: str, heartbeat: float, ttl: float) -> bool:
    """A claim whose owner is gone: its process no longer exists on this host, or it stopped beating."""
    age = time.time() - heartbeat
    if pid <= 0 or not -ttl <= age <= ttl:  # no beat for ttl seconds, or a heartbeat from a clock far ahead
        return True
    if host != socket.gethostname():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _has_log(path: Path) -> bool:
    """Whether a write-ahead log with content sits beside ``path`` (rows a reader must see through SQLite's locks)."""
    try:
        return Path(f"{path}-wal").stat().st_size > 0
    except FileNotFoundError:
        return False


def _check_file(path: Path, readonly: bool) -> None:
    """Refuse what cannot be a results store before SQLite opens it (SQLite would adopt an empty file)."""
    if not path.exists():
        if readonly:
            raise StoreError(f"no results store at {path}; run the suite first (without --report-only)")
        return
    if not path.is_file():
        raise StoreError(f"results store {path} is not a file; give another --out")
    if path.stat().st_size == 0:
        raise StoreError(f"results store {path} is damaged or not a ggl-bench store (an empty file); {FIX}")
    if _inode(path) in _OPEN_HERE:  # checked when it was first opened; reading it again would drop its locks
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        raise StoreError(
            f"results store {path} is damaged or not a ggl-bench store (not an SQLite file: it starts with "
            f"{header[:12]!r}); {FIX}"
        )
    if not readonly and not (os.access(path, os.W_OK) and os.access(path.parent, os.W_OK)):
        raise StoreError(f"results store {path} is read-only; make it and its folder writable, or give another --out")


def _inode(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def _create(path: Path) -> None:
    """Build a new store in a temporary file and link it into place (never over an existing one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial")
    try:
        connection = sqlite3.connect(str(partial), isolation_level=None)
        try:
            connection.execute("PRAGMA journal_mode = WAL")
            connection.executescript(_LEGACY_SCHEMA + ";\n".join(_SCHEMA_2) + ";")
            connection.execute("INSERT INTO meta (key, value) VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
        finally:
            connection.close()
        try:
            os.link(partial, path)
        except FileExistsError:
            pass  # another process created it first: use theirs
        except OSError:
            if not path.exists():
                os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


class ResultsStore:
    """The SQLite results store of one output folder.

    Args:
        path: the ``.sqlite`` file (created with its folder when missing, unless ``readonly``).
        timeout: seconds a writer waits for another process's lock.
        readonly: open without ever writing (``--report-only``); the file must exist.

    Example:
        >>> store = ResultsStore(tmp / "results.sqlite")
        >>> store.finished_keys("smoke")
        set()
    """

    def __init__(self, path: str | Path, timeout: float = 60.0, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.legacy = False
        self._scratch: Path | None = None
        _check_file(self.path, readonly)
        if not readonly and not self.path.exists():
            _create(self.path)
        try:
            self._connection = self._connect(timeout)
            check = self._connection.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check says {check[0] if check else 'nothing'}")
            self._check_schema()
        except sqlite3.DatabaseError as error:
            self.close()
            raise self._damaged(error) from None
        except BaseException:
            self.close()
            raise
        self._inode: tuple[int, int] | None = _inode(self.path)
        _OPEN_HERE[self._inode] = _OPEN_HERE.get(self._inode, 0) + 1

    def _damaged(self, error: Exception) -> StoreError:
        return StoreError(f"results store {self.path} is damaged or not a ggl-bench store ({error}); {FIX}")

    def _connect(self, timeout: float) -> sqlite3.Connection:
        """Read-write in WAL mode; read-only with ``mode=ro`` (``immutable=1`` when no log is there to read, and a
        log a killed run left without its index is read from a private copy: SQLite would add the index beside it)."""
        if self.readonly:
            source, mode = self.path, "mode=ro&immutable=1"
            if _has_log(self.path):
                mode = "mode=ro"
                if not Path(f"{self.path}-shm").exists():
                    source = self._private_copy()
            connection = sqlite3.connect(
                f"{source.resolve().as_uri()}?{mode}", uri=True, timeout=timeout, isolation_level=None
            )
        else:
            connection = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
        connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
        return connection

    def _check_schema(self) -> None:
        """Refuse a foreign or newer file (before anything is written to it); read a schema-1 store unverified, or
        bring it to schema 2 when writing."""
        tables = {str(r[0]) for r in self._connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        version = self.get_meta("schema_version") if "meta" in tables else None
        if version is None or not version.isdigit():
            found = ", ".join(sorted(tables)) or "none"
            raise StoreError(
                f"results store {self.path} is an SQLite file but not a ggl-bench results store (no schema version; "
                f"tables: {found}); {FIX}"
            )
        if int(version) > int(SCHEMA_VERSION):
            raise StoreError(
                f"results store {self.path} has schema version {version}, newer than this code reads "
                f"({LEGACY_VERSION} and {SCHEMA_VERSION}); update ggl-bench, or give another --out"
            )
        if not self.readonly:
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
        if version == LEGACY_VERSION and self.readonly:
            self.legacy = True
            print(
                f"warning: results store {self.path} was written before row checksums (schema {version}): its rows "
                "are read unverified; the next run that writes to it adds checksums",
                file=sys.stderr,
            )
        elif version == LEGACY_VERSION:
            self._migrate()

    def _migrate(self) -> None:
        """Schema 1 -> 2: checksum columns (filled from the rows as they are now), claims and failures tables."""
        counted = 0
        with self._transaction() as connection:
            if self.get_meta("schema_version") != LEGACY_VERSION:
                return  # another process migrated it meanwhile
            for statement in _SCHEMA_2:
                connection.execute(statement)
            for table in ("victims", "cells", "utility"):
                rows = connection.execute(f"SELECT rowid, {', '.join(_COLUMNS[table])} FROM {table}").fetchall()
                sums = [(row_checksum(table, row[1:]), row[0]) for row in rows]
                connection.executemany(f"UPDATE {table} SET checksum = ? WHERE rowid = ?", sums)
                counted += len(rows)
            connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))
        print(
            f"results store {self.path}: checksums added to its {counted} rows written before checksums existed "
            f"(schema {LEGACY_VERSION} -> {SCHEMA_VERSION})",
            file=sys.stderr,
        )

    # --------------------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, retried while another process holds the write lock; errors are StoreErrors."""
        if self.readonly:
            raise StoreError(f"results store {self.path} is open read-only; nothing can be written to it")
        deadline = time.monotonic() + 300.0
        try:
            while True:
                try:
                    self._connection.execute("BEGIN IMMEDIATE")
                    break
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            try:
                yield self._connection
            except BaseException:
                self._connection.execute("ROLLBACK")
                raise
            self._connection.execute("COMMIT")
        except sqlite3.DatabaseError as error:
            raise StoreError(f"results store {self.path} cannot be written ({error}); {FIX}") from None

    def _select(self, table: str, where: str = "", params: Sequence[Any] = (), order: str = "") -> list[tuple]:
        """Rows of ``table`` (its checksummed columns), each checked against its checksum."""
        columns = _COLUMNS[table]
        checksum = "NULL" if self.legacy else "checksum"
        query = f"SELECT {', '.join(columns)}, {checksum} FROM {table}{where}{order}"
        rows = self._query(query, params)
        for row in rows:
            if not self.legacy and row[-1] != row_checksum(table, row[:-1]):
                key = ", ".join(f"{name} {value!r}" for name, value in zip(columns, row[: _KEY_LENGTH[table]]))
                why = "has no checksum" if row[-1] is None else "does not match its checksum"
                raise StoreError(
                    f"results store {self.path}: the {table} row ({key}) {why}: it was changed after it was "
                    "written. Restore the file from a copy, or delete that row (the next run recomputes it: the "
                    "same key gives the same numbers)"
                )
        return [tuple(row[:-1]) for row in rows]

    def _query(self, query: str, params: Sequence[Any] = ()) -> list[tuple]:
        """A read; SQLite's errors become StoreErrors naming the file."""
        try:
            return self._connection.execute(query, tuple(params)).fetchall()
        except sqlite3.DatabaseError as error:
            raise self._damaged(error) from None

    @staticmethod
    def _insert(
        connection: sqlite3.Connection, table: str, values: Sequence[Any], verb: str = "INSERT OR IGNORE"
    ) -> int:
        """Insert one row with its checksum; the number of rows written (0 when the key was there)."""
        names = (*_COLUMNS[table], "checksum")
        cursor = connection.execute(
            f"{verb} INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            (*values, row_checksum(table, values)),
        )
        return cursor.rowcount

    def _private_copy(self) -> Path:
        """The store and its write-ahead log copied into a temporary folder (removed by ``close``)."""
        self._scratch = Path(tempfile.mkdtemp(prefix="ggl-store-"))
        copy = self._scratch / self.path.name
        shutil.copyfile(self.path, copy)
        shutil.copyfile(f"{self.path}-wal", f"{copy}-wal")
        return copy

    def close(self) -> None:
        if hasattr(self, "_connection"):
            self._connection.close()
        inode = getattr(self, "_inode", None)
        if inode is not None:
            self._inode = None
            _OPEN_HERE[inode] -= 1
            if not _OPEN_HERE[inode]:
                del _OPEN_HERE[inode]
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._query("SELECT value FROM meta WHERE key = ?", (key,))
        return None if not row else str(row[0][0])

    def meta_items(self) -> list[tuple[str, str]]:
        return [(str(k), str(v)) for k, v in self._query("SELECT key, value FROM meta ORDER BY key")]

    def set_meta(self, key: str, value: str) -> None:
        with self._transaction() as connection:
            connection.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    def claim_context(self, suite: str, context: Mapping[str, Any]) -> None:
        """Record the setup every row of ``suite`` depends on; refuse a store made with a different one."""
        key = f"context:{suite}"
        text = canonical_json(dict(context))
        with self._transaction() as connection:
            row = connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
            if row is None:
                connection.execute("INSERT INTO meta (key, value) VALUES (?, ?)", (key, text))
                return
        if row[0] != text:
            old, new = json.loads(row[0]), dict(context)
            changed = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
            stored = canonical_json({k: old.get(k) for k in changed})
            now = canonical_json({k: new.get(k) for k in changed})
            raise StoreError(
                f"results store {self.path} holds suite {suite!r} run with a different {', '.join(changed)} "
                f"(stored {stored}, now {now}); give another --out"
            )

    # --------------------------------------------------------------------------------------------------------
    def put_victim(self, row: VictimRow) -> None:
        values = (row.suite, int(row.victim), canonical_json(row.indices), canonical_json(row.labels))
        with self._transaction() as connection:
            self._insert(connection, "victims", (*values, encode_array(row.images)))

    def victims(self, suite: str | None = None) -> list[VictimRow]:
        where, params = (" WHERE suite = ?", (suite,)) if suite else ("", ())
        rows = self._select("victims", where, params, " ORDER BY suite, victim")
        return [VictimRow(r[0], int(r[1]), json.loads(r[2]), json.loads(r[3]), decode_array(r[4])) for r in rows]

    def put_cell(self, row: CellRow) -> bool:
        """Commit one finished cell (releasing its claim, clearing its failure); False when it was already there."""
        return self.put_cells([row]) == 1

    def put_cells(self, rows: Sequence[CellRow]) -> int:
        """Commit finished cells in one transaction (releasing their claims, clearing their failures); the number
        written (a cell already there is kept as it is)."""
        where = " WHERE " + " AND ".join(f"{name} = ?" for name in _KEY_COLUMNS)
        written = 0
        with self._transaction() as connection:
            for row in rows:
                values = (
                    *(row.suite, int(row.victim), row.defense_json, row.attack_json, int(row.seed), row.kind),
                    *(row.defense_label, row.attack_label, row.config_hash, row.code_version, float(row.seconds)),
                    *(int(row.evaluations), canonical_json(row.metrics), canonical_json(row.labels)),
                    *(encode_array(row.images), _now()),
                )
                written += self._insert(connection, "cells", values)
                connection.execute("DELETE FROM claims" + where, values[:5])
                connection.execute("DELETE FROM failures" + where, values[:5])
        return written

    def finished_keys(self, suite: str) -> set[Key]:
        """Keys (victim, defense JSON, attack JSON, seed) of the finished cells of ``suite``."""
        rows = self._query("SELECT victim, defense, attack, seed FROM cells WHERE suite = ?", (suite,))
        return {(int(v), str(d), str(a), int(s)) for v, d, a, s in rows}

    def cells(self, suite: str | None = None) -> list[CellRow]:
        """Every finished cell (of ``suite``), in key order, each checked against its checksum."""
        where, params = (" WHERE suite = ?", (suite,)) if suite else ("", ())
        rows = self._select("cells", where, params, " ORDER BY suite, defense, attack, victim, seed")
        return [
            CellRow(
                suite=r[0],
                victim=int(r[1]),
                defense=json.loads(r[2]),
                attack=json.loads(r[3]),
                seed=int(r[4]),
                kind=r[5],
                defense_label=r[6],
                attack_label=r[7],
                config_hash=r[8],
                code_version=r[9],
                seconds=float(r[10]),
                evaluations=int(r[11]),
                metrics=json.loads(r[12]),
                labels=json.loads(r[13]),
                images=decode_array(r[14]),
            )
            for r in rows
        ]

    def count(self, suite: str | None = None) -> int:
        query = "SELECT COUNT(*) FROM cells" + (" WHERE suite = ?" if suite else "")
        return int(self._query(query, (suite,) if suite else ())[0][0])

    def suites(self) -> list[str]:
        return [str(r[0]) for r in self._query("SELECT DISTINCT suite FROM cells ORDER BY suite")]

    # --------------------------------------------------------------------------------------------------------
    def put_failure(self, row: FailureRow, owner: ClaimOwner | None = None) -> None:
        """Record why a cell failed (the latest reason wins) and release ``owner``'s claim; nothing if it finished."""
        values = (
            *(row.suite, int(row.victim), canonical_json(row.defense), canonical_json(row.attack), int(row.seed)),
            *(row.kind, row.defense_label, row.attack_label, row.config_hash, row.code_version, row.reason),
            row.failed_at or _now(),
        )
        where = " WHERE " + " AND ".join(f"{name} = ?" for name in _KEY_COLUMNS)
        with self._transaction() as connection:
            if owner is not None:
                connection.execute("DELETE FROM claims" + where + " AND owner = ?", (*values[:5], owner.id))
            if connection.execute("SELECT 1 FROM cells" + where, values[:5]).fetchone() is None:
                self._insert(connection, "failures", values, "INSERT OR REPLACE")

    def failures(self, suite: str | None = None) -> list[FailureRow]:
        """The failed cells without a row (of ``suite``), in key order (none in a schema-1 store)."""
        if self.legacy:
            return []
        where, params = (" WHERE suite = ?", (suite,)) if suite else ("", ())
        rows = self._select("failures", where, params, " ORDER BY suite, defense, attack, victim, seed")
        names = ("kind", "defense_label", "attack_label", "config_hash", "code_version", "reason", "failed_at")
        return [
            FailureRow(r[0], int(r[1]), json.loads(r[2]), json.loads(r[3]), int(r[4]), **dict(zip(names, r[5:12])))
            for r in rows
        ]

    # --------------------------------------------------------------------------------------------------------
    def take_claim(
        self, suite: str, key: Key, owner: ClaimOwner, ttl: float = CLAIM_TTL, retry_failed: bool = True
    ) -> tuple[str, str] | None:
        """Claim one cell for ``owner``: None when it is now ours; else (``FINISHED``, ""), (``HELD``, its live
        holder) or, when not ``retry_failed`` and the cell has a recorded failure, (``FAILED``, the reason)."""
        where = " WHERE " + " AND ".join(f"{name} = ?" for name in _KEY_COLUMNS)
        with self._transaction() as connection:
            if connection.execute("SELECT 1 FROM cells" + where, (suite, *key)).fetchone() is not None:
                return FINISHED, ""
            failure = connection.execute("SELECT reason FROM failures" + where, (suite, *key)).fetchone()
            if failure is not None and not retry_failed:
                return FAILED, str(failure[0])
            holder = "SELECT owner, pid, host, heartbeat FROM claims" + where
            held = connection.execute(holder, (suite, *key)).fetchone()
            if held is not None and held[0] != owner.id and not _stale(int(held[1]), str(held[2]), float(held[3]), ttl):
                return HELD, f"pid {held[1]} on {held[2]}"
            connection.execute(
                "INSERT OR REPLACE INTO claims (suite, victim, defense, attack, seed, owner, pid, host, heartbeat)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (suite, *key, owner.id, owner.pid, owner.host, time.time()),
            )
        return None

    def release_claims(self, owner: ClaimOwner) -> None:
        """Drop every claim ``owner`` still holds (cells it did not finish)."""
        with self._transaction() as connection:
            connection.execute("DELETE FROM claims WHERE owner = ?", (owner.id,))

    def claims(self, suite: str | None = None) -> list[tuple[Key, str, int, str, float]]:
        """Open claims as (key, owner id, pid, host, heartbeat)."""
        where, params = (" WHERE suite = ?", (suite,)) if suite else ("", ())
        columns = "victim, defense, attack, seed, owner, pid, host, heartbeat"
        rows = self._query(f"SELECT {columns} FROM claims{where}", params)
        return [((int(v), str(d), str(a), int(s)), str(o), int(p), str(h), float(b)) for v, d, a, s, o, p, h, b in rows]

    # --------------------------------------------------------------------------------------------------------
    def put_utility(
        self,
        defense: Mapping[str, Any],
        options: Mapping[str, Any],
        metrics: Mapping[str, float],
        config_hash: str,
        code_version: str,
        seconds: float,
    ) -> None:
        values = (canonical_json(dict(defense)), canonical_json(dict(options)), canonical_json(dict(metrics)))
        with self._transaction() as connection:
            self._insert(connection, "utility", (*values, config_hash, code_version, float(seconds)))

    def utility(self, defense: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached utility cost of a defense setting, with its provenance; None when not computed yet."""
        key = (canonical_json(dict(defense)), canonical_json(dict(options)))
        rows = self._select("utility", " WHERE defense = ? AND options = ?", key)
        if not rows:
            return None
        return {"metrics": json.loads(rows[0][2]), "config_hash": rows[0][3], "code_version": rows[0][4]}

    def utility_records(self) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """Every utility row as (defense spec, options, {metrics, config_hash, code_version, seconds})."""
        return [
            (
                json.loads(d),
                json.loads(o),
                {"metrics": json.loads(m), "config_hash": h, "code_version": c, "seconds": float(s)},
            )
            for d, o, m, h, c, s in self._select("utility", order=" ORDER BY defense, options")
        ]

    def utilities(self, options: Mapping[str, Any] | None = None) -> dict[str, dict[str, Any]]:
        """Cached utility costs by defense JSON: those computed with ``options`` (None: the first options found per
        defense, in sorted order)."""
        where, params = ("", ()) if options is None else (" WHERE options = ?", (canonical_json(dict(options)),))
        found: dict[str, dict[str, Any]] = {}
        for defense, stored, metrics, config_hash, code_version, _ in self._select(
            "utility", where, params, " ORDER BY defense, options"
        ):
            found.setdefault(
                defense,
                {
                    "metrics": json.loads(metrics),
                    "options": json.loads(stored),
                    "config_hash": config_hash,
                    "code_version": code_version,
                },
            )
        return found


class CellClaims:
    """One run's claims on the cells of a store.

    ``take(key)`` before computing a cell; the cell's row (``put_cell``) or failure (``put_failure``) releases it. A
    heartbeat thread keeps the run's claims fresh while it lives (so a long cell is never taken over); leaving the
    ``with`` block releases what is left. A run killed with ``kill -9`` leaves its claims: another run on this host
    takes them over at once (the pid is gone), one elsewhere after ``ttl`` seconds without a heartbeat.
    """

    def __init__(
        self, store: ResultsStore, suite: str, ttl: float = CLAIM_TTL, beat: float = HEARTBEAT_SECONDS
    ) -> None:
        self.store = store
        self.suite = suite
        self.ttl = ttl
        self.beat = beat
        self.owner = ClaimOwner.new()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._heartbeat, name="ggl-claims-heartbeat", daemon=True)

    def take(self, key: Key, retry_failed: bool = True) -> tuple[str, str] | None:
        """None when the cell is ours to compute; else why not (``ResultsStore.take_claim``)."""
        return self.store.take_claim(self.suite, key, self.owner, self.ttl, retry_failed)

    def _heartbeat(self) -> None:
        connection = sqlite3.connect(str(self.store.path), timeout=self.beat, isolation_level=None)
        try:
            while not self._stop.wait(self.beat):
                try:  # one statement, its own transaction
                    connection.execute("UPDATE claims SET heartbeat = ? WHERE owner = ?", (time.time(), self.owner.id))
                except sqlite3.Error:
                    pass  # a busy store: the next beat tries again
        finally:
            connection.close()

    def __enter__(self) -> CellClaims:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.store.release_claims(self.owner)


def open_store(folder: str | Path) -> ResultsStore:
    """The store of an output folder (``FOLDER/results.sqlite``)."""
    return ResultsStore(Path(folder) / STORE_NAME)


def existing_store(folder: str | Path) -> ResultsStore:
    """The store of an output folder that must already exist, opened read-only (``--report-only``)."""
    return ResultsStore(Path(folder) / STORE_NAME, readonly=True)
