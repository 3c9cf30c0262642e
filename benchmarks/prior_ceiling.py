"""The ceiling a generative prior puts on GGL: how close can G(z, y) get to a victim when the pixels are known?

    python -m benchmarks.prior_ceiling --prior fashion-mnist-wgan --victims 64 --out docs/prior_ceiling.json

For each victim of the embedded test slice, fits z by Adam on the pixel MSE with the true label (several restarts,
the best kept). No gradient attack can do better than this through the same prior, so it bounds every GGL number.
Beside it: the prior-only reference (mean public image of the class). Also writes a sample grid (one row per
class) and a grid of victims above their best fits.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.prior_ceiling",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--prior", default="fashion-mnist-wgan", help="prior name or checkpoint path")
    parser.add_argument("--victims", type=int, default=64)
    parser.add_argument("--victim-seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=500, help="Adam steps per fit")
    parser.add_argument("--restarts", type=int, default=4, help="random initialisations per victim; best kept")
    parser.add_argument("--lr", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="docs/prior_ceiling.json")
    parser.add_argument("--samples", default="docs/img/fashion_mnist_wgan_samples.png", help="sample grid PNG")
    parser.add_argument("--fits", default="docs/img/fashion_mnist_wgan_ceiling.png", help="victims vs fits PNG")
    return parser


def _stats(values: list[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def fit_latents(prior: Any, images: Any, labels: Any, steps: int, restarts: int, lr: float, seed: int) -> Any:
    """Best-of-``restarts`` Adam fits of z to ``images`` (N, C, H, W) with known ``labels``; returns fits (N, ...)."""
    import torch

    count = images.shape[0]
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(restarts * count, prior.latent_dim, generator=generator).requires_grad_(True)
    repeated_labels = labels.repeat(restarts)
    targets = images.repeat(restarts, 1, 1, 1)
    optimizer = torch.optim.Adam([latents], lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = (prior(latents, repeated_labels) - targets).pow(2).flatten(1).mean(1)
        loss.sum().backward()
        optimizer.step()
        schedule.step()
    with torch.no_grad():
        fits = prior(latents, repeated_labels).view(restarts, count, *images.shape[1:])
        errors = (fits - images.unsqueeze(0)).pow(2).flatten(2).mean(2)
        best = errors.argmin(0)
        return fits[best, torch.arange(count)]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import torch
    from torchvision.utils import save_image

    from ggl.data import EmbeddedFashionMNIST
    from ggl.metrics import reconstruction_metrics
    from ggl.priors import PriorNotFoundError, load_prior

    try:
        prior = load_prior(args.prior)
    except (PriorNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    torch.manual_seed(args.seed)
    datamodule = EmbeddedFashionMNIST()
    datamodule.setup("test")
    indices = datamodule.victim_indices(args.victims, seed=args.victim_seed)
    images, labels = datamodule.victim_batch(indices)
    fits = fit_latents(prior, images, labels, args.steps, args.restarts, args.lr, args.seed)
    references = datamodule.class_means()[labels]
    names = ("mse", "psnr", "ssim")

    def per_victim(candidates: Any) -> dict[str, list[float]]:
        """Metrics of each candidate against its own victim (one call each: no batch matching)."""
        rows = [
            reconstruction_metrics(candidates[i : i + 1], images[i : i + 1], metrics=names) for i in range(len(indices))
        ]
        return {m: [float(row[m]) for row in rows] for m in names}

    fit_values, reference_values = per_victim(fits), per_victim(references)
    result = {
        "prior": args.prior,
        "prior_training": getattr(prior, "training_info", {}),
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "samples", "fits")},
        "ceiling": {m: _stats(fit_values[m]) for m in names},
        "class_mean_reference": {m: _stats(reference_values[m]) for m in names},
        "per_victim": {"ceiling": fit_values, "class_mean_reference": reference_values},
        "victim_indices": indices,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    partial.write_text(json.dumps(result, indent=1) + "\n")
    os.replace(partial, out)
    if prior.num_classes:
        with torch.no_grad():
            class_labels = torch.arange(prior.num_classes).repeat_interleave(10)
            samples = prior(prior.sample(len(class_labels), torch.Generator().manual_seed(args.seed)), class_labels)
        Path(args.samples).parent.mkdir(parents=True, exist_ok=True)
        save_image(samples, args.samples, nrow=10, padding=1, pad_value=1.0)
    shown = min(16, args.victims)
    save_image(torch.cat([images[:shown], fits[:shown]]), args.fits, nrow=shown, padding=1, pad_value=1.0)
    ceiling, reference = result["ceiling"], result["class_mean_reference"]
    print(
        f"ceiling over {args.victims} victims: PSNR {ceiling['psnr']['mean']:.2f} dB "
        f"(median {ceiling['psnr']['median']:.2f}, min {ceiling['psnr']['min']:.2f}, "
        f"max {ceiling['psnr']['max']:.2f}), "
        f"SSIM {ceiling['ssim']['mean']:.3f}; class-mean reference PSNR {reference['psnr']['mean']:.2f} dB, "
        f"SSIM {reference['ssim']['mean']:.3f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
