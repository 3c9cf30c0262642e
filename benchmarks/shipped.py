"""Shipped rows: a suite's results without images, as deterministic JSON lines (``leaderboards/SUITE/rows.jsonl``).

The results store of the standard suite holds reconstructions and is not shipped; its rows are, so that a
submission computes only its own cells and the shared tables are regenerated from committed files alone. One JSON
object per line (canonical JSON: sorted keys, no spaces), each tagged with its ``table``:

* ``suite`` (the first line): ``format``, the suite's ``name``, its ``config_hash`` and the resolved suite
  (``SuiteConfig.to_dict()``), the configuration the rows are of; ``suite`` and ``config_hash`` are null for a
  report of a bare suite name, which states no configuration.
* ``cells``: every field of a stored ``CellRow`` except its images;
* ``utility``: a utility cost (defense, options, metrics, config hash, code version, seconds);
* ``failures``: a failed cell's key, labels, provenance and reason.

The other lines follow in table order (cells, utility, failures), each table sorted by its key, so the same rows
give the same bytes. ``read_rows`` checks every line and ``import_rows`` puts the rows into a ``ResultsStore`` (cells
without images: reports draw no reconstruction for them); a report of the store is then the shipped report.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ggl.io import atomic_write, canonical_json

from .cells import expand_cells
from .config import (
    AttackConfig,
    DataModuleConfig,
    DefenseConfig,
    ModelConfig,
    ReferencesConfig,
    RequiresConfig,
    SuiteConfig,
    TrainConfig,
    UpdateConfig,
    UtilityConfig,
    VariantConfig,
    VictimsConfig,
)
from .store import CellRow, FailureRow, ResultsStore

ROWS_FORMAT = "ggl-bench-rows-v1"
ROWS_FILE = "rows.jsonl"
"""The shipped rows' file in a report folder (``leaderboards/SUITE/rows.jsonl``)."""
TABLES = ("suite", "cells", "utility", "failures")
"""Line tags, in file order."""
NO_IMAGES = np.zeros((0,), dtype=np.float32)
"""The images of a row imported without them (figures leave its tile blank)."""
_CELL_FIELDS = (
    *("suite", "victim", "defense", "attack", "seed", "kind", "defense_label", "attack_label", "config_hash"),
    *("code_version", "seconds", "evaluations", "metrics", "labels"),
)
_FAILURE_FIELDS = (*_CELL_FIELDS[:10], "reason", "failed_at")
_UTILITY_FIELDS = ("defense", "options", "metrics", "config_hash", "code_version", "seconds")
_FIELDS = {"cells": _CELL_FIELDS, "failures": _FAILURE_FIELDS, "utility": _UTILITY_FIELDS}


class RowsError(ValueError):
    """A shipped rows file (or a submission's rows) that cannot be read; the message names the file, line and fix."""


@dataclass(frozen=True)
class ShippedRows:
    """A rows file read back: the configuration it states (None for none), its row records and the SHA-256 of the
    file's text."""

    path: str
    name: str
    config_hash: str | None
    suite: SuiteConfig | None
    records: list[dict[str, Any]]
    digest: str


def evaluation_key(suite: str, config_hash: str) -> str:
    """The key of a submission's evaluation in its ``NAME.json``: ``SUITE@CONFIG_HASH``."""
    return f"{suite}@{config_hash}"


def has_images(images: np.ndarray) -> bool:
    """Whether a row holds a reconstruction (a (B, C, H, W) batch); imported rows hold none."""
    return images.ndim == 4 and images.size > 0


def cell_record(row: CellRow) -> dict[str, Any]:
    """One cell row as a line: every ``CellRow`` field but the images."""
    return {"table": "cells", **{name: getattr(row, name) for name in _CELL_FIELDS}}


def failure_record(row: FailureRow) -> dict[str, Any]:
    """One failed cell as a line."""
    return {"table": "failures", **{name: getattr(row, name) for name in _FAILURE_FIELDS}}


def utility_record(defense: Mapping[str, Any], options: Mapping[str, Any], record: Mapping[str, Any]) -> dict[str, Any]:
    """One utility cost as a line (``record`` as ``ResultsStore.utility_records`` gives it)."""
    return {"table": "utility", "defense": dict(defense), "options": dict(options), **dict(record)}


def suite_record(name: str, suite: SuiteConfig | None) -> dict[str, Any]:
    """The first line: the configuration the rows are of (null for none)."""
    return {
        "table": "suite",
        "format": ROWS_FORMAT,
        "name": name,
        "config_hash": suite.config_hash() if suite is not None else None,
        "suite": suite.to_dict() if suite is not None else None,
    }


def utility_options(suite: SuiteConfig) -> dict[str, Any]:
    """The utility options as the store keys them (the seed among them)."""
    return {"seed": suite.utility.seed, **dict(suite.utility.options)}


def store_records(store: ResultsStore, suite: str | SuiteConfig) -> list[dict[str, Any]]:
    """The rows a report of ``suite`` shows, as lines: its cells and failures (a ``SuiteConfig``: exactly its own;
    a name: every stored one) and the utility costs of their defense settings (with the suite's options)."""
    name = suite if isinstance(suite, str) else suite.name
    keys = None if isinstance(suite, str) else {cell.key() for cell in expand_cells(suite)}
    cells = [row for row in store.cells(name) if keys is None or row.key in keys]
    failures = [row for row in store.failures(name) if keys is None or row.key in keys]
    defenses = {canonical_json(row.defense) for row in (*cells, *failures) if row.defense is not None}
    options = None if isinstance(suite, str) else canonical_json(utility_options(suite))
    utility = [
        utility_record(defense, stored, record)
        for defense, stored, record in store.utility_records()
        if canonical_json(defense) in defenses and (options is None or canonical_json(stored) == options)
    ]
    return [*map(cell_record, cells), *utility, *map(failure_record, failures)]


def _sort_key(record: Mapping[str, Any]) -> tuple[Any, ...]:
    table = record["table"]
    if table == "utility":
        return (TABLES.index(table), canonical_json(record["defense"]), canonical_json(record["options"]))
    if table == "suite":
        return (0,)
    key = (record["suite"], canonical_json(record["defense"]), canonical_json(record["attack"]))
    return (TABLES.index(table), *key, record["victim"], record["seed"])


def rows_text(name: str, suite: SuiteConfig | None, records: Iterable[Mapping[str, Any]]) -> str:
    """The file's text: the suite line, then every record in table and key order, one canonical JSON a line."""
    ordered = sorted(records, key=_sort_key)
    return "".join(canonical_json(line) + "\n" for line in (suite_record(name, suite), *ordered))


def write_rows(path: str | Path, text: str) -> Path:
    """Write a rows file atomically; a ``.gz`` name is gzipped deterministically (no name, mtime 0)."""
    path = Path(path)
    data = text.encode("utf-8")
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    return atomic_write(path, data)


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
        if path.suffix == ".gz":
            data = gzip.decompress(data)
        return data.decode("utf-8")
    except (OSError, EOFError, UnicodeDecodeError, gzip.BadGzipFile) as error:
        raise RowsError(f"{path}: cannot be read ({error}); restore it from the repository") from None


def check_record(record: Any, where: str) -> dict[str, Any]:
    """A row record with its table's fields, or ``RowsError`` naming ``where`` and the field."""
    if not isinstance(record, dict) or record.get("table") not in _FIELDS:
        tables = ", ".join(_FIELDS)
        raise RowsError(f"{where}: not a row: a JSON object with 'table' one of {tables}; got {str(record)[:80]}")
    missing = [name for name in _FIELDS[record["table"]] if name not in record]
    if missing:
        raise RowsError(f"{where}: a {record['table']} row without the field {missing[0]!r}")
    return record


def read_rows(path: str | Path) -> ShippedRows:
    """Read and check a rows file (``.jsonl`` or ``.jsonl.gz``); ``RowsError`` names the line that is wrong."""
    path = Path(path)
    text = _read_text(path)
    lines = text.splitlines()
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise RowsError(f"{path}:{number}: not JSON ({error}); restore the file from the repository") from None
    if not records or not isinstance(records[0], dict) or records[0].get("format") != ROWS_FORMAT:
        raise RowsError(f"{path}:1: not a ggl-bench rows file (the first line must be the suite, format {ROWS_FORMAT})")
    head = records[0]
    suite = None
    if head.get("suite") is not None:
        suite = suite_from_dict(head["suite"], f"{path}:1")
        if suite.config_hash() != head.get("config_hash"):
            raise RowsError(
                f"{path}:1: the suite it states hashes to {suite.config_hash()}, not its config_hash "
                f"{head.get('config_hash')}: it was written by code with another suite format; regenerate it "
                "(python -m benchmarks.run --suite SUITE --report-only --report-dir leaderboards/SUITE)"
            )
    rows = [check_record(record, f"{path}:{number}") for number, record in enumerate(records[1:], start=2)]
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return ShippedRows(str(path), str(head.get("name")), head.get("config_hash"), suite, rows, digest)


def suite_from_dict(data: Mapping[str, Any], where: str) -> SuiteConfig:
    """The ``SuiteConfig`` whose ``to_dict()`` is ``data`` (a shipped rows file's configuration)."""
    try:
        return SuiteConfig(
            name=data["name"],
            description=data["description"],
            datamodule=DataModuleConfig(**data["datamodule"]),
            model=_model(data["model"]),
            prior=data["prior"],
            victims=VictimsConfig(**data["victims"]),
            seeds=tuple(data["seeds"]),
            attacks=tuple(AttackConfig(**attack) for attack in data["attacks"]),
            defenses=tuple(DefenseConfig(**defense) for defense in data["defenses"]),
            references=ReferencesConfig(**data["references"]),
            utility=UtilityConfig(**data["utility"]),
            requires=RequiresConfig(data["requires"]["gpu"], tuple(data["requires"]["files"])),
            controls=data["controls"],
            batch_controls=data.get("batch_controls", False),
            calibration={check: tuple(labels) for check, labels in data["calibration"].items()},
            update=UpdateConfig(**data["update"]) if data.get("update") else None,
            variants=tuple(VariantConfig(**variant) for variant in data.get("variants", ())),
            source=where,
        )
    except (KeyError, TypeError, AttributeError) as error:
        raise RowsError(
            f"{where}: the suite it states does not match this code's suite format ({type(error).__name__}: "
            f"{error}); regenerate the rows with this code"
        ) from None


def _model(data: Mapping[str, Any]) -> ModelConfig:
    train = data.get("train")
    return ModelConfig(**{**data, "train": TrainConfig(**train) if train else None})


def _cell(record: Mapping[str, Any]) -> CellRow:
    return CellRow(**{name: record[name] for name in _CELL_FIELDS}, images=NO_IMAGES)


def import_rows(store: ResultsStore, records: Sequence[Mapping[str, Any]], suite: SuiteConfig | None = None) -> int:
    """Put row records into ``store`` (rows already there are kept); with ``suite``, also its context and
    configuration (``suite:NAME``), as a run of it records them. Returns the cells added."""
    if suite is not None:
        store.claim_context(suite.name, suite.context())
        store.set_meta(f"suite:{suite.name}", canonical_json(suite.to_dict()))
    records = [check_record(dict(record), "row") for record in records]
    added = store.put_cells([_cell(r) for r in records if r["table"] == "cells"])
    for record in (r for r in records if r["table"] == "utility"):
        values = [record[name] for name in _UTILITY_FIELDS]
        store.put_utility(*values)
    for record in (r for r in records if r["table"] == "failures"):
        store.put_failure(FailureRow(**{name: record[name] for name in _FAILURE_FIELDS}))
    return added
