"""Reconstruction quality: how close an attack's images are to the private batch it never saw.

Functional core in the torchmetrics manner, on pixel images in [0, 1] (both inputs are clamped):

* ``per_image_metrics(reconstructed, original)`` -> one value per original image (B,) for each metric;
* ``reconstruction_metrics(reconstructed, original, labels_hat, labels)`` -> batch means (+ label accuracy);
* ``ReconstructionMetrics`` accumulates per-image values over many victims (``update`` / ``compute``).

Metrics: ``mse``, ``psnr`` (dB, data range 1: ``10 log10(1 / mse)``, at most 100), ``ssim`` (torchmetrics;
Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, border of half a window left out as skimage does),
``lpips`` (Zhang et al. 2018, arXiv 1801.03924, via torchmetrics) and ``label_accuracy``.

``METRIC_TABLE`` is the one list of them: each ``Metric`` holds its function, the direction in which it improves
*for the attacker* and how reports print it. Adding a metric is one function and one ``Metric`` entry in the
table; ``METRICS``, ``HIGHER_IS_BETTER``, the functions below and the benchmark reports all read it.

LPIPS needs ImageNet-pretrained backbone weights. They are used only when already in the torch hub cache
(``torch.hub.get_dir()/checkpoints``); nothing is ever downloaded here. Without them the ``lpips`` key is absent
and one warning per process says how to get them. Grayscale images are repeated to three channels for LPIPS.

For a batch (B > 1) the order of the reconstructions is arbitrary (a summed gradient carries no order), so
reconstructions are first matched one-to-one to originals by a Hungarian assignment on their MSE
(``scipy.optimize.linear_sum_assignment``), then scored pair by pair.
"""

from __future__ import annotations

import math
import warnings
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch

from ggl.checks import one_of
from ggl.registry import Registry

LPIPS_NETS: dict[str, str] = {
    "alex": "AlexNet_Weights",
    "vgg": "VGG16_Weights",
    "squeeze": "SqueezeNet1_1_Weights",
}
"""LPIPS backbones and the torchvision weights each one needs."""

PSNR_MSE_FLOOR = 1e-10
"""PSNR uses ``max(mse, 1e-10)``: an exact copy scores 100 dB rather than infinity, so means and stores stay finite."""

SSIM_SETTINGS: dict[str, Any] = {"gaussian_kernel": True, "sigma": 1.5, "kernel_size": 11, "k1": 0.01, "k2": 0.03}
"""SSIM window: Gaussian, sigma 1.5, 11 taps (Wang et al. 2004); the same as skimage with gaussian_weights=True."""

_LPIPS_MODULES: dict[str, torch.nn.Module] = {}
_LPIPS_WARNED: set[str] = set()


def lpips_weights_path(net: str = "alex") -> Path:
    """Where torchvision keeps the backbone weights LPIPS ``net`` needs (the torch hub cache)."""
    one_of("lpips_net", net, LPIPS_NETS)
    import torchvision.models

    url = getattr(torchvision.models, LPIPS_NETS[net]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_available(net: str = "alex") -> bool:
    """True when LPIPS ``net`` can run without a download; otherwise warns once per process and returns False."""
    return _lpips_ready(net)


def _lpips_ready(net: str) -> bool:
    """``lpips_available`` two calls deep (public function or metric), so the warning points at the caller's caller."""
    path = lpips_weights_path(net)
    if path.is_file():
        return True
    if net not in _LPIPS_WARNED:
        _LPIPS_WARNED.add(net)
        warnings.warn(
            f"LPIPS ({net}) skipped: its backbone weights are not in the torch hub cache ({path}). "
            f'To enable it, run once with internet access: python -c "import torchvision; '
            f"torchvision.models.{LPIPS_NETS[net].replace('_Weights', '').lower()}(weights='DEFAULT')\", "
            f"or copy {path.name} into {path.parent} (set TORCH_HOME to use another cache).",
            RuntimeWarning,
            stacklevel=4,
        )
    return False


def _check_images(reconstructed: torch.Tensor, original: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    for name, images in (("reconstructed", reconstructed), ("original", original)):
        if not isinstance(images, torch.Tensor):
            raise ValueError(f"{name} must be a torch.Tensor of shape (B, C, H, W), got {type(images).__name__}")
        if images.ndim != 4:
            raise ValueError(f"{name} must have shape (B, C, H, W), got {tuple(images.shape)}")
        if images.shape[1] not in (1, 3):
            raise ValueError(f"{name} must have 1 or 3 channels, got {images.shape[1]}")
    if reconstructed.shape != original.shape:
        raise ValueError(
            f"reconstructed {tuple(reconstructed.shape)} and original {tuple(original.shape)} must have the same shape"
        )
    return (
        reconstructed.detach().float().cpu().clamp(0.0, 1.0),
        original.detach().float().cpu().clamp(0.0, 1.0),
    )


def pairwise_mse(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """(B, B) matrix of the MSE between reconstruction i and original j."""
    flat_rec = reconstructed.reshape(reconstructed.shape[0], -1).double()
    flat_orig = original.reshape(original.shape[0], -1).double()
    return torch.cdist(flat_rec, flat_orig).pow(2) / flat_rec.shape[1]


def match_reconstructions(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Hungarian assignment on MSE: ``assignment[j]`` is the reconstruction matched to original ``j``.

    Shapes: both (B, C, H, W) -> LongTensor (B,), a permutation of ``range(B)`` minimising the total MSE.
    """
    from scipy.optimize import linear_sum_assignment

    reconstructed, original = _check_images(reconstructed, original)
    cost = pairwise_mse(reconstructed, original).numpy()
    rows, cols = linear_sum_assignment(cost)
    assignment = torch.empty(len(cols), dtype=torch.long)
    assignment[torch.as_tensor(cols)] = torch.as_tensor(rows, dtype=torch.long)
    return assignment


def _mse(reconstructed: torch.Tensor, original: torch.Tensor, lpips_net: str) -> torch.Tensor:
    """Mean squared pixel error per image (float64)."""
    return (reconstructed.double() - original.double()).pow(2).flatten(1).mean(1)


def _psnr(reconstructed: torch.Tensor, original: torch.Tensor, lpips_net: str) -> torch.Tensor:
    """``10 log10(1 / mse)`` per image, the MSE floored at ``PSNR_MSE_FLOOR``."""
    return 10 * torch.log10(1.0 / _mse(reconstructed, original, lpips_net).clamp_min(PSNR_MSE_FLOOR))


def _ssim(reconstructed: torch.Tensor, original: torch.Tensor, lpips_net: str) -> torch.Tensor:
    """Mean SSIM map per image without the border half a window wide (as Wang et al. and skimage do)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pad = (SSIM_SETTINGS["kernel_size"] - 1) // 2
    if min(original.shape[-2:]) <= 2 * pad:
        raise ValueError(f"ssim needs images larger than {2 * pad}x{2 * pad}, got {tuple(original.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        reconstructed.double(), original.double(), data_range=1.0, return_full_image=True, **SSIM_SETTINGS
    )
    return ssim_map[..., pad:-pad, pad:-pad].flatten(1).mean(1)


def _lpips(reconstructed: torch.Tensor, original: torch.Tensor, lpips_net: str) -> torch.Tensor | None:
    """LPIPS distance per image; ``None`` (the key is left out) when the backbone weights are not cached."""
    if not _lpips_ready(lpips_net):
        return None
    if lpips_net not in _LPIPS_MODULES:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        module = LearnedPerceptualImagePatchSimilarity(net_type=cast(Any, lpips_net), normalize=True).net.eval()
        _LPIPS_MODULES[lpips_net] = module
    if reconstructed.shape[1] == 1:
        reconstructed, original = reconstructed.repeat(1, 3, 1, 1), original.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return _LPIPS_MODULES[lpips_net](reconstructed, original, normalize=True).reshape(-1).double()


def label_accuracy(labels_hat: torch.Tensor | Sequence[int], labels: torch.Tensor | Sequence[int]) -> float:
    """Fraction of the true labels recovered, as multisets (the order of a batch's labels is not recoverable).

    For B = 1 this is 1.0 when the label is right and 0.0 otherwise.
    """
    predicted = [int(v) for v in torch.as_tensor(labels_hat).reshape(-1)]
    truth = [int(v) for v in torch.as_tensor(labels).reshape(-1)]
    if len(predicted) != len(truth) or not truth:
        raise ValueError(f"labels_hat ({len(predicted)}) and labels ({len(truth)}) must have the same length >= 1")
    overlap = sum((Counter(predicted) & Counter(truth)).values())
    return overlap / len(truth)


@dataclass(frozen=True)
class Metric:
    """One reconstruction metric: how it is computed, which way means more leakage, how reports print it.

    Attributes:
        name: the key in results, stores and reports (``psnr``).
        title: the column title in reports (``PSNR``).
        higher_is_better: True when a larger value means a closer reconstruction (more leakage).
        format: ``str.format`` pattern of a value in report tables (``{:.2f}``).
        compute: for an image metric, ``compute(reconstructed, original, lpips_net) -> float64 tensor (B,)``
            on matched, clamped pixel images (``None`` when it cannot run here); for a label metric,
            ``compute(labels_hat, labels) -> float``, a fraction of the batch's labels.
        per_image: True for an image metric, False for a label metric.
    """

    name: str
    title: str
    higher_is_better: bool
    format: str
    compute: Callable[..., Any]
    per_image: bool = True


def _table(*metrics: Metric) -> Registry[Metric]:
    table: Registry[Metric] = Registry("metric")
    for metric in metrics:
        table.add(metric.name, metric)
    return table


METRIC_TABLE = _table(
    Metric("mse", "MSE", False, "{:.4f}", _mse),
    Metric("psnr", "PSNR", True, "{:.2f}", _psnr),
    Metric("ssim", "SSIM", True, "{:.3f}", _ssim),
    Metric("lpips", "LPIPS", False, "{:.3f}", _lpips),
    Metric("label_accuracy", "Label accuracy", True, "{:.2f}", label_accuracy, per_image=False),
)
"""Every reconstruction metric by name, in the order results and report columns list them."""

METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE.values() if m.per_image)
"""Image metrics ``per_image_metrics`` can compute (``lpips`` only when its weights are cached)."""

LABEL_METRICS: tuple[str, ...] = tuple(m.name for m in METRIC_TABLE.values() if not m.per_image)
"""Metrics computed from the inferred and the true labels."""

HIGHER_IS_BETTER: dict[str, bool] = {m.name: m.higher_is_better for m in METRIC_TABLE.values()}
"""Direction of each metric: True when a larger value means a closer reconstruction (more leakage)."""


def per_image_metrics(
    reconstructed: torch.Tensor,
    original: torch.Tensor,
    metrics: Sequence[str] = METRICS,
    match: bool = True,
    lpips_net: str = "alex",
) -> dict[str, torch.Tensor]:
    """Score each original image against its reconstruction.

    Args:
        reconstructed, original: (B, C, H, W) pixel images (C = 1 or 3), clamped to [0, 1].
        metrics: any of ``METRICS``; ``lpips`` is left out (with one warning) when its weights are not cached.
        match: for B > 1, pair images by ``match_reconstructions`` first; otherwise pair by position.
        lpips_net: LPIPS backbone, one of ``LPIPS_NETS`` (alex, vgg, squeeze).
    Returns:
        ``{metric: float64 tensor (B,)}`` in the order of ``METRIC_TABLE``, plus ``assignment`` (LongTensor
        (B,), the reconstruction index paired with each original).
    """
    for name in metrics:
        one_of("metrics", name, METRICS)
    one_of("lpips_net", lpips_net, LPIPS_NETS)
    reconstructed, original = _check_images(reconstructed, original)
    batch = original.shape[0]
    if match and batch > 1:
        assignment = match_reconstructions(reconstructed, original)
    else:
        assignment = torch.arange(batch)
    paired = reconstructed[assignment]
    results: dict[str, torch.Tensor] = {}
    for name in METRICS:
        if name in metrics:
            value = METRIC_TABLE[name].compute(paired, original, lpips_net)
            if value is not None:
                results[name] = value
    results["assignment"] = assignment
    return results


def reconstruction_metrics(
    reconstructed: torch.Tensor,
    original: torch.Tensor,
    labels_hat: torch.Tensor | Sequence[int] | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    lpips_net: str = "alex",
    per_image: bool = False,
) -> dict[str, Any]:
    """Batch means of ``per_image_metrics`` (after Hungarian matching), plus the label metrics
    (``label_accuracy``) when both label vectors are given.

    Returns:
        ``{"mse": float, "psnr": float, "ssim": float, ["lpips": float], ["label_accuracy": float]}``; with
        ``per_image=True`` also ``"per_image": {metric: list[float]}`` and ``"assignment": list[int]``.
        An exact copy scores 100 dB of PSNR (see ``PSNR_MSE_FLOOR``).
    """
    if (labels_hat is None) != (labels is None):
        raise ValueError("labels_hat and labels must be given together (both or neither)")
    values = per_image_metrics(reconstructed, original, metrics=metrics, lpips_net=lpips_net)
    assignment = values.pop("assignment")
    results: dict[str, Any] = {name: float(value.mean()) for name, value in values.items()}
    if labels_hat is not None and labels is not None:
        for name in LABEL_METRICS:
            results[name] = METRIC_TABLE[name].compute(labels_hat, labels)
    if per_image:
        results["per_image"] = {name: [float(v) for v in value] for name, value in values.items()}
        results["assignment"] = assignment.tolist()
    return results


class ReconstructionMetrics:
    """Accumulates per-image metrics over many attacked batches; ``compute`` gives the means over all images.

    Label metrics are fractions of a batch's labels, so they are pooled over all labels seen.

    Args:
        metrics: any of ``METRICS``. lpips_net: LPIPS backbone (alex, vgg, squeeze).

    Example:
        >>> meter = ReconstructionMetrics(metrics=("mse", "psnr"))
        >>> meter.update(torch.zeros(2, 1, 8, 8), torch.full((2, 1, 8, 8), 0.1))
        >>> round(meter.compute()["psnr"], 3)
        20.0
    """

    higher_is_better = HIGHER_IS_BETTER

    def __init__(self, metrics: Sequence[str] = METRICS, lpips_net: str = "alex") -> None:
        for name in metrics:
            one_of("metrics", name, METRICS)
        one_of("lpips_net", lpips_net, LPIPS_NETS)
        self.metrics = tuple(metrics)
        self.lpips_net = lpips_net
        self.reset()

    def update(
        self,
        reconstructed: torch.Tensor,
        original: torch.Tensor,
        labels_hat: torch.Tensor | Sequence[int] | None = None,
        labels: torch.Tensor | Sequence[int] | None = None,
    ) -> None:
        """Score one attacked batch and keep its per-image values."""
        values = per_image_metrics(reconstructed, original, metrics=self.metrics, lpips_net=self.lpips_net)
        values.pop("assignment")
        for name, value in values.items():
            self.values.setdefault(name, []).extend(float(v) for v in value)
        if labels_hat is not None and labels is not None:
            count = len(torch.as_tensor(labels).reshape(-1))
            for name in LABEL_METRICS:
                share = METRIC_TABLE[name].compute(labels_hat, labels)
                self.label_counts[name] = self.label_counts.get(name, 0) + round(share * count)
            self.labels_total += count

    def compute(self) -> dict[str, float]:
        """Mean of every metric over all images seen (label metrics over all labels seen)."""
        results = {name: math.fsum(values) / len(values) for name, values in self.values.items() if values}
        if self.labels_total:
            results.update({name: count / self.labels_total for name, count in self.label_counts.items()})
        return results

    def reset(self) -> None:
        """Forget everything seen."""
        self.values: dict[str, list[float]] = {}
        self.label_counts: dict[str, int] = {}
        self.labels_total = 0


# ----------------------------------------------------------------------------------------------------------------
# The GGL paper's conventions (Li et al., CVPR 2022, arXiv 2203.15696, Table 3), for comparing with its numbers


def _paired_pixels(
    reconstructed: torch.Tensor, original: torch.Tensor, match: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """Checked, clamped pixel images, the reconstructions reordered by ``match_reconstructions`` when asked."""
    reconstructed, original = _check_images(reconstructed, original)
    if match and original.shape[0] > 1:
        reconstructed = reconstructed[match_reconstructions(reconstructed, original)]
    return reconstructed, original


def mse_signed_unit(reconstructed: torch.Tensor, original: torch.Tensor, match: bool = True) -> torch.Tensor:
    """The paper's MSE-I: the mean squared error per image with pixels on the [-1, 1] scale.

    Images are given in [0, 1] (clamped, as everywhere here); mapping x to 2x - 1 doubles every difference, so
    MSE-I is exactly 4 times the ``mse`` metric. Pairing as in ``per_image_metrics`` (Hungarian for B > 1 when
    ``match``, else by position). Shapes: both (B, C, H, W) -> float64 (B,).
    """
    reconstructed, original = _paired_pixels(reconstructed, original, match)
    return 4 * _mse(reconstructed, original, "alex")


def psnr_signed_unit(reconstructed: torch.Tensor, original: torch.Tensor, match: bool = True) -> torch.Tensor:
    """The paper's PSNR: ``-10 log10(MSE-I)`` per image, i.e. pixels on the [-1, 1] scale with peak 1.

    That is ``10 log10(4) = 6.02`` dB below the ``psnr`` metric (data range 1 on [0, 1]), which reports
    published with the paper's numbers must take into account. The MSE is floored at ``PSNR_MSE_FLOOR`` as for
    ``psnr``. Shapes: both (B, C, H, W) -> float64 (B,).
    """
    return -10 * torch.log10(mse_signed_unit(reconstructed, original, match).clamp_min(PSNR_MSE_FLOOR))


def _last_linear(model: torch.nn.Module) -> torch.nn.Linear:
    """The last ``nn.Linear`` in ``model.modules()`` order: the classifier head of the victims here."""
    linears = [module for module in model.modules() if isinstance(module, torch.nn.Linear)]
    if not linears:
        raise ValueError(f"{type(model).__name__} has no nn.Linear layer, so it has no penultimate features")
    return linears[-1]


def penultimate_features(model: torch.nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The input of ``model``'s last ``nn.Linear`` for ``inputs``, flattened to (B, F), by a forward pre-hook.

    No gradients; the model stays in its mode, and buffers a forward changes (BatchNorm running statistics in
    training mode) are put back, so scoring never alters the victim.
    """
    captured: list[torch.Tensor] = []
    handle = _last_linear(model).register_forward_pre_hook(lambda _, args: captured.append(args[0].detach()))
    buffers = {name: buffer.clone() for name, buffer in model.named_buffers()}
    try:
        with torch.no_grad():
            model(inputs)
    finally:
        handle.remove()
        with torch.no_grad():
            for name, buffer in model.named_buffers():
                buffer.copy_(buffers[name])
    if not captured:
        raise ValueError(f"the last nn.Linear of {type(model).__name__} was not called in its forward pass")
    return captured[-1].flatten(1)


def mse_representation(
    model: torch.nn.Module, reconstruction_inputs: torch.Tensor, original_inputs: torch.Tensor
) -> torch.Tensor:
    """The paper's MSE-R: mean squared difference of the model's penultimate-layer features, per image.

    The features are the input of the last ``nn.Linear`` (``penultimate_features``). The inputs are what the model
    takes (already normalised, not pixel images), paired by position: reorder the reconstructions by the pixel
    assignment (``match_reconstructions``) first for B > 1. The two batches run in separate forwards, so a model
    in training mode does not mix their batch statistics. Shapes: both (B, ...) -> float64 (B,).
    """
    if reconstruction_inputs.shape != original_inputs.shape:
        raise ValueError(
            f"reconstruction_inputs {tuple(reconstruction_inputs.shape)} and original_inputs "
            f"{tuple(original_inputs.shape)} must have the same shape"
        )
    reconstructed = penultimate_features(model, reconstruction_inputs).double().cpu()
    original = penultimate_features(model, original_inputs).double().cpu()
    return (reconstructed - original).pow(2).mean(1)


__all__ = [
    "HIGHER_IS_BETTER",
    "LABEL_METRICS",
    "LPIPS_NETS",
    "METRICS",
    "METRIC_TABLE",
    "PSNR_MSE_FLOOR",
    "SSIM_SETTINGS",
    "Metric",
    "ReconstructionMetrics",
    "label_accuracy",
    "lpips_available",
    "lpips_weights_path",
    "match_reconstructions",
    "mse_representation",
    "mse_signed_unit",
    "pairwise_mse",
    "penultimate_features",
    "per_image_metrics",
    "psnr_signed_unit",
    "reconstruction_metrics",
]
