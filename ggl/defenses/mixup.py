"""Input-level MixUp as a defense: the client shares the gradient of a mixed batch instead of its own.

Each image is replaced by a convex combination of itself and ``k - 1`` other images of the same batch (chosen by
random permutations), with the same weights on the one-hot labels; the shared update is the mean soft-label
cross-entropy gradient of the mixed batch. mixup: Zhang et al., ICLR 2018, arXiv 1710.09412; evaluated as a
gradient-inversion defense by Huang et al., "Evaluating Gradient Inversion Attacks and Defenses in Federated
Learning", NeurIPS 2021, arXiv 2112.00059 (GradAttack), whose mixing weights are absolute Gaussian draws
normalised to sum to one - the rule used here, which also keeps every draw on the explicit generator.

With a batch of one there is nobody to mix with and the update is unchanged. Attacker-side simulation: identity
(the weights and partners are secret draws; an attacker may instead treat the mixtures as its victims).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ggl.defenses.base import Defense, as_int, register_defense
from ggl.fl.client import SharedUpdate


def mix_batch(
    images: torch.Tensor, labels: torch.Tensor, num_classes: int, k: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix every image with ``k - 1`` batch partners.

    Returns:
        mixed images (B, C, H, W), soft labels (B, num_classes) and the weights (B, k) (rows sum to one; column 0
        is the image's own weight, column j its j-th partner's).
    """
    batch = images.shape[0]
    partners = [torch.arange(batch)] + [torch.randperm(batch, generator=generator) for _ in range(k - 1)]
    index = torch.stack(partners, dim=1).to(images.device)  # (B, k)
    weights = torch.randn(batch, k, generator=generator, device=generator.device).abs()
    weights = (weights / weights.sum(1, keepdim=True).clamp_min(1e-12)).to(device=images.device, dtype=images.dtype)
    mixed = (weights.view(batch, k, 1, 1, 1) * images[index]).sum(1)
    one_hot = F.one_hot(labels.long(), num_classes).to(images.dtype)
    soft = (weights.unsqueeze(-1) * one_hot[index]).sum(1)
    return mixed, soft, weights


@register_defense
class MixUp(Defense):
    """Share the gradient of an in-batch MixUp of the private batch (see the module docstring).

    Needs the victim and its batch, and a FedSGD update of that batch (its gradients are replaced).

    Args:
        k: images in each mixture, in [2, 16] (default 4, as evaluated by Huang et al.).
    """

    name = "mixup"
    parameters = ("k",)
    needs_batch = True
    fedsgd_only = True
    deterministic = False

    def __init__(self, k: int = 4) -> None:
        self.k = as_int(self.name, "k", k, low=2, high=16)

    def apply(
        self,
        update: SharedUpdate,
        *,
        model: nn.Module | None,
        images: torch.Tensor | None,
        labels: torch.Tensor | None,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        assert model is not None and images is not None and labels is not None
        if images.shape[0] == 1:
            return list(update.gradients)
        parameters = tuple(model.parameters())
        with torch.enable_grad():
            num_classes = int(model(images[:1]).shape[-1])
            mixed, soft, _ = mix_batch(images.detach(), labels, num_classes, self.k, generator)
            loss = -(soft * F.log_softmax(model(mixed), dim=-1)).sum(-1).mean()
            gradients = torch.autograd.grad(loss, parameters)
        return [g.detach() for g in gradients]
