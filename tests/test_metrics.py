"""Reconstruction metrics against independent references (numpy, skimage) and their matching and LPIPS rules."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ggl import metrics
from ggl.metrics import (
    HIGHER_IS_BETTER,
    LABEL_METRICS,
    METRIC_TABLE,
    METRICS,
    Metric,
    ReconstructionMetrics,
    label_accuracy,
    lpips_weights_path,
    match_reconstructions,
    per_image_metrics,
    reconstruction_metrics,
)

IMAGE_METRICS = ("mse", "psnr", "ssim")


pytestmark = pytest.mark.usefixtures("single_thread")  # tests/conftest.py


def _pair(batch: int, channels: int, size: int = 32, noise: float = 0.1, seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    original = torch.rand(batch, channels, size, size, generator=generator)
    noisy = original + noise * torch.randn(original.shape, generator=generator)
    return noisy, original


@pytest.mark.parametrize(("channels", "size", "noise"), [(3, 32, 0.1), (1, 32, 0.3), (3, 64, 0.02), (1, 28, 0.05)])
def test_psnr_ssim_mse_agree_with_skimage(channels: int, size: int, noise: float) -> None:
    reconstructed, original = _pair(3, channels, size, noise, seed=channels + size)
    values = per_image_metrics(reconstructed, original, metrics=IMAGE_METRICS, match=False)
    clamped = reconstructed.clamp(0, 1).double().numpy()
    truth = original.double().numpy()
    for i in range(3):
        assert values["mse"][i].item() == pytest.approx(np.mean((clamped[i] - truth[i]) ** 2), rel=1e-12)
        assert values["psnr"][i].item() == pytest.approx(
            peak_signal_noise_ratio(truth[i], clamped[i], data_range=1.0), abs=1e-9
        )
        reference_ssim = structural_similarity(
            truth[i], clamped[i], data_range=1.0, channel_axis=0, gaussian_weights=True, sigma=1.5,
            use_sample_covariance=False,
        )  # fmt: skip
        assert values["ssim"][i].item() == pytest.approx(reference_ssim, abs=1e-9)
    assert values["assignment"].tolist() == [0, 1, 2]


def test_perfect_and_opposite_reconstructions() -> None:
    _, original = _pair(2, 3)
    perfect = reconstruction_metrics(original.clone(), original, metrics=IMAGE_METRICS)
    assert perfect == {"mse": 0.0, "psnr": 100.0, "ssim": pytest.approx(1.0)}
    close = original[:1] + 1e-4 * (original[:1] < 0.5)  # MSE about 5e-9: 83 dB, above the 1e-10 floor
    reference = peak_signal_noise_ratio(original[:1].double().numpy(), close.double().numpy(), data_range=1.0)
    assert reconstruction_metrics(close, original[:1], metrics=("psnr",))["psnr"] == pytest.approx(reference, rel=1e-6)
    closer = original[:1] + 1e-6 * (original[:1] < 0.5)
    assert reconstruction_metrics(closer, original[:1], metrics=("psnr",))["psnr"] == pytest.approx(100.0)
    opposite = reconstruction_metrics(1 - original[:1], original[:1], metrics=IMAGE_METRICS)
    assert opposite["mse"] == pytest.approx(1 / 3, rel=0.05)  # E[(1 - 2u)^2] for u uniform in [0, 1]
    assert opposite["psnr"] < 5 and opposite["ssim"] < 0


def test_hungarian_matching_recovers_a_permutation() -> None:
    reconstructed, original = _pair(6, 3, noise=0.05, seed=3)
    permutation = torch.tensor([4, 0, 5, 2, 1, 3])
    shuffled = reconstructed[permutation]  # shuffled[k] reconstructs original[permutation[k]]
    assignment = match_reconstructions(shuffled, original)
    assert torch.equal(permutation[assignment], torch.arange(6))
    matched = reconstruction_metrics(shuffled, original, metrics=IMAGE_METRICS, per_image=True)
    aligned = reconstruction_metrics(reconstructed, original, metrics=IMAGE_METRICS, per_image=True)
    assert matched["assignment"] == assignment.tolist() and aligned["assignment"] == list(range(6))
    for name in IMAGE_METRICS:
        assert matched[name] == pytest.approx(aligned[name], rel=1e-12)
        assert matched["per_image"][name] == pytest.approx(aligned["per_image"][name], rel=1e-12)
    unmatched = per_image_metrics(shuffled, original, metrics=("mse",), match=False)
    assert unmatched["mse"].mean() > 10 * matched["mse"]


def test_matching_minimises_total_mse_when_no_pairing_is_exact() -> None:
    generator = torch.Generator().manual_seed(1)
    reconstructed, original = (
        torch.rand(4, 1, 12, 12, generator=generator),
        torch.rand(4, 1, 12, 12, generator=generator),
    )
    cost = metrics.pairwise_mse(reconstructed, original)
    assignment = match_reconstructions(reconstructed, original)
    best = cost[assignment, torch.arange(4)].sum()
    from itertools import permutations

    assert best == pytest.approx(min(float(cost[list(p), torch.arange(4)].sum()) for p in permutations(range(4))))


def test_label_accuracy_counts_a_multiset() -> None:
    assert label_accuracy([3], [3]) == 1.0 and label_accuracy([2], [3]) == 0.0
    assert label_accuracy(torch.tensor([1, 1, 4, 7]), torch.tensor([7, 1, 4, 4])) == 0.75
    reconstructed, original = _pair(2, 1)
    result = reconstruction_metrics(reconstructed, original, [0, 5], [5, 5], metrics=("mse",))
    assert result["label_accuracy"] == 0.5
    with pytest.raises(ValueError, match="same length"):
        label_accuracy([1, 2], [1])
    with pytest.raises(ValueError, match="together"):
        reconstruction_metrics(reconstructed, original, labels_hat=[0, 1])


def test_lpips_is_absent_without_cached_weights_and_warns_once(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS_WARNED", set())
    reconstructed, original = _pair(1, 3)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = reconstruction_metrics(reconstructed, original)
        second = reconstruction_metrics(reconstructed, original)
    assert "lpips" not in first and "lpips" not in second and set(first) == set(IMAGE_METRICS)
    lpips_warnings = [w for w in caught if "LPIPS" in str(w.message)]
    assert len(lpips_warnings) == 1
    assert str(lpips_weights_path("alex")) in str(lpips_warnings[0].message)
    assert not any(tmp_path.rglob("*.pth"))  # nothing was downloaded


def test_lpips_runs_from_cached_weights_on_rgb_and_grayscale(tmp_path, monkeypatch) -> None:
    import torchvision

    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path))
    monkeypatch.setattr(metrics, "_LPIPS_MODULES", {})
    path = lpips_weights_path("squeeze")
    path.parent.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(torchvision.models.squeezenet1_1(weights=None).state_dict(), path)  # stands in for the real weights
    for channels in (3, 1):
        reconstructed, original = _pair(2, channels, size=64, noise=0.2)
        values = per_image_metrics(reconstructed, original, lpips_net="squeeze")
        assert values["lpips"].shape == (2,) and (values["lpips"] > 0).all()
        same = per_image_metrics(original, original, metrics=("lpips",), lpips_net="squeeze")
        assert same["lpips"].abs().max() < 1e-6


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (
            lambda x: per_image_metrics(x, x, metrics=("psnr", "fid")),
            "metrics must be one of mse, psnr, ssim, lpips, got 'fid'",
        ),
        (lambda x: per_image_metrics(x, x, lpips_net="resnet"), "lpips_net must be one of alex, vgg, squeeze"),
        (lambda x: reconstruction_metrics(x, x[:1]), "must have the same shape"),
        (lambda x: reconstruction_metrics(x[0], x[0]), r"shape \(B, C, H, W\)"),
        (lambda x: reconstruction_metrics(x[:, :2], x[:, :2]), "1 or 3 channels"),
        (lambda x: reconstruction_metrics(x.numpy(), x), "torch.Tensor"),
        (lambda x: reconstruction_metrics(x[..., :8, :8], x[..., :8, :8], metrics=("ssim",)), "ssim needs images"),
        (lambda x: ReconstructionMetrics(metrics=("psnr", "l2")), "metrics must be one of"),
    ],
)
def test_bad_arguments_raise_value_errors(call, message: str) -> None:
    _, original = _pair(2, 3)
    with pytest.raises(ValueError, match=message):
        call(original)


def test_higher_is_better_covers_every_metric() -> None:
    assert set(HIGHER_IS_BETTER) == {*METRICS, "label_accuracy"}
    assert not HIGHER_IS_BETTER["mse"] and HIGHER_IS_BETTER["psnr"] and HIGHER_IS_BETTER["ssim"]
    assert not HIGHER_IS_BETTER["lpips"] and ReconstructionMetrics.higher_is_better is HIGHER_IS_BETTER


def test_metric_table_is_the_one_list_of_metrics() -> None:
    assert tuple(METRIC_TABLE) == ("mse", "psnr", "ssim", "lpips", "label_accuracy")
    assert METRICS == ("mse", "psnr", "ssim", "lpips") and LABEL_METRICS == ("label_accuracy",)
    for name, metric in METRIC_TABLE.items():
        assert isinstance(metric, Metric) and metric.name == name and metric.title
        assert isinstance(metric.higher_is_better, bool) and HIGHER_IS_BETTER[name] is metric.higher_is_better
        assert metric.format.format(1.5) and callable(metric.compute)
    with pytest.raises(ValueError, match="already registered"):
        METRIC_TABLE.add("psnr", METRIC_TABLE["psnr"])
    with pytest.raises(ValueError, match="did you mean 'psnr'"):
        METRIC_TABLE.lookup("pnsr")


def test_an_added_table_entry_is_computed_everywhere(monkeypatch: pytest.MonkeyPatch) -> None:
    def l1(reconstructed: torch.Tensor, original: torch.Tensor, lpips_net: str) -> torch.Tensor:
        return (reconstructed.double() - original.double()).abs().flatten(1).mean(1)

    monkeypatch.setitem(METRIC_TABLE, "l1", Metric("l1", "L1", False, "{:.4f}", l1))
    monkeypatch.setattr(metrics, "METRICS", (*METRICS, "l1"))
    reconstructed, original = _pair(2, 1, noise=0.05)
    values = reconstruction_metrics(reconstructed, original, metrics=("mse", "l1"), per_image=True)
    assert list(values["per_image"]) == ["mse", "l1"]
    expected = (reconstructed.clamp(0, 1)[values["assignment"]] - original).abs().double().mean()
    assert values["l1"] == pytest.approx(float(expected), rel=1e-9)


def test_accumulated_metrics_are_means_over_all_images() -> None:
    first, first_truth = _pair(3, 3, noise=0.05, seed=1)
    second, second_truth = _pair(1, 3, noise=0.2, seed=2)
    meter = ReconstructionMetrics(metrics=IMAGE_METRICS)
    meter.update(first, first_truth, [1, 2, 2], [2, 2, 2])
    meter.update(second, second_truth, [0], [0])
    combined = per_image_metrics(torch.cat([first, second]), torch.cat([first_truth, second_truth]), IMAGE_METRICS)
    result = meter.compute()
    for name in IMAGE_METRICS:
        assert result[name] == pytest.approx(float(combined[name].mean()), rel=1e-12)
    assert result["label_accuracy"] == 0.75
    meter.reset()
    assert meter.compute() == {}
