"""Regenerating a board from committed files: the shipped rows give the published numbers, the same board again
byte for byte, stale or broken submissions listed beside it (never a crash), no shipped rows a clear exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import leaderboard
from benchmarks.config import load_suite
from benchmarks.report import build_report, leaderboard_json
from benchmarks.shipped import ROWS_FILE, import_rows, read_rows
from benchmarks.store import ResultsStore, existing_store


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_shipped_rows_give_the_published_numbers(published: Path, tmp_path: Path) -> None:
    suite = load_suite(published / "tiny.yaml")
    shipped = read_rows(published / "leaderboards" / "tiny" / ROWS_FILE)
    assert shipped.config_hash == suite.config_hash() and shipped.suite is not None
    assert shipped.suite.to_dict() == suite.to_dict()
    with existing_store(published / "results") as store:
        original = leaderboard_json(build_report(store, suite))
        assert len([r for r in shipped.records if r["table"] == "cells"]) == store.count("tiny")
    with ResultsStore(tmp_path / "results.sqlite") as copy:
        import_rows(copy, shipped.records, shipped.suite)
        assert leaderboard_json(build_report(copy, suite)) == original
    assert json.loads((published / "leaderboards" / "tiny" / "leaderboard.json").read_text()) == original


def test_regenerating_without_submissions_gives_the_same_board(board: Path) -> None:
    published = board / "leaderboards" / "tiny"
    before = folder_bytes(published)
    assert sum(name.startswith("grids/") for name in before) == 2
    assert leaderboard.main(["--suite", "tiny", "--leaderboards", str(board / "leaderboards")]) == 0
    assert folder_bytes(published) == before


def test_stale_and_broken_submissions_are_listed_off_the_board(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    submissions = board / "leaderboards" / "submissions"
    old = {"suite": "tiny", "config_hash": "000000000000", "rows": []}
    stale = {
        "name": "Old noise",
        "defense": {"name": "gaussian", "sigma": 2.0},
        "evaluations": {"tiny@000000000000": old},
    }
    (submissions / "Old.json").write_text(json.dumps(stale))
    (submissions / "Broken.json").write_text("{not json")
    (submissions / "Pending.yaml").write_text("name: Pending\nauthors: [A]\ndefense: {name: sign}\n")
    assert leaderboard.main(["--suite", "tiny", "--leaderboards", str(board / "leaderboards")]) == 0
    document = json.loads((board / "leaderboards" / "tiny" / "leaderboard.json").read_text())
    assert sorted(e["defense"] for e in document["leaderboard"]) == ["gaussian(sigma=0.1)", "none"]
    off = {e["file"]: e for e in document["submissions_not_on_this_configuration"]}
    assert set(off) == {"Old.json", "Broken.json", "Pending.json"}
    assert (
        off["Old.json"]["config_hashes"] == ["tiny@000000000000"]
        and "no evaluation on this" in off["Old.json"]["reason"]
    )
    assert "cannot be read as JSON" in off["Broken.json"]["reason"] and "not evaluated" in off["Pending.json"]["reason"]
    markdown = (board / "leaderboards" / "tiny" / "leaderboard.md").read_text()
    assert "## Submissions not on this configuration" in markdown and "tiny@000000000000" in markdown
    assert "not on this configuration: Broken.json, Old.json, Pending.json" in capsys.readouterr().err


def test_no_shipped_rows_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert leaderboard.main(["--suite", "tiny", "--leaderboards", str(tmp_path)]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: no shipped rows at") and "python -m benchmarks.run --suite tiny" in error
    assert not list(tmp_path.iterdir())


def test_help_shows_the_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        leaderboard.main(["--help"])
    assert exited.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    assert text.startswith("usage: python -m benchmarks.leaderboard ")
    for default in ("(default: all)", "(default: leaderboards)", "(default: DIR/SUITE)"):
        assert default in text, default
    assert "(default: None)" not in text
