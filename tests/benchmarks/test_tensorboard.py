"""TensorBoard log of a run: per cell its final scalars, the search's loss curve (step = search step) and a session
of the hparams table, read back from the event files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.plugins.hparams import metadata

import benchmarks.harness
from benchmarks.config import build_suite
from benchmarks.harness import Harness, flat_hparams
from benchmarks.store import ResultsStore

SUITE = {
    "name": "tiny",
    "datamodule": {"name": "embedded"},
    "model": {"name": "lenet", "seed": 0},
    "prior": None,
    "victims": {"count": 1, "seed": 0, "batch_size": 1},
    "seeds": [0],
    "references": {"class_mean": False},
    "utility": {"enabled": False},
    "attacks": [{"name": "idlg", "iterations": 3, "max_iter": 2}],
    "defenses": [{"name": "none"}],
    "controls": True,
}


class RecordingAttacks:
    """``make_attack`` that keeps the trace of every reconstruction, in the order the cells ran."""

    def __init__(self) -> None:
        self.traces: list[list[float]] = []

    def __call__(self, name: str, **params: Any) -> Any:
        from ggl.attacks import make_attack

        attack = make_attack(name, **params)
        reconstruct = attack.reconstruct

        def recorded(*args: Any, **kwargs: Any) -> Any:
            reconstruction = reconstruct(*args, **kwargs)
            self.traces.append(list(reconstruction.trace))
            return reconstruction

        attack.reconstruct = recorded
        return attack


def accumulator(folder: Path) -> EventAccumulator:
    """Every event of the run in ``folder``, none sampled away."""
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    return events


def test_each_cell_logs_its_loss_curve_and_an_hparams_session(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, single_thread: None
) -> None:
    attacks = RecordingAttacks()
    monkeypatch.setattr(benchmarks.harness, "make_attack", attacks)
    suite = build_suite(SUITE, "tiny.yaml")
    with ResultsStore(tmp_path / "results.sqlite") as store:
        run = Harness(suite, store, progress=False, tensorboard_dir=tmp_path / "tb", log=lambda message: None)
        assert not run.run().failed
        rows = sorted(store.cells("tiny"), key=lambda row: row.kind)
    assert [row.kind for row in rows] == ["attack", "control"]
    assert len(attacks.traces) == 2 and all(attacks.traces)

    events = accumulator(tmp_path / "tb" / "rank0")
    scalars = events.Tags()["scalars"]
    for row, trace in zip(rows, attacks.traces):  # the attack cell runs before its control
        pair = f"{row.defense_label}/{row.attack_label}"
        curve = events.Scalars(f"{pair}/victim0/search_loss")
        assert [point.step for point in curve] == list(range(len(trace)))
        assert [point.value for point in curve] == pytest.approx(trace, rel=1e-6)
        assert events.Scalars(f"{pair}/psnr")[0].value == pytest.approx(row.metrics["psnr"], rel=1e-6)
        assert f"{pair}/evaluations" in scalars and f"{pair}/reconstruction" in events.Tags()["images"]

    sessions = sorted((tmp_path / "tb" / "rank0" / "cells").iterdir())
    assert len(sessions) == len(rows)
    listed: dict[tuple[str, str], dict[str, Any]] = {}
    for folder in sessions:
        session = accumulator(folder)
        content = session.PluginTagToContent(metadata.PLUGIN_NAME)
        assert metadata.EXPERIMENT_TAG not in content  # the plugin unites the sessions' hparams itself
        start = metadata.parse_session_start_info_plugin_data(content[metadata.SESSION_START_INFO_TAG])
        hparams = {name: getattr(value, value.WhichOneof("kind")) for name, value in start.hparams.items()}
        listed[(hparams["kind"], hparams["attack"])] = hparams
        assert {"psnr", "ssim", "match_loss", "seconds", "evaluations"} <= set(session.Tags()["scalars"])
    assert set(listed) == {(row.kind, row.attack_label) for row in rows}
    attack, control = (listed[(row.kind, row.attack_label)] for row in rows)
    assert attack["defense.name"] == "none" and attack["attack.name"] == "idlg" and attack["attack.iterations"] == 3
    assert attack["attack.adaptive"] == "true" and attack["victim"] == 0 and "attack.control" in control


def test_parameters_flatten_to_numbers_and_text() -> None:
    spec = {"name": "ggl", "budget": 10, "search": {"kind": "cma", "sigma": 0.5}, "betas": [0.9, 0.99], "x": None}
    assert flat_hparams("attack", {**spec, "adaptive": False, "loss": float("nan")}) == {
        "attack.name": "ggl",
        "attack.budget": 10,
        "attack.search.kind": "cma",
        "attack.search.sigma": 0.5,
        "attack.betas": "[0.9,0.99]",
        "attack.x": "null",
        "attack.adaptive": "false",
        "attack.loss": "NaN",
    }
