"""Prior-only references: the class mean, a prior sample, the prior's ceiling, and the ceiling over a suite's store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

import benchmarks.references
from benchmarks.config import AttackConfig, build_suite
from benchmarks.references import (
    ceiling_summary,
    class_mean_reference,
    fit_prior_ceiling,
    main,
    prior_sample_reference,
    reference_images,
)
from benchmarks.store import CellRow, ResultsStore, VictimRow

SHAPE = (1, 4, 4)
CPU = torch.device("cpu")


class ToyPrior(nn.Module):
    """A class-conditional linear generator on 4 x 4 images: G(z, y) = sigmoid(W z + b_y)."""

    latent_dim = 6
    num_classes = 3

    def __init__(self) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(0)
        self.weight = nn.Parameter(torch.randn(16, self.latent_dim, generator=generator), requires_grad=False)
        self.bias = nn.Parameter(torch.randn(self.num_classes, 16, generator=generator), requires_grad=False)

    def sample(self, count: int, generator: torch.Generator | None = None) -> torch.Tensor:
        return torch.randn(count, self.latent_dim, generator=generator)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        return torch.sigmoid(z @ self.weight.T + self.bias[y]).view(-1, *SHAPE)


class Means:
    image_shape = SHAPE

    def class_means(self) -> torch.Tensor:
        return torch.stack([torch.full(SHAPE, v) for v in (0.1, 0.5, 1.2)])


def ceiling(steps: int, restarts: int, lr: float = 0.05) -> AttackConfig:
    spec = {"name": "reference:prior-ceiling", "steps": steps, "restarts": restarts, "lr": lr}
    return AttackConfig("prior ceiling (pixels known)", spec, False)


def test_class_mean_and_prior_sample() -> None:
    labels = torch.tensor([2, 0])
    assert torch.equal(class_mean_reference(Means(), labels), torch.stack([torch.ones(SHAPE), torch.full(SHAPE, 0.1)]))
    prior = ToyPrior()
    first = prior_sample_reference(prior, labels, SHAPE, torch.Generator().manual_seed(1), CPU)
    again = prior_sample_reference(prior, labels, SHAPE, torch.Generator().manual_seed(1), CPU)
    assert first.shape == (2, *SHAPE) and torch.equal(first, again)
    z = prior.sample(2, torch.Generator().manual_seed(1))
    assert torch.allclose(first, prior(z, labels))


def test_ceiling_fits_what_the_prior_can_make_and_keeps_the_best_restart() -> None:
    prior = ToyPrior()
    labels = torch.tensor([0, 1])
    truth = prior(prior.sample(2, torch.Generator().manual_seed(5)), labels)
    start = prior(prior.sample(2, torch.Generator().manual_seed(9)), labels)
    options: dict[str, Any] = {"steps": 300, "lr": 0.1, "device": CPU}
    fits = fit_prior_ceiling(
        prior, truth, labels, SHAPE, restarts=3, generator=torch.Generator().manual_seed(9), **options
    )
    error = (fits - truth).pow(2).flatten(1).mean(1)
    assert (error < 0.1 * (start - truth).pow(2).flatten(1).mean(1)).all()
    # best of three restarts is never worse than the single restart drawn first from the same generator
    single = fit_prior_ceiling(
        prior, truth, labels, SHAPE, restarts=1, generator=torch.Generator().manual_seed(9), **options
    )
    assert (error <= (single - truth).pow(2).flatten(1).mean(1) + 1e-9).all()


def test_reference_images_dispatch_and_evaluations() -> None:
    prior, labels, images = ToyPrior(), torch.tensor([1]), torch.full((1, *SHAPE), 0.5)
    common: dict[str, Any] = {"datamodule": Means(), "images": images, "labels": labels, "device": CPU}
    mean = AttackConfig("m", {"name": "reference:class-mean"}, False)
    sample = AttackConfig("s", {"name": "reference:prior-sample"}, False)
    assert reference_images(mean, prior=None, generator=torch.Generator(), **common)[1] == 0
    assert reference_images(sample, prior=prior, generator=torch.Generator(), **common)[1] == 1
    fits, evaluations = reference_images(ceiling(4, 3), prior=prior, generator=torch.Generator(), **common)
    assert evaluations == 12 and fits.shape == images.shape
    with pytest.raises(RuntimeError, match="needs a prior"):
        reference_images(sample, prior=None, generator=torch.Generator(), **common)
    with pytest.raises(RuntimeError, match="unknown reference kind"):
        reference_images(AttackConfig("x", {"name": "reference:oracle"}, False), prior=prior, generator=None, **common)


def test_harness_ceiling_rows_are_fit_prior_ceiling(tmp_path: Path) -> None:
    from benchmarks.cells import seed_from
    from benchmarks.harness import Harness

    suite = build_suite(
        {
            "name": "tiny",
            "prior": "fashion-mnist-wgan",
            "victims": {"count": 1},
            "references": {"class_mean": False, "prior_sample": False, "ceiling_steps": 3, "ceiling_restarts": 2},
            "utility": {"enabled": False},
            "attacks": [{"name": "idlg", "iterations": 1}],
            "defenses": [{"name": "none"}],
        },
        "tiny.yaml",
    )
    run = Harness(suite, ResultsStore(tmp_path / "results.sqlite"), device="cpu", progress=False, references_only=True)
    assert not run.run().failed
    (stored,) = run.store.cells("tiny")
    (victim,) = run.store.victims("tiny")
    attack = suite.reference_attacks()[0]
    generator = torch.Generator().manual_seed(seed_from("tiny", 0, stored.attack_json, 0))
    fits = fit_prior_ceiling(
        run.prior(),
        torch.as_tensor(victim.images),
        torch.tensor(stored.labels),
        (1, 32, 32),
        steps=3,
        restarts=2,
        lr=float(attack.spec["lr"]),
        generator=generator,
        device=CPU,
    )
    assert np.array_equal(fits.numpy(), stored.images) and stored.evaluations == 6


SUITE = {
    "name": "refs",
    "prior": "fashion-mnist-wgan",
    "victims": {"count": 2},
    "seeds": [0, 1],
    "references": {"ceiling_steps": 10, "ceiling_restarts": 2, "ceiling_lr": 0.05},
    "attacks": [{"name": "idlg"}],
    "defenses": [{"name": "none"}],
}


def reference_row(victim: int, attack: dict[str, Any], psnr: float, seed: int = 0) -> CellRow:
    return CellRow(
        suite="refs",
        victim=victim,
        defense=None,
        attack=attack,
        seed=seed,
        kind="reference",
        defense_label="prior only",
        attack_label="-",
        config_hash="c",
        code_version="v",
        seconds=0.0,
        evaluations=20,
        metrics={"mse": 10 ** (-psnr / 10), "psnr": psnr, "ssim": psnr / 100},
        labels=[0],
        images=np.full((1, 1, 2, 2), victim, dtype=np.float32),
    )


def hand_made_rows() -> list[CellRow]:
    suite = build_suite(SUITE, "refs.yaml")
    mean, _, fit = (r.key() for r in suite.reference_attacks())
    other_setting = {**fit, "steps": 999}
    return [
        reference_row(0, fit, 20.0),
        reference_row(0, fit, 22.0, seed=1),  # victim 0: mean over seeds 21 dB
        reference_row(1, fit, 25.0),
        reference_row(2, fit, 99.0),  # beyond the victims asked for
        reference_row(0, other_setting, 50.0),  # another ceiling setting: not this suite's ceiling
        reference_row(0, mean, 14.0),
        reference_row(1, mean, 16.0),
    ]


def test_ceiling_summary_is_the_leaderboards_mean_over_victims() -> None:
    suite = build_suite(SUITE, "refs.yaml")
    summary = ceiling_summary(suite, hand_made_rows(), victims=2)
    assert summary["victims"] == [0, 1]
    assert summary["ceiling"]["psnr"] == {"mean": 23.0, "median": 23.0, "min": 21.0, "max": 25.0}
    assert summary["class_mean_reference"]["psnr"]["mean"] == 15.0
    assert summary["per_victim"]["ceiling"]["psnr"] == [21.0, 25.0]
    assert summary["settings"] == {"name": "reference:prior-ceiling", "steps": 10, "restarts": 2, "lr": 0.05}
    assert summary["provenance"]["ceiling"] == {"config_hashes": ["c"], "code_versions": ["v"], "seeds": [0, 1]}
    assert ceiling_summary(suite, hand_made_rows(), victims=3)["ceiling"]["psnr"]["max"] == 99.0
    with pytest.raises(ValueError, match="no prior ceiling"):
        ceiling_summary(build_suite({**SUITE, "prior": None}, "refs.yaml"), [], victims=2)


def test_command_line_reports_from_the_store(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    suite_file = tmp_path / "refs.yaml"
    suite_file.write_text(json.dumps(SUITE))
    with ResultsStore(tmp_path / "results.sqlite") as store:
        for victim in range(3):
            store.put_victim(VictimRow("refs", victim, [victim], [0], np.zeros((1, 1, 2, 2), dtype=np.float32)))
        for row in hand_made_rows():
            store.put_cell(row)
    summary, fits, samples = tmp_path / "ceiling.json", tmp_path / "fits.png", tmp_path / "samples.png"
    args = ["--suite", str(suite_file), "--store", str(tmp_path)]
    assert main([*args, "--json", str(summary), "--fits", str(fits), "--samples", str(samples)]) == 0
    assert samples.stat().st_size > 0
    assert "prior ceiling over 2 victims: PSNR 23.00 dB (median 23.00, min 21.00, max 25.00)" in capsys.readouterr().out
    assert json.loads(summary.read_text())["ceiling"]["psnr"]["mean"] == 23.0 and fits.stat().st_size > 0
    assert main([*args, "--victims", "1"]) == 0
    assert "over 1 victims: PSNR 21.00 dB" in capsys.readouterr().out
    assert main(["--suite", str(suite_file), "--store", str(tmp_path / "none")]) == 2


def test_compute_runs_the_suite_for_references_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    commands: list[list[str]] = []

    class Done:
        returncode = 0

    def fake_run(command: list[str], check: bool) -> Done:
        commands.append(command)
        return Done()

    monkeypatch.setattr(benchmarks.references.subprocess, "run", fake_run)
    monkeypatch.chdir(tmp_path)
    assert main(["--suite", "smoke", "--victims", "32", "--compute"]) == 2  # nothing was computed: no store
    (command,) = commands
    assert command[1:] == [
        "-m",
        "benchmarks.run",
        "--suite",
        "smoke",
        "--out",
        str(Path("results") / "smoke-references"),
        "--references-only",
        "--set",
        "victims.count=32",
        "--no-tensorboard",
    ]


def test_samples_of_a_conditional_and_an_unconditional_prior(tmp_path: Path) -> None:
    from importlib.util import find_spec

    from PIL import Image

    if find_spec("gan_face_generate") is None:
        pytest.skip("the face prior installs with --no-deps gan-face-generate")
    benchmarks.references.write_samples(tmp_path / "wgan.png", "fashion-mnist-wgan")
    benchmarks.references.write_samples(tmp_path / "faces.png", "face-dcgan")
    # ten a row with 1-pixel padding: 10 class rows of 32 px; 3 rows of 64 px faces
    assert Image.open(tmp_path / "wgan.png").size == (10 * 33 + 1, 10 * 33 + 1)
    assert Image.open(tmp_path / "faces.png").size == (10 * 65 + 1, 3 * 65 + 1)
