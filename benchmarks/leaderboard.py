"""Regenerate a published leaderboard from committed files: its shipped rows and the submissions' JSON.

    python -m benchmarks.leaderboard [--suite all] [--leaderboards leaderboards] [--report-dir DIR]

The tables of ``leaderboards/SUITE/`` are rebuilt from ``leaderboards/SUITE/rows.jsonl`` (the standard settings'
rows, without images; ``benchmarks.shipped``) and every ``leaderboards/submissions/NAME.json`` with an evaluation
of that suite's configuration (``SUITE@CONFIG_HASH``, the hash the rows state), each ranked beside the standard
settings under its entry's name. Entries evaluated on another configuration, or whose JSON cannot be used, are
listed under the leaderboard as not on this configuration, with the configurations they were evaluated on. Nothing
is computed and no results store is needed: maintainers run this after merging a submission (the pull request adds
only ``NAME.yaml`` and ``NAME.json``), then rebuild the site. The reconstruction grids of the standard settings are
kept (the shipped rows hold no images); submissions get none.
Exit status: 0 done; 2 no usable shipped rows (the message says why and how to make them).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NamedTuple

from ggl.io import canonical_json

from .cli import HelpFormatter
from .config import DefenseConfig, SuiteConfig, load_suite, output_folder
from .report import OffBoardEntry, write_report
from .shipped import ROWS_FILE, RowsError, ShippedRows, check_record, evaluation_key, import_rows, read_rows
from .store import ResultsStore, StoreError

SUBMISSIONS = "submissions"


@dataclass(frozen=True)
class Entry:
    """A submission's JSON as ``benchmarks.submit`` writes it: its name, defense, file and evaluations."""

    path: Path
    name: str
    defense: dict[str, Any]
    evaluations: dict[str, Any]

    @property
    def label(self) -> str:
        """The entry's row label: its name with runs of spaces made one."""
        return " ".join(self.name.split())


def read_entry(path: Path) -> Entry:
    """One submission's JSON; ``ValueError`` saying what is wrong with it."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"cannot be read as JSON ({error})") from None
    fields = {"name": str, "defense": dict, "evaluations": dict}
    for name, kind in fields.items():
        if not isinstance(data, dict) or not isinstance(data.get(name), kind):
            raise ValueError(f"has no field {name!r} ({kind.__name__}); evaluate the entry again to rewrite it")
    return Entry(path, data["name"], data["defense"], data["evaluations"])


class Board(NamedTuple):
    """A regenerated board: its shipped rows, the entries put on it and those left off (``OffBoardEntry``)."""

    shipped: ShippedRows
    on: list[Entry]
    off: list[OffBoardEntry]


def entry_rows(entry: Entry, evaluation: Any, shipped: ShippedRows) -> list[dict[str, Any]]:
    """The rows of an entry's evaluation, checked to be its own (its defense, the board's suite) and labelled with
    its name; ``RowsError`` otherwise."""
    rows = evaluation.get("rows") if isinstance(evaluation, dict) else None
    if not isinstance(rows, list) or not rows:
        raise RowsError("its evaluation has no rows (written before submissions carried them); evaluate it again")
    spec = canonical_json(entry.defense)
    checked = []
    for number, record in enumerate(rows, start=1):
        record = check_record(record, f"row {number}")
        if canonical_json(record["defense"]) != spec:
            raise RowsError(f"row {number} is of the defense {canonical_json(record['defense'])}, not the entry's")
        if record["table"] != "utility":
            if record["suite"] != shipped.name:
                raise RowsError(f"row {number} is of suite {record['suite']!r}, not {shipped.name!r}")
            record = {**record, "defense_label": entry.label}
        checked.append(record)
    return checked


def _off_board(entry: Entry | None, path: Path, reason: str) -> OffBoardEntry:
    name = entry.label if entry is not None else path.stem
    hashes = tuple(sorted(entry.evaluations)) if entry is not None else ()
    return OffBoardEntry(name, path.name, hashes, reason)


def gather(folder: Path, shipped: ShippedRows) -> tuple[list[tuple[Entry, list[dict[str, Any]]]], list[OffBoardEntry]]:
    """The submissions in ``folder`` on the board (entry and rows) and those not on it (``OffBoardEntry``), by file
    name. A YAML entry without its JSON has not been evaluated."""
    assert shipped.suite is not None and shipped.config_hash is not None
    key = evaluation_key(shipped.name, shipped.config_hash)
    labels = {" ".join(d.label.split()).casefold(): d.label for d in shipped.suite.defenses}
    specs = {canonical_json(dict(d.spec)): d.label for d in shipped.suite.defenses}
    on: list[tuple[Entry, list[dict[str, Any]]]] = []
    off: list[OffBoardEntry] = []
    paths = sorted({*folder.glob("*.json"), *(p.with_suffix(".json") for p in folder.glob("*.yaml"))})
    for path in paths:
        if not path.is_file():
            off.append(_off_board(None, path, "not evaluated: no JSON beside its YAML"))
            continue
        try:
            entry = read_entry(path)
        except ValueError as error:
            off.append(_off_board(None, path, f"its JSON {error}"))
            continue
        if key not in entry.evaluations:
            off.append(_off_board(entry, path, f"no evaluation on this configuration ({key})"))
            continue
        clash = labels.get(entry.label.casefold()) or specs.get(canonical_json(entry.defense))
        if clash is not None:
            off.append(_off_board(entry, path, f"its name or defense is the standard setting {clash!r}"))
            continue
        try:
            rows = entry_rows(entry, entry.evaluations[key], shipped)
        except RowsError as error:
            off.append(_off_board(entry, path, f"its rows cannot be used: {error}"))
            continue
        labels[entry.label.casefold()] = entry.label
        specs[canonical_json(entry.defense)] = entry.label
        on.append((entry, rows))
    return on, off


def regenerate(leaderboards: Path, suite_name: str, report_dir: Path) -> Board:
    """Rebuild ``report_dir`` from ``leaderboards/SUITE/rows.jsonl`` and the submissions in
    ``leaderboards/submissions``. ``RowsError`` when the shipped rows cannot be used."""
    path = leaderboards / suite_name / ROWS_FILE
    if not path.is_file():
        raise RowsError(
            f"no shipped rows at {path}; run the suite and publish its report first (python -m benchmarks.run "
            f"--suite {suite_name} --report-dir {leaderboards / suite_name})"
        )
    shipped = read_rows(path)
    if shipped.suite is None:
        raise RowsError(f"{path} states no suite configuration (a report of a bare suite name); publish a run's report")
    on, off = gather(leaderboards / SUBMISSIONS, shipped)
    board: SuiteConfig = replace(
        shipped.suite, defenses=(*shipped.suite.defenses, *(DefenseConfig(e.label, e.defense) for e, _ in on))
    )
    with tempfile.TemporaryDirectory(prefix="ggl-board-") as scratch:
        with ResultsStore(Path(scratch) / "results.sqlite") as store:
            import_rows(store, shipped.records, shipped.suite)
            for _, rows in on:
                import_rows(store, rows)
            write_report(store, report_dir, board, shipped=shipped.suite, off_board=off)
    return Board(shipped, [entry for entry, _ in on], off)


def _suite_note(suite_name: str, shipped_hash: str | None) -> str | None:
    """A note when the suite's definition in this checkout is no longer the configuration of its shipped rows."""
    try:
        current = load_suite(suite_name).config_hash()
    except ValueError:
        return None
    if current == shipped_hash:
        return None
    return (
        f"note: suite {suite_name!r} is now configuration {current}, its shipped rows are of {shipped_hash}: the "
        "board shows the shipped configuration; run the suite again to publish the new one"
    )


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.leaderboard`` (an option's help ends with its default)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.leaderboard", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--suite", default="all", help="the board: the folder leaderboards/SUITE")
    parser.add_argument(
        "--leaderboards", default="leaderboards", metavar="DIR", help="the folder of the boards and submissions/"
    )
    parser.add_argument("--report-dir", default=None, help="where the tables go (default: DIR/SUITE)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """The command line; its exit status."""
    args = build_parser().parse_args(argv)
    leaderboards = Path(args.leaderboards)
    report_dir = Path(args.report_dir) if args.report_dir else leaderboards / args.suite
    try:
        output_folder("--report-dir", report_dir)
        board = regenerate(leaderboards, args.suite, report_dir)
    except (StoreError, ValueError) as error:  # RowsError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    note = _suite_note(args.suite, board.shipped.config_hash)
    if note:
        print(note, file=sys.stderr)
    standard = len(board.shipped.suite.defenses) if board.shipped.suite else 0
    print(
        f"{report_dir}: suite {args.suite} at configuration {board.shipped.config_hash}: {standard} standard "
        f"settings and {len(board.on)} submissions"
        + (f" ({', '.join(e.label for e in board.on)})" if board.on else "")
        + (f"; not on this configuration: {', '.join(o.file for o in board.off)}" if board.off else ""),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
