"""Build the static leaderboard site from the committed reports (``leaderboards/SUITE/leaderboard.json``).

The site is plain HTML with one small script (sorting and filtering the ranked table) and the report's PNGs copied
next to the pages, so it works from ``file://`` and from any static host. The same inputs give byte-identical
files: pages are rendered in the reports' own order, images are copied byte for byte. The output folder is replaced
only once the whole site is written, so a failed build leaves the previous site (or none) in place.

Every field the reports may omit (utility, intervals, bands, per-victim data, a grid) is read defensively: a
missing value is shown as ``-`` rather than stopping the build.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from jinja2 import Environment, FileSystemLoader, StrictUndefined

from ..report.figures import slug

PACKAGE = Path(__file__).resolve().parent
TEMPLATES = PACKAGE / "templates"
STATIC = PACKAGE / "static"
SUITES = PACKAGE.parent / "suites"
DEFAULT_OUT = Path("build/site")
DEFAULT_LEADERBOARDS = Path("leaderboards")
RESERVED = ("static",)
"""Names of the site's own folders, which no suite may take."""
DOWNLOADS = ("leaderboard.json", "leaderboard.csv")
"""Report files the suite page offers for download (those the report has)."""
MISSING = "-"
"""How an absent or undefined number is shown (as in ``leaderboard.md``)."""


@dataclass(frozen=True)
class Cell:
    """One table cell: the text shown, and the raw number it stands for (``None`` for text cells).

    ``sort`` is the number as a JavaScript-readable string (``data-value``): the table sorts on it and tests compare
    it with the JSON."""

    text: str
    value: float | None = None

    @property
    def sort(self) -> str:
        if self.value is None or math.isnan(self.value):
            return ""
        if math.isinf(self.value):
            return "Infinity" if self.value > 0 else "-Infinity"
        return repr(self.value)


@dataclass(frozen=True)
class Column:
    """A column of the ranked table: its key (the test and the script find cells by it), title and explanation."""

    key: str
    title: str
    numeric: bool
    help: str


COLUMNS = (
    Column("rank", "Rank", True, "Order by worst-case PSNR above baseline (lower is more private)."),
    Column("band", "Band", True, "Settings in one band are not told apart by these victims."),
    Column("defense", "Defense", False, "The defense setting; click for its reconstructions and per-victim numbers."),
    Column(
        "psnr_above_baseline",
        "Worst-case PSNR above baseline (dB)",
        True,
        "Per victim the best PSNR over all attacks minus the victim's baseline, averaged; 95% interval.",
    ),
    Column(
        "pick_above_baseline",
        "Attacker's pick PSNR above baseline (dB)",
        True,
        "The same figure for the reconstruction a server would choose without the private images.",
    ),
    Column("victims_recovered", "Victims recovered", True, "Share of victims with worst-case SSIM at the threshold."),
    Column("accuracy_drop", "Accuracy drop (± sd)", True, "Loss of test accuracy of a model trained with the defense."),
    Column("update_cosine", "Update cosine", True, "Cosine between the defended and the clean update."),
    Column("deciding", "Deciding attack (count)", False, "How many victims each attack gave the worst case."),
    Column("flags", "Flags", False, "cut off k/n: searches still improving at their budget; failed simulation check."),
    Column("psnr", "Worst-case PSNR (dB)", True, "Per victim the best PSNR over all attacks, averaged; 95% interval."),
    Column("ssim", "Worst-case SSIM", True, "Per victim the best SSIM over all attacks, averaged; 95% interval."),
    Column("strongest_attack", "Best attack on average", False, "The attack with the best mean (not the worst case)."),
    Column("psnr_gain_over_prior", "Its mean PSNR above prior (dB)", True, "That attack's mean above the prior."),
    Column("victims", "Victims", True, "Victims behind the worst-case figure."),
)
"""The ranked table's columns, in order."""

PAIR_METRICS = (("psnr", "PSNR", 2), ("ssim", "SSIM", 3), ("mse", "MSE", 4), ("label_accuracy", "label accuracy", 2))
"""The metrics of the per-attack and per-victim tables: key, title, decimals."""
METRIC_DIGITS = {key: digits for key, _, digits in PAIR_METRICS}
"""Decimals of each metric (as ``leaderboard.md`` shows them)."""


def number(value: Any) -> float | None:
    """``value`` as a float: numbers, and the strings the reports write for non-finite values (``nan``, ``inf``);
    ``None`` for anything else."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def fmt(value: Any, digits: int = 2, signed: bool = False) -> str:
    """A number with ``digits`` decimals (``+`` sign when ``signed``); ``-`` when absent or undefined."""
    x = number(value)
    if x is None or math.isnan(x):
        return MISSING
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return f"{x:+.{digits}f}" if signed else f"{x:.{digits}f}"


def get(data: Any, *path: str) -> Any:
    """``data[path[0]][path[1]]...``, or ``None`` where a key is missing or a step is not a mapping."""
    for key in path:
        if not isinstance(data, dict):
            return None
        data = data.get(key)
    return data


def estimate_cell(estimate: Any, digits: int = 2, signed: bool = False) -> Cell:
    """An estimate ``{value, interval: [low, high]}`` as ``value [low, high]``."""
    value = get(estimate, "value")
    text = fmt(value, digits, signed)
    interval = get(estimate, "interval")
    if text != MISSING and isinstance(interval, list) and len(interval) == 2:
        text += f" [{fmt(interval[0], digits, signed)}, {fmt(interval[1], digits, signed)}]"
    return Cell(text, number(value))


def number_cell(value: Any, digits: int = 2, signed: bool = False) -> Cell:
    """A plain number."""
    return Cell(fmt(value, digits, signed), number(value))


def text_cell(value: Any) -> Cell:
    """A text cell (``-`` when empty)."""
    return Cell(str(value) if value not in (None, "") else MISSING)


def deciding_text(worst: Any) -> str:
    """``GGL (adam) 9, iDLG 3``: how many victims each attack gave the worst case."""
    parts = [f"{d.get('attack')} {d.get('count')}" for d in get(worst, "deciding_attacks") or [] if isinstance(d, dict)]
    return ", ".join(parts) or MISSING


def flags_text(entry: dict[str, Any]) -> str:
    """The setting's flags as ``leaderboard.md`` words them."""
    worst = entry.get("worst_case")
    if not isinstance(worst, dict):
        return MISSING
    flags = []
    attacks = worst.get("attacks", "all")
    victims = get(worst, "per_victim") or []
    if attacks != "all" or entry.get("simulation_failed"):
        only = f"{attacks} attacks only" if victims else f"no {attacks} attack in the suite, unranked"
        flags.append(f"simulation check failed: {only}")
    cut_off = number(worst.get("cut_off"))
    if cut_off:
        flags.append(f"cut off {int(cut_off)}/{len(victims)}")
    return "; ".join(flags) or MISSING


def row_cells(entry: dict[str, Any]) -> dict[str, Cell]:
    """The ranked table's cells of one defense setting, by column key."""
    worst = entry.get("worst_case")
    utility = get(entry, "utility", "metrics") or {}
    drop = Cell(fmt(utility.get("accuracy_drop"), 3, signed=True), number(utility.get("accuracy_drop")))
    if drop.text != MISSING and number(utility.get("accuracy_drop_std")) is not None:
        drop = Cell(f"{drop.text} ± {fmt(utility.get('accuracy_drop_std'), 3)}", drop.value)
    return {
        "rank": number_cell(entry.get("rank"), 0),
        "band": number_cell(entry.get("band"), 0),
        "defense": text_cell(entry.get("defense")),
        "psnr_above_baseline": estimate_cell(get(worst, "psnr_above_baseline"), 2, signed=True),
        "pick_above_baseline": estimate_cell(get(worst, "pick_above_baseline"), 2, signed=True),
        "victims_recovered": estimate_cell(get(worst, "victims_recovered"), 2),
        "accuracy_drop": drop,
        "update_cosine": number_cell(utility.get("update_cosine"), 3),
        "deciding": Cell(deciding_text(worst)),
        "flags": Cell(flags_text(entry)),
        "psnr": estimate_cell(get(worst, "metrics", "psnr"), METRIC_DIGITS["psnr"]),
        "ssim": estimate_cell(get(worst, "metrics", "ssim"), METRIC_DIGITS["ssim"]),
        "strongest_attack": text_cell(entry.get("strongest_attack")),
        "psnr_gain_over_prior": number_cell(entry.get("psnr_gain_over_prior"), 2, signed=True),
        "victims": number_cell(get(worst, "psnr_above_baseline", "victims"), 0),
    }


def spec_text(spec: Any) -> str:
    """Parameters of a spec as ``key=value, ...`` (without its name)."""
    if not isinstance(spec, dict):
        return MISSING
    return ", ".join(f"{k}={spec[k]}" for k in sorted(spec) if k != "name") or MISSING


def canonical(value: Any) -> str:
    """The one JSON spelling of a spec, for matching a submission with its setting."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def load_submissions(folder: Path) -> list[dict[str, Any]]:
    """The submitted entries (``NAME.yaml``) in ``folder``, by file name; unreadable files are skipped."""
    entries = []
    for path in sorted(folder.glob("*.yaml")) if folder.is_dir() else []:
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            continue
        if isinstance(data, dict) and data.get("name"):
            paper = data.get("paper")
            authors = data.get("authors")
            entries.append(
                {
                    "file": path.name,
                    "name": str(data["name"]),
                    "authors": ", ".join(map(str, authors)) if isinstance(authors, list) else str(authors or ""),
                    "paper": paper if isinstance(paper, str) and paper.startswith(("http://", "https://")) else None,
                    "defense": data.get("defense"),
                    "notes": str(data.get("notes") or ""),
                }
            )
    return entries


def submission_for(entry: dict[str, Any], submissions: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The submission a setting evaluates: the same defense spec, or the setting shown under its name."""
    spec = canonical(entry.get("spec"))
    label = str(entry.get("defense", "")).casefold()
    for submission in submissions:
        if canonical(submission["defense"]) == spec or submission["name"].casefold() == label:
            return submission
    return None


def suite_description(board: dict[str, Any]) -> str:
    """The suite's description: from the report when it has one, else from the suite definition of that name."""
    if isinstance(board.get("description"), str):
        return board["description"].strip()
    path = SUITES / f"{board.get('suite')}.yaml"
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError):
        return ""
    description = data.get("description") if isinstance(data, dict) else None
    return " ".join(description.split()) if isinstance(description, str) else ""


def attack_budgets(board: dict[str, Any]) -> list[dict[str, str]]:
    """Every attack of the suite with its parameters (the budget among them), in the order the report lists them."""
    seen: dict[str, dict[str, str]] = {}
    for entry in board.get("leaderboard") or []:
        for pair in (entry.get("attacks") or []) if isinstance(entry, dict) else []:
            label = str(get(pair, "attack"))
            if label not in seen:
                seen[label] = {"attack": label, "parameters": spec_text(get(pair, "spec"))}
    return list(seen.values())


def pair_row(pair: dict[str, Any]) -> dict[str, Any]:
    """One attack (or control, or reference) of a setting: its means over victims."""
    metrics = pair.get("metrics") or {}
    return {
        "attack": str(pair.get("attack", MISSING)),
        "kind": str(pair.get("kind", MISSING)),
        "metrics": [fmt(metrics.get(name), digits) for name, _, digits in PAIR_METRICS],
        "gain": fmt(pair.get("psnr_gain_over_prior"), 2, signed=True),
        "evaluations": fmt(pair.get("mean_evaluations"), 0),
        "seconds": fmt(pair.get("mean_seconds"), 2),
        "victims": fmt(pair.get("victims"), 0),
    }


def victim_row(victim: dict[str, Any]) -> dict[str, Any]:
    """One victim's worst case: its values, baseline, and per seed which attack gave the worst-case PSNR and which
    reconstruction the attacker would pick."""
    metrics = victim.get("metrics") or {}
    seeds = [s for s in victim.get("seeds") or [] if isinstance(s, dict)]
    deciding = "; ".join(f"seed {s.get('seed')}: {get(s, 'metrics', 'psnr', 'attack') or MISSING}" for s in seeds)
    pick = "; ".join(f"seed {s.get('seed')}: {get(s, 'attackers_pick', 'attack') or MISSING}" for s in seeds)
    return {
        "victim": text_cell(victim.get("victim")),
        "cells": [
            number_cell(victim.get("psnr_above_baseline"), 2, signed=True),
            number_cell(victim.get("pick_above_baseline"), 2, signed=True),
            *(number_cell(metrics.get(name), digits) for name, _, digits in PAIR_METRICS),
            number_cell(victim.get("baseline_psnr"), 2),
        ],
        "baseline": text_cell(victim.get("baseline")),
        "recovered": "yes" if number(victim.get("recovered")) else "no",
        "cut_off": "yes" if victim.get("cut_off") else "no",
        "deciding": deciding or MISSING,
        "pick": pick or MISSING,
    }


@dataclass
class Setting:
    """One defense setting of a suite, with its page."""

    entry: dict[str, Any]
    page: str
    grid: str | None
    cells: dict[str, Cell]
    submission: dict[str, Any] | None


@dataclass
class Suite:
    """One suite's report, with the files its pages show."""

    name: str
    folder: Path
    board: dict[str, Any]
    settings: list[Setting] = field(default_factory=list)
    plot: str | None = None
    downloads: list[str] = field(default_factory=list)

    @property
    def top(self) -> Setting | None:
        """The setting with the lowest rank (the most private), or None when no setting is ranked."""
        ranked = [
            s for s in self.settings if s.cells["rank"].value is not None and not math.isnan(s.cells["rank"].value)
        ]
        return min(ranked, key=lambda s: s.cells["rank"].value or 0.0, default=None)


def load_suite(folder: Path, submissions: list[dict[str, Any]], name: str | None = None) -> Suite:
    """The report in ``folder`` (named ``name``, default the folder's) with each setting's page name, grid and
    submission."""
    board = json.loads((folder / "leaderboard.json").read_text(encoding="utf-8"))
    if not isinstance(board, dict):
        raise ValueError(f"{folder / 'leaderboard.json'}: not a JSON object")
    suite = Suite(name or folder.name, folder, board)
    suite.plot = "privacy_utility.png" if (folder / "privacy_utility.png").is_file() else None
    suite.downloads = [name for name in DOWNLOADS if (folder / name).is_file()]
    pages: set[str] = set()
    for entry in board.get("leaderboard") or []:
        if not isinstance(entry, dict):
            continue
        name = slug(str(entry.get("defense", "")))
        page = f"{name}.html"
        if page in pages:
            raise ValueError(f"{folder}: two settings share the page {page}")
        pages.add(page)
        grid = f"grids/{name}.png" if (folder / "grids" / f"{name}.png").is_file() else None
        suite.settings.append(Setting(entry, page, grid, row_cells(entry), submission_for(entry, submissions)))
    return suite


def load_suites(leaderboards: Path, submissions: list[dict[str, Any]]) -> list[Suite]:
    """Every suite report under ``leaderboards`` (a folder with ``leaderboard.json``), by folder name; a suite's
    variants (``SUITE/VARIANT/leaderboard.json``, the realistic track's) as suites named ``SUITE.VARIANT``, as their
    stores name them."""
    folders = sorted(p.parent for p in leaderboards.glob("*/leaderboard.json"))
    if not folders:
        raise FileNotFoundError(f"no {leaderboards}/SUITE/leaderboard.json found")
    reserved = [folder for folder in folders if folder.name in RESERVED]
    if reserved:
        raise ValueError(f"{reserved[0]}: the site uses the name {reserved[0].name!r} itself; rename the folder")
    variants = sorted(p.parent for p in leaderboards.glob("*/*/leaderboard.json"))
    named = [(folder, folder.name) for folder in folders]
    named += [(folder, f"{folder.parent.name}.{folder.name}") for folder in variants]
    return [load_suite(folder, submissions, name) for folder, name in sorted(named, key=lambda pair: pair[1])]


def environment() -> Environment:
    """The template environment: HTML autoescaping on, undefined names an error."""
    env = Environment(
        loader=FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = fmt
    env.filters["spec_text"] = spec_text
    env.globals.update(MISSING=MISSING, PAIR_METRICS=PAIR_METRICS, get=get)
    return env


def _copy(source: Path, target: Path) -> None:
    """Copy a file byte for byte (creating its folder)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8", newline="\n")


def render_site(suites: list[Suite], submissions: list[dict[str, Any]], out: Path) -> None:
    """Write every page, the script and stylesheet, and the images into the empty folder ``out``."""
    env = environment()
    for static in sorted(STATIC.iterdir()):
        if static.is_file():
            _copy(static, out / "static" / static.name)
    _write(
        out / "index.html",
        env.get_template("index.html").render(suites=suites, submissions=submissions, root="", title="Leaderboards"),
    )
    for suite in suites:
        folder = out / suite.name
        for name in suite.downloads:
            _copy(suite.folder / name, folder / name)
        if suite.plot:
            _copy(suite.folder / suite.plot, folder / suite.plot)
        _write(
            folder / "index.html",
            env.get_template("suite.html").render(
                suite=suite,
                columns=COLUMNS,
                description=suite_description(suite.board),
                attacks=attack_budgets(suite.board),
                references=[pair_row(r) for r in suite.board.get("references") or [] if isinstance(r, dict)],
                root="../",
                title=f"Leaderboard: {suite.name}",
            ),
        )
        for setting in suite.settings:
            if setting.grid:
                _copy(suite.folder / setting.grid, folder / setting.grid)
            entry = setting.entry
            pairs = [*(entry.get("attacks") or []), *(entry.get("controls") or [])]
            victims = get(entry, "worst_case", "per_victim") or []
            _write(
                folder / setting.page,
                env.get_template("setting.html").render(
                    suite=suite,
                    setting=setting,
                    columns=COLUMNS,
                    pairs=[pair_row(p) for p in pairs if isinstance(p, dict)],
                    victims=[victim_row(v) for v in victims if isinstance(v, dict)],
                    root="../",
                    title=f"{suite.name}: {entry.get('defense', MISSING)}",
                ),
            )


def build_site(leaderboards: Path = DEFAULT_LEADERBOARDS, out: Path = DEFAULT_OUT) -> Path:
    """Build the site from the reports under ``leaderboards`` into ``out`` (replaced as a whole); returns ``out``.

    The pages are written into a temporary folder beside ``out``, which then takes ``out``'s place: a build that
    fails leaves the previous site untouched."""
    leaderboards, out = Path(leaderboards), Path(out)
    submissions = load_submissions(leaderboards / "submissions")
    suites = load_suites(leaderboards, submissions)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes the folder private; the site is meant to be served
    try:
        render_site(suites, submissions, staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = Path(tempfile.mkdtemp(prefix=f".{out.name}-old-", dir=out.parent))
    try:
        if out.exists():
            out.rename(old / out.name)
        staging.rename(out)
    except BaseException:
        if (old / out.name).exists() and not out.exists():
            (old / out.name).rename(out)
        shutil.rmtree(staging, ignore_errors=True)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)
    return out


def find_chromium() -> str | None:
    """The path of the system's Chromium (Debian's ``chromium`` package), or None."""
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").is_file() else None


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 900) -> Path:
    """Save a ``width`` x ``height`` screenshot of the page ``page`` (a file) as ``png``, with Chromium driven by
    Playwright; for the documentation."""
    from playwright.sync_api import sync_playwright

    chromium = find_chromium()
    if chromium is None:
        raise RuntimeError("Chromium not installed: apt-get install chromium")
    png.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            view = browser.new_page(viewport={"width": width, "height": height})
            view.goto(page.resolve().as_uri())
            view.screenshot(path=str(png))
        finally:
            browser.close()
    return png


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.site``."""
    parser = argparse.ArgumentParser(prog=f"python -m {__package__}", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT})")
    parser.add_argument(
        "--leaderboards",
        type=Path,
        default=DEFAULT_LEADERBOARDS,
        help=f"folder of the suite reports and submissions (default {DEFAULT_LEADERBOARDS})",
    )
    parser.add_argument("--screenshot", type=Path, help="also save a screenshot of a suite page as this PNG")
    parser.add_argument("--screenshot-suite", default="all", help="the suite the screenshot shows (default all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Build the site (and the screenshot when asked); exit status 0 when done."""
    args = build_parser().parse_args(argv)
    out = build_site(args.leaderboards, args.out)
    print(f"site written to {out}/index.html")
    if args.screenshot:
        screenshot(out / args.screenshot_suite / "index.html", args.screenshot)
        print(f"screenshot written to {args.screenshot}")
    return 0
