"""``--help`` of the query and site commands: exits 0, names the command by its package, shows every default."""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from benchmarks import claims, references, table3
from benchmarks.site import build as site


@pytest.mark.parametrize(
    ("main", "prog", "defaults"),
    [
        (claims.main, "benchmarks.claims", ["(default: results/ggl-claims)", "(default: ggl-claims)", "(default: 0)"]),
        (table3.main, "benchmarks.table3", ["(default: from the suite's datamodule)"]),
        (references.main, "benchmarks.references", ["(default: the suite's count)", "(default: not written)"]),
        (site.main, "benchmarks.site", ["(default build/site)", "(default leaderboards)", "(default all)"]),
    ],
    ids=["claims", "table3", "references", "site"],
)
def test_help_exits_0_and_shows_the_defaults(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    main: Callable[[list[str]], int],
    prog: str,
    defaults: list[str],
) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # no help line wrapped inside a default
    with pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code == 0
    text = re.sub(r"\s+", " ", capsys.readouterr().out)
    assert text.startswith(f"usage: python -m {prog} ")
    for default in defaults:
        assert default in text, default
    assert "(default: None)" not in text and "(default: False)" not in text and "(default: [])" not in text
