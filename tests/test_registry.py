"""The one registry: duplicate names refused, one unknown-name message with a close-match hint."""

from __future__ import annotations

import pytest

from ggl.registry import Registry


def test_register_decorator_and_add_store_under_the_name() -> None:
    registry: Registry[object] = Registry("widget")

    @registry.register("round")
    class Round:
        pass

    registry.add("square", 4)
    assert registry["round"] is Round and registry.lookup("square") == 4
    assert list(registry) == ["round", "square"] and registry.kind == "widget"


def test_duplicate_names_are_refused_and_the_first_entry_kept() -> None:
    registry: Registry[object] = Registry("widget")
    registry.add("round", 1)
    with pytest.raises(ValueError, match="widget 'round' is already registered"):
        registry.add("round", 2)
    with pytest.raises(ValueError, match="already registered"):
        registry.register("round")(object)
    assert registry["round"] == 1


@pytest.mark.parametrize("name", ["", None, 3])
def test_names_must_be_non_empty_strings(name: object) -> None:
    with pytest.raises(ValueError, match="non-empty string"):
        Registry("widget").add(name, 1)  # type: ignore[arg-type]


def test_unknown_name_lists_the_allowed_and_suggests_the_closest() -> None:
    registry: Registry[int] = Registry("widget")
    for index, name in enumerate(("gaussian", "laplacian", "clipping")):
        registry.add(name, index)
    with pytest.raises(ValueError) as error:
        registry.lookup("gausian")
    allowed = "allowed: clipping, gaussian, laplacian"
    assert str(error.value) == f"unknown widget 'gausian' (did you mean 'gaussian'?); {allowed}"
    assert registry.unknown("xyz") == f"unknown widget 'xyz'; {allowed}"
    assert "did you mean" not in registry.unknown(42)
    with pytest.raises(ValueError, match="unknown widget"):
        registry.lookup(["gaussian"])


def test_the_package_registries_share_the_message() -> None:
    from ggl.data import DATAMODULES
    from ggl.defenses import DEFENSES
    from ggl.fl import VICTIMS
    from ggl.priors import PRIORS

    for registry, kind in ((DATAMODULES, "datamodule"), (DEFENSES, "defense"), (VICTIMS, "victim"), (PRIORS, "prior")):
        assert isinstance(registry, Registry) and registry.kind == kind
        with pytest.raises(ValueError, match=f"^unknown {kind} 'nothing'; allowed: "):
            registry.lookup("nothing")
