"""The defense loader: registered names through the registry, ``module:Class`` from any importable module."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ggl.defenses import GaussianNoise, build_defense, make_defense

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


class NoSimulation:
    def __call__(self, update, **kwargs):
        return update
'''


@pytest.fixture
def toy_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    (tmp_path / "toy_loader_defenses.py").write_text(TOY)
    monkeypatch.syspath_prepend(str(tmp_path))
    return "toy_loader_defenses"


def test_registered_name_is_make_defense() -> None:
    spec = {"name": "gaussian", "sigma": 0.1}
    defense = build_defense(spec)
    assert isinstance(defense, GaussianNoise) and defense.spec == make_defense(**spec).spec
    with pytest.raises(ValueError, match="sigma"):
        build_defense({"name": "gaussian", "sigma": -1.0})
    with pytest.raises(ValueError, match="gausian"):
        build_defense({"name": "gausian"})


def test_module_class_is_imported_and_built(toy_module: str) -> None:
    from ggl.fl import SharedUpdate

    defense = build_defense({"name": f"{toy_module}:Halve", "factor": 0.25})
    halved = defense(SharedUpdate((torch.ones(3),), 1))
    assert torch.equal(halved.gradients[0], torch.full((3,), 0.25))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"name": "no_such_module_xyz:Thing"}, "cannot import module 'no_such_module_xyz'"),
        ({"name": "{module}:Missing"}, "has no attribute 'Missing'"),
        ({"name": "{module}:Halve", "strength": 3}, r"bad parameters \['strength'\]"),
        ({"name": "{module}:NoSimulation"}, "must be callable and have simulate"),
    ],
)
def test_module_class_problems_name_the_defense(toy_module: str, spec: dict, message: str) -> None:
    spec = {**spec, "name": spec["name"].format(module=toy_module)}
    with pytest.raises(ValueError, match=message) as caught:
        build_defense(spec)
    assert repr(spec["name"]) in str(caught.value)
