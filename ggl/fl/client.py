"""What leaves the client: the shared update of one FL round (FedSGD gradient or FedAvg model difference)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.checks import positive_int, positive_number


@dataclass(frozen=True)
class SharedUpdate:
    """The update a client sends to the server.

    Attributes:
        gradients: one tensor per ``model.parameters()`` entry, same order and shapes. For FedSGD the mean
            cross-entropy gradient of the batch; for FedAvg the model difference ``w_before - w_after``.
        num_samples: the client's batch size B (the server knows it in FedSGD/FedAvg).
        metadata: plain data describing how the update was made (``{"algorithm": "fedsgd"}``, defense notes...).
    """

    gradients: tuple[torch.Tensor, ...]
    num_samples: int
    metadata: Mapping[str, Any] = field(default_factory=dict)

    def with_gradients(self, gradients: tuple[torch.Tensor, ...] | list[torch.Tensor], **metadata: Any) -> SharedUpdate:
        """A copy with new gradients and ``metadata`` merged into the old one."""
        return replace(self, gradients=tuple(gradients), metadata={**self.metadata, **metadata})

    def flat(self) -> torch.Tensor:
        """All gradients concatenated into one vector."""
        return torch.cat([g.reshape(-1) for g in self.gradients])

    def norm(self) -> float:
        """Global L2 norm of the update."""
        return float(torch.linalg.vector_norm(self.flat()))


def non_finite_kinds(tensor: torch.Tensor) -> list[str]:
    """Which non-finite values ``tensor`` holds (``"NaN"``, ``"inf"``); empty when every entry is finite."""
    if bool(torch.isfinite(tensor).all()):
        return []
    return [kind for kind, bad in (("NaN", tensor.isnan()), ("inf", tensor.isinf())) if bool(bad.any())]


def _check_batch(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> None:
    if images.ndim != 4:
        raise ValueError(f"images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise ValueError(f"labels must be a vector of length B={images.shape[0]}, got shape {tuple(labels.shape)}")
    if labels.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")


def shared_update(model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> SharedUpdate:
    """FedSGD: the gradient of the mean cross-entropy of ``model`` on one batch.

    Args:
        model: the victim (its mode is respected; victims from ``make_victim`` are in eval mode).
        images: (B, C, H, W) normalised inputs. labels: (B,) class indices.
    Returns:
        A ``SharedUpdate`` aligned with ``model.parameters()``; the model's ``.grad`` fields are not touched.
    """
    _check_batch(model, images, labels)
    parameters = tuple(model.parameters())
    with torch.enable_grad():
        loss = F.cross_entropy(model(images), labels.long())
        gradients = torch.autograd.grad(loss, parameters)
    return SharedUpdate(tuple(g.detach() for g in gradients), int(images.shape[0]), {"algorithm": "fedsgd"})


def fedavg_update(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    local_steps: int = 1,
    lr: float = 0.1,
    local_batch_size: int | None = None,
) -> SharedUpdate:
    """FedAvg: ``local_steps`` SGD steps at ``lr`` on a copy of the model; shares ``w_before - w_after``.

    Each step takes the next mini-batch of ``local_batch_size`` images in the batch's order, cycling (None: the
    whole batch every step). With one full-batch step this is ``lr`` times the FedSGD gradient. The caller's model
    is not modified.
    """
    _check_batch(model, images, labels)
    positive_int("local_steps", local_steps)
    positive_number("lr", lr)
    size = images.shape[0] if local_batch_size is None else positive_int("local_batch_size", local_batch_size)
    starts = list(range(0, images.shape[0], size))
    before = [p.detach().clone() for p in model.parameters()]
    after = [p.clone() for p in before]
    names = [name for name, _ in model.named_parameters()]
    buffers = dict(model.named_buffers())
    with torch.enable_grad():
        for step in range(local_steps):
            first = starts[step % len(starts)]
            leaves = [p.requires_grad_(True) for p in after]
            state = {**buffers, **dict(zip(names, leaves))}
            logits = torch.func.functional_call(model, state, (images[first : first + size],))
            loss = F.cross_entropy(logits, labels[first : first + size].long())
            gradients = torch.autograd.grad(loss, leaves)
            after = [(p - lr * g).detach() for p, g in zip(leaves, gradients)]
    difference = tuple(b - a for b, a in zip(before, after))
    return SharedUpdate(
        difference,
        int(images.shape[0]),
        {"algorithm": "fedavg", "local_steps": local_steps, "lr": lr, "local_batch_size": local_batch_size},
    )
