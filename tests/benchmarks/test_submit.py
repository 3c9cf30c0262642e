"""Submissions: every bad field named (exit 2), custom module:Class defenses, the shipped entry re-evaluated."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from benchmarks.submit import SubmissionError, load_submission, main

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


def test_custom_module_class_defense(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "toy_defenses.py").write_text(CUSTOM)
    monkeypatch.syspath_prepend(str(tmp_path))
    entry = tmp_path / "Halve.yaml"
    entry.write_text(
        "name: Halve\nauthors: [A. Author]\npaper: null\ndefense: {name: 'toy_defenses:Halve', factor: 0.5}\n"
    )
    assert load_submission(entry).defense == {"name": "toy_defenses:Halve", "factor": 0.5}
    entry.write_text("name: Halve\nauthors: [A. Author]\ndefense: {name: 'toy_defenses:Missing'}\n")
    with pytest.raises(SubmissionError, match="has no attribute 'Missing'"):
        load_submission(entry)
    entry.write_text("name: Halve\nauthors: [A. Author]\ndefense: {name: 'toy_defenses:Halve', strength: 3}\n")
    with pytest.raises(SubmissionError, match="bad parameters"):
        load_submission(entry)


@pytest.mark.parametrize("entry", sorted(SUBMISSIONS.glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_entry_reevaluates_within_tolerance(entry: Path, tmp_path: Path) -> None:
    stored = json.loads(entry.with_suffix(".json").read_text())
    small = [e for e in stored["evaluations"].values() if e["suite"] == "smoke" and e["overrides"] == SMALL[3::2]]
    assert small, f"{entry.with_suffix('.json').name} has no evaluation on the small suite"
    out = tmp_path / "entry.json"
    assert main([str(entry), *SMALL, "--out", str(tmp_path / "results"), "--entry-out", str(out), "--no-progress"]) == 0
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
