"""The harness says when the utility phase is done and how long it took (``benchmarks.run`` announces its start)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

import benchmarks.harness
from benchmarks.config import build_suite
from benchmarks.harness import Harness
from benchmarks.store import ResultsStore

SUITE = {
    "name": "tiny",
    "datamodule": {"name": "embedded"},
    "model": {"name": "lenet", "seed": 0},
    "prior": None,
    "victims": {"count": 1, "seed": 0, "batch_size": 1},
    "seeds": [0],
    "references": {"class_mean": False},
    "utility": {"enabled": True},
    "attacks": [{"name": "idlg", "iterations": 2, "max_iter": 2}],
    "defenses": [{"name": "none"}, {"name": "gaussian", "sigma": 0.01}],
    "controls": False,
}


def utility(spec: dict[str, Any], seed: int) -> dict[str, float]:
    """A stand-in utility cost (the real one trains a model): fails for a large noise, 1.0 otherwise."""
    if spec.get("sigma", 0.0) > 0.05:
        raise RuntimeError("training diverged")
    return {"accuracy_drop": 0.0, "update_cosine": 1.0}


def run(tmp_path: Path, suite: dict[str, Any]) -> list[str]:
    """Run ``suite`` into the store under ``tmp_path``; the lines the harness logged."""
    lines: list[str] = []
    with ResultsStore(tmp_path / "results.sqlite") as store:
        Harness(build_suite(suite, "tiny.yaml"), store, progress=False, log=lines.append).run()
    return lines


def test_the_utility_phase_logs_when_it_is_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    monkeypatch.setattr(benchmarks.harness, "utility_cost", utility)
    lines = run(tmp_path, SUITE)
    assert [line for line in lines if line.startswith("utility cost: done")] == [lines[0]]
    assert re.fullmatch(r"utility cost: done, 2 defense settings in \d+\.\d s", lines[0])
    assert run(tmp_path, SUITE) == []  # stored: nothing trained, nothing said

    failing = {**SUITE, "defenses": [{"name": "gaussian", "sigma": [0.01, 0.1]}]}
    lines = run(tmp_path, failing)
    assert lines[0].startswith("utility cost failed for gaussian(sigma=0.1)")
    assert re.fullmatch(r"utility cost: done, 1 defense settings in \d+\.\d s \(1 failed\)", lines[1])
