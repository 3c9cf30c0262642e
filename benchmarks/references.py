"""Prior-only references: what an attacker gets from the inferred label and the prior alone, with no gradient.

Three references per victim, each a pure function of what it needs:

- ``class_mean_reference``: the mean public image of the inferred class;
- ``prior_sample_reference``: a random prior sample of the inferred class;
- ``fit_prior_ceiling``: the prior's ceiling, its latent fitted by Adam to the victim's pixels (restarts batched,
  the best kept). No gradient attack can do better through the same prior, so it bounds every GGL number.

The harness scores them as reference rows of the results store (``reference_images`` is its one entry point), and
the leaderboard's "prior ceiling" row is the mean of those rows. The command line reports the same definition::

    python -m benchmarks.references --suite all                         # from results/all/results.sqlite
    python -m benchmarks.references --suite all --victims 32 --compute  # 32 victims, computed by benchmarks.run

With ``--compute`` the missing reference rows are computed by ``python -m benchmarks.run --references-only`` into
``--store`` (default ``results/SUITE-references``, kept apart so the leaderboard's store keeps its victim count);
victim i, its seeds and so its numbers are the same as in the suite's own store.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggl.io import atomic_write, pretty_json

from .cli import HelpFormatter
from .config import REFERENCE_PREFIX, AttackConfig, SuiteConfig, load_suite, output_file, output_folder

if TYPE_CHECKING:  # torch is imported where it is used, so the command line checks its input without it
    import torch

    from .store import CellRow, VictimRow

CEILING = REFERENCE_PREFIX + "prior-ceiling"
CLASS_MEAN = REFERENCE_PREFIX + "class-mean"
SUMMARY_METRICS = ("mse", "psnr", "ssim")
MAX_VICTIMS = 100_000
"""Most victims ``--victims`` may ask for (ImageNet's validation split has 50,000 images)."""


def class_mean_reference(datamodule: Any, labels: torch.Tensor) -> torch.Tensor:
    """The mean public image of each label (``datamodule.class_means()``), (B, C, H, W) in [0, 1]."""
    return datamodule.class_means()[labels].float().clamp(0, 1)


def _condition(prior: Any, labels: torch.Tensor, device: torch.device) -> torch.Tensor | None:
    """The labels on ``device`` for a class-conditional prior, None for an unconditional one."""
    conditional = int(getattr(prior, "num_classes", 0) or 0) > 0
    return labels.to(device) if conditional else None


def prior_sample_reference(
    prior: Any,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """One prior sample per label (latents from ``generator``), adapted to ``image_shape``, on the CPU in [0, 1]."""
    import torch

    from ggl.priors.registry import adapt_images

    z = prior.sample(len(labels), generator=generator).to(device)
    with torch.no_grad():
        images = prior(z, _condition(prior, labels, device))
    return adapt_images(images, image_shape).detach().cpu().float().clamp(0, 1)


def fit_prior_ceiling(
    prior: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    image_shape: tuple[int, int, int],
    *,
    steps: int,
    restarts: int,
    lr: float,
    generator: torch.Generator,
    device: torch.device,
) -> torch.Tensor:
    """The prior's ceiling: G(z, y) closest to ``images`` (B, C, H, W) in [0, 1] when the pixels are known.

    ``restarts`` latents per image (drawn from ``generator``) are fitted together by ``steps`` Adam steps at
    ``lr`` on the pixel MSE; per image the restart with the lowest final MSE is kept. Returns the fits on the CPU.
    """
    import torch

    from ggl.priors.registry import adapt_images

    batch = images.shape[0]
    target = images.to(device).repeat(restarts, 1, 1, 1)
    condition = _condition(prior, labels, device)
    repeated = condition.repeat(restarts) if condition is not None else None
    latent = prior.sample(batch * restarts, generator=generator).to(device).requires_grad_(True)
    optimizer = torch.optim.Adam([latent], lr=lr)
    with torch.enable_grad():
        for _ in range(steps):
            optimizer.zero_grad()
            errors = (adapt_images(prior(latent, repeated), image_shape) - target).pow(2).flatten(1).mean(1)
            errors.sum().backward()
            optimizer.step()
    with torch.no_grad():
        fits = adapt_images(prior(latent, repeated), image_shape).clamp(0, 1)
        errors = (fits - target).pow(2).flatten(1).mean(1).view(restarts, batch)
        best = errors.argmin(0)
        chosen = fits.view(restarts, batch, *image_shape)[best, torch.arange(batch)]
    return chosen.detach().cpu().float()


def reference_images(
    attack: AttackConfig,
    *,
    datamodule: Any,
    prior: Any,
    images: torch.Tensor,
    labels: torch.Tensor,
    generator: torch.Generator,
    device: torch.device,
) -> tuple[torch.Tensor, int]:
    """The images of one reference pseudo-attack and its evaluation count (0, 1, or steps x restarts).

    Args:
        attack: the reference (``reference:class-mean``, ``reference:prior-sample`` or ``reference:prior-ceiling``
            with ``steps``, ``restarts``, ``lr``). datamodule: holds ``class_means`` and ``image_shape``.
        prior: the suite's prior (None when it has none). images: the victim's ground truth (the ceiling only).
        labels: the labels inferred from the clean update. generator: the cell's randomness. device: where to fit.
    """
    kind = attack.name[len(REFERENCE_PREFIX) :]
    if kind == "class-mean":
        return class_mean_reference(datamodule, labels), 0
    if prior is None:
        raise RuntimeError(f"reference {kind} needs a prior; the suite has none")
    shape = tuple(datamodule.image_shape)
    if kind == "prior-sample":
        return prior_sample_reference(prior, labels, shape, generator, device), 1
    if kind == "prior-ceiling":
        steps, restarts, lr = int(attack.spec["steps"]), int(attack.spec["restarts"]), float(attack.spec["lr"])
        fits = fit_prior_ceiling(
            prior, images, labels, shape, steps=steps, restarts=restarts, lr=lr, generator=generator, device=device
        )
        return fits, steps * restarts
    raise RuntimeError(f"unknown reference kind {kind!r}")


# ----------------------------------------------------------------------------------------------------------------
# The ceiling over N victims of a suite, from its results store.


def _stats(values: Sequence[float]) -> dict[str, float]:
    return {
        "mean": statistics.fmean(values),
        "median": statistics.median(values),
        "min": min(values),
        "max": max(values),
    }


def per_victim(rows: Sequence[CellRow], victims: int) -> dict[int, dict[str, float]]:
    """Metrics of the rows of victims ``0 .. victims - 1``, averaged over seeds per victim (as the leaderboard)."""
    grouped: dict[int, list[CellRow]] = defaultdict(list)
    for row in rows:
        if row.victim < victims:
            grouped[row.victim].append(row)
    return {
        victim: {name: statistics.fmean(float(r.metrics[name]) for r in items) for name in SUMMARY_METRICS}
        for victim, items in sorted(grouped.items())
    }


def ceiling_summary(suite: SuiteConfig, rows: Sequence[CellRow], victims: int) -> dict[str, Any]:
    """The prior ceiling and the class-mean reference of ``suite`` over its first ``victims`` victims.

    Only rows of the suite's own ceiling setting count (another ``ceiling_steps`` is another ceiling). Each victim's
    value is its mean over seeds; the summary gives mean, median, min and max over victims, and the victims found.
    """
    wanted = {reference.name: reference for reference in suite.reference_attacks()}
    if CEILING not in wanted:
        raise ValueError(f"suite {suite.name!r} has no prior ceiling (it needs a prior and references.ceiling_steps)")
    summary: dict[str, Any] = {"suite": suite.name, "prior": suite.prior, "settings": dict(wanted[CEILING].spec)}
    for name, field in ((CEILING, "ceiling"), (CLASS_MEAN, "class_mean_reference")):
        if name not in wanted:
            continue
        key = wanted[name].key()
        used = [
            r for r in rows if r.kind == "reference" and r.defense is None and r.attack == key and r.victim < victims
        ]
        values = per_victim(used, victims)
        if values:
            summary[field] = {m: _stats([v[m] for v in values.values()]) for m in SUMMARY_METRICS}
            summary.setdefault("per_victim", {})[field] = {m: [v[m] for v in values.values()] for m in SUMMARY_METRICS}
            summary.setdefault("victims", sorted(values))
            summary.setdefault("provenance", {})[field] = _provenance(used)
    return summary


def _provenance(rows: Sequence[CellRow]) -> dict[str, list[Any]]:
    """The config hashes, code versions and seeds behind ``rows``: what a published number is traced to."""
    return {
        "config_hashes": sorted({r.config_hash for r in rows}),
        "code_versions": sorted({r.code_version for r in rows}),
        "seeds": sorted({r.seed for r in rows}),
    }


def ceiling_line(summary: Mapping[str, Any]) -> str:
    """One line: the ceiling's PSNR (mean, median, min, max) and SSIM beside the class-mean reference's."""
    if "ceiling" not in summary:
        return f"suite {summary['suite']!r}: no prior-ceiling rows in the store"
    ceiling = summary["ceiling"]
    line = (
        f"prior ceiling over {len(summary['victims'])} victims: PSNR {ceiling['psnr']['mean']:.2f} dB "
        f"(median {ceiling['psnr']['median']:.2f}, min {ceiling['psnr']['min']:.2f}, "
        f"max {ceiling['psnr']['max']:.2f}), SSIM {ceiling['ssim']['mean']:.3f}"
    )
    reference = summary.get("class_mean_reference")
    if reference is not None:
        line += f"; class-mean reference PSNR {reference['psnr']['mean']:.2f} dB, SSIM {reference['ssim']['mean']:.3f}"
    return line


# ----------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.references`` (an option's help ends with its default)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.references", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--suite", required=True, help="a shipped suite name or a YAML path (its prior and settings)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite field: dotted key, YAML value (e.g. victims.count=32); repeatable",
    )
    parser.add_argument("--victims", type=int, default=None, help="the first N victims (default: the suite's count)")
    parser.add_argument(
        "--store", default=None, help="results folder (default results/SUITE; with --compute results/SUITE-references)"
    )
    parser.add_argument("--compute", action="store_true", help="compute missing reference rows first")
    parser.add_argument(
        "--json",
        default=None,
        help="write the summary (and per-victim values) to this JSON file (default: not written)",
    )
    parser.add_argument(
        "--fits", default=None, help="PNG grid of up to 16 victims above their ceiling fits (default: not drawn)"
    )
    parser.add_argument(
        "--samples",
        default=None,
        help="PNG grid of prior samples: ten per class (a row each), 30 if unconditional (default: not drawn)",
    )
    return parser


def compute(suite_arg: str, overrides: Sequence[str], victims: int, store: Path) -> int:
    """Compute the reference rows of ``victims`` victims with ``benchmarks.run --references-only``; its status."""
    run_module = f"{__package__}.run"
    command = [sys.executable, "-m", run_module, "--suite", suite_arg, "--out", str(store), "--references-only"]
    for text in [*overrides, f"victims.count={victims}"]:
        command += ["--set", text]
    return subprocess.run([*command, "--no-tensorboard"], check=False).returncode


def write_fits(
    path: Path, rows: Sequence[CellRow], victim_rows: Sequence[VictimRow], key: Mapping[str, Any], seed: int
) -> None:
    """Victims (top row) above their ceiling fits of ``seed`` (bottom row), up to 16, from the stored images."""
    import torch
    from torchvision.utils import save_image

    fits = {r.victim: r.images for r in rows if r.kind == "reference" and r.attack == dict(key) and r.seed == seed}
    shown = [v for v in victim_rows if v.victim in fits][:16]
    if not shown:
        return
    top = torch.cat([torch.as_tensor(v.images) for v in shown])
    bottom = torch.cat([torch.as_tensor(fits[v.victim]) for v in shown])
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(torch.cat([top, bottom]), str(path), nrow=len(top), padding=1, pad_value=1.0)


def write_samples(path: Path, prior_name: str, seed: int = 0) -> None:
    """Prior samples, latents seeded with ``seed``: ten of each class, one row per class, for a class-conditional
    prior; three rows of ten for an unconditional one."""
    import torch
    from torchvision.utils import save_image

    from ggl.priors import load_prior

    prior = load_prior(prior_name)
    conditional = int(getattr(prior, "num_classes", 0) or 0) > 0
    with torch.no_grad():
        labels = torch.arange(prior.num_classes).repeat_interleave(10) if conditional else None
        count = len(labels) if labels is not None else 30
        samples = prior(prior.sample(count, torch.Generator().manual_seed(seed)), labels)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(samples, str(path), nrow=10, padding=1, pad_value=1.0)


def check_outputs(args: argparse.Namespace, suite: SuiteConfig) -> tuple[int, Path]:
    """The victim count and the store folder, every output path checked before anything is computed; ``ValueError``
    naming the option otherwise."""
    victims = args.victims if args.victims is not None else suite.victims.count
    if not 1 <= victims <= MAX_VICTIMS:
        raise ValueError(f"--victims must be from 1 to {MAX_VICTIMS:,}, got {victims}")
    default = f"{suite.name}-references" if args.compute else suite.name
    folder = Path(args.store) if args.store else Path("results") / default
    if args.compute:
        output_folder("--store", folder)
    for option in ("json", "fits", "samples"):
        if getattr(args, option):
            output_file(f"--{option}", getattr(args, option))
    names = {reference.name for reference in suite.reference_attacks()}
    if CEILING not in names:
        raise ValueError(f"suite {suite.name!r} has no prior ceiling (it needs a prior and references.ceiling_steps)")
    return victims, folder


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        suite = load_suite(args.suite, args.overrides)
        victims, folder = check_outputs(args, suite)
    except ValueError as error:  # SuiteError included
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.compute and (status := compute(args.suite, args.overrides, victims, folder)) != 0:
        return status
    from .store import StoreError, existing_store

    try:
        with existing_store(folder) as store:
            rows, victim_rows = store.cells(suite.name), store.victims(suite.name)
        summary = ceiling_summary(suite, rows, victims)
    except (StoreError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(ceiling_line(summary))
    if args.json:
        atomic_write(args.json, pretty_json(summary, indent=1))
    if args.fits:
        ceiling = next(r for r in suite.reference_attacks() if r.name == CEILING)
        shown = [v for v in victim_rows if v.victim < victims]
        write_fits(Path(args.fits), rows, shown, ceiling.key(), suite.seeds[0])
    if args.samples:
        try:
            write_samples(Path(args.samples), str(suite.prior))
        except ValueError as error:
            print(f"error: --samples: {error}", file=sys.stderr)
            return 2
    return 0 if "ceiling" in summary else 1


if __name__ == "__main__":
    sys.exit(main())
