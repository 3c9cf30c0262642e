"""Build a defense from its spec: a registered name, or ``module:Class`` from code the user named.

Suites and leaderboard submissions name defenses the same way: ``{name: gaussian, sigma: 0.1}``, or
``{name: my_defense:MyDefense, strength: 2}`` for custom code. A YAML file alone must never run code, so
``module:Class`` resolves in exactly two places:

* a module of the project's own packages (``ggl.*``, ``benchmarks.*``, or ``ggl_bench.*``: the name the
  ``benchmarks/`` folder installs under), code reviewed with the project;
* a plugin: a Python file named on the command line (``--plugin path/to/my_defense.py``), imported once by
  ``load_plugins`` and then known by its file stem (``my_defense:MyDefense``).

Any other module (``os``, ``subprocess``, ``shutil``, a module elsewhere on ``sys.path``, a file path written in
the YAML) is refused without importing it. The class is read from the module's namespace without calling
anything and must be a subclass of ``Defense`` (not ``Defense`` itself); its parameters must be among the class's
``parameters``; only then is it instantiated. Every refusal is a ``ValueError`` naming the defense and the fix.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from ggl.defenses.base import Defense, make_defense

PROJECT_PACKAGES = ("ggl", "benchmarks", "ggl_bench")
"""Top-level packages whose modules a ``module:Class`` spec may name directly."""

PROJECT_ROOT = Path(__file__).resolve().parents[2]
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


def resolve_class(name: str, base: type[T], kind: str) -> type[T]:
    """The subclass of ``base`` a ``module:Class`` name denotes, found without instantiating or calling anything.

    ``kind`` (``"defense"``) names what is resolved in messages. Nothing here depends on defenses, so victims and
    datamodules can resolve their custom classes the same way.
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
        raise ValueError(
            f"{kind} {name!r}: {class_name!r} in {module_name!r} is not a subclass of {base.__module__}."
            f"{base.__qualname__} (got {type(cls).__name__ if cls is not None else 'nothing'}); name a subclass"
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


def build_defense(spec: Mapping[str, Any]) -> Defense:
    """A defense from ``{"name": ..., **params}``: ``make_defense`` for registered names, else ``module:Class``.

    A ``module:Class`` defense is resolved by ``resolve_class`` (a ``Defense`` subclass of a project
    module or a loaded plugin); its parameters must be in the class's ``parameters``. Every problem, including
    any error its constructor raises, is a ``ValueError`` naming the defense.
    """
    name = str(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if ":" not in name:
        return make_defense(name, **params)
    cls = resolve_class(name, Defense, "defense")
    unknown = sorted(set(params) - set(cls.parameters))
    if unknown:
        allowed = ", ".join(cls.parameters) or "none"
        raise ValueError(f"defense {name!r} has no parameter {', '.join(unknown)}; allowed parameters: {allowed}")
    try:
        return cls(**params)
    except Exception as error:  # a custom constructor's error is a bad spec, reported with the defense's name
        problem = f"{type(error).__name__}: {error}"
        raise ValueError(f"defense {name!r}: bad parameters {sorted(params)} ({problem})") from None
