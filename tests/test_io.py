"""Canonical JSON and atomic writes: one spelling for keys and hashes; a reader never sees half a file."""

from __future__ import annotations

from pathlib import Path

import pytest

from ggl.io import atomic_path, atomic_write, atomic_write_with, canonical_json, pretty_json


def test_canonical_json_spelling() -> None:
    assert canonical_json({"b": [1, 2.5], "a": None, "c": {"z": True, "y": "x"}}) == (
        '{"a":null,"b":[1,2.5],"c":{"y":"x","z":true}}'
    )
    assert canonical_json({"b": 1, "a": 2}) == canonical_json({"a": 2, "b": 1})
    assert canonical_json(None) == "null" and canonical_json("é") == '"\\u00e9"'


def test_pretty_json_is_sorted_indented_and_ends_with_a_newline() -> None:
    assert pretty_json({"b": 1, "a": [1]}) == '{\n  "a": [\n    1\n  ],\n  "b": 1\n}\n'


def test_atomic_write_text_and_bytes(tmp_path: Path) -> None:
    target = tmp_path / "deep" / "folder" / "file.txt"
    assert atomic_write(target, "héllo\n") == target
    assert target.read_bytes() == "héllo\n".encode()
    atomic_write(target, b"\x00\x01")
    assert target.read_bytes() == b"\x00\x01"
    assert sorted(p.name for p in target.parent.iterdir()) == ["file.txt"]


def test_a_failed_write_leaves_the_old_file_and_no_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "report.png"
    target.write_bytes(b"old")

    def fail_halfway(path: Path) -> None:
        path.write_bytes(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_with(target, fail_halfway)
    with pytest.raises(TypeError):
        atomic_write(target, 3)  # type: ignore[arg-type]
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["report.png"]


def test_atomic_path_replaces_only_on_a_clean_exit(tmp_path: Path) -> None:
    target = tmp_path / "checkpoint.pt"
    with atomic_path(target) as partial:
        assert partial.parent == tmp_path and partial != target
        partial.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    assert atomic_write_with(target, lambda path: path.write_text("newer")) == target
    assert target.read_text() == "newer"
