"""The update protocol: the attacker's batched simulation of FedSGD and FedAvg equals what the client shares."""

from __future__ import annotations

import copy

import pytest
import torch

from ggl.attacks import AttackTarget, make_attack
from ggl.attacks.batched import PopulationObjective
from ggl.fl import fedavg_update, infer_labels, make_victim, shared_update
from ggl.fl.protocol import UpdateProtocol
from ggl.metrics import match_reconstructions

SHAPE = (1, 16, 16)


def _batch(batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, *SHAPE, generator=generator) * 2 - 1, torch.randint(0, 10, (batch,), generator=generator)


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    """||got - want|| / ||want||: an update is a difference of weights, so its entries carry the weights' rounding."""
    return float(torch.linalg.vector_norm(got - want) / torch.linalg.vector_norm(want))


@pytest.mark.parametrize(
    "protocol",
    [
        UpdateProtocol(),
        UpdateProtocol("fedavg", local_steps=1, local_lr=0.1),
        UpdateProtocol("fedavg", local_steps=5, local_lr=0.5),
        UpdateProtocol("fedavg", local_steps=3, local_lr=0.2, local_batch_size=2),
    ],
    ids=["fedsgd", "fedavg-1", "fedavg-5", "fedavg-3-minibatch-2"],
)
def test_simulated_update_equals_the_clients(protocol: UpdateProtocol) -> None:
    """Three candidate batches at once, each simulated update equal to the client's for that batch."""
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=1)
    batches = [_batch(4, seed) for seed in range(3)]
    labels = batches[0][1]
    candidates = torch.stack([images for images, _ in batches])
    simulated = protocol.candidate_updates(model, candidates, labels)
    for index, (images, _) in enumerate(batches):
        client = protocol.client_update(model, images, labels)
        for got, want in zip(simulated, client.gradients):
            assert relative_error(got[index], want) < 1e-4


def test_client_update_dispatches_and_records_the_protocol() -> None:
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=1)
    images, labels = _batch(4, 0)
    fedavg = UpdateProtocol("fedavg", local_steps=3, local_lr=0.2, local_batch_size=2)
    update = fedavg.client_update(model, images, labels)
    direct = fedavg_update(model, images, labels, local_steps=3, lr=0.2, local_batch_size=2)
    assert all(torch.equal(a, b) for a, b in zip(update.gradients, direct.gradients))
    assert UpdateProtocol.from_metadata(update.metadata) == fedavg
    assert UpdateProtocol.from_metadata(shared_update(model, images, labels).metadata) == UpdateProtocol()


def test_minibatches_cycle_in_order() -> None:
    """Step k takes mini-batch k mod n: with 5 images in mini-batches of 2, the third step takes the last image."""
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=1)
    images, labels = _batch(5, 2)
    assert UpdateProtocol("fedavg", 3, 0.1, 2).minibatches(5) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    three = fedavg_update(model, images, labels, local_steps=3, lr=0.1, local_batch_size=2)
    manual = copy.deepcopy(model)
    for part in (slice(0, 2), slice(2, 4), slice(4, 5)):
        step = shared_update(manual, images[part], labels[part])
        with torch.no_grad():
            for parameter, gradient in zip(manual.parameters(), step.gradients):
                parameter -= 0.1 * gradient
    for got, before, after in zip(three.gradients, model.parameters(), manual.parameters()):
        assert relative_error(got, before.detach() - after.detach()) < 1e-5


def test_unrolled_update_is_differentiable_in_the_images() -> None:
    """``create_graph`` keeps the unrolled local steps differentiable: autograd agrees with finite differences."""
    model = make_victim("lenet", num_classes=10, image_shape=(1, 8, 8), seed=0).double()
    protocol = UpdateProtocol("fedavg", local_steps=2, local_lr=0.5, local_batch_size=1)
    labels = torch.tensor([3, 7])
    images = torch.rand(1, 2, 1, 8, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def first_layer_update(candidates: torch.Tensor) -> torch.Tensor:
        return protocol.candidate_updates(model, candidates, labels, create_graph=True)[0].sum()

    assert torch.autograd.gradcheck(first_layer_update, (images.requires_grad_(True),), eps=1e-6, atol=1e-5)


def test_population_objective_runs_the_protocol() -> None:
    """Under FedAvg the objective is zero at the true batch and equals the distance of each simulated update."""
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=1)
    protocol = UpdateProtocol("fedavg", local_steps=4, local_lr=0.3, local_batch_size=2)
    images, labels = _batch(4, 5)
    received = protocol.client_update(model, images, labels)
    objective = PopulationObjective(model, received.gradients, labels, protocol=protocol)
    assert objective.engine_name == "unrolled"
    others = _batch(4, 6)[0]
    losses = objective(torch.stack([images, others]))
    assert float(losses[0]) < 1e-10 < float(losses[1])
    plain = PopulationObjective(model, received.gradients, labels)
    assert float(plain(images.unsqueeze(0))[0]) > 1e-6


def test_label_count_rule_under_fedavg() -> None:
    """The count rule divides a FedAvg update by steps x lr, so at a small step it reads the same counts as from
    the FedSGD gradient of the same batch (with local mini-batches, over whole local epochs). The rule is first
    order in the step: on this sigmoid LeNet, 4 steps at lr 0.05 already change one count in three batches."""
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=0)
    for seed, labels in ((3, [1, 1, 4, 8]), (4, [0, 2, 2, 5]), (5, [3, 3, 3, 9])):
        images = _batch(4, seed)[0]
        truth = torch.tensor(labels)
        fedsgd = infer_labels(shared_update(model, images, truth), model).tolist()
        for local_batch_size in (None, 2):
            update = fedavg_update(model, images, truth, local_steps=4, lr=1e-3, local_batch_size=local_batch_size)
            assert infer_labels(update, model).tolist() == fedsgd


def test_fedsgd_only_options_are_refused() -> None:
    with pytest.raises(ValueError, match="fedavg only"):
        UpdateProtocol("fedsgd", local_steps=3)
    with pytest.raises(ValueError, match="algorithm"):
        UpdateProtocol("fedprox")
    with pytest.raises(ValueError, match="local_lr"):
        UpdateProtocol("fedavg", local_lr=0.0)


def test_idlg_recovers_a_batch_through_fedavg_local_steps() -> None:
    """Two images, one local step on each: iDLG that unrolls the steps rebuilds both (MSE below 1e-4 after
    matching); the same attack assuming FedSGD, on the same update, does not (MSE above 0.1)."""
    model = make_victim("lenet", num_classes=10, image_shape=SHAPE, seed=0)
    protocol = UpdateProtocol("fedavg", local_steps=2, local_lr=0.5, local_batch_size=1)
    images = torch.rand(2, *SHAPE, generator=torch.Generator().manual_seed(11))
    labels = torch.tensor([4, 7])
    update = protocol.client_update(model, images, labels)
    errors = {}
    for name, assumed in (("unrolled", protocol), ("fedsgd", UpdateProtocol())):
        attack = make_attack("idlg", iterations=20, max_iter=20, seed=0)
        result = attack.reconstruct(AttackTarget(model, update, image_shape=SHAPE, protocol=assumed, labels=labels))
        matched = result.images[match_reconstructions(result.images, images)]
        errors[name] = float((matched - images).pow(2).mean())
    assert errors["unrolled"] < 1e-4
    assert errors["fedsgd"] > 0.1
