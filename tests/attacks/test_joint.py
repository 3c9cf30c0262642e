"""Several targets searched as one population: ``JointObjective`` and ``reconstruct_together`` against each target
scored and reconstructed alone."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from ggl.attacks import AttackTarget, make_attack
from ggl.attacks.batched import JointObjective, PopulationObjective
from ggl.data.embedded import EmbeddedFashionMNIST
from ggl.defenses import make_defense
from ggl.fl import make_victim, shared_update


@dataclass
class Pair:
    """Two updates of one victim model (one image each, of two classes) and their targets."""

    model: torch.nn.Module
    targets: list[AttackTarget]
    labels: list[torch.Tensor]


def _pair(fashion: EmbeddedFashionMNIST, defense: object | None, same_class: bool = False) -> Pair:
    indices = fashion.victim_indices(40, seed=0)
    first = indices[1]
    first_label = int(fashion.victim_batch([first])[1])
    second = next(i for i in indices[2:] if (int(fashion.victim_batch([i])[1]) == first_label) == same_class)
    model = make_victim("lenet", 10, fashion.image_shape, 0)
    targets, labels = [], []
    for seed, index in enumerate((first, second)):
        images, label = fashion.victim_batch([index])
        inputs = fashion.normalization.normalize(images)
        update = shared_update(model, inputs, label)
        if defense is not None:
            generator = torch.Generator().manual_seed(seed)
            update = defense(update, model=model, images=inputs, labels=label, generator=generator)  # type: ignore[operator]
        targets.append(
            AttackTarget(
                model,
                update,
                defense=defense,  # type: ignore[arg-type]
                image_shape=fashion.image_shape,
                normalization=fashion.normalization,
            )
        )
        labels.append(label)
    return Pair(model, targets, labels)


def _objective(pair: Pair, index: int, engine: str, simulated: bool, chunk_size: int | None) -> PopulationObjective:
    target = pair.targets[index]
    simulate, linear = None, None
    if simulated:
        assert target.defense is not None
        linear = target.defense.linear_simulation(target.update)  # type: ignore[attr-defined]

        def simulate(trial: list[torch.Tensor], target: AttackTarget = target) -> list[torch.Tensor]:
            return target.defense.simulate(trial, received=target.update)  # type: ignore[union-attr]

    return PopulationObjective(
        pair.model,
        target.update.gradients,
        pair.labels[index],
        metric="cosine" if engine == "vmap" else "l2",
        simulate=simulate,
        linear_simulation=linear,
        engine=engine,
        chunk_size=chunk_size,
    )


@pytest.fixture(scope="module")
def fashion_module() -> EmbeddedFashionMNIST:
    datamodule = EmbeddedFashionMNIST()
    datamodule.setup("predict")
    return datamodule


@pytest.mark.parametrize("engine", ["serial", "vmap", "hooks", "inner"])
@pytest.mark.parametrize(
    "defense", [None, ("sparsification", {"ratio": 0.9}), ("clipping", {"bound": 0.25}), ("soteria", {})]
)
def test_joint_losses_and_gradients_equal_each_objective_alone(engine, defense, fashion_module) -> None:
    """Candidates of two updates with different labels, interleaved and in chunks of 2: every loss, and its gradient
    with respect to the images, is the one the candidate's own objective gives (relative error below 1e-4), with
    each update's own simulation (masks from its own update)."""
    built = None if defense is None else make_defense(defense[0], **defense[1])
    pair = _pair(fashion_module, built)
    simulated = built is not None
    objectives = [_objective(pair, index, engine, simulated, chunk_size=2) for index in range(2)]
    groups = torch.tensor([1, 0, 0, 1, 1])
    images = torch.randn(5, 1, *fashion_module.image_shape, generator=torch.Generator().manual_seed(0))
    images.requires_grad_(True)
    joint = JointObjective(objectives)(images, groups, create_graph=True)
    (joint_gradient,) = torch.autograd.grad(joint.sum(), [images])
    alone = torch.stack([objectives[int(g)](images[p : p + 1], create_graph=True)[0] for p, g in enumerate(groups)])
    (alone_gradient,) = torch.autograd.grad(alone.sum(), [images])
    assert torch.allclose(joint, alone, rtol=1e-4, atol=1e-7)
    assert torch.allclose(joint_gradient, alone_gradient, rtol=1e-4, atol=1e-6)
    assert not torch.allclose(objectives[0](images), objectives[1](images))  # the two targets do differ


def test_joint_objective_refuses_objectives_of_another_model(fashion_module) -> None:
    pair = _pair(fashion_module, None)
    other = make_victim("lenet", 10, fashion_module.image_shape, 0)
    objectives = [
        PopulationObjective(pair.model, pair.targets[0].update.gradients, pair.labels[0]),
        PopulationObjective(other, pair.targets[1].update.gradients, pair.labels[1]),
    ]
    with pytest.raises(ValueError, match="another model"):
        JointObjective(objectives)
    with pytest.raises(ValueError, match="index the 1 objectives"):
        JointObjective(objectives[:1])(torch.zeros(2, 1, 1, 32, 32), groups=[0, 1])


CASES = {
    "ggl-cma": ("ggl", {"search": "cma", "budget": 40, "population": 10, "restarts": 2}),
    "ggl-cma-adaptive": ("ggl", {"search": "cma", "budget": 30, "population": 10, "adaptive": True}),
    "inverting": ("inverting_gradients", {"iterations": 6, "restarts": 2, "batch_restarts": True}),
    "idlg-soteria": ("idlg", {"iterations": 3, "max_iter": 5, "restarts": 2, "batch_restarts": True, "adaptive": True}),
    "dlg-one-chain": ("dlg", {"iterations": 3, "max_iter": 5}),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_reconstruct_together_equals_each_target_alone(case: str, fashion_module, same_search) -> None:
    """An attack and a second update of the same class (a control) as one population, with the serial engine:
    each target's per-trial losses, trace, winner, images, labels, evaluations (and GGL's latent) are its own run's
    (relative 1e-4; GGL's restarts alone run one after another, together as chains in lockstep). For DLG and iDLG
    1e-3: L-BFGS amplifies rounding, and the chains' algebra runs batched, whose products round differently from
    one chain's (DLG's single chain alone also runs the serial objective, together a population's; its images
    differed by 4e-4, measured)."""
    name, options = CASES[case]
    adaptive = options.get("adaptive", False)
    defense = make_defense("soteria", pruning_rate=0.6) if adaptive else None
    pair = _pair(fashion_module, defense, same_class=True)
    together = make_attack(name, seed=3, engine="serial", **options).reconstruct_together(pair.targets)
    for target, joint in zip(pair.targets, together):
        alone = make_attack(name, seed=3, engine="serial", **options).reconstruct(target)
        same_search(joint, alone, rel=1e-3 if name in ("dlg", "idlg") else 1e-4)
        if name == "ggl":
            assert torch.allclose(torch.tensor(joint.extras["latent"]), torch.tensor(alone.extras["latent"]))
    assert together[0].extras["trial_losses"] != together[1].extras["trial_losses"]


def test_a_budget_counts_per_target(fashion_module) -> None:
    """Inverting Gradients' chains spend in step: each target stops where its own run stops."""
    pair = _pair(fashion_module, None)
    options = {"iterations": 20, "restarts": 2, "budget": 9, "engine": "serial"}
    together = make_attack("inverting_gradients", **options).reconstruct_together(pair.targets)
    alone = make_attack("inverting_gradients", batch_restarts=True, **options).reconstruct(pair.targets[1])
    assert [r.evaluations for r in together] == [alone.evaluations] * 2 == [12, 12]  # 5 steps of 2, the final score
    assert together[1].trace == pytest.approx(alone.trace, rel=1e-4)
    assert together[0].labels.tolist() == pair.labels[0].tolist() != together[1].labels.tolist()


def test_what_cannot_run_together_is_refused(fashion_module) -> None:
    pair = _pair(fashion_module, None, same_class=True)
    with pytest.raises(ValueError, match="'ggl' cannot search several targets together"):
        make_attack("ggl", search="adam", budget=10, population=2).reconstruct_together(pair.targets)
    with pytest.raises(ValueError, match="need budget=None"):
        make_attack("idlg", iterations=2, budget=50).reconstruct_together(pair.targets)
    other = make_victim("lenet", 10, fashion_module.image_shape, 0)
    moved = AttackTarget(other, pair.targets[1].update, image_shape=fashion_module.image_shape)
    with pytest.raises(ValueError, match=r"targets\[1\] differs from targets\[0\] in model, normalization"):
        make_attack("idlg", iterations=2).reconstruct_together([pair.targets[0], moved])
