"""A tiny published board, made once per test session: ``leaderboards/tiny/`` with its shipped rows, as a run of
the suite publishes it, and an empty ``leaderboards/submissions/``. Tests copy it (``board``) before changing it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

TINY_SUITE = """
name: tiny
description: Two embedded Fashion-MNIST victims, iDLG with two iterations, two defense settings (tests only).
datamodule: {name: embedded, options: {image_size: 32}}
model: {name: lenet, seed: 0}
prior: null
victims: {count: 2, seed: 0, batch_size: 1}
seeds: [0]
references: {class_mean: true, prior_sample: false, ceiling_steps: 0}
utility:
  enabled: true
  seed: 0
  options: {data: embedded-fashion-mnist, seeds: 1, steps: 5, eval_images: 50, cosine_victims: 1}
attacks:
  - {name: idlg, iterations: 2, max_iter: 3}
defenses:
  - {name: none}
  - {name: gaussian, sigma: 0.1}
"""
"""The board's suite: 2 victims x 2 settings x (1 attack, its control, 1 label reference) + 2 references."""


@pytest.fixture(scope="session")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ``tiny.yaml``, ``results/`` (its store) and ``leaderboards/tiny/`` (its published report)."""
    from benchmarks.run import main

    root = tmp_path_factory.mktemp("published")
    (root / "tiny.yaml").write_text(TINY_SUITE)
    (root / "leaderboards" / "submissions").mkdir(parents=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        argv = ["--suite", str(root / "tiny.yaml"), "--out", str(root / "results"), "--no-progress", "--no-tensorboard"]
        assert main([*argv, "--report-dir", str(root / "leaderboards" / "tiny")]) == 0
    finally:
        torch.set_num_threads(threads)
    return root


@pytest.fixture
def board(published: Path, tmp_path: Path) -> Iterator[Path]:
    """A copy of the published board (suite file and leaderboards, not the store) in ``tmp_path``, one thread."""
    shutil.copy(published / "tiny.yaml", tmp_path / "tiny.yaml")
    shutil.copytree(published / "leaderboards", tmp_path / "leaderboards")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield tmp_path
    torch.set_num_threads(threads)
