"""Project modules a ``module:Class`` spec may name: ``ggl.*``, and the benchmarks package under both of its names
(``benchmarks.*`` in a checkout, ``ggl_bench.*`` installed), each only from the project's own folder."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

from ggl import plugins as loader
from ggl.defenses import build_defense
from ggl.plugins import project_folders, resolve_class

needs_ggl_bench = pytest.mark.skipif(
    importlib.util.find_spec("ggl_bench") is None, reason="ggl_bench is importable once the project is installed"
)


def test_a_refusal_lists_the_allowed_prefixes() -> None:
    with pytest.raises(
        ValueError, match=r"project module \(ggl\.<\.\.\.>, benchmarks\.<\.\.\.>, ggl_bench\.<\.\.\.>\)"
    ):
        build_defense({"name": "os.path:Thing"})


def test_both_names_of_the_benchmarks_package_share_its_folders(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "PROJECT_ROOT", tmp_path)
    assert project_folders("ggl") == [tmp_path / "ggl"]
    # installed (no setup.cfg): a top-level benchmarks/ in site-packages is another distribution's
    assert project_folders("benchmarks") == project_folders("ggl_bench") == [tmp_path / "ggl_bench"]
    (tmp_path / "setup.cfg").write_text("[metadata]\n")
    checkout = [tmp_path / "benchmarks", tmp_path / "ggl_bench"]
    assert project_folders("benchmarks") == project_folders("ggl_bench") == checkout


@needs_ggl_bench
@pytest.mark.parametrize("package", ["benchmarks", "ggl_bench"])
def test_a_benchmarks_module_resolves_under_either_name(package: str) -> None:
    formatter = resolve_class(f"{package}.cli:HelpFormatter", argparse.HelpFormatter, "formatter")
    assert formatter.__module__ == f"{package}.cli" and formatter.__name__ == "HelpFormatter"


@needs_ggl_bench
def test_a_ggl_bench_package_outside_the_project_folder_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(loader, "PROJECT_ROOT", tmp_path)  # the importable ggl_bench is no longer in the project
    with pytest.raises(ValueError, match="package 'ggl_bench' on sys.path is not this project's; .*ggl_bench.<...>"):
        resolve_class("ggl_bench.cli:HelpFormatter", argparse.HelpFormatter, "formatter")
