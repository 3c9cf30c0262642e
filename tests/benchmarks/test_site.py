"""The leaderboard site: built from the committed reports, every page and local link present, the ranked table's
numbers those of the JSON, deterministic and atomic builds, missing optional fields tolerated, escaping, and (with
Playwright and Debian's Chromium) sorting, filtering and images in a real headless browser."""

from __future__ import annotations

import copy
import html
import json
import math
import shutil
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import pytest
import yaml

from benchmarks.site.build import build_site, find_chromium, main

ROOT = Path(__file__).resolve().parents[2]
LEADERBOARDS = ROOT / "leaderboards"
FOLDERS = {path.parent.name: path.parent for path in LEADERBOARDS.glob("*/leaderboard.json")}
FOLDERS.update(
    {f"{path.parent.parent.name}.{path.parent.name}": path.parent for path in LEADERBOARDS.glob("*/*/leaderboard.json")}
)  # a suite's variants (the realistic track's) are suites named SUITE.VARIANT
SUITES = sorted(FOLDERS)


class Page(HTMLParser):
    """The parts of a page the tests read: image sources, link targets, and the ranked table's cells per row
    (column key -> (``data-value``, text))."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.images: list[str] = []
        self.links: list[str] = []
        self.rows: list[dict[str, tuple[str | None, str]]] = []
        self._in_table = False
        self._in_body = False
        self._cell: tuple[str, str | None] | None = None
        self._text: list[str] = []
        self.feed(text)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "img":
            self.images.append(attributes.get("src") or "")
        elif tag == "a" and attributes.get("href") is not None:
            self.links.append(attributes["href"] or "")
        elif tag == "table" and attributes.get("id") == "leaderboard":
            self._in_table = True
        elif self._in_table and tag == "tbody":
            self._in_body = True
        elif self._in_body and tag == "tr":
            self.rows.append({})
        elif self._in_body and tag == "td":
            self._cell = (attributes.get("data-key") or "", attributes.get("data-value"))
            self._text = []

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self._cell is not None:
            key, value = self._cell
            self.rows[-1][key] = (value, " ".join("".join(self._text).split()))
            self._cell = None
        elif tag == "tbody":
            self._in_body = False
        elif tag == "table":
            self._in_table = False

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._text.append(data)


def parse(path: Path) -> Page:
    return Page(path.read_text(encoding="utf-8"))


def board(suite: str) -> dict[str, Any]:
    return json.loads((FOLDERS[suite] / "leaderboard.json").read_text(encoding="utf-8"))


def is_local(target: str) -> bool:
    return bool(target) and not urlparse(target).scheme and not target.startswith("#")


def local_file(page: Path, target: str) -> Path:
    return (page.parent / unquote(urlparse(target).path)).resolve()


def tree(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_site(LEADERBOARDS, tmp_path_factory.mktemp("site") / "site")


def test_committed_leaderboards_are_present() -> None:
    assert SUITES, "no leaderboards/SUITE/leaderboard.json"
    assert {"all", "realistic.baseline", "realistic.fedavg-5"} <= set(SUITES)  # variants are suites of their own


def test_every_page_exists(site: Path) -> None:
    index = parse(site / "index.html")
    for suite in SUITES:
        assert f"{suite}/index.html" in index.links
        page = site / suite / "index.html"
        rows = parse(page).rows
        entries = board(suite)["leaderboard"]
        assert [row["defense"][1].removesuffix(" submitted") for row in rows] == [e["defense"] for e in entries]
        links = [link for link in parse(page).links if link.endswith(".html") and "/" not in link]
        assert len(set(links) - {"index.html"}) == len(entries)
        for link in links:
            assert (site / suite / link).is_file(), link


def test_local_images_and_links_resolve(site: Path) -> None:
    pages = sorted(site.rglob("*.html"))
    assert len(pages) == 1 + sum(1 + len(board(suite)["leaderboard"]) for suite in SUITES)
    images = 0
    for page in pages:
        parsed = parse(page)
        for target in [*parsed.images, *parsed.links]:
            if is_local(target):
                resolved = local_file(page, target)
                assert resolved.is_file(), f"{page.relative_to(site)}: {target}"
                assert resolved.is_relative_to(site.resolve()), f"{page.relative_to(site)}: {target} leaves the site"
        images += len(parsed.images)
    assert images >= len(SUITES)


def signed(value: float, digits: int = 2) -> str:
    return f"{value:+.{digits}f}"


def estimate_text(estimate: dict[str, Any], digits: int, sign: bool) -> str:
    form = signed if sign else (lambda v, d: f"{v:.{d}f}")
    low, high = estimate["interval"]
    return f"{form(estimate['value'], digits)} [{form(low, digits)}, {form(high, digits)}]"


def data_value(value: Any) -> str:
    """The ``data-value`` a JSON number gets: the float's repr, ``Infinity`` for ``inf``, empty when undefined."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return repr(float(value))
    return {"inf": "Infinity", "-inf": "-Infinity"}.get(str(value), "")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.mark.parametrize("suite", SUITES)
def test_table_numbers_are_the_json(site: Path, suite: str) -> None:
    rows = parse(site / suite / "index.html").rows
    entries = board(suite)["leaderboard"]
    assert len(rows) == len(entries)
    for row, entry in zip(rows, entries):
        where = entry["defense"]
        worst = entry.get("worst_case") or {}
        assert row["rank"][0] == data_value(entry.get("rank")), where
        assert row["band"][0] == data_value(entry.get("band")), where
        for key, digits, sign in (
            ("psnr_above_baseline", 2, True),
            ("pick_above_baseline", 2, True),
            ("victims_recovered", 2, False),
            ("psnr", 2, False),
            ("ssim", 3, False),
        ):
            estimate = (worst.get("metrics") or {}).get(key) if key in ("psnr", "ssim") else worst.get(key)
            estimate = estimate or {}
            assert row[key][0] == data_value(estimate.get("value")), (where, key)
            interval = estimate.get("interval") or []
            if finite(estimate.get("value")) and all(finite(bound) for bound in interval) and len(interval) == 2:
                assert row[key][1] == estimate_text(estimate, digits, sign), (where, key)
        utility = (entry.get("utility") or {}).get("metrics") or {}
        assert row["accuracy_drop"][0] == data_value(utility.get("accuracy_drop")), where
        if finite(utility.get("accuracy_drop")):
            assert row["accuracy_drop"][1].startswith(signed(utility["accuracy_drop"], 3)), where
        assert row["update_cosine"][0] == data_value(utility.get("update_cosine")), where
        if finite(utility.get("update_cosine")):
            assert row["update_cosine"][1] == f"{utility['update_cosine']:.3f}", where
        assert row["psnr_gain_over_prior"][0] == data_value(entry.get("psnr_gain_over_prior")), where
        for deciding in worst.get("deciding_attacks") or []:
            assert f"{deciding['attack']} {deciding['count']}" in row["deciding"][1], where
        if worst.get("cut_off"):
            assert f"cut off {worst['cut_off']}/{len(worst['per_victim'])}" in row["flags"][1], where


@pytest.mark.parametrize("suite", SUITES)
def test_setting_pages_show_per_victim_numbers(site: Path, suite: str) -> None:
    for entry in board(suite)["leaderboard"]:
        text = next(
            page.read_text(encoding="utf-8")
            for page in (site / suite).glob("*.html")
            if page.name != "index.html" and f"<h1>{entry['defense']}</h1>" in html.unescape(page.read_text("utf-8"))
        )
        for victim in (entry.get("worst_case") or {}).get("per_victim") or []:
            value = victim.get("psnr_above_baseline")
            if finite(value):
                assert f'data-value="{float(value)!r}">{signed(value)}</td>' in text, (entry["defense"], victim)


def test_build_is_deterministic(site: Path, tmp_path: Path) -> None:
    again = build_site(LEADERBOARDS, tmp_path / "again")
    assert tree(again) == tree(site)


def minimal_board(tmp_path: Path) -> Path:
    """A copy of the first suite's report in ``tmp_path/leaderboards``, without its PNGs."""
    folder = tmp_path / "leaderboards" / "mini"
    folder.mkdir(parents=True)
    shutil.copyfile(LEADERBOARDS / SUITES[0] / "leaderboard.json", folder / "leaderboard.json")
    return folder.parent


def edit_board(leaderboards: Path, change: Any) -> dict[str, Any]:
    path = leaderboards / "mini" / "leaderboard.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(json.dumps(data), encoding="utf-8")
    return data


def test_failed_build_keeps_the_previous_site(tmp_path: Path) -> None:
    leaderboards = minimal_board(tmp_path)
    out = tmp_path / "out"
    build_site(leaderboards, out)
    before = tree(out)
    (leaderboards / "mini" / "leaderboard.json").write_text("[1, 2", encoding="utf-8")
    with pytest.raises(json.JSONDecodeError):
        build_site(leaderboards, out)
    assert tree(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["leaderboards", "out"]


def test_missing_optional_fields_do_not_stop_the_build(tmp_path: Path) -> None:
    leaderboards = minimal_board(tmp_path)

    def strip(data: dict[str, Any]) -> None:
        for key in ("definitions", "ranking", "code_versions", "description"):
            data.pop(key, None)
        first, second = data["leaderboard"][0], data["leaderboard"][1]
        for key in ("utility", "band", "band_comparison", "controls", "strongest_attack"):
            first.pop(key, None)
        first["rank"] = None
        first["worst_case"]["psnr_above_baseline"] = {"value": "nan", "interval": None}
        first["worst_case"]["per_victim"] = []
        second["worst_case"] = None
        second["psnr_gain_over_prior"] = "inf"

    data = edit_board(leaderboards, strip)
    out = build_site(leaderboards, tmp_path / "out")
    rows = parse(out / "mini" / "index.html").rows
    assert len(rows) == len(data["leaderboard"])
    assert rows[0]["rank"] == ("", "-")
    assert rows[0]["psnr_above_baseline"] == ("", "-")
    assert rows[0]["accuracy_drop"] == ("", "-")
    assert rows[1]["psnr_above_baseline"] == ("", "-")
    assert rows[1]["psnr_gain_over_prior"] == ("Infinity", "inf")
    settings = [p for p in (out / "mini").glob("*.html") if p.name != "index.html"]
    assert len(settings) == len(data["leaderboard"])
    assert all("No reconstruction grid" in p.read_text(encoding="utf-8") for p in settings)


def test_submission_page_links_its_paper(tmp_path: Path) -> None:
    entries = sorted((LEADERBOARDS / "submissions").glob("*.yaml"))
    if not entries:
        pytest.skip("no committed submission")
    submission = yaml.safe_load(entries[0].read_text(encoding="utf-8"))
    leaderboards = minimal_board(tmp_path)
    shutil.copytree(LEADERBOARDS / "submissions", leaderboards / "submissions")

    def submit(data: dict[str, Any]) -> None:
        data["leaderboard"][-1]["spec"] = copy.deepcopy(submission["defense"])

    data = edit_board(leaderboards, submit)
    out = build_site(leaderboards, tmp_path / "out")
    suite_page = out / "mini" / "index.html"
    row = parse(suite_page).rows[-1]
    assert row["defense"][1] == f"{data['leaderboard'][-1]['defense']} submitted"
    heading = f"<h1>{data['leaderboard'][-1]['defense']}</h1>"  # the board may list the entry itself as well
    pages = [p for p in (out / "mini").glob("*.html") if heading in html.unescape(p.read_text("utf-8"))]
    assert len(pages) == 1
    assert submission["name"] in html.unescape(pages[0].read_text("utf-8"))
    if submission.get("paper"):
        assert submission["paper"] in parse(pages[0]).links
        assert submission["paper"] in parse(out / "index.html").links


def test_labels_are_escaped(tmp_path: Path) -> None:
    leaderboards = minimal_board(tmp_path)
    label = '<script>alert("x")</script>'

    def inject(data: dict[str, Any]) -> None:
        data["leaderboard"][0]["defense"] = label

    edit_board(leaderboards, inject)
    out = build_site(leaderboards, tmp_path / "out")
    for page in out.rglob("*.html"):
        assert label not in page.read_text(encoding="utf-8")
    assert parse(out / "mini" / "index.html").rows[0]["defense"][1] == label


def sync_playwright_or_skip() -> Any:
    """Playwright's sync API and Chromium's path, or skip with what to install."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.skip("playwright not installed: pip install playwright")
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("Chromium not installed: apt-get install chromium")
    return sync_playwright, chromium


COLUMN_VALUES = """key => Array.from(document.querySelectorAll('#leaderboard tbody tr'))
    .filter(row => !row.hidden)
    .map(row => row.querySelector(`td[data-key="${key}"]`).getAttribute('data-value'))"""


def test_browser_sorts_filters_and_loads_images(site: Path) -> None:
    sync_playwright, chromium = sync_playwright_or_skip()
    suite = "all" if "all" in SUITES else SUITES[0]
    entries = board(suite)["leaderboard"]
    errors: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("requestfailed", lambda request: errors.append(f"{request.url}: {request.failure}"))
            page.goto((site / suite / "index.html").as_uri())

            header = page.locator('th[data-key="update_cosine"]')
            header.click()
            ascending = [float(v) for v in page.evaluate(COLUMN_VALUES, "update_cosine") if v]
            assert len(ascending) == len(entries)
            assert ascending == sorted(ascending)
            assert header.get_attribute("aria-sort") == "ascending"
            header.click()
            descending = [float(v) for v in page.evaluate(COLUMN_VALUES, "update_cosine") if v]
            assert descending == sorted(ascending, reverse=True)

            word = entries[-1]["spec"]["name"]
            expected = sorted(float(e["rank"]) for e in entries if word in e["defense"].lower())
            page.fill("#filter", word)
            shown = sorted(float(v) for v in page.evaluate(COLUMN_VALUES, "rank"))
            assert shown == expected and 0 < len(shown) < len(entries)
            assert page.text_content("#count") == f"{len(shown)} of {len(entries)} settings"
            page.fill("#filter", "")
            assert len(page.evaluate(COLUMN_VALUES, "rank")) == len(entries)

            widths = page.evaluate("Array.from(document.images).map(image => image.naturalWidth)")
            assert widths and all(width > 0 for width in widths)

            page.click("#leaderboard tbody tr:first-child td[data-key=defense] a")
            page.wait_for_load_state("load")
            widths = page.evaluate("Array.from(document.images).map(image => image.naturalWidth)")
            assert widths and all(width > 0 for width in widths)
        finally:
            browser.close()
    assert errors == []


def test_command_line_builds_into_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    leaderboards = minimal_board(tmp_path)
    assert main(["--leaderboards", str(leaderboards), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "mini" / "index.html").is_file()
    assert str(tmp_path / "out") in capsys.readouterr().out
