"""The FL update protocol: how a client turns its private batch into the update it shares, and the attacker's
simulation of the same protocol on candidate batches.

FedSGD shares the mean cross-entropy gradient of the batch at the round's weights. FedAvg runs ``local_steps``
SGD steps at ``local_lr`` on mini-batches of ``local_batch_size`` images, taken in the batch's order and cycled
(step k uses mini-batch k mod ceil(B / local_batch_size)), and shares ``w_before - w_after``. The server sets
the protocol, so an attacker knows it: ``candidate_updates`` unrolls the same local steps on P candidate batches
at once (stacked parameters, one ``vmap`` forward per step) and, with ``create_graph``, stays differentiable
with respect to the candidates, as the FedAvg attacks of Geiping et al. (NeurIPS 2020, arXiv 2003.14053) and
Dimitrov et al. (NeurIPS 2022, arXiv 2202.07178) unroll them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.checks import one_of, positive_int, positive_number
from ggl.fl.client import SharedUpdate, fedavg_update, shared_update

ALGORITHMS = ("fedsgd", "fedavg")


@dataclass(frozen=True)
class UpdateProtocol:
    """One round's update rule.

    Attributes:
        algorithm: ``fedsgd`` (share the batch gradient) or ``fedavg`` (share the change of the weights).
        local_steps: SGD steps of FedAvg (1 for FedSGD). local_lr: their step size.
        local_batch_size: FedAvg's mini-batch size; None takes the whole batch every step.
    """

    algorithm: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch_size: int | None = None

    def __post_init__(self) -> None:
        one_of("algorithm", self.algorithm, ALGORITHMS)
        positive_int("local_steps", self.local_steps)
        positive_number("local_lr", self.local_lr)
        if self.local_batch_size is not None:
            positive_int("local_batch_size", self.local_batch_size)
        if self.algorithm == "fedsgd" and (self.local_steps != 1 or self.local_batch_size is not None):
            raise ValueError(
                "local_steps and local_batch_size apply to fedavg only; FedSGD shares one full-batch gradient "
                "(set algorithm: fedavg, or drop them)"
            )

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any]) -> UpdateProtocol:
        """The protocol a ``SharedUpdate`` records in its metadata (FedSGD when it records none)."""
        if metadata.get("algorithm", "fedsgd") != "fedavg":
            return cls()
        return cls("fedavg", int(metadata["local_steps"]), float(metadata["lr"]), metadata.get("local_batch_size"))

    @property
    def spec(self) -> dict[str, Any]:
        """Plain data; ``UpdateProtocol(**spec)`` round-trips."""
        return asdict(self)

    @property
    def is_fedsgd(self) -> bool:
        return self.algorithm == "fedsgd"

    def client_update(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> SharedUpdate:
        """What the client shares for its batch (``ggl.fl.shared_update`` or ``ggl.fl.fedavg_update``)."""
        if self.is_fedsgd:
            return shared_update(model, images, labels)
        return fedavg_update(model, images, labels, self.local_steps, self.local_lr, self.local_batch_size)

    def gradient_scale(self) -> float:
        """How many mean gradients the update holds, to first order in ``local_lr``: 1 for FedSGD, ``steps * lr``
        for FedAvg (label inference divides by it)."""
        return 1.0 if self.is_fedsgd else self.local_steps * self.local_lr

    def candidate_updates(
        self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor, create_graph: bool = False
    ) -> list[torch.Tensor]:
        """The update each of P candidate batches would produce: one (P, *parameter_shape) tensor per parameter.

        Args:
            model: the victim at the round's weights (not modified).
            images: (P, B, C, H, W) normalised candidate inputs.
            labels: (B,) class indices, or (B, K) soft-label logits (DLG), shared by every candidate; or (P, B) class
                indices, one row per candidate (candidates of several targets scored together).
            create_graph: keep the unrolled steps differentiable with respect to ``images`` (and soft labels).
        """
        names = [name for name, _ in model.named_parameters()]
        buffers = {name: b.detach() for name, b in model.named_buffers()}
        count = images.shape[0]
        start = [p.detach().unsqueeze(0).expand(count, *p.shape) for p in model.parameters()]

        def logits_of(parameters: tuple[torch.Tensor, ...], batch: torch.Tensor) -> torch.Tensor:
            return torch.func.functional_call(model, {**buffers, **dict(zip(names, parameters))}, (batch,))

        forward = torch.func.vmap(logits_of, in_dims=(0, 0))
        steps = 1 if self.is_fedsgd else self.local_steps
        lr = 1.0 if self.is_fedsgd else self.local_lr
        slices = self.minibatches(images.shape[1])
        per_candidate = labels.ndim == 2 and not labels.is_floating_point()
        current = [p.clone().requires_grad_(True) for p in start]
        with torch.enable_grad():
            for step in range(steps):
                part = slices[step % len(slices)]
                logits = forward(tuple(current), images[:, part])
                loss = _cross_entropy(logits, labels[:, part] if per_candidate else labels[part]).sum()
                gradients = torch.autograd.grad(loss, current, create_graph=create_graph)
                current = [p - lr * g for p, g in zip(current, gradients)]
                if not create_graph:
                    current = [p.detach().requires_grad_(step + 1 < steps) for p in current]
        return [s - p for s, p in zip(start, current)]

    def minibatches(self, batch_size: int) -> list[slice]:
        """The local mini-batches of a batch of ``batch_size`` images, in the order the client steps through them."""
        size = batch_size if self.is_fedsgd or self.local_batch_size is None else self.local_batch_size
        return [slice(i * size, min((i + 1) * size, batch_size)) for i in range(math.ceil(batch_size / size))]


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-candidate mean cross-entropy of logits (P, b, K) against class indices (b,) or (P, b), or soft-label
    logits (b, K)."""
    if labels.is_floating_point():
        return torch.sum(-F.softmax(labels, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1).mean(1)
    flat_labels = labels.reshape(-1) if labels.ndim == 2 else labels.repeat(logits.shape[0])
    flat = F.cross_entropy(logits.flatten(0, 1), flat_labels, reduction="none")
    return flat.reshape(logits.shape[:2]).mean(1)
