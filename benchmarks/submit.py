"""Submit a defense to the leaderboard: validate its YAML entry, evaluate only its cells, write its JSON.

    python -m benchmarks.submit leaderboards/submissions/NAME.yaml [--plugin PATH.py] [--suite all]
                                [--set key=value ...] [--leaderboards DIR] [--out DIR] [--report-dir DIR]
                                [--entry-out PATH]

An entry (``leaderboards/submissions/NAME.yaml``, read with ``yaml.safe_load``)::

    name: Top-k sparsification 90%          # shown in the tables; not a built-in label or another entry's name
    authors: [Jane Doe, John Roe]
    paper: https://arxiv.org/abs/...        # or null
    defense: {name: sparsification, ratio: 0.9}     # a registered defense with parameters,
    #        {name: my_defense:MyDefense, strength: 2}   or a Defense subclass of a plugin given with --plugin
    claimed_utility: {update_cosine: 0.7, accuracy_drop: 0.02}  # optional; compared with the measured one
    notes: free text                        # optional

Custom code runs only from a file the command line names: ``--plugin path/to/my_defense.py`` imports that file
(its stem, ``my_defense``, is then the module name in ``defense.name``) and the entry's class, a subclass of
``ggl.defenses.Defense``, is instantiated with the entry's parameters; the YAML alone can name only registered
defenses, project modules (``ggl.*``, ``benchmarks.*``) and loaded plugins (see ``ggl.defenses.loader``).

The standard settings are not computed again: their rows ship without images in ``leaderboards/SUITE/rows.jsonl``
(``benchmarks.shipped``). When those rows are of the suite's configuration (the same config hash; ``--set`` makes
another one), they seed the working store (default ``results/submit-SUITE``) and the harness computes only the
entry's cells: its attacks, their controls, its prior-only references and its utility cost. Otherwise (no shipped
rows, or rows of another configuration) the whole suite is computed, said on stderr, so that the rank is never one
among a partial store. The report of the standard settings and the entry goes to ``--report-dir`` (default: the
working store's folder; nothing under ``leaderboards/`` is written unless ``--report-dir`` names it), and
``NAME.json`` beside the YAML gets the evaluation under ``SUITE@CONFIG_HASH``: the figures with their intervals,
the rank among the standard settings, the config hash, the code version and the entry's own rows (cells, utility,
failures) in the shipped rows' form, without images. A pull request adds ``NAME.yaml`` and ``NAME.json`` only;
``python -m benchmarks.leaderboard --suite SUITE`` regenerates the published tables from the committed files.
Exit status: 0 done; 2 invalid entry, plugin, output path or shipped rows (every bad field is listed, before any
evaluation); 1 some cells failed.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import reprlib
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ggl.defenses import DEFENSES, build_defense, load_plugins
from ggl.io import atomic_write, canonical_json, pretty_json

from .cells import expand_cells
from .cli import HelpFormatter
from .config import DefenseConfig, SuiteConfig, load_suite, output_file, output_folder
from .shipped import ROWS_FILE, ShippedRows, evaluation_key, import_rows, read_rows, store_records
from .store import ResultsStore, StoreError, open_store

ENTRY_FIELDS = ("name", "authors", "paper", "defense", "claimed_utility", "notes")
UTILITY_FIELDS = ("update_cosine", "accuracy", "clean_accuracy", "accuracy_drop")
ENTRY_SCHEMA = "ggl-bench-submission-v1"
UTILITY_TOLERANCE = 0.05
RESERVED_LABELS = ("prior only",)
"""Row labels the tables give to the prior-only references; no submission may take them."""


class SubmissionError(ValueError):
    """An invalid submission; ``problems`` lists every bad field with what is allowed."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.source = source
        self.problems = problems
        super().__init__(f"{source}: invalid submission:\n  - " + "\n  - ".join(problems))


@dataclass(frozen=True)
class Submission:
    """A validated leaderboard entry."""

    name: str
    authors: tuple[str, ...]
    paper: str | None
    defense: dict[str, Any]
    claimed_utility: dict[str, float] = field(default_factory=dict)
    notes: str = ""
    source: str = ""


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxdict, _SHORT.maxstring = 3, 5, 5, 80


def _shown(value: Any) -> str:
    """A short repr of entry data for messages (a YAML file's aliases can nest a huge structure)."""
    return _SHORT.repr(value)


def _label_key(label: str) -> str:
    """How labels compare: case and runs of spaces do not tell two rows of a table apart."""
    return " ".join(label.split()).casefold()


def builtin_label(name: str) -> str | None:
    """The built-in label ``name`` takes (a registered defense, its ``name(...)`` form, a reference row), or None."""
    key = _label_key(name)
    for builtin in (*DEFENSES, *RESERVED_LABELS):
        if key == builtin.casefold() or key.startswith(builtin.casefold() + "("):
            return builtin
    return None


def _sibling_names(path: Path) -> dict[str, Path]:
    """Label key -> file of each other submission in ``path``'s folder (unreadable files are skipped)."""
    names: dict[str, Path] = {}
    for other in sorted(path.parent.glob("*.yaml")):
        if other.resolve() == path.resolve():
            continue
        try:
            data = yaml.safe_load(other.read_text())
        except (OSError, ValueError, yaml.YAMLError, RecursionError):
            continue
        if isinstance(data, dict) and isinstance(data.get("name"), str):
            names.setdefault(_label_key(data["name"]), other)
    return names


def _name_problems(name: Any, path: Path) -> list[str]:
    """What is wrong with an entry's ``name``: missing, a built-in label, or another submission's name."""
    if not isinstance(name, str) or not name.strip():
        return [f"field 'name': required, a non-empty string; got {_shown(name)}"]
    builtin = builtin_label(name)
    if builtin is not None:
        return [f"field 'name': {name!r} clashes with the built-in label {builtin!r}; choose a name of your own"]
    other = _sibling_names(path).get(_label_key(name))
    if other is not None:
        return [f"field 'name': {name!r} is already the name of the submission {other.name}; choose another"]
    return []


def _defense_problems(defense: Any) -> list[str]:
    """What is wrong with an entry's ``defense`` field: not a single setting, or it cannot be built."""
    if not isinstance(defense, dict) or not isinstance(defense.get("name"), str):
        return [
            "field 'defense': required, a mapping with 'name' (a registered defense or module:Class) "
            f"and its parameters; got {_shown(defense)}"
        ]
    swept = sorted(k for k, v in defense.items() if isinstance(v, (list, dict)))
    if swept:
        return [f"field 'defense.{swept[0]}': an entry is one setting; give a single value"]
    try:
        build_defense(dict(defense))
    except Exception as error:  # any construction error is a bad entry, reported with its field
        return [f"field 'defense': {error}"]
    return []


def _claimed_problems(claimed: Any) -> list[str]:
    """What is wrong with an entry's ``claimed_utility`` field (unknown names, values that are not numbers)."""
    if not isinstance(claimed, dict):
        return [f"field 'claimed_utility': a mapping of {', '.join(UTILITY_FIELDS)}; got {_shown(claimed)}"]
    problems = []
    for key, value in claimed.items():
        if key not in UTILITY_FIELDS:
            problems.append(f"field 'claimed_utility.{key}': unknown; allowed: {', '.join(UTILITY_FIELDS)}")
        elif isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            problems.append(f"field 'claimed_utility.{key}': a number; got {_shown(value)}")
    return problems


def load_submission(path: str | Path) -> Submission:
    """Read and validate an entry; raises ``SubmissionError`` naming every bad field."""
    source = str(path)
    path = Path(path)
    if not path.is_file():
        raise SubmissionError(source, ["<file>: no such file"])
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as error:
        raise SubmissionError(source, [f"<file>: cannot be read as UTF-8 text: {error}"]) from None
    except (yaml.YAMLError, RecursionError) as error:
        raise SubmissionError(source, [f"<file>: not valid YAML: {error}"]) from None
    if not isinstance(data, dict):
        raise SubmissionError(source, [f"<file>: must be a mapping of fields ({', '.join(ENTRY_FIELDS)})"])
    problems = [
        f"field {_shown(key)}: unknown; allowed: {', '.join(ENTRY_FIELDS)}"
        for key in sorted(map(str, set(data) - set(ENTRY_FIELDS)))
    ]
    name = data.get("name")
    problems += _name_problems(name, path)
    authors = data.get("authors")
    if isinstance(authors, str):
        authors = [authors]
    if not isinstance(authors, list) or not authors or not all(isinstance(a, str) and a.strip() for a in authors):
        problems.append(f"field 'authors': required, a name or a list of names; got {_shown(data.get('authors'))}")
        authors = []
    paper = data.get("paper")
    if paper is not None and (not isinstance(paper, str) or not paper.startswith(("http://", "https://"))):
        problems.append(f"field 'paper': a link starting with http:// or https://, or null; got {_shown(paper)}")
    defense = data.get("defense")
    problems += _defense_problems(defense)
    claimed = data.get("claimed_utility") or {}
    problems += _claimed_problems(claimed)
    notes = data.get("notes") or ""
    if not isinstance(notes, str):
        problems.append(f"field 'notes': a string; got {_shown(notes)}")
    if problems:
        raise SubmissionError(source, problems)
    assert isinstance(name, str) and isinstance(defense, dict) and isinstance(claimed, dict)
    return Submission(
        name.strip(),
        tuple(a.strip() for a in authors),
        paper,
        dict(defense),
        {k: float(v) for k, v in claimed.items()},
        notes,
        source,
    )


class _Plan(NamedTuple):
    """What ``main`` evaluates and where it writes, all checked before any evaluation.

    ``suite`` is the standard configuration (``--suite`` with ``--set``); ``ranked`` adds the entry to its settings;
    ``evaluated`` is what the harness computes: the entry's cells alone when ``shipped`` (the suite's shipped rows,
    of this configuration) seeds the store, else the whole of ``ranked``.
    """

    submission: Submission
    suite: SuiteConfig
    ranked: SuiteConfig
    evaluated: SuiteConfig
    shipped: ShippedRows | None
    overrides: list[str]
    out: Path
    report_dir: Path
    entry_out: Path


def _without_victims(worst_case: dict[str, Any]) -> dict[str, Any]:
    """A worst case without its per-victim breakdown (the entry's rows hold what it is made of)."""
    return {key: value for key, value in worst_case.items() if key != "per_victim"}


def entry_evaluation(report_json: dict[str, Any], plan: _Plan, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The entry's evaluation from the report of the standard settings and the entry (``leaderboard.json``): its
    figures with intervals, rank, utility, provenance and its own rows (``rows``, without images)."""
    submission = plan.submission
    spec = canonical_json(submission.defense)
    matches = [e for e in report_json["leaderboard"] if canonical_json(e["spec"]) == spec]
    if not matches:
        raise RuntimeError(f"the report has no row for {submission.name}; did every cell fail?")
    entry = matches[0]
    if not entry["attacks"]:
        raise RuntimeError(f"every cell of {submission.name} failed; no evaluation is recorded (see the errors above)")
    measured = (entry.get("utility") or {}).get("metrics", {})
    check = {}
    for key, claimed in submission.claimed_utility.items():
        if key in measured and isinstance(measured[key], (int, float)):
            check[key] = {
                "claimed": claimed,
                "measured": measured[key],
                "within_tolerance": abs(float(measured[key]) - claimed) <= UTILITY_TOLERANCE,
            }
    shipped = plan.shipped
    return {
        "suite": plan.suite.name,
        "overrides": list(plan.overrides),
        "config_hash": plan.suite.config_hash(),
        "evaluated_config_hash": plan.evaluated.config_hash(),
        "shipped_rows": None if shipped is None else {"config_hash": shipped.config_hash, "sha256": shipped.digest},
        "victims": report_json["victims"],
        "seeds": report_json["seeds"],
        "code_versions": sorted({row["code_version"] for row in rows if row["table"] == "cells"}),
        "rank": entry["rank"],
        "band": entry["band"],
        "ranked_settings": sum(1 for e in report_json["leaderboard"] if e["rank"]),
        "standard_settings": len(plan.suite.defenses),
        "worst_case": _without_victims(entry["worst_case"]),
        "psnr_gain_over_prior": entry["psnr_gain_over_prior"],
        "strongest_attack": entry["strongest_attack"],
        "best": entry["best"],
        "utility": entry.get("utility"),
        "utility_check": check,
        "attacks": entry["attacks"],
        "controls": entry["controls"],
        "references": [{**r, "worst_case": _without_victims(r["worst_case"])} for r in report_json["references"]],
        "rows": rows,
    }


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.submit`` (an option's help ends with its default)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.submit", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("entry", help="leaderboards/submissions/NAME.yaml")
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="PATH.py",
        help="a Python file with the entry's Defense subclass, imported before the entry is read (the only custom "
        "code a submission runs; read it before you run it); its stem is the module name in defense.name",
    )
    parser.add_argument("--suite", default="all", help="suite to evaluate on (default: all, the standard one)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite field (a smaller evaluation); recorded in the entry",
    )
    parser.add_argument(
        "--leaderboards",
        default="leaderboards",
        metavar="DIR",
        help="where the shipped rows of the standard settings are read from: DIR/SUITE/rows.jsonl",
    )
    parser.add_argument("--out", default=None, help="results store folder (default: results/submit-SUITE)")
    parser.add_argument(
        "--report-dir",
        default=None,
        help="where the report of the standard settings and the entry goes (default: --out); the published "
        "tables are regenerated with python -m benchmarks.leaderboard instead",
    )
    parser.add_argument("--entry-out", default=None, help="the entry's JSON (default: NAME.json beside the YAML)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def write_entry(path: Path, submission: Submission, evaluation: dict[str, Any]) -> None:
    """Add ``evaluation`` to the entry's JSON under ``SUITE@CONFIG_HASH`` (earlier evaluations of the same defense
    are kept), atomically."""
    existing: dict[str, Any] = {}
    if path.is_file():
        try:
            existing = json.loads(path.read_text())
        except json.JSONDecodeError:
            existing = {}
    evaluations = dict(existing.get("evaluations", {})) if existing.get("defense") == submission.defense else {}
    evaluations[evaluation_key(evaluation["suite"], evaluation["config_hash"])] = evaluation
    document = {
        "schema": ENTRY_SCHEMA,
        "name": submission.name,
        "authors": list(submission.authors),
        "paper": submission.paper,
        "defense": submission.defense,
        "claimed_utility": submission.claimed_utility,
        "notes": submission.notes,
        "evaluations": dict(sorted(evaluations.items())),
    }
    atomic_write(path, pretty_json(document))


def _print_outcome(submission: Submission, evaluation: dict[str, Any], entry_out: Path, report_dir: Path) -> None:
    worst = evaluation["worst_case"]["psnr_above_baseline"]
    interval = " [{:+.2f}, {:+.2f}]".format(*worst["interval"]) if worst.get("interval") else ""
    print(
        f"{submission.name}: worst-case PSNR above baseline {worst['value']:+.2f} dB{interval} "
        f"(rank {evaluation['rank']} of {evaluation['ranked_settings']}: the suite's "
        f"{evaluation['standard_settings']} settings and this entry; band {evaluation['band']}); entry written to "
        f"{entry_out}; report in {report_dir}",
        file=sys.stderr,
    )
    for key, check in evaluation["utility_check"].items():
        if not check["within_tolerance"]:
            print(
                f"warning: claimed {key} {check['claimed']} differs from the measured {check['measured']} by more "
                f"than {UTILITY_TOLERANCE}",
                file=sys.stderr,
            )


def output_problems(entry_out: Path, report_dir: Path) -> list[str]:
    """Why the entry's JSON or the report could not be written; found before hours of evaluation, not after.

    The paths are checked as every command checks its outputs (``output_file``, ``output_folder``); the entry's
    folder must exist as well, and an existing entry must be writable.
    """
    problems = []
    for check, option, path in ((output_file, "--entry-out", entry_out), (output_folder, "--report-dir", report_dir)):
        try:
            check(option, path)
        except ValueError as error:
            problems.append(str(error))
    if problems:
        return problems
    if not entry_out.parent.is_dir():
        return [f"--entry-out {entry_out}: the folder {entry_out.parent} does not exist"]
    if entry_out.exists() and not os.access(entry_out, os.W_OK):
        return [f"--entry-out {entry_out}: the file is read-only"]
    return []


def setting_problems(submission: Submission, suite: SuiteConfig) -> list[str]:
    """An entry that is already a setting of the suite: the same label, or the same defense spec."""
    problems = []
    for defense in suite.defenses:
        if _label_key(defense.label) == _label_key(submission.name):
            problems.append(
                f"field 'name': {submission.name!r} is the label of a defense of suite {suite.name!r}; choose another"
            )
        if canonical_json(dict(defense.spec)) == canonical_json(submission.defense):
            problems.append(
                f"field 'defense': {_shown(submission.defense)} is the setting {defense.label!r} of suite "
                f"{suite.name!r}, already on its leaderboard; submit another setting"
            )
    return problems


def shipped_rows(path: Path, suite: SuiteConfig) -> ShippedRows | None:
    """The suite's shipped rows when they are of this configuration; None (saying why on stderr) when the whole
    suite must be computed instead: no rows shipped, or rows of another configuration."""
    cells = len(expand_cells(suite))
    whole = (
        f"the whole suite is computed: its {len(suite.defenses)} settings ({cells} cells) and the entry's, so that "
        "the entry is ranked among all of them (the finished cells of a store given with --out are reused)"
    )
    if not path.is_file():
        print(f"note: no shipped rows of suite {suite.name!r} at {path}; {whole}", file=sys.stderr)
        return None
    shipped = read_rows(path)
    if shipped.config_hash != suite.config_hash():
        print(
            f"note: {path} holds the rows of configuration {shipped.config_hash}, but suite {suite.name!r} as given "
            f"(with its --set overrides) is configuration {suite.config_hash()}: the shipped rows do not apply; "
            f"{whole}",
            file=sys.stderr,
        )
        return None
    return shipped


def _plan(args: argparse.Namespace) -> _Plan:
    """Load the plugins, the entry, the suite and its shipped rows, and check labels and output paths; ValueError if
    any is bad."""
    load_plugins(args.plugins)
    submission = load_submission(args.entry)
    suite = load_suite(args.suite, args.overrides)
    out = Path(args.out) if args.out else Path("results") / f"submit-{suite.name}"
    report_dir = Path(args.report_dir) if args.report_dir else out
    entry_out = Path(args.entry_out) if args.entry_out else Path(args.entry).with_suffix(".json")
    problems = setting_problems(submission, suite) + output_problems(entry_out, report_dir)
    if problems:
        raise SubmissionError(args.entry, problems)
    entry = DefenseConfig(submission.name, submission.defense)
    ranked = replace(suite, defenses=(*suite.defenses, entry))
    shipped = shipped_rows(Path(args.leaderboards) / suite.name / ROWS_FILE, suite)
    evaluated = replace(suite, defenses=(entry,)) if shipped is not None else ranked
    return _Plan(submission, suite, ranked, evaluated, shipped, list(args.overrides), out, report_dir, entry_out)


def seed_store(store: ResultsStore, shipped: ShippedRows) -> int:
    """Put the shipped rows into the working store once; the cells added. A store seeded from other shipped rows
    is refused (its standard rows would not be the shipped ones)."""
    key = f"shipped:{shipped.name}"
    seeded = store.get_meta(key)
    if seeded == shipped.digest:
        return 0
    if seeded is not None:
        raise StoreError(
            f"results store {store.path} was seeded from other shipped rows of suite {shipped.name!r} (sha256 "
            f"{seeded[:12]}, now {shipped.digest[:12]} in {shipped.path}); remove {store.path.parent} or give "
            "another --out"
        )
    added = import_rows(store, shipped.records, shipped.suite)
    store.set_meta(key, shipped.digest)
    return added


def entry_rows(store: ResultsStore, plan: _Plan) -> list[dict[str, Any]]:
    """The entry's own rows (its cells, utility cost and failed cells), as shipped rows are written."""
    spec = canonical_json(plan.submission.defense)
    records = store_records(store, plan.ranked)
    return [record for record in records if canonical_json(record["defense"]) == spec]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        plan = _plan(args)
    except ValueError as error:  # SubmissionError, SuiteError, RowsError, a plugin that cannot be imported
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .report import build_report, leaderboard_json, write_report
    from .run import evaluate

    try:
        store = open_store(plan.out)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    with store:
        try:
            if plan.shipped is not None:
                added = seed_store(store, plan.shipped)
                print(
                    f"{plan.shipped.path}: the shipped rows of the suite's {len(plan.suite.defenses)} settings are in "
                    f"{store.path} ({added} cells added now); computing only the cells of {plan.submission.name}",
                    file=sys.stderr,
                )
            store.set_meta(f"suite:{plan.suite.name}", canonical_json(plan.suite.to_dict()))  # the tables' order
        except (StoreError, ValueError) as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        progress = not args.no_progress
        summary = evaluate(plan.evaluated, store, progress=progress, tensorboard_dir=plan.out / "tensorboard")
        if summary is None:
            return 2
        for line in summary.lines():
            print(line, file=sys.stderr)
        write_report(store, plan.report_dir, plan.ranked, shipped=plan.suite)
        report = leaderboard_json(build_report(store, plan.ranked))
        rows = entry_rows(store, plan)
    try:
        evaluation = entry_evaluation(report, plan, rows)
        write_entry(plan.entry_out, plan.submission, evaluation)
    except (RuntimeError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    _print_outcome(plan.submission, evaluation, plan.entry_out, plan.report_dir)
    return 1 if summary.failed else 0


if __name__ == "__main__":
    sys.exit(main())
