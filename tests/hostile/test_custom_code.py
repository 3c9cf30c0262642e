"""Hostile custom code: no YAML entry or suite runs code it names; every hostile input is refused.

Each case is tried against the real loader, the ``benchmarks.submit`` command or the ``benchmarks.run`` command,
and checked three ways: it is refused (a ``ValueError`` naming the problem, or exit 2 with no traceback), its
effect did not happen (the marker file was not created, the victim folder still exists, the module was not
imported), and an audit hook saw no process started, no victim file removed and no hostile code executed.
"""

from __future__ import annotations

import importlib
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from benchmarks import run as run_command
from benchmarks import submit as submit_command
from ggl import plugins as loader
from ggl.defenses import build_defense, load_plugins

PROCESS_EVENTS = ("os.system", "subprocess.Popen", "os.exec", "os.posix_spawn", "os.spawn", "os.fork")
REMOVE_EVENTS = ("os.remove", "os.rmdir", "shutil.rmtree", "os.rename")


@dataclass
class Sandbox:
    """The traps one case can spring: a marker file hostile code would create, a folder it would delete."""

    root: Path
    marker: Path
    victim: Path
    evil: Path  # a module on sys.path whose import creates the marker
    events: list[str]
    named: set[str]  # plugin files the command line names: executing them is by design

    def untouched(self) -> None:
        assert not self.marker.exists(), "hostile code created the marker file"
        assert self.victim.is_dir() and (self.victim / "keep.txt").is_file(), "hostile code deleted the folder"
        assert "evil_mod" not in sys.modules and loader.PLUGIN_MODULE_PREFIX + "evil_mod" not in sys.modules
        assert self.events == [], f"hostile code ran: {self.events}"


_WATCH: list[Sandbox] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record, for the case being tried, any process start, removal under it, or execution of its files."""
    if not _WATCH:
        return
    box = _WATCH[-1]
    if event in PROCESS_EVENTS and str(box.root) in repr(args):  # the project's own git calls are not hostile
        box.events.append(f"{event} {args}")
    elif event in REMOVE_EVENTS and args and str(box.victim) in str(args[0]):
        box.events.append(f"{event} {args[0]}")
    elif event == "exec" and args:
        file = str(getattr(args[0], "co_filename", ""))
        if str(box.root) in file and file not in box.named:
            box.events.append(f"exec {file}")
    elif event == "open" and args and str(args[0]) == str(box.marker):
        box.events.append(f"open {args[0]}")


sys.addaudithook(_audit)


@pytest.fixture
def box(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Sandbox]:
    """A sandbox watched by the audit hook while the case runs; a fresh plugin table."""
    monkeypatch.setattr(loader, "_PLUGINS", {})
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    marker = tmp_path / "marker"
    evil = tmp_path / "evil_mod.py"
    evil.write_text(f"open({str(marker)!r}, 'w').close()\nclass Evil:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    sandbox = Sandbox(tmp_path, marker, victim, evil, [], set())
    yield sandbox
    sys.modules.pop("evil_mod", None)


def watched(box: Sandbox, action: Callable[[], Any]) -> Any:
    """Run ``action`` with the audit hook recording into ``box``."""
    _WATCH.append(box)
    try:
        return action()
    finally:
        _WATCH.pop()


def test_the_traps_catch_code_that_runs(box: Sandbox) -> None:
    """Positive control: importing the evil module and deleting the folder are both seen."""
    watched(box, lambda: (importlib.import_module("evil_mod"), shutil.rmtree(box.victim)))
    assert box.marker.exists() and not box.victim.exists()
    assert {event.split()[0] for event in box.events} >= {"exec", "open", "shutil.rmtree"}
    with pytest.raises(AssertionError, match="marker"):
        box.untouched()


SPECS: dict[str, Callable[[Sandbox], dict[str, Any]]] = {
    "os:system": lambda b: {"name": "os:system", "command": f"touch {b.marker}"},
    "posix:system": lambda b: {"name": "posix:system", "command": f"touch {b.marker}"},
    "subprocess:Popen shell": lambda b: {"name": "subprocess:Popen", "args": f"touch {b.marker}", "shell": True},
    "subprocess:run": lambda b: {"name": "subprocess:run", "args": ["touch", str(b.marker)]},
    "shutil:rmtree": lambda b: {"name": "shutil:rmtree", "path": str(b.victim)},
    "builtins:eval": lambda b: {"name": "builtins:eval", "source": f"open({str(b.marker)!r}, 'w')"},
    "builtins:exec": lambda b: {"name": "builtins:exec", "source": f"open({str(b.marker)!r}, 'w')"},
    "builtins:__import__": lambda b: {"name": "builtins:__import__", "name_": "evil_mod"},
    "importlib:import_module": lambda b: {"name": "importlib:import_module", "package": "evil_mod"},
    "pathlib:Path.write_text": lambda b: {"name": "pathlib:Path.write_text", "data": "x"},
    "os.path:join": lambda b: {"name": "os.path:join"},
    "module on sys.path": lambda b: {"name": "evil_mod:Evil"},
    "plugin's sys.modules name": lambda b: {"name": loader.PLUGIN_MODULE_PREFIX + "evil_mod:Evil"},
    "file path in the spec": lambda b: {"name": "evil_mod.py:Evil"},
    "absolute file path": lambda b: {"name": f"{b.evil}:Evil"},
    "path traversal": lambda b: {"name": "../evil_mod.py:Evil"},
    "shell text in the name": lambda b: {"name": f"os:system; touch {b.marker}"},
    "project function ggl.io:atomic_write": lambda b: {"name": "ggl.io:atomic_write", "path": str(b.marker)},
    "project function load_plugin": lambda b: {"name": "ggl.defenses.loader:load_plugin", "path": str(b.evil)},
    "module attribute of a project module": lambda b: {"name": "ggl.defenses.loader:importlib"},
    "non-class attribute __builtins__": lambda b: {"name": "ggl.defenses:__builtins__"},
    "non-Defense project class": lambda b: {"name": "ggl.fl.client:SharedUpdate", "gradients": []},
    "non-Defense project exception": lambda b: {"name": "benchmarks.submit:SubmissionError"},
    "the Defense base itself": lambda b: {"name": "ggl.defenses.base:Defense"},
    "attribute chain": lambda b: {"name": "ggl.defenses.base:Defense.__subclasses__"},
    "a project program": lambda b: {"name": "benchmarks.perf.__main__:main"},
    "missing project module": lambda b: {"name": "ggl.evil_mod:Evil"},
    "name that is not a string": lambda b: {"name": ["os", "system"]},
    "code as a parameter value": lambda b: {"name": "gaussian", "sigma": f"__import__('os').system('rm {b.marker}')"},
    "dunder parameter": lambda b: {"name": "none", "__class__": "os.system"},
    "overflowing noise": lambda b: {"name": "gaussian", "sigma": 1e300},
}


@pytest.mark.parametrize("case", sorted(SPECS))
def test_hostile_spec_is_refused_and_nothing_runs(box: Sandbox, case: str) -> None:
    spec = SPECS[case](box)
    with pytest.raises(ValueError) as caught:
        watched(box, lambda: build_defense(spec))
    assert caught.value.__suppress_context__ or caught.value.__context__ is None
    box.untouched()
    assert "benchmarks.perf.__main__" not in sys.modules


PLUGIN = """
import os
from ggl.defenses import Defense
from os import system


class Fine(Defense):
    name = "fine"

    def apply(self, update, **_):
        return list(update.gradients)


class Trap:
    def __init__(self, **params):
        open({marker!r}, "w").close()
"""


@pytest.mark.parametrize(
    ("name", "params"),
    [("Trap", {}), ("system", {"command": "touch x"}), ("os", {}), ("Fine", {"__init__": 1}), ("Fine.mro", {})],
)
def test_plugin_members_are_checked_before_anything_is_called(box: Sandbox, name: str, params: dict) -> None:
    plugin = box.root / "named_plugin.py"
    plugin.write_text(PLUGIN.format(marker=str(box.marker)))
    box.named.add(str(plugin))
    assert watched(box, lambda: load_plugins([plugin])) == ["named_plugin"]
    with pytest.raises(ValueError, match="named_plugin"):
        watched(box, lambda: build_defense({"name": f"named_plugin:{name}", **params}))
    box.untouched()
    assert build_defense({"name": "named_plugin:Fine"}).name == "fine"


PLUGIN_FILES = {  # file, text, message, whether the file is executed (it is named on the command line)
    "raises at import": ("bad_import.py", "raise RuntimeError('no')", "importing it failed: RuntimeError: no", True),
    "exits at import": ("quits.py", "import sys\nsys.exit(3)", "importing it failed: SystemExit: 3", True),
    "overrides __call__": (
        "sneaky.py",
        "from ggl.defenses import Defense\nclass S(Defense):\n    def __call__(self, update):\n        return update",
        "overrides Defense.__call__",
        True,
    ),
    "takes a registered name": (
        "clash.py",
        "from ggl.defenses import Defense, register_defense\n@register_defense\nclass N(Defense):\n    name = 'none'",
        "already registered",
        True,
    ),
    "shadows the standard library": ("os.py", "open({marker!r}, 'w')", "taken by a project or standard module", False),
    "shadows the project": ("benchmarks.py", "open({marker!r}, 'w')", "taken by a project or standard module", False),
    "not a module name": ("my-plugin.py", "open({marker!r}, 'w')", "is not a module name", False),
    "not a .py file": ("plugin.txt", "open({marker!r}, 'w')", "not an existing .py file", False),
    "a folder": ("folder.py", None, "not an existing .py file", False),
    "missing": ("absent.py", None, "not an existing .py file", False),
}


@pytest.mark.parametrize("case", sorted(PLUGIN_FILES))
def test_bad_plugin_file_is_refused(box: Sandbox, case: str) -> None:
    file, text, message, executed = PLUGIN_FILES[case]
    path = box.root / file
    if case == "a folder":
        path.mkdir()
    elif text is not None:
        path.write_text(text.format(marker=str(box.marker)))
    if executed:
        box.named.add(str(path))
    with pytest.raises(ValueError, match=message) as caught:
        watched(box, lambda: load_plugins([path]))
    assert file in str(caught.value)
    box.untouched()
    assert loader._PLUGINS == {} and loader.PLUGIN_MODULE_PREFIX + path.stem not in sys.modules


def billion_laughs(levels: int) -> str:
    """YAML whose ``defense`` expands through aliases to 9 * 4**levels leaves."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [*l{i - 1}, *l{i - 1}, *l{i - 1}, *l{i - 1}]" for i in range(1, levels + 1)]
    return "\n".join([*lines, f"defense: *l{levels}"])


ENTRIES: dict[str, Callable[[Sandbox], str]] = {
    "os:system": lambda b: f"defense: {{name: 'os:system', command: 'touch {b.marker}'}}",
    "shutil:rmtree": lambda b: f"defense: {{name: 'shutil:rmtree', path: '{b.victim}'}}",
    "subprocess:Popen shell": lambda b: f"defense: {{name: 'subprocess:Popen', args: 'touch {b.marker}', shell: true}}",
    "module on sys.path": lambda b: "defense: {name: 'evil_mod:Evil'}",
    "file path without --plugin": lambda b: f"defense: {{name: '{b.evil}:Evil'}}",
    "python/object tag": lambda b: f"defense: !!python/object/apply:os.system ['touch {b.marker}']",
    "python/name tag": lambda b: "defense: {name: !!python/name:os.system ''}",
    "billion laughs": lambda b: billion_laughs(12),
    "deep nesting": lambda b: "defense: " + "[" * 5000 + "]" * 5000,
    "built-in name": lambda b: "defense: {name: none}\nname: none",
}


def entry_cli(box: Sandbox, body: str) -> list[str]:
    """The submit command line for an entry of ``body`` under a valid name and authors (a later key wins)."""
    entry = box.root / "Hostile.yaml"
    entry.write_text(f"name: Hostile\nauthors: [Mallory]\n{body}\n")
    return [str(entry), "--out", str(box.root / "results"), "--entry-out", str(box.root / "out.json")]


def refused_by_command(box: Sandbox, command: Callable[[list[str]], int], argv: list[str], capsys: Any) -> str:
    """Run a command on ``argv`` under the audit hook; it must exit 2 and print no traceback."""
    assert watched(box, lambda: command(argv)) == 2
    error = capsys.readouterr().err
    assert "Traceback" not in error and error.startswith("error:")
    box.untouched()
    return error


@pytest.mark.parametrize("case", sorted(ENTRIES))
def test_hostile_submission_exits_2(box: Sandbox, case: str, capsys: pytest.CaptureFixture[str]) -> None:
    error = refused_by_command(box, submit_command.main, entry_cli(box, ENTRIES[case](box)), capsys)
    assert "invalid submission" in error and len(error) < 5_000
    assert not (box.root / "results").exists()


@pytest.mark.parametrize(
    ("file", "text"),
    [("loud.py", "raise RuntimeError('boom')"), ("os.py", "open({marker!r}, 'w')"), ("gone.py", None)],
)
def test_bad_plugin_on_the_command_line_exits_2(box: Sandbox, file: str, text: str | None, capsys: Any) -> None:
    if text is not None:
        (box.root / file).write_text(text.format(marker=str(box.marker)))
    if file == "loud.py":
        box.named.add(str(box.root / file))  # named on the command line: it runs, and its error is reported
    argv = [*entry_cli(box, "defense: {name: none}"), "--plugin", str(box.root / file)]
    assert "plugin" in refused_by_command(box, submit_command.main, argv, capsys)


def test_binary_and_folder_entries_exit_2(box: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    binary = box.root / "binary.yaml"
    binary.write_bytes(b"\xff\xfe\x00name: \x80\x81")
    refused_by_command(box, submit_command.main, [str(binary)], capsys)
    refused_by_command(box, submit_command.main, [str(box.victim)], capsys)


@pytest.mark.parametrize("name", ["os:system", "shutil:rmtree", "evil_mod:Evil"])
def test_hostile_suite_defense_exits_2(box: Sandbox, name: str, capsys: pytest.CaptureFixture[str]) -> None:
    defense = f"[{{name: '{name}', command: 'touch {box.marker}', path: '{box.victim}'}}]"
    argv = ["--suite", "smoke", "--set", "prior=null", "--set", f"defenses={defense}", "--out", str(box.root / "r")]
    assert name in refused_by_command(box, run_command.main, [*argv, "--no-progress", "--no-tensorboard"], capsys)
