"""DLG on DLG's LeNet with embedded Fashion-MNIST victims: joint image/label recovery and failure under noise."""

from __future__ import annotations

import dataclasses
import time

import pytest
import torch

from ggl.attacks import make_attack
from ggl.defenses import make_defense

BUDGET = 250


def test_dlg_recovers_image_and_label(make_case, psnr) -> None:
    case = make_case("lenet", index=2, seed=2)
    rec = make_attack("dlg", seed=2, budget=BUDGET).reconstruct(case.target)
    assert rec.labels.tolist() == case.labels.tolist()
    assert psnr(rec.images, case.images) >= 30  # measured 48.9 dB


def test_dlg_fails_under_noise(make_case, psnr) -> None:
    case = make_case("lenet", index=2, seed=2, defense=make_defense("gaussian", sigma=0.1))
    rec = make_attack("dlg", seed=2, budget=BUDGET).reconstruct(case.target)
    assert psnr(rec.images, case.images) < 15  # measured 6.2 dB


def test_adaptive_dlg_under_pure_rescale_matches_no_defense(make_case, psnr) -> None:
    plain = make_case("lenet", index=2, seed=2)
    clipped = make_case("lenet", index=2, seed=2, defense=make_defense("clipping", bound=0.25))
    reference = psnr(make_attack("dlg", seed=2, budget=BUDGET).reconstruct(plain.target).images, plain.images)
    rec = make_attack("dlg", seed=2, budget=BUDGET, adaptive=True).reconstruct(clipped.target)
    assert rec.labels.tolist() == clipped.labels.tolist()
    assert psnr(rec.images, clipped.images) >= reference - 3  # measured 48.7 dB against 48.9 dB (before: 25.6 dB)


def test_dlg_optimises_labels_instead_of_using_known_ones(make_case) -> None:
    case = make_case("lenet", index=2, seed=2)
    told = dataclasses.replace(case.target, labels=(case.labels + 1) % 10)
    blind = make_attack("dlg", seed=0, iterations=3, max_iter=3).reconstruct(case.target)
    informed = make_attack("dlg", seed=0, iterations=3, max_iter=3).reconstruct(told)
    assert blind.trace == informed.trace and torch.equal(blind.labels, informed.labels)


@pytest.mark.slow
def test_dlg_on_five_victims(make_case, psnr) -> None:
    scores = []
    for index in range(5):
        case = make_case("lenet", index=index, seed=index)
        cpu_start = time.process_time()
        rec = make_attack("dlg", seed=index).reconstruct(case.target)
        cpu_seconds = time.process_time() - cpu_start
        assert cpu_seconds < 60  # CPU time, not wall time: the bound must not depend on other load
        scores.append(psnr(rec.images, case.images))
    # Measured 64.6, 74.1, 72.7, 81.8, 85.8 dB (8.0, 8.9, 73.3, 83.4, 86.7 with the two-loop recursion's rounding).
    # DLG's outcome flips with small changes of its start, stopping or rounding: over these five victims with attack
    # seeds 10-12 at a budget of 1,000, 7 of 15 runs pass 30 dB (8 of 15 with the two-loop recursion).
    assert sum(score >= 30 for score in scores) >= 3, scores
