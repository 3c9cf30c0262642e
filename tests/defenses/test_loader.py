"""The defense loader: registered names, ``module:Class`` from a project module or a plugin named explicitly."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ggl import plugins as loader
from ggl.defenses import GaussianNoise, build_defense, load_plugins, make_defense
from ggl.fl import SharedUpdate

TOY = '''
from ggl.defenses import Defense


class Halve(Defense):
    """Scales the update by a factor (a toy defense for tests)."""

    name = "halve"
    parameters = ("factor",)

    def __init__(self, factor: float = 0.5) -> None:
        self.factor = float(factor)

    def apply(self, update, *, model, images, labels, generator):
        return [g * self.factor for g in update.gradients]


class Picky(Halve):
    def __init__(self, factor: float = 0.5) -> None:
        raise RuntimeError("factor must be blue")


class NotADefense:
    def __call__(self, update, **kwargs):
        return update

    def simulate(self, trial_gradients, received):
        return trial_gradients
'''


@pytest.fixture
def plugins(monkeypatch: pytest.MonkeyPatch) -> None:
    """A fresh plugin table, so plugins loaded by one test are unknown to the next."""
    monkeypatch.setattr(loader, "_PLUGINS", {})


@pytest.fixture
def toy_plugin(tmp_path: Path, plugins: None) -> str:
    path = tmp_path / "toy_loader_defenses.py"
    path.write_text(TOY)
    assert load_plugins([path]) == ["toy_loader_defenses"]
    return "toy_loader_defenses"


def test_registered_name_is_make_defense() -> None:
    spec = {"name": "gaussian", "sigma": 0.1}
    defense = build_defense(spec)
    assert isinstance(defense, GaussianNoise) and defense.spec == make_defense(**spec).spec
    with pytest.raises(ValueError, match="sigma"):
        build_defense({"name": "gaussian", "sigma": -1.0})
    with pytest.raises(ValueError, match="gausian"):
        build_defense({"name": "gausian"})


def test_project_module_class_is_built() -> None:
    defense = build_defense({"name": "ggl.defenses.noise:GaussianNoise", "sigma": 0.2})
    assert isinstance(defense, GaussianNoise) and defense.sigma == 0.2


def test_plugin_class_is_imported_and_built(toy_plugin: str) -> None:
    defense = build_defense({"name": f"{toy_plugin}:Halve", "factor": 0.25})
    halved = defense(SharedUpdate((torch.ones(3),), 1))
    assert torch.equal(halved.gradients[0], torch.full((3,), 0.25))


def test_a_plugin_is_imported_once(toy_plugin: str, tmp_path: Path) -> None:
    module = loader._PLUGINS[toy_plugin]
    assert load_plugins([tmp_path / f"{toy_plugin}.py"]) == [toy_plugin]
    assert loader._PLUGINS[toy_plugin] is module


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("{plugin}:Missing", {}, "'Missing' in 'toy_loader_defenses' is not a subclass of ggl.defenses.base.Defense"),
        ("{plugin}:NotADefense", {}, "is not a subclass of ggl.defenses.base.Defense .got type"),
        ("{plugin}:Defense", {}, "is not a subclass"),
        ("{plugin}:Halve", {"strength": 3}, "has no parameter strength; allowed parameters: factor"),
        ("{plugin}:Picky", {}, r"bad parameters \[\] \(RuntimeError: factor must be blue\)"),
        ("other_module:Halve", {}, "'other_module' is neither a project module nor a plugin"),
        ("ggl.no_such_module:Thing", {}, "no project module 'ggl.no_such_module'"),
        ("ggl.defenses.base:Defense", {}, "is not a subclass"),
        ("dir/toy.py:Halve", {}, "--plugin dir/toy.py, then toy:Halve"),
    ],
)
def test_custom_class_problems_name_the_defense(toy_plugin: str, name: str, params: dict, message: str) -> None:
    name = name.format(plugin=toy_plugin)
    with pytest.raises(ValueError, match=message) as caught:
        build_defense({"name": name, **params})
    assert repr(name) in str(caught.value)


@pytest.mark.parametrize(
    ("file", "text", "message"),
    [
        ("missing.py", None, "not an existing .py file"),
        ("notes.txt", "x = 1", "not an existing .py file"),
        ("my-defense.py", "x = 1", "is not a module name"),
        ("json.py", "x = 1", "taken by a project or standard module"),
        ("ggl.py", "x = 1", "taken by a project or standard module"),
        ("broken.py", "1 / 0", "importing it failed: ZeroDivisionError"),
        ("exits.py", "raise SystemExit(3)", "importing it failed: SystemExit: 3"),
        ("syntax.py", "def (:", "importing it failed: SyntaxError"),
    ],
)
def test_bad_plugin_files_are_refused(tmp_path: Path, plugins: None, file: str, text: str | None, message: str) -> None:
    path = tmp_path / file
    if text is not None:
        path.write_text(text)
    with pytest.raises(ValueError, match=message) as caught:
        load_plugins([path])
    assert file in str(caught.value)
    assert loader._PLUGINS == {}


def test_two_plugins_with_one_name_are_refused(tmp_path: Path, toy_plugin: str) -> None:
    other = tmp_path / "elsewhere" / f"{toy_plugin}.py"
    other.parent.mkdir()
    other.write_text(TOY)
    with pytest.raises(ValueError, match="already has the name 'toy_loader_defenses'; rename one"):
        load_plugins([other])
