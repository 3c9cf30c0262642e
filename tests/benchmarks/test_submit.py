"""Submissions: every bad field named (exit 2), plugin defenses, unique labels, output paths checked before any
evaluation; only the entry's cells computed on shipped rows, only its two files written; the shipped entries
evaluated again (on a tiny board: nothing here depends on the configuration their committed JSON was made on)."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest

from benchmarks import leaderboard
from benchmarks.cells import expand_cells
from benchmarks.config import DefenseConfig, load_suite
from benchmarks.shipped import ROWS_FILE, evaluation_key
from benchmarks.site.build import build_site
from benchmarks.store import open_store
from benchmarks.submit import SubmissionError, load_submission, main
from ggl import plugins as loader

ROOT = Path(__file__).resolve().parents[2]
SUBMISSIONS = ROOT / "leaderboards" / "submissions"
# A small evaluation (one victim, two attacks): the tests that use it are refused before it starts.
SMALL = [
    "--suite",
    "smoke",
    "--set",
    "victims.count=1",
    "--set",
    "prior=null",
    "--set",
    "attacks=[{name: idlg, iterations: 3, max_iter: 5}, {name: inverting_gradients, iterations: 20}]",
]

CUSTOM = '''
from ggl.defenses import Defense


class Halve(Defense):
    """Scales the update by a factor (a toy defense for tests)."""

    name = "halve"
    parameters = ("factor",)

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = float(factor)

    def apply(self, update, *, model, images, labels, generator):
        return [g * self.factor for g in update.gradients]
'''


def test_every_bad_field_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = tmp_path / "Bad.yaml"
    entry.write_text(
        "authors: []\npaper: ftp://example.org\ndefense: {name: gaussian, sigma: -1}\n"
        "claimed_utility: {speed: 1, update_cosine: high}\ncolour: blue\n"
    )
    with pytest.raises(SubmissionError) as caught:
        load_submission(entry)
    fields = "\n".join(caught.value.problems)
    for name in (
        "'colour'",
        "'name'",
        "'authors'",
        "'paper'",
        "'defense'",
        "claimed_utility.speed",
        "claimed_utility.update_cosine",
        "sigma",
    ):
        assert name in fields
    assert main([str(entry)]) == 2
    error = capsys.readouterr().err
    assert "Bad.yaml" in error and "'paper'" in error
    entry.write_text("name: x\nauthors: me\ndefense: {name: gaussian, sigma: [0.1, 0.2]}\n")
    with pytest.raises(SubmissionError, match="single value"):
        load_submission(entry)
    entry.write_text("- not a mapping\n")
    with pytest.raises(SubmissionError, match="mapping"):
        load_submission(entry)


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh plugin table, so a plugin one test loads is unknown to the next."""
    monkeypatch.setattr(loader, "_PLUGINS", {})


HEAVY = "{name: gaussian, sigma: 1.0}"
HEAVY_SPEC = {"name": "gaussian", "sigma": 1.0}


def on_board(board: Path) -> list[str]:
    """Evaluate on the tiny board's suite, with its shipped rows."""
    return ["--suite", str(board / "tiny.yaml"), "--leaderboards", str(board / "leaderboards")]


def entry_file(folder: Path, name: str, defense: str = "{name: gaussian, sigma: 0.5}", file: str = "E.yaml") -> Path:
    path = folder / file
    path.write_text(f"name: {name}\nauthors: [A. Author]\ndefense: {defense}\n")
    return path


def test_plugin_defense(tmp_path: Path, plugins: None, capsys: pytest.CaptureFixture[str]) -> None:
    plugin = tmp_path / "toy_defenses.py"
    plugin.write_text(CUSTOM)
    entry = entry_file(tmp_path, "Halve", "{name: 'toy_defenses:Halve', factor: 0.5}")
    out = ["--out", str(tmp_path / "results"), "--entry-out", str(tmp_path / "missing" / "e.json")]
    assert main([str(entry), *out]) == 2  # without --plugin the YAML cannot reach the file
    assert "neither a project module nor a plugin" in capsys.readouterr().err
    assert main([str(entry), "--plugin", str(plugin), *out]) == 2  # the plugin loads; the output folder is missing
    error = capsys.readouterr().err
    assert "does not exist" in error and "field 'defense'" not in error
    assert load_submission(entry).defense == {"name": "toy_defenses:Halve", "factor": 0.5}
    entry = entry_file(tmp_path, "Halve", "{name: 'toy_defenses:Missing'}")
    with pytest.raises(SubmissionError, match="'Missing' in 'toy_defenses' is not a subclass"):
        load_submission(entry)
    entry = entry_file(tmp_path, "Halve", "{name: 'toy_defenses:Halve', strength: 3}")
    with pytest.raises(SubmissionError, match="has no parameter strength"):
        load_submission(entry)
    assert not (tmp_path / "results").exists()


NAN_PLUGIN = """
import torch
from ggl.defenses import Defense


class Poison(Defense):
    name = "poison"

    def apply(self, update, **_):
        return [torch.full_like(g, float("nan")) for g in update.gradients]
"""


def test_non_finite_plugin_defense_fails_its_cells_naming_it(
    board: Path, plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = board / "poison_defense.py"
    plugin.write_text(NAN_PLUGIN)
    entry = entry_file(board, "Poison", "{name: 'poison_defense:Poison'}")
    options = ["--plugin", str(plugin), "--out", str(board / "results"), "--entry-out", str(board / "e.json")]
    assert main([str(entry), *on_board(board), *options, "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "defense 'poison' returned non-finite values in gradients[0] (NaN)" in error
    assert not (board / "e.json").exists()


@pytest.mark.parametrize(
    ("name", "clash"),
    [
        ("none", "built-in label 'none'"),
        ("  NONE ", "built-in label 'none'"),
        ("gaussian(sigma=0.01)", "built-in label 'gaussian'"),
        ("Prior only", "built-in label 'prior only'"),
        ("Taken  name", "already the name of the submission Other.yaml"),
        ("laplacian-ish (scale=0.01)", "label of a defense of suite 'smoke'"),
    ],
)
def test_display_names_are_unique(tmp_path: Path, name: str, clash: str, capsys: pytest.CaptureFixture[str]) -> None:
    entry_file(tmp_path, "taken name", file="Other.yaml")
    entry = entry_file(tmp_path, repr(name))
    labelled = ["--set", "defenses=[{name: laplacian, scale: 0.01, label: laplacian-ish (scale=0.01)}]"]
    assert main([str(entry), "--suite", "smoke", *labelled, "--out", str(tmp_path / "results")]) == 2
    error = capsys.readouterr().err
    assert "field 'name'" in error and clash in error and "Traceback" not in error
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("kind", ["folder", "missing folder", "parent is a file", "unwritable folder"])
def test_bad_entry_out_stops_before_any_evaluation(
    tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = entry_file(tmp_path, "Loud noise")
    (tmp_path / "a_file").write_text("x")
    target = {
        "folder": tmp_path,
        "missing folder": tmp_path / "missing" / "e.json",
        "parent is a file": tmp_path / "a_file" / "e.json",
        "unwritable folder": tmp_path / "e.json",
    }[kind]
    if kind == "unwritable folder":

        def refuse(*args: object, **kwargs: object) -> None:
            raise PermissionError(13, "Permission denied")

        monkeypatch.setattr(tempfile, "TemporaryDirectory", refuse)
    store = tmp_path / "results"
    assert main([str(entry), *SMALL, "--out", str(store), "--entry-out", str(target), "--no-progress"]) == 2
    error = capsys.readouterr().err
    assert "--entry-out" in error and "Traceback" not in error
    assert not store.exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_entry_out_stops_before_any_evaluation(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = entry_file(tmp_path, "Loud noise")
    locked = tmp_path / "locked"
    locked.mkdir()
    (locked / "e.json").write_text("{}")
    (locked / "e.json").chmod(0o444)
    locked.chmod(0o555)
    try:
        for target in (locked / "e.json", locked / "new.json"):
            assert main([str(entry), *SMALL, "--out", str(tmp_path / "results"), "--entry-out", str(target)]) == 2
            assert "--entry-out" in capsys.readouterr().err
    finally:
        locked.chmod(0o755)


def shipped_plugins(entry: Path) -> list[str]:
    """``--plugin NAME.py`` when the entry's code is committed beside it: CI runs only code in the repository."""
    plugin = entry.with_suffix(".py")
    return ["--plugin", str(plugin)] if plugin.is_file() else []


@pytest.mark.parametrize("entry", sorted(SUBMISSIONS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_entry_is_consistent_and_evaluates(entry: Path, board: Path, plugins: None) -> None:
    submission = load_submission(entry)
    stored = json.loads(entry.with_suffix(".json").read_text())
    assert stored["defense"] == submission.defense and stored["name"] == submission.name
    for key, evaluation in stored["evaluations"].items():
        assert key == evaluation_key(evaluation["suite"], evaluation["config_hash"])
    out = board / "entry.json"
    options = [*on_board(board), *shipped_plugins(entry), "--out", str(board / "results"), "--entry-out", str(out)]
    assert main([str(entry), *options, "--no-progress"]) == 0
    (evaluation,) = json.loads(out.read_text())["evaluations"].values()
    assert evaluation["shipped_rows"] is not None and evaluation["rank"] in (1, 2, 3)
    assert {row["table"] for row in evaluation["rows"]} == {"cells", "utility"}


def file_hashes(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (relative path) with the SHA-256 of its bytes."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


TABLES = frozenset(
    (
        "leaderboard.md",
        "leaderboard.csv",
        "leaderboard.json",
        "attacks.md",
        "attacks.csv",
        "rows.csv",
        "privacy_utility.png",
    )
)
"""What regenerating a board with a submission on it may change."""


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """The files added, removed or changed."""
    return {name for name in {*before, *after} if before.get(name) != after.get(name)}


def test_a_submission_computes_only_its_cells_and_writes_only_its_two_files(
    board: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    submissions, published = board / "leaderboards" / "submissions", board / "leaderboards" / "tiny"
    before, tables = file_hashes(submissions), file_hashes(published)
    entry = entry_file(submissions, "Heavy noise", HEAVY, "Heavy.yaml")
    argv = [str(entry), *on_board(board), "--out", str(board / "results"), "--no-progress"]
    assert main(argv) == 0
    error = capsys.readouterr().err
    suite = load_suite(board / "tiny.yaml")
    cells = expand_cells(replace(suite, defenses=(DefenseConfig("Heavy noise", HEAVY_SPEC),)))
    own = [cell for cell in cells if cell.defense is not None]
    assert "computing only the cells of Heavy noise" in error
    assert f"already in the store, {len(own)} computed, 0 failed" in error
    assert changed(before, file_hashes(submissions)) == {"Heavy.yaml", "Heavy.json"}
    assert file_hashes(published) == tables  # nothing under leaderboards/SUITE without --report-dir
    document = json.loads((submissions / "Heavy.json").read_text())
    (key,) = document["evaluations"]
    evaluation = document["evaluations"][key]
    assert key == f"tiny@{suite.config_hash()}" == f"tiny@{evaluation['config_hash']}"
    cells = [row for row in evaluation["rows"] if row["table"] == "cells"]
    assert len(cells) == len(own) and all(row["defense"] == HEAVY_SPEC for row in evaluation["rows"])
    assert [row["table"] for row in evaluation["rows"]].count("utility") == 1
    assert evaluation["standard_settings"] == 2 and evaluation["ranked_settings"] == 3
    assert {"value", "interval"} <= set(evaluation["worst_case"]["psnr_above_baseline"])
    after = file_hashes(submissions)

    assert leaderboard.main(["--suite", "tiny", "--leaderboards", str(board / "leaderboards")]) == 0
    assert file_hashes(submissions) == after
    regenerated = file_hashes(published)
    assert changed(tables, regenerated) <= TABLES  # the grids of the standard settings are kept
    assert regenerated[ROWS_FILE] == tables[ROWS_FILE]  # the shipped rows stay the standard settings' own
    shown = json.loads((published / "leaderboard.json").read_text())["leaderboard"]
    assert sorted(e["defense"] for e in shown) == sorted(["none", "gaussian(sigma=0.1)", "Heavy noise"])
    (heavy,) = (e for e in shown if e["defense"] == "Heavy noise")
    assert heavy["spec"] == HEAVY_SPEC and heavy["rank"] == evaluation["rank"]
    assert heavy["worst_case"]["psnr_above_baseline"] == evaluation["worst_case"]["psnr_above_baseline"]
    assert "| Heavy noise |" in (published / "leaderboard.md").read_text()
    site = build_site(board / "leaderboards", board / "site")
    pages = "".join(page.read_text() for page in site.rglob("*.html"))
    assert "Heavy noise" in pages and file_hashes(submissions) == after  # the site reads, never writes, the entries


def test_shipped_rows_of_another_configuration_compute_the_whole_suite(
    board: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    entry = entry_file(board, "Heavy noise", HEAVY)
    smaller = ["--set", "victims.count=1"]
    argv = [str(entry), *on_board(board), *smaller, "--out", str(board / "results"), "--no-progress"]
    assert main([*argv, "--entry-out", str(board / "e.json")]) == 0
    error = capsys.readouterr().err
    suite = load_suite(board / "tiny.yaml", ["victims.count=1"])
    ranked = replace(suite, defenses=(*suite.defenses, DefenseConfig("Heavy noise", HEAVY_SPEC)))
    assert "holds the rows of configuration" in error and "the whole suite is computed" in error
    assert f"{len(expand_cells(ranked))} computed" in error
    (evaluation,) = json.loads((board / "e.json").read_text())["evaluations"].values()
    assert evaluation["shipped_rows"] is None and evaluation["config_hash"] == suite.config_hash()


def test_a_store_seeded_from_other_shipped_rows_is_refused(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = entry_file(board, "Heavy noise", HEAVY)
    with open_store(board / "results") as store:
        store.set_meta("shipped:tiny", "0" * 64)
    argv = [str(entry), *on_board(board), "--out", str(board / "results"), "--entry-out", str(board / "e.json")]
    assert main(argv) == 2
    assert "was seeded from other shipped rows" in capsys.readouterr().err
    assert not (board / "e.json").exists()


def test_a_standard_setting_is_not_a_submission(board: Path, capsys: pytest.CaptureFixture[str]) -> None:
    entry = entry_file(board, "My noise", "{name: gaussian, sigma: 0.1}")
    assert main([str(entry), *on_board(board), "--out", str(board / "results")]) == 2
    assert "is the setting 'gaussian(sigma=0.1)' of suite 'tiny'" in capsys.readouterr().err
    assert not (board / "results").exists()
