"""Shipped rows (``rows.jsonl``): written with every report, read back into a store that reports the same numbers,
deterministic, checked line by line; rows without images draw no grid and keep the grid already there."""

from __future__ import annotations

import gzip
import json
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks.report import build_report, leaderboard_json, write_report
from benchmarks.report.figures import reconstruction_grids, slug
from benchmarks.shipped import (
    NO_IMAGES,
    ROWS_FILE,
    RowsError,
    import_rows,
    read_rows,
    rows_text,
    store_records,
    write_rows,
)
from benchmarks.store import FailureRow, ResultsStore

from .conftest import NOISE, NONE


def rebuilt(rows_file: Path, folder: Path) -> ResultsStore:
    """A new store in ``folder/rebuilt`` holding what ``rows_file`` ships."""
    shipped = read_rows(rows_file)
    store = ResultsStore(folder / "rebuilt" / "results.sqlite")
    import_rows(store, shipped.records, shipped.suite)
    return store


def test_rows_rebuild_a_store_with_the_same_leaderboard(store: ResultsStore, tmp_path: Path) -> None:
    reason = "RuntimeError: out of memory"
    store.put_failure(
        FailureRow("s", 0, NOISE, {"name": "bo", "adaptive": True}, 0, "attack", "gaussian", "bo", "c", "v", reason)
    )
    write_report(store, tmp_path / "a", "s")
    lines = (tmp_path / "a" / ROWS_FILE).read_text().splitlines()
    head = json.loads(lines[0])
    assert head["table"] == "suite" and head["suite"] is None  # a bare name states no configuration
    tables = [json.loads(line)["table"] for line in lines[1:]]
    assert tables == sorted(tables, key=["cells", "utility", "failures"].index)
    assert tables.count("cells") == store.count("s") and tables.count("utility") == 1 and tables.count("failures") == 1
    assert all("images" not in json.loads(line) for line in lines)
    with rebuilt(tmp_path / "a" / ROWS_FILE, tmp_path) as copy:
        assert leaderboard_json(build_report(copy, "s")) == leaderboard_json(build_report(store, "s"))
        assert copy.failures("s")[0].reason == reason
        write_report(copy, tmp_path / "b", "s")
    assert (tmp_path / "b" / ROWS_FILE).read_bytes() == (tmp_path / "a" / ROWS_FILE).read_bytes()
    for name in ("leaderboard.json", "leaderboard.md", "attacks.csv", "rows.csv"):
        assert (tmp_path / "b" / name).read_bytes() == (tmp_path / "a" / name).read_bytes(), name


def test_rows_without_images_keep_the_grids_already_drawn(store: ResultsStore, tmp_path: Path) -> None:
    write_report(store, tmp_path, "s")
    grids = {p.name: p.read_bytes() for p in (tmp_path / "grids").glob("*.png")}
    assert len(grids) == 2
    (tmp_path / "grids" / "gone-setting-123456.png").write_bytes(b"stale")
    with rebuilt(tmp_path / ROWS_FILE, tmp_path) as copy:
        report = build_report(copy, "s")
        assert reconstruction_grids(report, tmp_path / "new") == []  # no images, no victims: nothing to draw
        write_report(copy, tmp_path, "s")
    assert {p.name: p.read_bytes() for p in (tmp_path / "grids").glob("*.png")} == grids


def test_rows_without_images_are_blank_tiles_and_a_setting_without_any_has_no_grid(
    store: ResultsStore, tmp_path: Path
) -> None:
    report = build_report(store, "s")
    blank = {"dlg", "reference:class-mean"}
    report.rows = [
        replace(row, images=NO_IMAGES) if row.defense == NONE or row.attack["name"] in blank else row
        for row in report.rows
    ]
    written = reconstruction_grids(report, tmp_path)
    labels = {s.label: s for s in report.defenses}
    assert written == [tmp_path / f"{slug(labels['gaussian'].label)}.png"]


def test_gzipped_rows_are_deterministic_and_read_back(store: ResultsStore, tmp_path: Path) -> None:
    text = rows_text("s", None, store_records(store, "s"))
    first = write_rows(tmp_path / "a" / "rows.jsonl.gz", text).read_bytes()
    second = write_rows(tmp_path / "b" / "rows.jsonl.gz", text).read_bytes()
    assert first == second and gzip.decompress(first).decode() == text
    assert len(read_rows(tmp_path / "a" / "rows.jsonl.gz").records) == len(text.splitlines()) - 1


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("{not json", ":3: not JSON"),
        ('{"table": "cells", "suite": "s"}', ":3: a cells row without the field 'victim'"),
        ('{"table": "images"}', ":3: not a row"),
    ],
)
def test_a_bad_line_is_named(store: ResultsStore, tmp_path: Path, line: str, message: str) -> None:
    write_report(store, tmp_path, "s")
    lines = (tmp_path / ROWS_FILE).read_text().splitlines()
    (tmp_path / ROWS_FILE).write_text("\n".join([*lines[:2], line, *lines[2:]]) + "\n")
    with pytest.raises(RowsError, match=message):
        read_rows(tmp_path / ROWS_FILE)
    (tmp_path / ROWS_FILE).write_text("\n".join(lines[1:]) + "\n")
    with pytest.raises(RowsError, match=":1: not a ggl-bench rows file"):
        read_rows(tmp_path / ROWS_FILE)


def test_imported_rows_have_no_images(store: ResultsStore, tmp_path: Path) -> None:
    write_report(store, tmp_path / "a", "s")
    with rebuilt(tmp_path / "a" / ROWS_FILE, tmp_path) as copy:
        assert {row.images.shape for row in copy.cells("s")} == {(0,)}
        assert copy.victims("s") == []
