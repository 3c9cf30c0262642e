"""Custom classes named ``module:Class``: resolved only from the project's own modules or plugin files.

Suites and leaderboard submissions name custom code the same way for every kind of component: a defense
``{name: my_defense:MyDefense}``, a victim model ``my_victim:MyNet``, a datamodule ``my_data:MyData``. A YAML file
alone must never run code, so ``module:Class`` resolves in exactly two places:

* a module of the project's own packages (``ggl.*``, ``benchmarks.*``, or ``ggl_bench.*``: the name the
  ``benchmarks/`` folder installs under), code reviewed with the project;
* a plugin: a Python file named on the command line (``--plugin path/to/my_defense.py``), imported once by
  ``load_plugins`` and then known by its file stem (``my_defense:MyDefense``).

Any other module (``os``, ``subprocess``, ``shutil``, a module elsewhere on ``sys.path``, a file path written in
the YAML) is refused without importing it. The class is read from the module's namespace without calling
anything and must be a subclass of the base the caller names (not the base itself); only then may the caller
instantiate it. Every refusal is a ``ValueError`` naming the component and the fix. This module imports no torch
and nothing of the project but the standard library, so every package may use it.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from pathlib import Path
from types import ModuleType
from typing import TypeVar

PROJECT_PACKAGES = ("ggl", "benchmarks", "ggl_bench")
"""Top-level packages whose modules a ``module:Class`` spec may name directly."""

PROJECT_ROOT = Path(__file__).resolve().parents[1]
"""The folder holding the project's packages: the checkout (``ggl/``, ``benchmarks/``), or once installed
``site-packages`` (``ggl/``, ``ggl_bench/``)."""

BENCHMARK_FOLDERS = ("benchmarks", "ggl_bench")
"""Where the benchmarks package sits under ``PROJECT_ROOT``, under either name: ``benchmarks/`` in a checkout
(imported as ``ggl_bench`` too by an editable install), ``ggl_bench/`` installed."""

PLUGIN_MODULE_PREFIX = "ggl_plugin_"
"""Prefix of the ``sys.modules`` name of a loaded plugin, so a plugin never shadows an installed module."""

T = TypeVar("T")

_CUSTOM_NAME = re.compile(r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*")
_PLUGINS: dict[str, ModuleType] = {}
_HOW = (
    "a custom {kind} is module:Class where module is a project module ("
    + ", ".join(f"{package}.<...>" for package in PROJECT_PACKAGES)
    + ") or the file stem of a plugin named on the command line (--plugin path/to/my_{kind}.py, then my_{kind}:Class)"
)


def is_custom_name(name: str) -> bool:
    """Whether ``name`` asks for a custom class (``module:Class``) rather than a registered name."""
    return ":" in name


def load_plugins(paths: Iterable[str | Path]) -> list[str]:
    """Import each plugin file named on the command line; returns the module names specs use for them."""
    return [load_plugin(path) for path in paths]


def load_plugin(path: str | Path) -> str:
    """Import the Python file ``path`` as a plugin, known to specs by its file stem; returns that stem.

    The file is executed once, here: this is the only custom code a run imports. Raises ``ValueError`` (naming
    the file and the cause) for a missing or non-``.py`` file, a stem that is not a module name or clashes with
    the project's packages, the standard library or another plugin, and for any error the import raises.
    """
    file = Path(path).expanduser().resolve()
    stem = file.stem
    if file.suffix != ".py" or not file.is_file():
        raise ValueError(f"plugin {str(path)!r}: not an existing .py file; give the path of the plugin's Python file")
    if not stem.isidentifier():
        raise ValueError(f"plugin {str(path)!r}: {file.name!r} is not a module name; rename it (letters, digits, _)")
    if stem in PROJECT_PACKAGES or stem in sys.stdlib_module_names:
        raise ValueError(f"plugin {str(path)!r}: the name {stem!r} is taken by a project or standard module; rename it")
    loaded = _PLUGINS.get(stem)
    if loaded is not None:
        if Path(str(loaded.__file__)).resolve() == file:
            return stem
        raise ValueError(f"plugin {str(path)!r}: plugin {loaded.__file__} already has the name {stem!r}; rename one")
    module = _execute_plugin(str(path), file, PLUGIN_MODULE_PREFIX + stem)
    _PLUGINS[stem] = module
    return stem


def _execute_plugin(shown: str, file: Path, module_name: str) -> ModuleType:
    """Run the plugin file as module ``module_name``; an error it raises becomes a ``ValueError``."""
    spec = importlib.util.spec_from_file_location(module_name, file)
    if spec is None or spec.loader is None:
        raise ValueError(f"plugin {shown!r}: cannot be loaded as a Python module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module  # dataclasses and pickle look classes up here
    try:
        spec.loader.exec_module(module)
    except (Exception, SystemExit) as error:
        del sys.modules[module_name]
        raise ValueError(f"plugin {shown!r}: importing it failed: {type(error).__name__}: {error}") from None
    return module


def resolve_class(name: str, base: type[T], kind: str, base_name: str | None = None) -> type[T]:
    """The subclass of ``base`` a ``module:Class`` name denotes, found without instantiating or calling anything.

    ``kind`` (``"defense"``, ``"victim"``, ``"datamodule"``) names what is resolved in messages; ``base_name`` is
    how they spell the base (default: its defining module and name, e.g. ``ggl.defenses.base.Defense``).
    """
    how = _HOW.format(kind=kind)
    if not _CUSTOM_NAME.fullmatch(name):
        raise ValueError(f"{kind} {name!r}: not a registered {kind} or module:Class name; {how}{_file_hint(name)}")
    module_name, class_name = name.split(":")
    if module_name.split(".")[0] in PROJECT_PACKAGES:
        module = _project_module(f"{kind} {name!r}", module_name, how)
    elif module_name in _PLUGINS:
        module = _PLUGINS[module_name]
    else:
        raise ValueError(f"{kind} {name!r}: module {module_name!r} is neither a project module nor a plugin; {how}")
    cls = vars(module).get(class_name)  # the namespace itself: no module __getattr__ runs
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        shown_base = base_name or f"{base.__module__}.{base.__qualname__}"
        raise ValueError(
            f"{kind} {name!r}: {class_name!r} in {module_name!r} is not a subclass of {shown_base}"
            f" (got {type(cls).__name__ if cls is not None else 'nothing'}); name a subclass"
        )
    return cls


def _file_hint(name: str) -> str:
    """A hint for a spec that writes a file path (``path/to/x.py:Class``) instead of a plugin's stem."""
    path, _, class_name = name.rpartition(":")
    if not path.endswith(".py"):
        return ""
    return f"; a file runs only when the command line names it: --plugin {path}, then {Path(path).stem}:{class_name}"


def _project_module(what: str, module_name: str, how: str) -> ModuleType:
    """Import ``module_name`` after checking that its top-level package is the project's own folder."""
    parts = module_name.split(".")
    if "__main__" in parts:
        raise ValueError(f"{what}: {module_name!r} is a program, not a module of classes")
    top = importlib.util.find_spec(parts[0])  # locates the package without executing it
    locations = [Path(p).resolve() for p in (top.submodule_search_locations or [])] if top else []
    if len(locations) != 1 or locations[0] not in project_folders(parts[0]):
        raise ValueError(f"{what}: package {parts[0]!r} on sys.path is not this project's; {how}")
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name == module_name:
            raise ValueError(f"{what}: no project module {module_name!r}") from None
        raise ValueError(f"{what}: importing module {module_name!r} failed: {error}") from None
    except (Exception, SystemExit) as error:
        raise ValueError(f"{what}: importing module {module_name!r} failed: {type(error).__name__}: {error}") from None


def project_folders(package: str) -> list[Path]:
    """The folders the project's top-level ``package`` may be imported from.

    ``benchmarks`` and ``ggl_bench`` name one package: ``ggl_bench/`` under ``PROJECT_ROOT``, or ``benchmarks/``
    in a checkout (beside ``setup.cfg``). Installed, a top-level ``benchmarks/`` in ``site-packages`` is another
    distribution's (opacus ships one), never the project's.
    """
    if package not in BENCHMARK_FOLDERS:
        return [PROJECT_ROOT / package]
    checkout = (PROJECT_ROOT / "setup.cfg").is_file()
    return [PROJECT_ROOT / folder for folder in BENCHMARK_FOLDERS if checkout or folder != "benchmarks"]
