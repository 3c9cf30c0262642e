"""What an install holds: a wheel built offline from the checkout has exactly ``ggl`` and ``ggl_bench`` (the
``benchmarks/`` folder, renamed so it cannot clash with opacus's top-level ``benchmarks``), their data files and
the ``ggl-bench`` console script; installed apart from the checkout, its commands run; every third-party import
is a declared requirement."""

from __future__ import annotations

import ast
import configparser
import os
import re
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from importlib.metadata import packages_distributions
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("ggl", "benchmarks", "setup.cfg", "pyproject.toml", "README.md", "LICENSE")
"""What the build reads; copied so the build's ``build/`` and ``*.egg-info`` land outside the checkout."""
PACKAGE_DIRS = {"ggl": "ggl", "ggl_bench": "benchmarks"}
"""Installed package name -> its folder in the checkout."""
DATA_FILES = (
    "ggl_bench/suites/*.yaml",
    "ggl_bench/paper_table3.json",
    "ggl_bench/site/templates/*.html",
    "ggl_bench/site/static/*",
    "ggl/data/assets/*.npz",
    "ggl/priors/assets/*",
)
"""Files the code reads at run time, as installed paths (globs, matched against the checkout's files)."""


def _checkout_path(installed: str) -> Path:
    top, _, rest = installed.partition("/")
    return ROOT / PACKAGE_DIRS[top] / rest


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[str]]]:
    """The wheel built from a copy of the checkout (no network: ``--no-index``), and its file names."""
    source = tmp_path_factory.mktemp("source")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    out = tmp_path_factory.mktemp("wheel")
    command = [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "--no-index"]
    done = subprocess.run([*command, "-q", "-w", str(out)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    (wheel,) = out.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        yield wheel, archive.namelist()


def test_wheel_holds_ggl_and_ggl_bench_only(built: tuple[Path, list[str]]) -> None:
    _, names = built
    tops = {name.split("/")[0] for name in names}
    dist_info = [top for top in tops if top.endswith(".dist-info")]
    assert len(dist_info) == 1 and dist_info[0].startswith("ggl_bench-")
    assert tops == {"ggl", "ggl_bench", *dist_info}


def test_wheel_has_every_package_and_module(built: tuple[Path, list[str]]) -> None:
    _, names = built
    for top, folder in PACKAGE_DIRS.items():
        modules = sorted(p.relative_to(ROOT / folder).as_posix() for p in (ROOT / folder).rglob("*.py"))
        packaged = [m for m in modules if (ROOT / folder / m).parent.joinpath("__init__.py").is_file()]
        missing = [m for m in packaged if f"{top}/{m}" not in names]
        assert not missing, f"not in the wheel (list the package in setup.cfg [options] packages): {missing}"


def test_wheel_has_the_data_files(built: tuple[Path, list[str]]) -> None:
    _, names = built
    for pattern in DATA_FILES:
        top, _, rest = pattern.partition("/")
        expected = sorted(
            f"{top}/{p.relative_to(ROOT / PACKAGE_DIRS[top]).as_posix()}"
            for p in (ROOT / PACKAGE_DIRS[top]).glob(rest)
            if p.is_file()
        )
        assert expected, f"{pattern}: no such files in the checkout"
        assert [name for name in expected if name not in names] == [], pattern
    assert "ggl_bench/suites/all.yaml" in names and "ggl_bench/suites/smoke.yaml" in names


def test_wheel_declares_the_console_script(built: tuple[Path, list[str]]) -> None:
    wheel, names = built
    (entry_points,) = [name for name in names if name.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as archive:
        text = archive.read(entry_points).decode()
    parser = configparser.ConfigParser()
    parser.read_string(text)
    assert parser["console_scripts"]["ggl-bench"] == "ggl_bench.cli:main"


def test_installed_wheel_runs_outside_the_checkout(built: tuple[Path, list[str]], tmp_path: Path) -> None:
    wheel, _ = built
    target = tmp_path / "site"
    command = [sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "-q", "--target", str(target)]
    done = subprocess.run([*command, str(wheel)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    environment = {**os.environ, "PYTHONPATH": str(target), "OMP_NUM_THREADS": "1"}

    def run(*arguments: str) -> str:
        finished = subprocess.run(
            arguments, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300, check=False
        )
        assert finished.returncode == 0, finished.stderr
        return finished.stdout

    where = run(sys.executable, "-c", "import ggl, ggl_bench.run as r; print(r.__file__); print(ggl.__file__)")
    assert all(Path(line).is_relative_to(target) for line in where.split()), where
    assert re.search(r"^smoke\s", run(sys.executable, "-m", "ggl_bench.run", "--list"), re.M)
    counted = run(sys.executable, "-m", "ggl_bench.run", "--suite", "smoke", "--dry-run", "--out", str(tmp_path / "o"))
    assert re.search(r"suite smoke .*: \d+ cells", counted) and not (tmp_path / "o").exists()
    script = target / "bin" / "ggl-bench"
    assert script.is_file()
    listed = run(sys.executable, str(script), "--help")
    assert all(command in listed for command in ("run", "submit", "perf", "train-prior"))


def _requirement_names(config: configparser.ConfigParser) -> set[str]:
    """Distribution names of ``install_requires`` and every extra, normalized (PEP 503)."""
    lines = config["options"]["install_requires"].splitlines()
    for extra in config["options.extras_require"].values():
        lines += extra.splitlines()
    names = {re.split(r"[<>=!~;\[ ]", line.strip(), maxsplit=1)[0] for line in lines if line.strip()}
    return {re.sub(r"[-_.]+", "-", name).lower() for name in names}


def _third_party_imports() -> dict[str, str]:
    """Top-level module -> a file importing it, for every import under ggl/ and benchmarks/ not in the stdlib."""
    found: dict[str, str] = {}
    for folder in PACKAGE_DIRS.values():
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    modules = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    modules = [node.module]
                else:
                    continue
                for module in modules:
                    top = module.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in PACKAGE_DIRS.values():
                        found.setdefault(top, str(path.relative_to(ROOT)))
    return found


def test_every_third_party_import_is_declared() -> None:
    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    declared = _requirement_names(config)
    distributions = packages_distributions()
    undeclared = []
    for module, path in sorted(_third_party_imports().items()):
        names = {re.sub(r"[-_.]+", "-", name).lower() for name in distributions.get(module, [module])}
        if not names & declared:
            undeclared.append(f"{module} ({path}; distribution {sorted(names)})")
    assert not undeclared, f"imported but not in setup.cfg install_requires or an extra: {undeclared}"


def test_bayesian_optimization_is_below_2() -> None:
    """The BO search uses ``bayes_opt.UtilityFunction``, which bayesian-optimization 2 removed."""
    import bayes_opt

    config = configparser.ConfigParser()
    config.read(ROOT / "setup.cfg")
    (line,) = [r for r in config["options"]["install_requires"].splitlines() if r.startswith("bayesian-optimization")]
    assert line.replace(" ", "") == "bayesian-optimization>=1.4,<2"
    assert hasattr(bayes_opt, "UtilityFunction")
