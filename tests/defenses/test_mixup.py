"""MixUp: convex mixtures, soft labels, the shared gradient, and the batch-of-one identity."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ggl.defenses import make_defense, mix_batch
from ggl.fl import shared_update


def test_mixtures_are_convex_combinations_of_batch_images():
    images = torch.eye(4).view(4, 1, 2, 2)  # image i is the indicator of pixel i
    labels = torch.tensor([0, 1, 2, 3])
    mixed, soft, weights = mix_batch(images, labels, 5, k=3, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(weights.sum(1), torch.ones(4))
    assert bool((weights >= 0).all())
    torch.testing.assert_close(mixed.flatten(1).sum(1), torch.ones(4))
    # With indicator images and labels equal to the pixel index, image and label mixtures coincide.
    torch.testing.assert_close(mixed.flatten(1), soft[:, :4])
    assert bool((soft[:, 4] == 0).all())
    assert bool((mixed.flatten(1)[torch.arange(4), labels] >= weights[:, 0] - 1e-6).all())


def test_update_is_the_soft_label_gradient_of_the_mixed_batch(victim):
    generator = torch.Generator().manual_seed(2)
    images = torch.rand(4, 1, 16, 16, generator=generator)
    labels = torch.tensor([1, 5, 5, 9])
    update = shared_update(victim, images, labels)
    defended = make_defense("mixup", k=2)(
        update, model=victim, images=images, labels=labels, generator=torch.Generator().manual_seed(7)
    )
    mixed, soft, _ = mix_batch(images, labels, 10, k=2, generator=torch.Generator().manual_seed(7))
    loss = -(soft * F.log_softmax(victim(mixed), dim=-1)).sum(-1).mean()
    expected = torch.autograd.grad(loss, tuple(victim.parameters()))
    for got, want in zip(defended.gradients, expected):
        torch.testing.assert_close(got, want)
    assert float(F.cosine_similarity(defended.flat(), update.flat(), dim=0)) < 0.999


def test_batch_of_one_is_unchanged(victim, batch):
    images, labels = batch[0][:1], batch[1][:1]
    update = shared_update(victim, images, labels)
    defended = make_defense("mixup")(update, model=victim, images=images, labels=labels)
    assert all(torch.equal(a, b) for a, b in zip(defended.gradients, update.gradients))
