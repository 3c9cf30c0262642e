"""A small results store: two victims, prior-only references, two defenses, two attacks, one utility row."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from benchmarks.store import CellRow, ResultsStore, VictimRow

NONE = {"name": "none"}
NOISE = {"name": "gaussian", "sigma": 0.1}
Put = Callable[..., None]


def put(
    store: ResultsStore,
    victim: int,
    defense: dict | None,
    attack: str,
    psnr: float,
    ssim: float,
    seed: int = 0,
    kind: str = "attack",
    **extra: float,
) -> None:
    """Store one cell of suite ``s``; ``extra`` adds metrics beyond psnr, ssim, mse and label accuracy."""
    store.put_cell(
        CellRow(
            suite="s",
            victim=victim,
            defense=defense,
            attack={"name": attack, "adaptive": True},
            seed=seed,
            kind=kind,
            defense_label="prior only" if defense is None else str(defense["name"]),
            attack_label=attack.split(":")[-1],
            config_hash="cfg1",
            code_version="v1",
            seconds=1.0,
            evaluations=10,
            metrics={"psnr": psnr, "ssim": ssim, "mse": 10 ** (-psnr / 10), "label_accuracy": 1.0, **extra},
            labels=[victim],
            images=np.full((1, 1, 4, 4), victim / 4, dtype=np.float32),
        )
    )


@pytest.fixture
def put_cell() -> Put:
    return put


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ResultsStore]:
    store = ResultsStore(tmp_path / "results.sqlite")
    for victim in range(2):
        store.put_victim(VictimRow("s", victim, [victim], [victim], np.zeros((1, 1, 4, 4), dtype=np.float32)))
    # prior-only references: class mean 14 / 16 dB, random sample 10 / 18 dB -> best reference 14 and 18
    put(store, 0, None, "reference:class-mean", 14.0, 0.3, kind="reference")
    put(store, 1, None, "reference:class-mean", 16.0, 0.3, kind="reference")
    put(store, 0, None, "reference:prior-sample", 10.0, 0.1, kind="reference")
    put(store, 1, None, "reference:prior-sample", 18.0, 0.1, kind="reference")
    put(store, 0, None, "reference:prior-ceiling", 30.0, 0.9, kind="reference")
    put(store, 1, None, "reference:prior-ceiling", 30.0, 0.9, kind="reference")
    # no defense: dlg 40 / 30 dB (gains 26, 12 -> 19); ggl 20 / 24 (gains 6, 6 -> 6) but the better SSIM
    put(store, 0, NONE, "dlg", 40.0, 0.5)
    put(store, 1, NONE, "dlg", 30.0, 0.5)
    put(store, 0, NONE, "ggl", 20.0, 0.8)
    put(store, 1, NONE, "ggl", 24.0, 0.8)
    # noise: dlg 12 / 16 (gains -2, -2), ggl 16 / 20 with two seeds on victim 0 (mean 15 -> gains 1, 2 -> 1.5)
    put(store, 0, NOISE, "dlg", 12.0, 0.1)
    put(store, 1, NOISE, "dlg", 16.0, 0.1)
    put(store, 0, NOISE, "ggl", 16.0, 0.4, seed=0)
    put(store, 0, NOISE, "ggl", 14.0, 0.4, seed=1)
    put(store, 1, NOISE, "ggl", 20.0, 0.4)
    store.put_utility(NOISE, {"seed": 0}, {"update_cosine": 0.7, "accuracy_drop": 0.05}, "cfg1", "v1", 1.0)
    yield store
    store.close()
