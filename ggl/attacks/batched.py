"""Population evaluation: the gradient distance of P candidate batches in one batched pass.

GGL (Li et al., "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage", CVPR 2022,
arXiv 2203.15696) scores every candidate of a search population by the distance between the victim gradient
it induces and the shared one. The paper's code does that one candidate at a time; here a population is one
batched computation. Engines (``ENGINES``) differ only in how the P per-candidate gradients are obtained:

- ``serial``: a loop of ``torch.autograd.grad`` calls, one candidate at a time (the baseline, the paper's way);
- ``vmap``: ``torch.func.vmap`` over ``torch.func.grad`` of a ``functional_call`` of the victim;
- ``hooks``: one forward and one backward pass over all P*B images; each layer's per-candidate weight gradient is
  contracted from its inputs and its output gradients (the per-sample-gradient rules of opacus' grad samplers,
  summed over the B images of a candidate instead of kept per sample).

``auto`` picks ``hooks`` when every parameterised layer of the victim is supported and ``vmap`` otherwise (the
measured choice, see docs/engine.md). All engines agree to float rounding and are differentiable with respect
to the images when ``create_graph=True`` (GGL-Adam backpropagates through generator, images and gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ggl.attacks.objective import DISTANCES, gradient_distance

Simulation = Callable[[list[torch.Tensor]], list[torch.Tensor]]


class PopulationEngine:
    """Computes the mean cross-entropy gradient of each of P candidate batches of one victim model.

    Args:
        model: the victim, in ``eval()`` mode (candidates must not share batch statistics).
    Subclasses implement ``gradients(images (P, B, C, H, W), labels (B,), create_graph) -> [(P, *s)]`` with one
    tensor per ``model.parameters()`` entry.
    """

    name = ""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.parameter_names = [name for name, _ in model.named_parameters()]

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        """Whether this engine can differentiate every parameterised layer of ``model``."""
        return True

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        raise NotImplementedError

    def _state(self, requires_grad: bool) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        parameters = {
            name: p.detach().requires_grad_(requires_grad) for name, p in self.model.named_parameters()
        }
        buffers = {name: b.detach() for name, b in self.model.named_buffers()}
        return parameters, buffers


ENGINES: dict[str, type[PopulationEngine]] = {}
"""Population engines by name (``auto`` is resolved by ``choose_engine`` and is not an entry)."""


def register_engine(name: str) -> Callable[[type[PopulationEngine]], type[PopulationEngine]]:
    """Class decorator adding an engine to ``ENGINES``; refuses a name that is taken."""

    def decorate(cls: type[PopulationEngine]) -> type[PopulationEngine]:
        if name in ENGINES:
            raise ValueError(f"engine {name!r} is already registered")
        cls.name = name
        ENGINES[name] = cls
        return cls

    return decorate


@register_engine("serial")
class SerialEngine(PopulationEngine):
    """One ``torch.autograd.grad`` call per candidate: the reference the batched engines must reproduce."""

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        parameters, buffers = self._state(requires_grad=True)
        leaves = list(parameters.values())
        per_candidate = []
        for batch in images:
            logits = torch.func.functional_call(self.model, {**buffers, **parameters}, (batch,))
            loss = F.cross_entropy(logits, labels)
            per_candidate.append(torch.autograd.grad(loss, leaves, create_graph=create_graph))
        return [torch.stack(list(column)) for column in zip(*per_candidate)]


@register_engine("vmap")
class VmapEngine(PopulationEngine):
    """``vmap(grad(loss))`` over the candidate dimension with ``torch.func``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)

        def loss(
            parameters: dict[str, torch.Tensor],
            buffers: dict[str, torch.Tensor],
            batch: torch.Tensor,
            labels: torch.Tensor,
        ) -> torch.Tensor:
            logits = torch.func.functional_call(model, {**buffers, **parameters}, (batch,))
            return F.cross_entropy(logits, labels)

        self._per_candidate = torch.func.vmap(torch.func.grad(loss), in_dims=(None, None, 0, None))

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        parameters, buffers = self._state(requires_grad=False)
        gradients = self._per_candidate(parameters, buffers, images, labels)
        return [gradients[name] for name in self.parameter_names]


def choose_engine(model: nn.Module) -> str:
    """The engine ``auto`` resolves to for ``model``: ``hooks`` where it supports every layer, else ``vmap``."""
    hooks = ENGINES.get("hooks")
    if hooks is not None and hooks.supports(model):
        return "hooks"
    return "vmap"


class PopulationObjective:
    """Gradient distance of a population of candidate batches to a shared update, evaluated in one batched pass.

    GGL (Li et al., CVPR 2022, arXiv 2203.15696): each candidate's loss is D(T(grad L(x_p, y)), g') where
    L is the mean cross-entropy over the candidate's B images, T the attacker-side defense simulation and D a
    gradient distance (``ggl.attacks.objective``).

    Args:
        model: the victim, in ``eval()`` mode; its parameters are not modified.
        target_gradients: the received update, one tensor per ``model.parameters()`` entry.
        labels: (B,) class indices shared by every candidate.
        metric: ``l2`` (GGL), ``cosine`` (Inverting Gradients) or ``l1``. layer_weights: optional, one per tensor.
        simulate: optional ``list[(P, *s)] -> list[(P, *s)]`` applied to the trial gradients (e.g.
            ``functools.partial(defense.simulate, received=update)``); it must treat candidates independently.
        engine: ``auto`` (default) or a name in ``ENGINES``.
        chunk_size: candidates evaluated together (None: the whole population); bounds memory.
    Call: ``objective(images (P, B, C, H, W), create_graph=False) -> (P,)``; with ``create_graph=True`` the losses
    are differentiable with respect to ``images``.

    Example::

        objective = PopulationObjective(model, update.gradients, labels)
        losses = objective(normalization.normalize(generator(z, labels)).unsqueeze(1))
    """

    def __init__(
        self,
        model: nn.Module,
        target_gradients: Sequence[torch.Tensor],
        labels: torch.Tensor,
        metric: str = "l2",
        layer_weights: Sequence[float] | None = None,
        simulate: Simulation | None = None,
        engine: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if model.training:
            raise ValueError("model must be in eval() mode: candidates in one batch must not share batch statistics")
        parameters = list(model.parameters())
        target = [torch.as_tensor(g) for g in target_gradients]
        if len(target) != len(parameters):
            raise ValueError(
                f"target_gradients has {len(target)} tensors but the model has {len(parameters)} parameters"
            )
        for index, (g, p) in enumerate(zip(target, parameters)):
            if tuple(g.shape) != tuple(p.shape):
                raise ValueError(
                    f"target_gradients[{index}] has shape {tuple(g.shape)}, the parameter has {tuple(p.shape)}"
                )
        labels = torch.as_tensor(labels)
        if labels.ndim != 1 or labels.numel() == 0 or labels.dtype not in (torch.int64, torch.int32):
            raise ValueError(
                f"labels must be a non-empty integer vector (B,), got {labels.dtype} {tuple(labels.shape)}"
            )
        if metric not in DISTANCES:
            raise ValueError(f"unknown metric {metric!r}; allowed: {', '.join(sorted(DISTANCES))}")
        if layer_weights is not None and len(layer_weights) != len(target):
            raise ValueError(f"layer_weights has {len(layer_weights)} entries, expected {len(target)}")
        if simulate is not None and not callable(simulate):
            raise ValueError(f"simulate must be callable or None, got {type(simulate).__name__}")
        allowed = ["auto", *sorted(ENGINES)]
        if engine not in allowed:
            raise ValueError(f"unknown engine {engine!r}; allowed: {', '.join(allowed)}")
        bad_chunk = isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1
        if chunk_size is not None and bad_chunk:
            raise ValueError(f"chunk_size must be a positive integer or None, got {chunk_size!r}")
        self.model = model
        self.target_gradients = [g.detach() for g in target]
        self.labels = labels.long()
        self.metric = metric
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.simulate = simulate
        self.engine_name = choose_engine(model) if engine == "auto" else engine
        self.engine = ENGINES[self.engine_name](model)
        self.chunk_size = chunk_size

    def _check_images(self, images: torch.Tensor) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 5:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (P, B, C, H, W), got {shape}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one candidate (P >= 1)")
        if images.shape[1] != self.labels.numel():
            raise ValueError(f"images has B={images.shape[1]} per candidate but labels has {self.labels.numel()}")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point, got {images.dtype}")

    def _chunks(self, images: torch.Tensor) -> list[torch.Tensor]:
        size = self.chunk_size or images.shape[0]
        return list(images.split(size))

    def gradients(self, images: torch.Tensor, create_graph: bool = False) -> list[torch.Tensor]:
        """Each candidate's batch gradient before ``simulate``: one (P, *s) tensor per model parameter."""
        self._check_images(images)
        if not create_graph:
            images = images.detach()
        labels = self.labels.to(images.device)
        with torch.enable_grad():
            parts = [self.engine.gradients(chunk, labels, create_graph) for chunk in self._chunks(images)]
        gradients = [torch.cat(column) for column in zip(*parts)]
        return gradients if create_graph else [g.detach() for g in gradients]

    def __call__(self, images: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        """Loss of each candidate (P,): distance of its (simulated) batch gradient to the target."""
        self._check_images(images)
        if not create_graph:
            images = images.detach()
        labels = self.labels.to(images.device)
        target = [g.to(device=images.device) for g in self.target_gradients]
        losses = []
        with torch.enable_grad():
            for chunk in self._chunks(images):
                trial = self.engine.gradients(chunk, labels, create_graph)
                if not create_graph:
                    trial = [g.detach() for g in trial]
                if self.simulate is not None:
                    trial = list(self.simulate(trial))
                losses.append(gradient_distance(trial, target, self.metric, self.layer_weights))
        result = torch.cat(losses)
        return result if create_graph else result.detach()

    def describe(self) -> dict[str, Any]:
        """Plain-data description: engine, metric, chunk size, batch size."""
        return {
            "engine": self.engine_name,
            "metric": self.metric,
            "chunk_size": self.chunk_size,
            "batch_size": int(self.labels.numel()),
        }
