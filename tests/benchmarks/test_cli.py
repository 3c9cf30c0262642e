"""The command lines' own options: ``ggl-bench``, ``--list``, ``--print-config``, ``--dry-run``, defaults in every
``--help``, a quick ``perf --help``, the utility-phase line and a log-friendly progress bar."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import yaml

from benchmarks import cli, run, submit, train_prior
from benchmarks.cells import Cell
from benchmarks.config import available_suites, load_suite
from benchmarks.harness import LOG_PROGRESS_SECONDS, Harness
from benchmarks.perf import cli as perf
from benchmarks.store import CellRow, ResultsStore

ROOT = Path(__file__).resolve().parents[2]
SMALL = ["--set", "victims.count=1", "--set", "utility.enabled=false"]


def output(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int], argv: list[str]) -> str:
    assert main(argv) == 0
    return capsys.readouterr().out


def help_text(capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int]) -> str:
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    return re.sub(r"\s+", " ", capsys.readouterr().out)


def folder_bytes(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_ggl_bench_help_lists_the_subcommands(capsys: pytest.CaptureFixture[str]) -> None:
    text = help_text(capsys, cli.main)
    for command in ("run", "submit", "leaderboard", "perf", "train-prior"):
        assert re.search(rf"\b{command}\b", text), command
    assert set(cli.COMMANDS) == {"run", "submit", "leaderboard", "perf", "train-prior"}


def test_ggl_bench_passes_the_rest_to_the_command(capsys: pytest.CaptureFixture[str]) -> None:
    assert output(capsys, cli.main, ["run", "--list"]) == output(capsys, run.main, ["--list"])
    with pytest.raises(SystemExit) as exited:
        cli.main(["train-prior", "--help"])
    assert exited.value.code == 0 and "--generator-steps" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exited:
        cli.main(["nonsense"])
    assert exited.value.code == 2


def test_list_names_every_shipped_suite_with_its_description(capsys: pytest.CaptureFixture[str]) -> None:
    lines = output(capsys, run.main, ["--list"]).splitlines()
    assert [line.split()[0] for line in lines] == available_suites()
    smoke = next(line for line in lines if line.startswith("smoke "))
    assert load_suite("smoke").description.split()[:4] == smoke.split()[1:5]
    assert all(len(line) <= 100 for line in lines)


def test_suite_is_required_without_list(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        run.main(["--dry-run"])
    assert exited.value.code == 2 and "--suite is required" in capsys.readouterr().err


def test_print_config_is_the_resolved_suite_as_yaml(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    overrides = ["--set", "victims.count=3", "--set", "seeds=[0, 5]"]
    text = output(capsys, run.main, ["--suite", "smoke", "--out", str(tmp_path / "o"), *overrides, "--print-config"])
    document = yaml.safe_load(text)
    suite = load_suite("smoke", overrides[1::2])
    assert document == suite.to_dict()
    assert document["victims"]["count"] == 3 and document["seeds"] == [0, 5]
    assert f"config hash {suite.config_hash()}" in text.splitlines()[0]
    assert list(tmp_path.iterdir()) == []


def test_dry_run_counts_the_harness_cells_and_writes_nothing(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "o"
    text = output(capsys, run.main, ["--suite", "smoke", "--out", str(out), "--dry-run"])
    suite = load_suite("smoke")
    cells = Harness(suite, None).cells()
    counts = re.search(r": (\d+) cells: (\d+) attack, (\d+) control, (\d+) reference", text)
    assert counts is not None, text
    total, attack, control, reference = map(int, counts.groups())
    assert total == len(cells) == attack + control + reference
    assert (attack, control, reference) == tuple(sum(c.kind == k for c in cells) for k in run.CELL_KINDS)
    assert f"0 finished, {len(cells)} to compute" in text
    assert f"utility cost: {len(suite.defenses)} defense settings" in text
    assert "no estimate: no finished rows" in text
    assert list(tmp_path.iterdir()) == []


def test_dry_run_of_references_only_counts_the_prior_only_references(capsys: pytest.CaptureFixture[str]) -> None:
    text = output(capsys, run.main, ["--suite", "smoke", "--dry-run", "--references-only"])
    suite = load_suite("smoke")
    expected = len(Harness(suite, None, references_only=True).cells())
    assert re.search(rf": {expected} cells: 0 attack, 0 control, {expected} reference", text), text
    assert "utility cost" not in text


def _row(suite_name: str, cell: Cell, seconds: float) -> CellRow:
    return CellRow(
        suite=suite_name,
        victim=cell.victim,
        defense=dict(cell.defense.spec) if cell.defense is not None else None,
        attack=cell.attack_key(),
        seed=cell.seed,
        kind=cell.kind,
        defense_label=cell.defense.label if cell.defense is not None else "prior only",
        attack_label=cell.attack_label,
        config_hash="test",
        code_version="test",
        seconds=seconds,
        evaluations=1,
        metrics={"psnr": 10.0},
        labels=[0],
        images=np.zeros((1, 1, 4, 4), dtype=np.float32),
    )


def test_dry_run_estimates_from_the_stored_rows(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    suite = load_suite("smoke", SMALL[1::2])
    cells = run.planned_cells(suite)
    done = 40
    out = tmp_path / "o"
    with ResultsStore(out / "results.sqlite") as store:
        for cell in cells[:done]:
            store.put_cell(_row(suite.name, cell, seconds=1.0))
    before = folder_bytes(out)
    text = output(capsys, run.main, ["--suite", "smoke", "--out", str(out), *SMALL, "--dry-run"])
    pending = len(cells) - done
    assert pending < 120, "one second per cell: the estimate is printed in seconds"
    assert f"{done} finished, {pending} to compute" in text
    assert f"time: about {pending} s on 1 worker(s)" in text
    assert f"of the {done} finished rows in the store" in text
    assert folder_bytes(out) == before
    text = output(capsys, run.main, ["--suite", "smoke", "--out", str(out), *SMALL, "--dry-run", "--devices", "2"])
    assert f"time: about {round(pending / 2)} s on 2 worker(s)" in text


@pytest.mark.parametrize(
    ("main", "defaults"),
    [
        (run.main, ["(default: 1)", "(default: results/SUITE)", "(default: --out)", "(default: none)"]),
        (submit.main, ["(default: all", "(default: results/submit-SUITE)", "(default: --out)"]),
        (perf.main, ["(default: perf.json)", "(default: 3)", "(default: lenet,convnet,resnet18)"]),
        (train_prior.main, ["(default: 10000)", "(default: 0.0001)", "(default: auto)", "(default: 32)"]),
    ],
    ids=["run", "submit", "perf", "train_prior"],
)
def test_every_help_shows_defaults(
    capsys: pytest.CaptureFixture[str], main: Callable[[list[str]], int], defaults: list[str]
) -> None:
    text = help_text(capsys, main)
    for default in defaults:
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text


def test_perf_help_answers_without_torch() -> None:
    code = (
        "import runpy, sys\n"
        "sys.argv = ['perf', '--help']\n"
        "try:\n    runpy.run_module('benchmarks.perf', run_name='__main__')\n"
        "except SystemExit as exit:\n    assert exit.code == 0\n"
        "print(sorted(m for m in ('torch', 'lightning', 'pytorch_lightning', 'nevergrad') if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--population" in done.stdout and done.stdout.splitlines()[-1] == "[]"


def test_utility_phase_is_announced(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    suite = load_suite("smoke", ["victims.count=1"])
    options = {"seed": suite.utility.seed, **dict(suite.utility.options)}
    with ResultsStore(tmp_path / "results.sqlite") as store:
        run._announce_utility(suite, store, run.RankInfo(), references_only=False)
        assert f"training {len(suite.defenses)} defense settings" in capsys.readouterr().err
        for defense in suite.defenses[1:]:
            store.put_utility(defense.spec, options, {"update_cosine": 1.0}, "test", "test", 1.0)
        run._announce_utility(suite, store, run.RankInfo(), references_only=False)
        assert "training 1 defense settings" in capsys.readouterr().err
        store.put_utility(suite.defenses[0].spec, options, {"update_cosine": 1.0}, "test", "test", 1.0)
        run._announce_utility(suite, store, run.RankInfo(), references_only=False)
        run._announce_utility(suite, store, run.RankInfo(), references_only=True)
        assert capsys.readouterr().err == ""


def test_progress_bar_redraws_rarely_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    assert not sys.stderr.isatty()
    bar = Harness(load_suite("smoke"), None)._progress(3, 0)
    try:
        assert bar.mininterval == LOG_PROGRESS_SECONDS >= 30
    finally:
        bar.close()


def test_report_goes_under_the_results_folder_unless_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    suite = load_suite("all")
    parser = run.build_parser()
    assert run.output_paths(parser.parse_args(["--suite", "all"]), suite) == (Path("results/all"),) * 2
    published = parser.parse_args(["--suite", "all", "--report-dir", str(tmp_path / "leaderboards/all")])
    assert run.output_paths(published, suite) == (Path("results/all"), tmp_path / "leaderboards/all")
