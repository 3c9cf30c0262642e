"""Reconstruction quality: how close an attack's images are to the private batch it never saw.

Functional core in the torchmetrics manner, on pixel images in [0, 1] (both inputs are clamped):

* ``per_image_metrics(reconstructed, original)`` -> one value per original image (B,) for each metric;
* ``reconstruction_metrics(reconstructed, original, labels_hat, labels)`` -> batch means (+ label accuracy);
* ``ReconstructionMetrics`` accumulates per-image values over many victims (``update`` / ``compute``).

Metrics: ``mse``, ``psnr`` (dB, data range 1: ``10 log10(1 / mse)``, at most 100), ``ssim`` (torchmetrics;
Gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, border of half a window left out as skimage does),
``lpips`` (Zhang et al. 2018, arXiv 1801.03924, via torchmetrics) and ``label_accuracy``.
``HIGHER_IS_BETTER`` says in which direction each one improves *for the attacker*.

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
from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch

METRICS: tuple[str, ...] = ("mse", "psnr", "ssim", "lpips")
"""Image metrics ``per_image_metrics`` can compute (``lpips`` only when its weights are cached)."""

HIGHER_IS_BETTER: dict[str, bool] = {
    "mse": False,
    "psnr": True,
    "ssim": True,
    "lpips": False,
    "label_accuracy": True,
}
"""Direction of each metric: True when a larger value means a closer reconstruction (more leakage)."""

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
    _check_choice("lpips_net", net, LPIPS_NETS)
    import torchvision.models

    url = getattr(torchvision.models, LPIPS_NETS[net]).DEFAULT.url
    return Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]


def lpips_available(net: str = "alex") -> bool:
    """True when LPIPS ``net`` can run without a download; otherwise warns once per process and returns False."""
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
            stacklevel=3,
        )
    return False


def _check_choice(field: str, value: Any, allowed: Sequence[str] | dict[str, Any]) -> None:
    if value not in allowed:
        raise ValueError(f"{field} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


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


def _ssim(reconstructed: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """Mean SSIM map per image without the border half a window wide (as Wang et al. and skimage do)."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    pad = (SSIM_SETTINGS["kernel_size"] - 1) // 2
    if min(original.shape[-2:]) <= 2 * pad:
        raise ValueError(f"ssim needs images larger than {2 * pad}x{2 * pad}, got {tuple(original.shape[-2:])}")
    _, ssim_map = structural_similarity_index_measure(
        reconstructed.double(), original.double(), data_range=1.0, return_full_image=True, **SSIM_SETTINGS
    )
    return ssim_map[..., pad:-pad, pad:-pad].flatten(1).mean(1)


def _lpips(reconstructed: torch.Tensor, original: torch.Tensor, net: str) -> torch.Tensor:
    if net not in _LPIPS_MODULES:
        from torchmetrics.image.lpip import LearnedPerceptualImagePatchSimilarity

        _LPIPS_MODULES[net] = LearnedPerceptualImagePatchSimilarity(net_type=cast(Any, net), normalize=True).net.eval()
    if reconstructed.shape[1] == 1:
        reconstructed, original = reconstructed.repeat(1, 3, 1, 1), original.repeat(1, 3, 1, 1)
    with torch.no_grad():
        return _LPIPS_MODULES[net](reconstructed, original, normalize=True).reshape(-1)


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
        ``{metric: float64 tensor (B,)}`` in the order of ``original``, plus ``assignment`` (LongTensor (B,), the
        reconstruction index paired with each original).
    """
    for name in metrics:
        _check_choice("metrics", name, METRICS)
    _check_choice("lpips_net", lpips_net, LPIPS_NETS)
    reconstructed, original = _check_images(reconstructed, original)
    batch = original.shape[0]
    if match and batch > 1:
        assignment = match_reconstructions(reconstructed, original)
    else:
        assignment = torch.arange(batch)
    paired = reconstructed[assignment]
    results: dict[str, torch.Tensor] = {}
    squared_error = (paired.double() - original.double()).pow(2).flatten(1).mean(1)
    if "mse" in metrics:
        results["mse"] = squared_error
    if "psnr" in metrics:
        results["psnr"] = 10 * torch.log10(1.0 / squared_error.clamp_min(PSNR_MSE_FLOOR))
    if "ssim" in metrics:
        results["ssim"] = _ssim(paired, original)
    if "lpips" in metrics and lpips_available(lpips_net):
        results["lpips"] = _lpips(paired, original, lpips_net).double()
    results["assignment"] = assignment
    return results


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


def reconstruction_metrics(
    reconstructed: torch.Tensor,
    original: torch.Tensor,
    labels_hat: torch.Tensor | Sequence[int] | None = None,
    labels: torch.Tensor | Sequence[int] | None = None,
    metrics: Sequence[str] = METRICS,
    lpips_net: str = "alex",
    per_image: bool = False,
) -> dict[str, Any]:
    """Batch means of ``per_image_metrics`` (after Hungarian matching), plus ``label_accuracy`` when both label
    vectors are given.

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
        results["label_accuracy"] = label_accuracy(labels_hat, labels)
    if per_image:
        results["per_image"] = {name: [float(v) for v in value] for name, value in values.items()}
        results["assignment"] = assignment.tolist()
    return results


class ReconstructionMetrics:
    """Accumulates per-image metrics over many attacked batches; ``compute`` gives the means over all images.

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
            _check_choice("metrics", name, METRICS)
        _check_choice("lpips_net", lpips_net, LPIPS_NETS)
        self.metrics = tuple(metrics)
        self.lpips_net = lpips_net
        self.values: dict[str, list[float]] = {}
        self.labels_right = 0
        self.labels_total = 0

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
            self.labels_right += round(label_accuracy(labels_hat, labels) * count)
            self.labels_total += count

    def compute(self) -> dict[str, float]:
        """Mean of every metric over all images seen (``label_accuracy`` over all labels seen)."""
        results = {name: math.fsum(values) / len(values) for name, values in self.values.items() if values}
        if self.labels_total:
            results["label_accuracy"] = self.labels_right / self.labels_total
        return results

    def reset(self) -> None:
        """Forget everything seen."""
        self.values = {}
        self.labels_right = 0
        self.labels_total = 0


__all__ = [
    "HIGHER_IS_BETTER",
    "LPIPS_NETS",
    "METRICS",
    "PSNR_MSE_FLOOR",
    "SSIM_SETTINGS",
    "ReconstructionMetrics",
    "label_accuracy",
    "lpips_available",
    "lpips_weights_path",
    "match_reconstructions",
    "pairwise_mse",
    "per_image_metrics",
    "reconstruction_metrics",
]
