"""Population evaluation: the gradient distance of P candidate batches in one batched pass.

GGL (Li et al., "Auditing Privacy Defenses in Federated Learning via Generative Gradient Leakage", CVPR 2022,
arXiv 2203.15696) scores every candidate of a search population by the distance between the victim gradient
it induces and the shared one. The paper's code does that one candidate at a time; here a population is one
batched computation. Engines (``ENGINES``) differ only in how the P per-candidate gradients are obtained:

- ``serial``: a loop of ``torch.autograd.grad`` calls, one candidate at a time (the baseline, the paper's way);
- ``vmap``: ``torch.func.vmap`` over ``torch.func.grad`` of a ``functional_call`` of the victim;
- ``hooks``: one forward and one backward pass over all P*B images; each layer's per-candidate weight gradient is
  contracted from its inputs and its output gradients (the per-sample-gradient rules of opacus' grad samplers,
  summed over the B images of a candidate instead of kept per sample);
- ``inner``: the ``hooks`` capture reduced at once to the squared norms and inner products that the L2 and
  cosine distances need, so deep layers never form their P gradients. A defense simulation made of fixed masks
  and norm clipping (``ggl.defenses.LinearSimulation``: clipping, DP-SGD's clipping at one sample, Soteria's
  column mask, sparsification's received mask, the identity of noise and quantization) is evaluated from the same
  statistics: a clipping factor is a function of the norms, a column mask masks a layer's input features, and any
  other mask forms only that layer's gradient, one layer at a time. A simulation that depends on each
  candidate's own values (sign's straight-through) needs full gradients: ``hooks`` or ``vmap``.

``auto`` (``choose_engine``) picks ``inner`` first, when the metric is ``l2`` or ``cosine``, the simulation (if any)
is given as a ``LinearSimulation`` and every parameterised layer of the victim is supported; otherwise ``hooks``
when every layer is supported; otherwise ``vmap``; on CPU the serial loop instead where ``inner`` would form more
than ``SERIAL_FORMED_FLOATS`` floats of masked gradient a candidate (sparsification on ResNet-18) (the measured
choice, see docs/engine.md). All engines agree to
float rounding and are differentiable with respect to the images when ``create_graph=True`` (GGL-Adam
backpropagates through generator, images and gradients).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.grad import conv2d_weight

from ggl.attacks.objective import DISTANCES, gradient_distance
from ggl.checks import one_of, positive_int, positive_number
from ggl.defenses.base import LinearSimulation, clip_factors
from ggl.fl.protocol import UpdateProtocol
from ggl.registry import Registry

Simulation = Callable[[list[torch.Tensor]], list[torch.Tensor]]

Captured = tuple[dict[str, int], nn.Module, torch.Tensor, torch.Tensor]
"""One layer call of a hooks capture: (parameter indices by attribute, layer, input, output gradient), every
tensor with the P * B images of the population along its first dimension, candidate-major."""

MEMORY_BUDGET_MIB = 1024.0
"""Default bound on the per-candidate gradients one pass forms at once (``PopulationObjective``'s chunking)."""


class PopulationEngine:
    """Computes the mean cross-entropy gradient of each of P candidate batches of one victim model.

    Args:
        model: the victim, in ``eval()`` mode (candidates must not share batch statistics).
    Subclasses implement ``gradients(images (P, B, C, H, W), labels, create_graph) -> [(P, *s)]`` with one
    tensor per ``model.parameters()`` entry; ``labels`` are (B,) class indices shared by every candidate, (P, B) class
    indices per candidate (candidates of several targets, ``JointObjective``) or (P, B, K) label probabilities, one
    row of soft labels per candidate (DLG's restarts).
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
        parameters = {name: p.detach().requires_grad_(requires_grad) for name, p in self.model.named_parameters()}
        buffers = {name: b.detach() for name, b in self.model.named_buffers()}
        return parameters, buffers


ENGINES: Registry[type[PopulationEngine]] = Registry("engine")
"""Population engines by name (``auto`` is resolved by ``choose_engine`` and is not an entry)."""


def register_engine(name: str) -> Callable[[type[PopulationEngine]], type[PopulationEngine]]:
    """Class decorator: ``ENGINES.register(name)`` that also sets ``cls.name``."""

    def decorate(cls: type[PopulationEngine]) -> type[PopulationEngine]:
        ENGINES.add(name, cls)
        cls.name = name
        return cls

    return decorate


@register_engine("serial")
class SerialEngine(PopulationEngine):
    """One ``torch.autograd.grad`` call per candidate: the reference the batched engines must reproduce."""

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        parameters, buffers = self._state(requires_grad=True)
        leaves = list(parameters.values())
        per_candidate = []
        for index, batch in enumerate(images):
            logits = torch.func.functional_call(self.model, {**buffers, **parameters}, (batch,))
            loss = F.cross_entropy(logits, labels[index] if labels.ndim > 1 else labels)
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

        self._shared_labels = torch.func.vmap(torch.func.grad(loss), in_dims=(None, None, 0, None))
        self._own_labels = torch.func.vmap(torch.func.grad(loss), in_dims=(None, None, 0, 0))

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        parameters, buffers = self._state(requires_grad=False)
        per_candidate = self._own_labels if labels.ndim > 1 else self._shared_labels
        gradients = per_candidate(parameters, buffers, images, labels)
        return [gradients[name] for name in self.parameter_names]


def _conv_weight_grouped(
    module: nn.Conv2d, inputs: torch.Tensor, backprops: torch.Tensor, population: int
) -> torch.Tensor:
    """Per-candidate weight gradient as one grouped convolution-weight gradient (candidate = group)."""
    count, channels = inputs.shape[:2]
    batch, out_channels = count // population, backprops.shape[1]
    grouped_inputs = inputs.reshape(population, batch, *inputs.shape[1:]).transpose(0, 1).flatten(1, 2)
    grouped_backprops = backprops.reshape(population, batch, *backprops.shape[1:]).transpose(0, 1).flatten(1, 2)
    weight = conv2d_weight(
        grouped_inputs,
        (population * out_channels, channels, *module.kernel_size),
        grouped_backprops,
        stride=module.stride,
        padding=cast(tuple[int, int], module.padding),
        dilation=module.dilation,
        groups=population,
    )
    return weight.reshape(population, *module.weight.shape)


def _conv_weight_patches(
    module: nn.Conv2d, inputs: torch.Tensor, backprops: torch.Tensor, population: int
) -> torch.Tensor:
    """Per-candidate weight gradient as a batched matrix product of backprops and input patches.

    The patches come from ``Tensor.unfold`` views copied once (``_patches``); much faster on CPU than
    ``F.unfold`` (im2col) for many channels, and differentiable.
    """
    patches = _patches(module, inputs, population)
    out_channels = backprops.shape[1]
    grads = backprops.reshape(population, -1, out_channels, backprops[0, 0].numel()).transpose(1, 2)
    weight = torch.bmm(grads.reshape(population, out_channels, -1), patches)
    return weight.reshape(population, *module.weight.shape)


def _channel_sums(values: torch.Tensor, population: int) -> torch.Tensor:
    """Sum (N, C, ...) over the candidate's samples and all positions -> (P, C)."""
    return values.reshape(population, -1, values.shape[1], values[0, 0].numel()).sum(dim=(1, 3))


@register_engine("hooks")
class HooksEngine(PopulationEngine):
    """Per-candidate gradients from one batched forward and backward pass over all P*B images.

    Forward hooks capture each layer's input a and output; one ``autograd.grad`` call returns the gradients of
    the summed loss with respect to every layer output (the backprops g). A candidate's weight gradient is then
    a contraction over its own samples (the rules of opacus' grad samplers, summed per candidate):
    Linear ``sum g^T a``; Conv2d the same over input patches (a batched matrix product, or a grouped
    convolution-weight gradient with one group per candidate where that is faster); eval-mode BatchNorm
    ``sum g * (a - mean) / sqrt(var + eps)`` and ``sum g``. Everything stays in the autograd graph, so
    ``create_graph=True`` is differentiable in the images. Supports Linear, Conv2d (groups=1, zero padding) and
    BatchNorm with running statistics; anything else with parameters is refused (``auto`` then uses ``vmap``).
    """

    conv_method = "auto"

    def __init__(self, model: nn.Module) -> None:
        unsupported = self.unsupported_layers(model)
        if unsupported:
            raise ValueError(
                f"engine 'hooks' does not support these layers: {', '.join(unsupported)}; use engine='vmap'"
            )
        super().__init__(model)
        index = {id(p): i for i, (_, p) in enumerate(model.named_parameters())}
        self._layers = [
            (module, {attr: index[id(p)] for attr, p in module.named_parameters(recurse=False)})
            for module in model.modules()
            if any(True for _ in module.parameters(recurse=False))
        ]

    @staticmethod
    def unsupported_layers(model: nn.Module) -> list[str]:
        """Names (and types) of parameterised layers the hooks engine cannot differentiate per candidate."""
        unsupported = []
        for name, module in model.named_modules():
            attributes = {attr for attr, _ in module.named_parameters(recurse=False)}
            if not attributes:
                continue
            plain = attributes <= {"weight", "bias"}
            if isinstance(module, nn.Linear) and plain:
                continue
            if (
                type(module) is nn.Conv2d
                and plain
                and module.groups == 1
                and module.padding_mode == "zeros"
                and not isinstance(module.padding, str)
            ):
                continue
            if (
                isinstance(module, nn.modules.batchnorm._BatchNorm)
                and plain
                and module.running_mean is not None
                and module.running_var is not None
            ):
                continue
            unsupported.append(f"{name or '<model>'} ({type(module).__name__})")
        return unsupported

    @classmethod
    def supports(cls, model: nn.Module) -> bool:
        return not cls.unsupported_layers(model)

    def _conv_weight(
        self, module: nn.Conv2d, inputs: torch.Tensor, backprops: torch.Tensor, population: int
    ) -> torch.Tensor:
        method = self.conv_method
        if method == "auto":
            # Measured on CPU (ResNet-18 layers, P=32): the grouped kernel wins for many channels on large maps,
            # patches for few input channels (the stem) and for small maps (8x8 and below).
            wide = inputs.shape[1] >= 16 and backprops.shape[-1] * backprops.shape[-2] > 64
            method = "grouped" if wide else "patches"
        if method == "grouped":
            return _conv_weight_grouped(module, inputs, backprops, population)
        return _conv_weight_patches(module, inputs, backprops, population)

    def _layer_gradients(
        self, module: nn.Module, inputs: torch.Tensor, backprops: torch.Tensor, population: int
    ) -> dict[str, torch.Tensor]:
        if isinstance(module, nn.Linear):
            features = inputs.reshape(population, -1, inputs.shape[-1])
            grads = backprops.reshape(population, -1, backprops.shape[-1])
            return {"weight": torch.bmm(grads.transpose(1, 2), features), "bias": grads.sum(1)}
        if isinstance(module, nn.Conv2d):
            return {
                "weight": self._conv_weight(module, inputs, backprops, population),
                "bias": _channel_sums(backprops, population),
            }
        assert isinstance(module, nn.modules.batchnorm._BatchNorm)
        assert module.running_mean is not None and module.running_var is not None
        # sum g (a - mean) / sqrt(var + eps) = (sum g a - mean sum g) / sqrt(var + eps): one full-size product.
        bias = _channel_sums(backprops, population)
        scale = torch.rsqrt(module.running_var.detach() + module.eps)
        weight = (_channel_sums(backprops * inputs, population) - bias * module.running_mean.detach()) * scale
        return {"weight": weight, "bias": bias}

    def _capture(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[Captured]:
        """One forward and backward pass: (parameter indices, layer, input, output gradient) per layer call."""
        population, batch = images.shape[:2]
        flat = images.reshape(population * batch, *images.shape[2:])
        if not flat.requires_grad:
            flat = flat.detach().requires_grad_(True)
        parameters, buffers = self._state(requires_grad=False)
        records: list[tuple[dict[str, int], nn.Module, torch.Tensor, int, torch.Tensor]] = []
        handles = []
        for module, attributes in self._layers:

            def record(layer: nn.Module, args: tuple[Any, ...], output: torch.Tensor, attributes=attributes):
                records.append((attributes, layer, args[0], args[0]._version, output))
                return output.clone()  # later in-place ops (ReLU, residual +=) must not touch the captured output

            handles.append(module.register_forward_hook(record))
        try:
            logits = torch.func.functional_call(self.model, {**buffers, **parameters}, (flat,))
        finally:
            for handle in handles:
                handle.remove()
        targets = labels.repeat(population) if labels.ndim == 1 else labels.flatten(0, 1)
        loss = F.cross_entropy(logits, targets, reduction="sum") / batch
        backprops = torch.autograd.grad(loss, [record[-1] for record in records], create_graph=create_graph)
        captured = []
        for (attributes, module, inputs, version, _), grads in zip(records, backprops):
            if inputs._version != version:
                raise ValueError(f"the input of {type(module).__name__} was modified in place; use engine='vmap'")
            captured.append((attributes, module, inputs, grads))
        return captured

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        return self.gradients_from(self._capture(images, labels, create_graph), images.shape[0])

    def gradients_from(self, captured: Sequence[Captured], population: int) -> list[torch.Tensor]:
        """The per-candidate gradients of a capture of ``population`` candidates (``_capture``,
        ``select_candidates``)."""
        results: list[torch.Tensor | None] = [None] * len(self.parameter_names)
        for attributes, module, inputs, grads in captured:
            for attr, value in self._layer_gradients(module, inputs, grads, population).items():
                if attr in attributes:
                    position = attributes[attr]
                    previous = results[position]
                    results[position] = value if previous is None else previous + value
        like = captured[0][2]
        shapes = [p.shape for p in self.model.parameters()]
        return [like.new_zeros(population, *shape) if value is None else value for value, shape in zip(results, shapes)]


def select_candidates(captured: Sequence[Captured], rows: torch.Tensor, population: int) -> list[Captured]:
    """The part of a capture of ``population`` candidates that belongs to the candidates ``rows`` (indices)."""

    def pick(values: torch.Tensor) -> torch.Tensor:
        return values.reshape(population, -1, *values.shape[1:])[rows].flatten(0, 1)

    return [(attributes, module, pick(inputs), pick(grads)) for attributes, module, inputs, grads in captured]


def _patches(module: nn.Conv2d, inputs: torch.Tensor, population: int) -> torch.Tensor:
    """Input patches of a convolution, (P, B*L, C*kh*kw)."""
    (kh, kw), (sh, sw), (dh, dw) = module.kernel_size, module.stride, module.dilation
    ph, pw = cast(tuple[int, int], module.padding)
    padded = F.pad(inputs, (pw, pw, ph, ph))
    windows = padded.unfold(2, (kh - 1) * dh + 1, sh).unfold(3, (kw - 1) * dw + 1, sw)[..., ::dh, ::dw]
    return windows.permute(0, 2, 3, 1, 4, 5).reshape(population, -1, windows.shape[1] * kh * kw)


def _rows(module: nn.Module, inputs: torch.Tensor, backprops: torch.Tensor, population: int):
    """A Linear or Conv2d layer as rows: per candidate, its weight gradient is ``grads^T @ features``.

    Returns features (P, R, K) and grads (P, R, O) with R = B * positions, or None when the rows would cost
    more than materialising the weight gradient (a candidate's R^2 (O + K) Gram entries against O K R products).
    """
    out_channels = backprops.shape[1] if isinstance(module, nn.Conv2d) else backprops.shape[-1]
    in_size = cast(torch.Tensor, module.weight)[0].numel()
    rows = backprops.numel() // (population * out_channels)
    if rows * (out_channels + in_size) >= out_channels * in_size:
        return None
    if isinstance(module, nn.Conv2d):
        features = _patches(module, inputs, population)
        grads = backprops.flatten(2).transpose(1, 2).reshape(population, rows, out_channels)
    else:
        features = inputs.reshape(population, rows, in_size)
        grads = backprops.reshape(population, rows, out_channels)
    return features, grads


@register_engine("inner")
class InnerProductEngine(HooksEngine):
    """The hooks engine that never materialises large per-candidate gradients when no simulation is needed.

    For the L2 and cosine distances only ||g_p||^2 and <g_p, t> per tensor are needed
    (||g - t||^2 = ||g||^2 - 2 <g, t> + ||t||^2). For a layer whose weight gradient is ``grads^T @ features`` over
    R rows per candidate: <g_p, t> = sum(grads * (features @ t^T)) and ||g_p||^2 = sum((grads grads^T) *
    (features features^T)) (the Gram identity of ghost clipping, Goodfellow 2015; Li et al. 2022), used where
    it is cheaper than the product itself (deep layers with small maps); elsewhere the per-candidate gradient is
    formed and reduced at once. Valid only with ``simulate=None`` and metric ``l2`` or ``cosine``; the expansion
    loses relative precision as a loss approaches 0 (float32: about 1e-7 of ||t||^2).
    """

    def statistics_from(
        self,
        captured: Sequence[Captured],
        population: int,
        target: Sequence[torch.Tensor],
        masks: Mapping[int, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Squared norms and inner products with ``target`` of the gradients of a capture of ``population``
        candidates (``_capture``, ``select_candidates``), after the optional 0/1 ``masks`` (tensor index -> mask of
        the parameter's shape): two (P, T) tensors.

        A column mask on a Linear weight (the same mask in every row, as Soteria's) masks the layer's input
        features and keeps the Gram identity; any other mask needs that layer's gradient formed (then reduced at
        once, one layer at a time).
        """
        masks = masks or {}
        norms: list[torch.Tensor | None] = [None] * len(target)
        dots: list[torch.Tensor | None] = [None] * len(target)
        positions = [position for attributes, *_ in captured for position in attributes.values()]
        if len(positions) != len(set(positions)):
            # A parameter used by several layer calls: norms do not add, so form the gradients.
            return _norms_and_dots(_masked(self.gradients_from(captured, population), masks), target)
        for attributes, module, inputs, grads in captured:
            weight_mask = masks.get(attributes["weight"]) if "weight" in attributes else None
            columns = _column_mask(module, weight_mask)
            gram = weight_mask is None or columns is not None
            rows = _rows(module, inputs, grads, population) if "weight" in attributes and gram else None
            if isinstance(module, (nn.Linear, nn.Conv2d)) and rows is not None:
                features, row_grads = rows
                if columns is not None:
                    features = features * columns
                position = attributes["weight"]
                weight_target = target[position].reshape(row_grads.shape[-1], -1)
                dots[position] = (row_grads * (features @ weight_target.T)).sum(dim=(1, 2))
                gram_matrix = torch.bmm(row_grads, row_grads.transpose(1, 2))
                norms[position] = (gram_matrix * torch.bmm(features, features.transpose(1, 2))).sum(dim=(1, 2))
                layer = {"bias": _channel_sums(grads, population)} if isinstance(module, nn.Conv2d) else {}
                if isinstance(module, nn.Linear):
                    layer = {"bias": row_grads.sum(1)}
            else:
                layer = self._layer_gradients(module, inputs, grads, population)
            for attr, value in layer.items():
                if attr in attributes:
                    position = attributes[attr]
                    (masked,) = _masked([value], {0: masks[position]} if position in masks else {})
                    norm, dot = _norms_and_dots([masked], [target[position]])
                    norms[position], dots[position] = norm[:, 0], dot[:, 0]
        zero = captured[0][2].new_zeros(population)
        return (
            torch.stack([zero if n is None else n for n in norms], dim=1),
            torch.stack([zero if d is None else d for d in dots], dim=1),
        )


def _masked(gradients: Sequence[torch.Tensor], masks: Mapping[int, torch.Tensor]) -> list[torch.Tensor]:
    """Per-candidate gradients (P, *s) times their tensor's mask, where one is given."""
    return [g * masks[i].to(g).unsqueeze(0) if i in masks else g for i, g in enumerate(gradients)]


def _column_mask(module: nn.Module, mask: torch.Tensor | None) -> torch.Tensor | None:
    """The per-input-feature mask (K,) when ``mask`` is a Linear weight mask equal in every row, else None."""
    if mask is None or not isinstance(module, nn.Linear) or mask.ndim != 2:
        return None
    columns = mask[0]
    return columns if bool((mask == columns.unsqueeze(0)).all()) else None


def _norms_and_dots(
    gradients: Sequence[torch.Tensor], target: Sequence[torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    flat = [g.flatten(1) for g in gradients]
    norms = torch.stack([(f * f).sum(1) for f in flat], dim=1)
    dots = torch.stack([f @ t.reshape(-1).to(f) for f, t in zip(flat, target)], dim=1)
    return norms, dots


def _distance_from_statistics(
    norms: torch.Tensor,
    dots: torch.Tensor,
    target: Sequence[torch.Tensor],
    metric: str,
    layer_weights: Sequence[float] | None,
) -> torch.Tensor:
    """``gradient_distance`` for l2 and cosine from per-tensor squared norms and inner products (P, T)."""
    weights = norms.new_tensor(layer_weights if layer_weights is not None else [1.0] * len(target))
    target_norms = torch.stack([g.pow(2).sum() for g in target]).to(norms)
    if metric == "l2":
        per_tensor = (norms - 2 * dots + target_norms).clamp_min(0)
        return (per_tensor * weights).sum(1) / len(target)
    dot = (dots * weights).sum(1)
    trial_norm = (norms * weights).sum(1).clamp_min(1e-20).sqrt()
    target_norm = (target_norms * weights).sum().clamp_min(1e-20).sqrt()
    return 1 - dot / (trial_norm * target_norm)


class UnrolledEngine(PopulationEngine):
    """FedAvg's update of each candidate: its local SGD steps unrolled on stacked parameters, batched over P."""

    name = "unrolled"

    def __init__(self, model: nn.Module, protocol: UpdateProtocol) -> None:
        super().__init__(model)
        self.protocol = protocol

    def gradients(self, images: torch.Tensor, labels: torch.Tensor, create_graph: bool) -> list[torch.Tensor]:
        return self.protocol.candidate_updates(self.model, images, labels, create_graph)


SERIAL_FORMED_FLOATS = 1_000_000
"""On CPU, ``auto`` runs the serial loop when a linear simulation makes ``inner`` form more floats than this per
candidate (masked layers without column structure): ResNet-18 under 90% sparsification (11.2M floats formed) ran
at 0.45-0.87x the serial loop in ``inner`` and 0.39-0.66x in ``hooks``, ConvNet (97k floats) at 2.43x."""


def formed_floats(model: nn.Module, linear: LinearSimulation | None) -> int:
    """Floats of per-candidate gradient that ``inner`` must form for ``linear``'s masks: every masked tensor but
    a Linear weight's column mask (the same mask in every row, which keeps the Gram identity)."""
    if linear is None:
        return 0
    parameters = list(model.parameters())
    columns = {i for i, mask in linear.masks.items() if mask.ndim == 2 and bool((mask == mask[:1]).all())}
    return sum(parameters[i].numel() for i in linear.masks if i not in columns)


def choose_engine(
    model: nn.Module, metric: str = "l2", simulated: bool = False, linear: bool = False, formed: int = 0
) -> str:
    """The engine ``auto`` resolves to (measured, see docs/engine.md).

    ``inner`` where it applies (L2 or cosine, and no simulation or one given as a ``LinearSimulation``) and
    supports every layer, else ``hooks`` where it supports every layer, else ``vmap``; but ``serial`` on CPU when
    ``inner`` would form more than ``SERIAL_FORMED_FLOATS`` floats of masked gradient a candidate (``formed``,
    see ``formed_floats``), where the serial loop was measured faster than every batched engine.
    """
    on_cpu = all(p.device.type == "cpu" for p in model.parameters())
    if on_cpu and formed > SERIAL_FORMED_FLOATS:
        return "serial"
    if not HooksEngine.supports(model):
        return "vmap"
    if metric in ("l2", "cosine") and (not simulated or linear):
        return "inner"
    return "hooks"


def _clipped_statistics(
    norms: torch.Tensor, dots: torch.Tensor, linear: LinearSimulation
) -> tuple[torch.Tensor, torch.Tensor]:
    """Norms and inner products (P, T) after the simulation's group clipping: ``s^2 ||g||^2`` and ``s <g, t>``."""
    if not linear.clipped:
        return norms, dots
    columns = [norms.new_ones(norms.shape[0])] * norms.shape[1]
    for group in linear.clipped:
        group_norm = norms[:, list(group)].sum(1).clamp_min(0).sqrt()
        (factor,) = clip_factors([group_norm], float(linear.bound or 0.0))  # a group has a bound (checked)
        for i in group:
            columns[i] = factor
    scale = torch.stack(columns, dim=1)
    return norms * scale * scale, dots * scale


def _checked_target(model: nn.Module, target_gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """The received update as tensors, checked against ``model`` (an ``eval()`` module, one tensor a parameter)."""
    if not isinstance(model, nn.Module):
        raise ValueError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if model.training:
        raise ValueError("model must be in eval() mode: candidates in one batch must not share batch statistics")
    parameters = list(model.parameters())
    target = [torch.as_tensor(g) for g in target_gradients]
    if len(target) != len(parameters):
        raise ValueError(f"target_gradients has {len(target)} tensors but the model has {len(parameters)} parameters")
    for index, (g, p) in enumerate(zip(target, parameters)):
        if tuple(g.shape) != tuple(p.shape):
            raise ValueError(
                f"target_gradients[{index}] has shape {tuple(g.shape)}, the parameter has {tuple(p.shape)}"
            )
    return target


class PopulationObjective:
    """Gradient distance of a population of candidate batches to a shared update, evaluated in one batched pass.

    GGL (Li et al., CVPR 2022, arXiv 2203.15696): each candidate's loss is D(T(grad L(x_p, y)), g') where
    L is the mean cross-entropy over the candidate's B images, T the attacker-side defense simulation and D a
    gradient distance (``ggl.attacks.objective``).

    Args:
        model: the victim, in ``eval()`` mode; its parameters are not modified.
        target_gradients: the received update, one tensor per ``model.parameters()`` entry.
        labels: (B,) class indices shared by every candidate, or None when every call passes ``soft_labels``.
        metric: ``l2`` (GGL), ``cosine`` (Inverting Gradients) or ``l1``. layer_weights: optional, one per tensor.
        simulate: optional ``list[(P, *s)] -> list[(P, *s)]`` applied to the trial gradients (e.g.
            ``functools.partial(defense.simulate, received=update)``); it must treat candidates independently.
        linear_simulation: optional, the same simulation as masks and norm clipping
            (``defense.linear_simulation(update)``): the ``inner`` engine then evaluates it from norms and inner
            products, without forming per-candidate gradients; the other engines use ``simulate`` (or
            ``linear_simulation.apply`` when ``simulate`` is None).
        engine: ``auto`` (default) or a name in ``ENGINES``.
        protocol: the round's update rule (``ggl.fl.protocol.UpdateProtocol``; None or FedSGD: the batch
            gradient). Under FedAvg every candidate's update is its unrolled local steps
            (``UpdateProtocol.candidate_updates``, batched over the population), whatever ``engine`` says.
        chunk_size: candidates evaluated together; None (default) chooses the largest chunk whose per-candidate
            gradients fit ``memory_budget_mib`` (``automatic_chunk_size``), the whole population when they fit.
        memory_budget_mib: the bound of that choice (1024 MiB). Engines that form every candidate's full gradient
            (``serial``, ``vmap``, ``hooks``, FedAvg's unrolled steps; with a simulation twice, for its copy) need
            4 bytes a parameter a candidate; ``inner`` forms at most one layer's at a time.
    Call: ``objective(images (P, B, C, H, W), create_graph=False, soft_labels=None) -> (P,)``; with
    ``create_graph=True`` the losses are differentiable with respect to ``images`` (and ``soft_labels``).
    ``soft_labels`` (P, B, K) are label logits per candidate (DLG's), softmax'd into the cross-entropy in place of
    ``labels``; FedSGD only.

    Example::

        objective = PopulationObjective(model, update.gradients, labels)
        losses = objective(normalization.normalize(generator(z, labels)).unsqueeze(1))
    """

    def __init__(
        self,
        model: nn.Module,
        target_gradients: Sequence[torch.Tensor],
        labels: torch.Tensor | None,
        metric: str = "l2",
        layer_weights: Sequence[float] | None = None,
        simulate: Simulation | None = None,
        engine: str = "auto",
        chunk_size: int | None = None,
        linear_simulation: LinearSimulation | None = None,
        protocol: UpdateProtocol | None = None,
        memory_budget_mib: float = MEMORY_BUDGET_MIB,
    ) -> None:
        target = _checked_target(model, target_gradients)
        if labels is not None:
            labels = torch.as_tensor(labels)
            if labels.ndim != 1 or labels.numel() == 0 or labels.dtype not in (torch.int64, torch.int32):
                raise ValueError(
                    f"labels must be a non-empty integer vector (B,) or None, got {labels.dtype} {tuple(labels.shape)}"
                )
        one_of("metric", metric, sorted(DISTANCES))
        if layer_weights is not None and len(layer_weights) != len(target):
            raise ValueError(f"layer_weights has {len(layer_weights)} entries, expected {len(target)}")
        if simulate is not None and not callable(simulate):
            raise ValueError(f"simulate must be callable or None, got {type(simulate).__name__}")
        if linear_simulation is not None and not isinstance(linear_simulation, LinearSimulation):
            raise ValueError(f"linear_simulation must be a LinearSimulation or None, got {type(linear_simulation)}")
        if simulate is None and linear_simulation is not None:
            simulate = linear_simulation.apply
        one_of("engine", engine, ["auto", *sorted(ENGINES)])
        if chunk_size is not None:
            positive_int("chunk_size", chunk_size)
        positive_number("memory_budget_mib", memory_budget_mib)
        self.model = model
        self.target_gradients = [g.detach() for g in target]
        self.labels = None if labels is None else labels.long()
        self.protocol = protocol
        self.metric = metric
        self.layer_weights = None if layer_weights is None else [float(w) for w in layer_weights]
        self.simulate = simulate
        self.linear_simulation = linear_simulation
        self.chunk_size = chunk_size
        self.engine = self._make_engine(engine, protocol)
        self.engine_name = self.engine.name
        self._statistics = getattr(self.engine, "statistics_from", None) is not None
        self.memory_budget_mib = float(memory_budget_mib)
        self.candidate_mib = self._candidate_mib()

    def _candidate_mib(self) -> float:
        """MiB of per-candidate gradient one candidate makes the engine hold at once (float32)."""
        sizes = [p.numel() for p in self.model.parameters()]
        floats = max(sizes) if self._statistics else sum(sizes) * (2 if self.simulate is not None else 1)
        return 4 * floats / 2**20

    def automatic_chunk_size(self, population: int) -> int:
        """The chunk ``chunk_size=None`` uses for ``population`` candidates: all of them when their gradients fit
        the memory budget, else the most that fit (at least one)."""
        if self.chunk_size is not None:
            return self.chunk_size
        return max(1, min(population, int(self.memory_budget_mib // max(self.candidate_mib, 1e-12))))

    def _make_engine(self, engine: str, protocol: UpdateProtocol | None) -> PopulationEngine:
        """The engine named (``auto``: ``choose_engine``); FedAvg's unrolled updates whatever is named."""
        if protocol is not None and not protocol.is_fedsgd:
            return UnrolledEngine(self.model, protocol)
        simulated, linear = self.simulate is not None, self.linear_simulation is not None
        formed = formed_floats(self.model, self.linear_simulation) if self.metric in ("l2", "cosine") else 0
        name = choose_engine(self.model, self.metric, simulated, linear, formed) if engine == "auto" else engine
        if getattr(ENGINES[name], "statistics_from", None) is not None and (
            (simulated and not linear) or self.metric not in ("l2", "cosine")
        ):
            raise ValueError(
                f"engine {name!r} needs metric 'l2' or 'cosine' and no simulation or one given as "
                f"linear_simulation (got metric={self.metric!r}, simulate={'set' if simulated else None}); "
                "use engine='hooks'"
            )
        return ENGINES[name](self.model)

    def _check_images(self, images: torch.Tensor, soft_labels: torch.Tensor | None) -> None:
        if not isinstance(images, torch.Tensor) or images.ndim != 5:
            shape = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
            raise ValueError(f"images must be a tensor (P, B, C, H, W), got {shape}")
        if images.shape[0] == 0:
            raise ValueError("images must hold at least one candidate (P >= 1)")
        if not images.is_floating_point():
            raise ValueError(f"images must be floating point, got {images.dtype}")
        if soft_labels is None:
            if self.labels is None:
                raise ValueError("this objective has no fixed labels: pass soft_labels (P, B, K)")
            if images.shape[1] != self.labels.numel():
                raise ValueError(f"images has B={images.shape[1]} per candidate but labels has {self.labels.numel()}")
            return
        if soft_labels.ndim != 3 or tuple(soft_labels.shape[:2]) != tuple(images.shape[:2]):
            raise ValueError(
                f"soft_labels must be (P, B, K) with the images' P and B {tuple(images.shape[:2])}, "
                f"got {tuple(soft_labels.shape)}"
            )
        if self.protocol is not None and not self.protocol.is_fedsgd:
            raise ValueError("soft_labels per candidate need FedSGD; under FedAvg every candidate shares the labels")

    def gradients(
        self, images: torch.Tensor, create_graph: bool = False, soft_labels: torch.Tensor | None = None
    ) -> list[torch.Tensor]:
        """Each candidate's batch gradient before ``simulate``: one (P, *s) tensor per model parameter."""
        self._check_images(images, soft_labels)
        if not create_graph:
            images = images.detach()
        labels = _engine_labels([self], images, None, soft_labels)
        with torch.enable_grad():
            parts = [
                self.engine.gradients(images[rows], chunk_labels, create_graph)
                for rows, chunk_labels in _chunks(labels, images.shape[0], self.automatic_chunk_size(images.shape[0]))
            ]
        gradients = [torch.cat(column) for column in zip(*parts)]
        return gradients if create_graph else [g.detach() for g in gradients]

    def __call__(
        self, images: torch.Tensor, create_graph: bool = False, soft_labels: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Loss of each candidate (P,): distance of its (simulated) batch gradient to the target."""
        return JointObjective([self])(images, create_graph=create_graph, soft_labels=soft_labels)

    def losses_from(self, output: Any, population: int, device: torch.device) -> torch.Tensor:
        """The losses (P,) of ``population`` candidates from one engine pass: their capture (``_capture``) for an
        engine with ``statistics_from``, their gradients (P, *s) per parameter otherwise."""
        target = [g.to(device=device) for g in self.target_gradients]
        if self._statistics:
            linear = self.linear_simulation or LinearSimulation()
            masks = {i: m.to(device) for i, m in linear.masks.items()}
            norms, dots = self.engine.statistics_from(output, population, target, masks)  # type: ignore[attr-defined]
            norms, dots = _clipped_statistics(norms, dots, linear)
            return _distance_from_statistics(norms, dots, target, self.metric, self.layer_weights)
        trial = list(self.simulate(output)) if self.simulate is not None else output
        return gradient_distance(trial, target, self.metric, self.layer_weights)

    def describe(self) -> dict[str, Any]:
        """Plain-data description: engine, metric, chunk size (None: automatic), memory budget, batch size."""
        return {
            "engine": self.engine_name,
            "metric": self.metric,
            "chunk_size": self.chunk_size,
            "memory_budget_mib": self.memory_budget_mib,
            "batch_size": None if self.labels is None else int(self.labels.numel()),
        }


class JointObjective:
    """Population objectives of one victim evaluated together: candidate p is scored against the target, labels and
    simulation of objective ``groups[p]``, and the whole population shares one engine pass per chunk.

    An attack and its no-information control (the same attack on another update of the same victim), or attacks on
    several updates, then search as one population: the batched forward and backward, the costly part, runs once
    for all of them, and each group's candidates are reduced against their own update (its masks and clipping
    included). With ``engine="serial"`` every candidate's loss is the one its own objective gives; the batched
    engines agree to float rounding.

    Args:
        objectives: ``PopulationObjective`` s of the same model, engine and update protocol (their labels may
            differ; an objective without labels needs ``soft_labels`` at every call).
    Call: ``joint(images (P, B, C, H, W), groups=None, create_graph=False, soft_labels=None) -> (P,)``; ``groups``
    (P,) are objective indices (None: every candidate to the first objective).
    """

    def __init__(self, objectives: Sequence[PopulationObjective]) -> None:
        objectives = list(objectives)
        if not objectives or not all(isinstance(o, PopulationObjective) for o in objectives):
            raise ValueError("JointObjective needs one or more PopulationObjective")
        first = objectives[0]
        for index, other in enumerate(objectives[1:], start=1):
            if other.model is not first.model:
                raise ValueError(f"objectives[{index}] scores another model; joint objectives share the victim")
            if other.engine_name != first.engine_name or other.protocol != first.protocol:
                raise ValueError(
                    f"objectives[{index}] has engine {other.engine_name!r} and protocol {other.protocol!r}, "
                    f"objectives[0] {first.engine_name!r} and {first.protocol!r}; joint objectives share both"
                )
        self.objectives = objectives
        self.engine = first.engine

    def automatic_chunk_size(self, population: int) -> int:
        """The chunk every objective's memory budget allows (the smallest of their automatic chunks)."""
        return min(objective.automatic_chunk_size(population) for objective in self.objectives)

    def _groups(self, groups: torch.Tensor | Sequence[int] | None, population: int) -> torch.Tensor | None:
        if groups is None:
            return None
        indices = torch.as_tensor(groups).reshape(-1)
        if indices.numel() != population or indices.is_floating_point():
            raise ValueError(f"groups must be {population} integer objective indices, got {tuple(indices.shape)}")
        if indices.numel() and not 0 <= int(indices.min()) <= int(indices.max()) < len(self.objectives):
            raise ValueError(
                f"groups must index the {len(self.objectives)} objectives, got {indices.unique().tolist()}"
            )
        return indices.long()

    def __call__(
        self,
        images: torch.Tensor,
        groups: torch.Tensor | Sequence[int] | None = None,
        create_graph: bool = False,
        soft_labels: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Loss of each candidate (P,) against its group's objective."""
        group_of = self._groups(groups, images.shape[0] if isinstance(images, torch.Tensor) else 0)
        used = [0] if group_of is None else group_of.unique().tolist()
        for index in used:
            self.objectives[index]._check_images(images, soft_labels)
        if not create_graph:
            images = images.detach()
        labels = _engine_labels(self.objectives, images, group_of, soft_labels)
        losses = []
        with torch.enable_grad():
            for rows, chunk_labels in _chunks(labels, images.shape[0], self.automatic_chunk_size(images.shape[0])):
                chunk_groups = None if group_of is None else group_of[rows]
                losses.append(self._chunk_losses(images[rows], chunk_labels, chunk_groups, create_graph))
        result = torch.cat(losses)
        return result if create_graph else result.detach()

    def _chunk_losses(
        self, chunk: torch.Tensor, labels: torch.Tensor, groups: torch.Tensor | None, create_graph: bool
    ) -> torch.Tensor:
        """One engine pass over ``chunk``, then each group's candidates reduced by their own objective."""
        population = chunk.shape[0]
        statistics = self.objectives[0]._statistics
        if statistics:
            output: Any = self.engine._capture(chunk, labels, create_graph)  # type: ignore[attr-defined]
        else:
            output = self.engine.gradients(chunk, labels, create_graph)
            output = output if create_graph else [g.detach() for g in output]
        present = [0] if groups is None else groups.unique().tolist()
        if len(present) == 1:
            return self.objectives[present[0]].losses_from(output, population, chunk.device)
        assert groups is not None
        parts, order = [], []
        for index in present:
            rows = (groups == index).nonzero().flatten().to(chunk.device)
            part = select_candidates(output, rows, population) if statistics else [g[rows] for g in output]
            parts.append(self.objectives[index].losses_from(part, rows.numel(), chunk.device))
            order.append(rows)
        return torch.cat(parts)[torch.argsort(torch.cat(order))]


def _engine_labels(
    objectives: Sequence[PopulationObjective],
    images: torch.Tensor,
    groups: torch.Tensor | None,
    soft_labels: torch.Tensor | None,
) -> torch.Tensor:
    """The engine labels of a population: per-candidate probabilities of ``soft_labels``, the labels every candidate
    shares (B,), or each candidate's group's labels (P, B) where the groups' labels differ."""
    if soft_labels is not None:
        return F.softmax(soft_labels, dim=-1)
    labels = [objective.labels for objective in objectives]
    first = labels[0]
    assert first is not None  # checked by _check_images
    if groups is None or all(other is not None and torch.equal(other, first) for other in labels):
        return first.to(images.device)
    return torch.stack(cast(list[torch.Tensor], labels)).to(images.device)[groups.to(images.device)]


def _chunks(labels: torch.Tensor, population: int, size: int) -> list[tuple[slice, torch.Tensor]]:
    """The population's rows in chunks of ``size``, each with its engine labels (shared ones whole, per-candidate
    ones cut to the chunk)."""
    rows = [slice(start, start + size) for start in range(0, population, size)]
    return [(part, labels if labels.ndim == 1 else labels[part]) for part in rows]
