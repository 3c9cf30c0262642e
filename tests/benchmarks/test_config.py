"""Suite files: validation with named fields, overrides, defense grids, the shipped suites."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from benchmarks.config import (
    SuiteError,
    apply_override,
    available_suites,
    build_suite,
    expand_defense,
    load_suite,
    parse_override,
)

MINIMAL = {
    "name": "tiny",
    "attacks": [{"name": "idlg", "iterations": 2}],
    "defenses": [{"name": "none"}, {"name": "gaussian", "sigma": [0.01, 0.1]}],
}


def write(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "suite.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_suites_validate() -> None:
    names = available_suites()
    assert {"smoke", "all", "paper-celeba", "paper-imagenet"} <= set(names)
    for name in names:
        suite = load_suite(name)
        assert suite.name == name
        assert suite.attacks and suite.defenses


def test_all_suites_meet_the_leaderboard_contract() -> None:
    suite, extended = load_suite("all"), load_suite("all-extended")
    for config, strengths in ((suite, 2), (extended, 3)):
        families: dict[str, int] = {}
        for defense in config.defenses:
            families[defense.family] = families.get(defense.family, 0) + 1
        assert all(count >= strengths for family, count in families.items() if family not in ("none", "sign"))
        assert {"none", "gaussian", "clipping", "soteria", "dpsgd"} <= set(families)
        assert config.victims.count >= 16 and config.controls
        assert {a.adaptive for a in config.attacks} == {True, False}  # a failed simulation check still ranks
    assert {"idlg", "inverting_gradients", "ggl"} <= {a.name for a in suite.attacks}
    assert {"dlg", "idlg", "inverting_gradients", "ggl"} <= {a.name for a in extended.attacks}
    assert {a.spec.get("search") for a in extended.attacks if a.name == "ggl"} >= {"cma", "bo", "adam"}


def test_defense_family_expands_over_list_values() -> None:
    settings = expand_defense("f", "defenses.0", {"name": "sparsification", "ratio": [0.1, 0.5], "mode": ["a", "b"]})
    assert [dict(s.spec) for s in settings] == [
        {"name": "sparsification", "ratio": 0.1, "mode": "a"},
        {"name": "sparsification", "ratio": 0.1, "mode": "b"},
        {"name": "sparsification", "ratio": 0.5, "mode": "a"},
        {"name": "sparsification", "ratio": 0.5, "mode": "b"},
    ]
    assert settings[0].label == "sparsification(mode=a, ratio=0.1)"


def test_settings_that_would_share_a_display_label_are_refused() -> None:
    with pytest.raises(SuiteError, match="share a display label") as caught:
        build_suite({**MINIMAL, "defenses": [{"name": "gaussian", "sigma": [0.01, 0.0100000001]}]}, "bad.yaml")
    assert caught.value.field == "defenses"
    assert len(build_suite({**MINIMAL, "defenses": [{"name": "gaussian", "sigma": [0.01, 0.02]}]}, "ok").defenses) == 2


def test_overrides_dotted_indexed_and_wildcard(tmp_path: Path) -> None:
    data = {**MINIMAL, "attacks": [{"name": "idlg", "iterations": 2}, {"name": "dlg", "iterations": 3}]}
    suite = load_suite(
        write(tmp_path, data), ["victims.count=3", "attacks.*.iterations=7", "attacks.1.lr=0.5", "seeds=[1, 2]"]
    )
    assert suite.victims.count == 3
    assert [a.spec["iterations"] for a in suite.attacks] == [7, 7]
    assert suite.attacks[1].spec["lr"] == 0.5
    assert suite.seeds == (1, 2)


def test_adaptive_flags_expand_attacks() -> None:
    suite = build_suite({**MINIMAL, "adaptive": [True, False]}, "x.yaml")
    assert [(a.label, a.adaptive) for a in suite.attacks] == [("iDLG", True), ("iDLG non-adaptive", False)]


def test_config_hash_changes_with_any_field() -> None:
    base = build_suite(MINIMAL, "x.yaml")
    other = build_suite({**MINIMAL, "victims": {"count": 9}}, "x.yaml")
    assert base.config_hash() != other.config_hash()
    assert base.config_hash() == build_suite(dict(MINIMAL), "y.yaml").config_hash()


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"victims": {"count": 0}}, "victims.count"),
        ({"victims": {"count": "many"}}, "victims.count"),
        ({"victims": {"size": 3}}, "victims.size"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"adaptive": "yes"}, "adaptive"),
        ({"attacks": []}, "attacks"),
        ({"attacks": [{"iterations": 3}]}, "attacks.0.name"),
        ({"attacks": [{"name": "dlg", "seed": 3}]}, "attacks.0.seed"),
        ({"defenses": [{"name": "gaussian", "sigma": []}]}, "defenses.0.sigma"),
        ({"defenses": "gaussian"}, "defenses"),
        ({"prior": 3}, "prior"),
        ({"budget": 3}, "budget"),
        ({"references": {"ceiling_steps": -1}}, "references.ceiling_steps"),
    ],
)
def test_bad_fields_are_named(change: dict, field: str) -> None:
    with pytest.raises(SuiteError) as caught:
        build_suite({**MINIMAL, **change}, "bad.yaml")
    assert caught.value.field == field
    assert "bad.yaml" in str(caught.value) and field in str(caught.value)


def test_bad_overrides_and_files(tmp_path: Path) -> None:
    with pytest.raises(SuiteError, match="key=value"):
        parse_override("victims.count")
    with pytest.raises(SuiteError, match="unknown field"):
        apply_override(dict(MINIMAL), "victim.count", 2)
    with pytest.raises(SuiteError, match="index"):
        apply_override({"attacks": [{}]}, "attacks.4.iterations", 2)
    with pytest.raises(SuiteError, match="no such file"):
        load_suite(tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(SuiteError, match="not valid YAML"):
        load_suite(broken)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"victims": {"count": 0}}, "field 'victims.count': must be a positive integer, got 0"),
        ({"victims": {"batch_size": True}}, "field 'victims.batch_size': must be a positive integer, got True"),
        ({"references": {"ceiling_steps": -1}}, "field 'references.ceiling_steps': must be a non-negative integer"),
        ({"references": {"ceiling_lr": 0}}, "field 'references.ceiling_lr': must be a positive number, got 0"),
        ({"references": {"ceiling_lr": float("nan")}}, "field 'references.ceiling_lr': must be a positive number"),
    ],
)
def test_value_checks_name_the_field_once(change: dict, message: str) -> None:
    with pytest.raises(SuiteError) as caught:
        build_suite({**MINIMAL, **change}, "bad.yaml")
    assert str(caught.value).startswith(f"bad.yaml: {message}")


def test_defaults_and_types_of_checked_fields() -> None:
    suite = build_suite(MINIMAL, "x.yaml")
    assert (suite.victims.count, suite.victims.batch_size) == (8, 1)
    assert (suite.references.ceiling_steps, suite.references.ceiling_restarts) == (200, 2)
    assert suite.references.ceiling_lr == 0.05 and isinstance(suite.references.ceiling_lr, float)
    assert isinstance(build_suite({**MINIMAL, "references": {"ceiling_lr": 1}}, "x.yaml").references.ceiling_lr, float)


def test_option_tables_are_what_the_datamodules_and_utility_take() -> None:
    """The tables that check suites without torch name exactly the constructors' keyword arguments."""
    import inspect
    from dataclasses import fields

    from benchmarks.config import DATAMODULE_OPTIONS, UTILITY_OPTIONS
    from benchmarks.utility import UtilityConfig
    from ggl.data import DATAMODULES

    assert set(DATAMODULE_OPTIONS) == set(DATAMODULES)
    for name, table in DATAMODULE_OPTIONS.items():
        parameters = inspect.signature(DATAMODULES[name]).parameters
        assert set(table) == set(parameters), name
        for option, check in table.items():  # every default passes its own check
            assert check(option, parameters[option].default) == parameters[option].default
    assert list(UTILITY_OPTIONS) == [f.name for f in fields(UtilityConfig)]
    UtilityConfig()  # the defaults pass the table


def test_yaml_bounds_refuse_at_once(tmp_path: Path) -> None:
    from benchmarks.config import MAX_VALUES, count_values, parse_yaml

    levels = ["&a0 [x, x, x, x, x, x, x, x, x, x]"] + [f"&a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    with pytest.raises(SuiteError, match="aliases expand to more than"):
        parse_yaml("[" + ", ".join(levels) + "]", "f.yaml", "<file>")
    shared = parse_yaml("[&a [1, 2], *a, *a]", "f.yaml", "<file>")  # small alias use is fine
    assert shared == [[1, 2], [1, 2], [1, 2]] and count_values(shared) == 10
    assert count_values([[0] * 10] * (MAX_VALUES // 10 + 1)) > MAX_VALUES
    with pytest.raises(SuiteError, match="is not UTF-8"):
        (tmp_path / "latin.yaml").write_bytes("name: café\n".encode("latin-1"))
        load_suite(tmp_path / "latin.yaml")


def test_output_paths(tmp_path: Path) -> None:
    from benchmarks.config import output_file, output_folder

    (tmp_path / "file").write_text("x")
    assert output_folder("--out", tmp_path / "new" / "deeper") == tmp_path / "new" / "deeper"
    assert output_file("--json", tmp_path / "new" / "x.json") == tmp_path / "new" / "x.json"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing created
    for check, path, message in [
        (output_folder, tmp_path / "file", "is a file"),
        (output_folder, tmp_path / "file" / "sub", "is a file, so nothing can be made under it"),
        (output_folder, Path("/proc/ggl-out"), "cannot write in '/proc'"),
        (output_file, tmp_path, "is a folder"),
        (output_file, tmp_path / "file" / "x.json", "nothing can be made under it"),
    ]:
        with pytest.raises(ValueError, match=message):
            check("--opt", path)


def test_an_attack_with_its_own_adaptive_flag_is_labelled_apart() -> None:
    data = {
        "name": "t",
        "attacks": [{"name": "ggl", "search": "cma"}, {"name": "ggl", "search": "cma", "budget": 5, "adaptive": False}],
        "defenses": [{"name": "none"}],
    }
    assert [a.label for a in build_suite(data, "t.yaml").attacks] == ["GGL (cma)", "GGL (cma) non-adaptive"]
    both = {**data, "adaptive": [True, False], "attacks": [{"name": "idlg", "iterations": 1, "label": "mine"}]}
    assert [a.label for a in build_suite(both, "t.yaml").attacks] == ["mine", "mine non-adaptive"]
