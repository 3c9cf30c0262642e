"""Saving a prior: the checkpoint and its readable ``.json`` are written whole or not at all."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ggl.priors.training import save_prior


def test_save_prior_writes_the_checkpoint_and_its_metadata(tmp_path: Path) -> None:
    checkpoint = {"format": "ggl-dcgan-v1", "config": {"b": 1, "a": 2}, "state_dict": {"w": torch.ones(2)}}
    path = save_prior(checkpoint, tmp_path / "priors" / "tiny.pt")
    assert path == tmp_path / "priors" / "tiny.pt"
    assert torch.load(path, weights_only=True)["config"] == {"b": 1, "a": 2}
    text = path.with_suffix(".json").read_text()
    assert text == json.dumps({"config": {"a": 2, "b": 1}, "format": "ggl-dcgan-v1"}, indent=2, sort_keys=True) + "\n"
    assert sorted(p.name for p in path.parent.iterdir()) == ["tiny.json", "tiny.pt"]


class Unpicklable:
    def __reduce__(self) -> tuple:
        raise ValueError("cannot be saved")


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path: Path) -> None:
    path = save_prior({"format": "ggl-dcgan-v1", "state_dict": {}}, tmp_path / "tiny.pt")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="cannot be saved"):
        save_prior({"format": "ggl-dcgan-v1", "state_dict": {"bad": Unpicklable()}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.json", "tiny.pt"]
