"""Device placement: every attack runs its search on a CUDA device when asked, and returns CPU tensors.

Runs where CUDA exists (``bash benchmarks/perf/gpu.sh`` machines); skipped elsewhere.
"""

from __future__ import annotations

import math

import pytest
import torch

from ggl.attacks import make_attack
from ggl.defenses import make_defense

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

ATTACKS = [
    {"name": "dlg", "iterations": 2, "max_iter": 3},
    {"name": "idlg", "iterations": 2, "max_iter": 3},
    {"name": "dlg", "iterations": 2, "max_iter": 3, "restarts": 2, "batch_restarts": True},
    {"name": "idlg", "iterations": 2, "max_iter": 3, "restarts": 2, "batch_restarts": True},
    {"name": "inverting_gradients", "iterations": 3},
    {"name": "inverting_gradients", "iterations": 3, "restarts": 2, "batch_restarts": True},
    {"name": "ggl", "prior": "fashion-mnist-wgan", "search": "cma", "budget": 20, "population": 10},
    {"name": "ggl", "prior": "fashion-mnist-wgan", "search": "adam", "budget": 20, "population": 10},
]


@pytest.mark.parametrize("adaptive", [False, True])
@pytest.mark.parametrize("spec", ATTACKS, ids=lambda spec: "-".join(str(v) for v in spec.values()))
def test_attack_searches_on_the_gpu(spec: dict, adaptive: bool, make_case) -> None:
    case = make_case("lenet", index=0, seed=0, defense=make_defense("soteria", pruning_rate=0.5))
    devices: set[str] = set()
    case.target.model.register_forward_hook(lambda module, args, output: devices.add(output.device.type))
    rec = make_attack(**spec, adaptive=adaptive, seed=0).reconstruct(case.target, accelerator="gpu")
    assert "cuda" in devices  # the victim copy the search used was on the GPU
    assert rec.images.device.type == "cpu" and rec.labels.device.type == "cpu"
    assert torch.isfinite(rec.images).all() and math.isfinite(rec.loss)
    assert next(case.target.model.parameters()).device.type == "cpu"  # the caller's victim is untouched


JOINT = [spec for spec in ATTACKS if spec["name"] != "ggl" or spec["search"] != "adam"]


@pytest.mark.parametrize("spec", JOINT, ids=lambda spec: "-".join(str(v) for v in spec.values()))
def test_targets_searched_together_on_the_gpu(spec: dict, make_case) -> None:
    """An attack and a second update of the same victim model (a control) as one population on the GPU."""
    from ggl.attacks import AttackTarget
    from ggl.fl import shared_update

    case = make_case("lenet", index=0, seed=0)
    other = make_case("lenet", index=1, seed=0)
    model = case.target.model
    control = AttackTarget(
        model,
        shared_update(model, other.target.normalization.normalize(other.images), case.labels),
        image_shape=case.target.image_shape,
        normalization=case.target.normalization,
    )
    devices: set[str] = set()
    model.register_forward_hook(lambda module, args, output: devices.add(output.device.type))
    results = make_attack(**spec, seed=0).reconstruct_together([case.target, control], accelerator="gpu")
    assert "cuda" in devices and len(results) == 2
    for rec in results:
        assert rec.images.device.type == "cpu" and torch.isfinite(rec.images).all() and math.isfinite(rec.loss)
