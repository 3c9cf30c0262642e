"""The results store: one SQLite file per run, one row per finished cell, each committed atomically.

A cell's key is (suite, victim index, defense spec JSON, attack spec JSON, seed). A row holds the key, the labels
shown in tables, the config hash, the code version, seconds, objective evaluations, every metric (JSON), the
reconstruction (an ``.npy`` blob in the same row, so image and numbers land together or not at all) and the
inferred labels. The ground-truth victims live in their own table, written before any of their cells.

SQLite in WAL mode with a busy timeout lets several processes (ranks) write to one file; a process killed at any
moment (even ``kill -9``) leaves every committed row intact and no partial one, so a restarted run skips exactly
the finished cells. Rows are inserted with ``INSERT OR IGNORE``: a cell is never duplicated.
"""

from __future__ import annotations

import io
import json
import sqlite3
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ggl.io import canonical_json

SCHEMA_VERSION = "1"
STORE_NAME = "results.sqlite"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS victims (
    suite TEXT NOT NULL, victim INTEGER NOT NULL, indices TEXT NOT NULL, labels TEXT NOT NULL,
    images BLOB NOT NULL, PRIMARY KEY (suite, victim));
CREATE TABLE IF NOT EXISTS cells (
    suite TEXT NOT NULL, victim INTEGER NOT NULL, defense TEXT NOT NULL, attack TEXT NOT NULL,
    seed INTEGER NOT NULL, kind TEXT NOT NULL, defense_label TEXT NOT NULL, attack_label TEXT NOT NULL,
    config_hash TEXT NOT NULL, code_version TEXT NOT NULL, seconds REAL NOT NULL, evaluations INTEGER NOT NULL,
    metrics TEXT NOT NULL, labels TEXT NOT NULL, images BLOB NOT NULL, finished_at TEXT NOT NULL,
    PRIMARY KEY (suite, victim, defense, attack, seed));
CREATE TABLE IF NOT EXISTS utility (
    defense TEXT NOT NULL, options TEXT NOT NULL, metrics TEXT NOT NULL, config_hash TEXT NOT NULL,
    code_version TEXT NOT NULL, seconds REAL NOT NULL, PRIMARY KEY (defense, options));
"""


class StoreError(RuntimeError):
    """The results store cannot be used (damaged, not a store, made for a different setup)."""


def encode_array(array: np.ndarray) -> bytes:
    """An array as ``.npy`` bytes (deterministic, no pickle)."""
    buffer = io.BytesIO()
    np.save(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def decode_array(blob: bytes) -> np.ndarray:
    return np.load(io.BytesIO(blob), allow_pickle=False)


@dataclass(frozen=True)
class CellRow:
    """One finished cell as stored. ``defense`` is ``None`` for prior-only reference rows."""

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


@dataclass(frozen=True)
class VictimRow:
    """The ground truth of one victim: dataset indices, labels, images (B, C, H, W) in [0, 1]."""

    suite: str
    victim: int
    indices: list[int]
    labels: list[int]
    images: np.ndarray = field(repr=False)


class ResultsStore:
    """The SQLite results store of one output folder.

    Args:
        path: the ``.sqlite`` file (created with its folder when missing).
        timeout: seconds a writer waits for another process's lock.

    Example:
        >>> store = ResultsStore(tmp / "results.sqlite")
        >>> store.finished_keys("smoke")
        set()
    """

    def __init__(self, path: str | Path, timeout: float = 60.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._connection = sqlite3.connect(str(self.path), timeout=timeout, isolation_level=None)
            self._connection.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
            self._connection.execute("PRAGMA journal_mode = WAL")
            self._connection.execute("PRAGMA synchronous = NORMAL")
            check = self._connection.execute("PRAGMA quick_check").fetchone()
            if check is None or check[0] != "ok":
                raise sqlite3.DatabaseError(f"integrity check says {check[0] if check else 'nothing'}")
            self._connection.executescript(_SCHEMA)
            self._check_schema()
        except sqlite3.DatabaseError as error:
            raise StoreError(
                f"results store {self.path} is damaged or not a ggl-bench store ({error}); "
                "move it away (the run starts afresh) or give another --out"
            ) from None

    # --------------------------------------------------------------------------------------------------------
    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN IMMEDIATE ... COMMIT, retried while another process holds the write lock."""
        deadline = time.monotonic() + 300.0
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

    def _check_schema(self) -> None:
        version = self.get_meta("schema_version")
        if version is None:
            self.set_meta("schema_version", SCHEMA_VERSION)
        elif version != SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"schema version {version}, this code reads {SCHEMA_VERSION}")

    def close(self) -> None:
        self._connection.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --------------------------------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        row = self._connection.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def meta_items(self) -> list[tuple[str, str]]:
        return [(str(k), str(v)) for k, v in self._connection.execute("SELECT key, value FROM meta ORDER BY key")]

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
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO victims (suite, victim, indices, labels, images) VALUES (?, ?, ?, ?, ?)",
                (
                    row.suite,
                    row.victim,
                    canonical_json(row.indices),
                    canonical_json(row.labels),
                    encode_array(row.images),
                ),
            )

    def victims(self, suite: str | None = None) -> list[VictimRow]:
        query = "SELECT suite, victim, indices, labels, images FROM victims"
        rows = self._connection.execute(
            query + (" WHERE suite = ?" if suite else "") + " ORDER BY suite, victim", (suite,) if suite else ()
        ).fetchall()
        return [VictimRow(r[0], int(r[1]), json.loads(r[2]), json.loads(r[3]), decode_array(r[4])) for r in rows]

    def put_cell(self, row: CellRow) -> bool:
        """Commit one finished cell; False when the cell was already there (nothing is overwritten)."""
        with self._transaction() as connection:
            cursor = connection.execute(
                "INSERT OR IGNORE INTO cells (suite, victim, defense, attack, seed, kind, defense_label, attack_label,"
                " config_hash, code_version, seconds, evaluations, metrics, labels, images, finished_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    row.suite,
                    row.victim,
                    row.defense_json,
                    row.attack_json,
                    row.seed,
                    row.kind,
                    row.defense_label,
                    row.attack_label,
                    row.config_hash,
                    row.code_version,
                    float(row.seconds),
                    int(row.evaluations),
                    canonical_json(row.metrics),
                    canonical_json(row.labels),
                    encode_array(row.images),
                    time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                ),
            )
            return cursor.rowcount == 1

    def finished_keys(self, suite: str) -> set[tuple[int, str, str, int]]:
        """Keys (victim, defense JSON, attack JSON, seed) of the finished cells of ``suite``."""
        rows = self._connection.execute(
            "SELECT victim, defense, attack, seed FROM cells WHERE suite = ?", (suite,)
        ).fetchall()
        return {(int(v), str(d), str(a), int(s)) for v, d, a, s in rows}

    def cells(self, suite: str | None = None) -> list[CellRow]:
        """Every finished cell (of ``suite``), in key order."""
        query = (
            "SELECT suite, victim, defense, attack, seed, kind, defense_label, attack_label, config_hash,"
            " code_version, seconds, evaluations, metrics, labels, images FROM cells"
        )
        order = " ORDER BY suite, defense, attack, victim, seed"
        rows = self._connection.execute(
            query + (" WHERE suite = ?" if suite else "") + order, (suite,) if suite else ()
        ).fetchall()
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
        return int(self._connection.execute(query, (suite,) if suite else ()).fetchone()[0])

    def suites(self) -> list[str]:
        rows = self._connection.execute("SELECT DISTINCT suite FROM cells ORDER BY suite").fetchall()
        return [str(r[0]) for r in rows]

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
        with self._transaction() as connection:
            connection.execute(
                "INSERT OR IGNORE INTO utility (defense, options, metrics, config_hash, code_version, seconds)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (
                    canonical_json(dict(defense)),
                    canonical_json(dict(options)),
                    canonical_json(dict(metrics)),
                    config_hash,
                    code_version,
                    float(seconds),
                ),
            )

    def utility(self, defense: Mapping[str, Any], options: Mapping[str, Any]) -> dict[str, Any] | None:
        """The cached utility cost of a defense setting, with its provenance; None when not computed yet."""
        row = self._connection.execute(
            "SELECT metrics, config_hash, code_version FROM utility WHERE defense = ? AND options = ?",
            (canonical_json(dict(defense)), canonical_json(dict(options))),
        ).fetchone()
        if row is None:
            return None
        return {"metrics": json.loads(row[0]), "config_hash": row[1], "code_version": row[2]}

    def utility_records(self) -> list[tuple[dict[str, Any], dict[str, Any], dict[str, Any]]]:
        """Every utility row as (defense spec, options, {metrics, config_hash, code_version, seconds})."""
        rows = self._connection.execute(
            "SELECT defense, options, metrics, config_hash, code_version, seconds FROM utility"
            " ORDER BY defense, options"
        ).fetchall()
        return [
            (
                json.loads(d),
                json.loads(o),
                {"metrics": json.loads(m), "config_hash": h, "code_version": c, "seconds": float(s)},
            )
            for d, o, m, h, c, s in rows
        ]

    def utilities(self) -> dict[str, dict[str, Any]]:
        """All cached utility costs by defense JSON (the first options set found per defense, in sorted order)."""
        found: dict[str, dict[str, Any]] = {}
        rows = self._connection.execute(
            "SELECT defense, options, metrics, config_hash, code_version FROM utility ORDER BY defense, options"
        ).fetchall()
        for defense, options, metrics, config_hash, code_version in rows:
            found.setdefault(
                defense,
                {
                    "metrics": json.loads(metrics),
                    "options": json.loads(options),
                    "config_hash": config_hash,
                    "code_version": code_version,
                },
            )
        return found


def open_store(folder: str | Path) -> ResultsStore:
    """The store of an output folder (``FOLDER/results.sqlite``)."""
    return ResultsStore(Path(folder) / STORE_NAME)


def existing_store(folder: str | Path) -> ResultsStore:
    """The store of an output folder that must already exist (``--report-only``)."""
    path = Path(folder) / STORE_NAME
    if not path.is_file():
        raise StoreError(f"no results store at {path}; run the suite first (without --report-only)")
    return ResultsStore(path)
