"""Submissions: every bad field named (exit 2), plugin defenses, unique labels, output paths checked before any
evaluation, the shipped entries re-evaluated."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path

import pytest

from benchmarks.submit import SubmissionError, load_submission, main
from ggl.defenses import loader

ROOT = Path(__file__).resolve().parents[2]
SUBMISSIONS = ROOT / "leaderboards" / "submissions"
# The small evaluation the shipped entries also store (see leaderboards/README.md): one victim, two attacks.
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
TOLERANCE = {"psnr_gain_over_prior": 0.5, "psnr": 0.5, "ssim": 0.02, "update_cosine": 0.02, "accuracy_drop": 0.05}

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
    tmp_path: Path, plugins: None, capsys: pytest.CaptureFixture[str]
) -> None:
    plugin = tmp_path / "poison_defense.py"
    plugin.write_text(NAN_PLUGIN)
    entry = entry_file(tmp_path, "Poison", "{name: 'poison_defense:Poison'}")
    small = [*SMALL[:-1], "attacks=[{name: idlg, iterations: 1, max_iter: 2}]", "--set", "utility.enabled=false"]
    options = ["--plugin", str(plugin), "--out", str(tmp_path / "results"), "--entry-out", str(tmp_path / "e.json")]
    assert main([str(entry), *small, *options, "--no-progress"]) == 1
    error = capsys.readouterr().err
    assert "defense 'poison' returned non-finite values in gradients[0] (NaN)" in error
    assert not (tmp_path / "e.json").exists()


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
def test_shipped_entry_reevaluates_within_tolerance(entry: Path, tmp_path: Path, plugins: None) -> None:
    stored = json.loads(entry.with_suffix(".json").read_text())
    small = [e for e in stored["evaluations"].values() if e["suite"] == "smoke" and e["overrides"] == SMALL[3::2]]
    assert small, f"{entry.with_suffix('.json').name} has no evaluation on the small suite"
    out = tmp_path / "entry.json"
    options = [*SMALL, *shipped_plugins(entry), "--out", str(tmp_path / "results"), "--entry-out", str(out)]
    assert main([str(entry), *options, "--no-progress"]) == 0
    fresh = json.loads(out.read_text())
    assert fresh["defense"] == stored["defense"] == load_submission(entry).defense
    (new,) = fresh["evaluations"].values()
    old = small[0]
    assert new["config_hash"] == old["config_hash"]

    def close(name: str, a: float, b: float) -> None:
        assert math.isclose(a, b, abs_tol=TOLERANCE[name]), f"{name}: stored {b}, re-evaluated {a}"

    close("psnr_gain_over_prior", new["psnr_gain_over_prior"], old["psnr_gain_over_prior"])
    close("psnr", new["best"]["psnr"], old["best"]["psnr"])
    close("ssim", new["best"]["ssim"], old["best"]["ssim"])
    for name in ("update_cosine", "accuracy_drop"):
        close(name, new["utility"]["metrics"][name], old["utility"]["metrics"][name])
    assert new["strongest_attack"] == old["strongest_attack"]
