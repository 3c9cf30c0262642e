"""Do GGL's two claims hold on the embedded default? An experiment at equal evaluation budgets.

    python -m benchmarks.ggl_claims --out docs/ggl_claims.json --table docs/ggl_claims.md

Claim 1 (Li et al., CVPR 2022, arXiv 2203.15696): GGL with CMA-ES reconstructs better (MSE, SSIM) than
Inverting Gradients under Gaussian noise (sigma 0.01, 0.1) and 90% sparsification, adaptive and not.
Claim 2: GGL-CMA beats GGL-Adam and GGL-BO. Every cell stands beside the prior-only reference: the mean public
image of the inferred class (``EmbeddedFashionMNIST().class_means()``), which costs no search at all.

Setting: victims from the shipped Fashion-MNIST test slice (``victim_indices(N, seed)``), one image per update,
an untrained ``convnet`` victim (seeded), the embedded prior (trained on the train split), every attack given the
same number of objective evaluations (``--budget``; Inverting Gradients gets that many iterations). Labels are
inferred from the defended update. For noise defenses the attacker-side simulation is the identity, so adaptive
and non-adaptive runs are the same computation and are run once. Cells run in the order of ``CELLS`` (claim 1
first); results are written atomically after every run, and a rerun skips what is done, so a stopped run resumes.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

DEFENSES: dict[str, dict[str, Any]] = {
    "gaussian-0.01": {"name": "gaussian", "sigma": 0.01},
    "gaussian-0.1": {"name": "gaussian", "sigma": 0.1},
    "sparsification-0.9": {"name": "sparsification", "ratio": 0.9},
}
ATTACK_LABELS = {"ggl-cma": "GGL-CMA", "ig": "Inverting Gradients", "ggl-adam": "GGL-Adam", "ggl-bo": "GGL-BO"}
# (attack, defense, adaptive) in the order they run: claim 1, then claim 2.
CELLS: list[tuple[str, str, bool]] = [
    ("ggl-cma", "gaussian-0.01", False),
    ("ig", "gaussian-0.01", False),
    ("ggl-cma", "gaussian-0.1", False),
    ("ig", "gaussian-0.1", False),
    ("ggl-cma", "sparsification-0.9", False),
    ("ig", "sparsification-0.9", False),
    ("ggl-cma", "sparsification-0.9", True),
    ("ig", "sparsification-0.9", True),
    ("ggl-adam", "gaussian-0.01", False),
    ("ggl-bo", "gaussian-0.01", False),
    ("ggl-adam", "sparsification-0.9", True),
    ("ggl-bo", "sparsification-0.9", True),
    ("ggl-adam", "gaussian-0.1", False),
    ("ggl-bo", "gaussian-0.1", False),
]
METRICS = ("mse", "psnr", "ssim")


def cell_key(attack: str, defense: str, adaptive: bool) -> str:
    return f"{attack}|{defense}|{'adaptive' if adaptive else 'plain'}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.ggl_claims",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--out", default="docs/ggl_claims.json", help="results JSON (resumed when it exists)")
    parser.add_argument("--table", default="docs/ggl_claims.md", help="Markdown tables written from the results")
    parser.add_argument("--prior", default="fashion-mnist-wgan", help="prior name or checkpoint path")
    parser.add_argument("--victim", default="convnet", help="victim architecture (make_victim name)")
    parser.add_argument("--victims", type=int, default=8, help="number of victims from the test slice")
    parser.add_argument("--victim-seed", type=int, default=0, help="seed of victim_indices")
    parser.add_argument("--budget", type=int, default=1000, help="objective evaluations per attack")
    parser.add_argument("--population", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0, help="seed of victim model, defenses and attacks")
    parser.add_argument("--cells", default=None, help="comma list of attack|defense|plain/adaptive keys to run")
    parser.add_argument("--report-only", nargs="*", default=None, help="merge these result files into --table")
    return parser


def make_attack_for(attack: str, adaptive: bool, args: argparse.Namespace) -> Any:
    from ggl.attacks import make_attack

    if attack == "ig":
        return make_attack("inverting_gradients", iterations=args.budget, adaptive=adaptive, seed=args.seed)
    search = {"ggl-cma": "cma", "ggl-adam": "adam", "ggl-bo": "bo"}[attack]
    return make_attack(
        "ggl",
        prior=args.prior,
        search=search,
        budget=args.budget,
        population=args.population,
        adaptive=adaptive,
        seed=args.seed,
    )


def write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(data, indent=1, sort_keys=True) + "\n")
    os.replace(partial, path)


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from ggl.attacks import AttackTarget
    from ggl.data import EmbeddedFashionMNIST
    from ggl.defenses import make_defense
    from ggl.fl import infer_labels, make_victim, shared_update
    from ggl.metrics import reconstruction_metrics

    out = Path(args.out)
    results: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    results.setdefault("runs", {})
    results["config"] = {k: v for k, v in vars(args).items() if k not in ("report_only", "cells")}
    datamodule = EmbeddedFashionMNIST()
    datamodule.setup("test")
    norm = datamodule.normalization
    indices = datamodule.victim_indices(args.victims, seed=args.victim_seed)
    images, labels = datamodule.victim_batch(indices)
    class_means = datamodule.class_means()
    model = make_victim(args.victim, num_classes=10, image_shape=(1, 32, 32), seed=args.seed)
    wanted = set(args.cells.split(",")) if args.cells else None
    cells = [c for c in CELLS if wanted is None or cell_key(*c) in wanted]

    def defended(defense_key: str, victim: int) -> tuple[Any, Any]:
        defense = make_defense(**DEFENSES[defense_key])
        update = shared_update(model, norm.normalize(images[victim : victim + 1]), labels[victim : victim + 1])
        return defense, defense(update, generator=torch.Generator().manual_seed(args.seed * 1000 + victim))

    for defense_key in DEFENSES:  # the prior-only reference: mean public image of the inferred class
        key = cell_key("reference", defense_key, False)
        for victim in range(args.victims):
            run_key = f"{key}|{indices[victim]}"
            if run_key in results["runs"]:
                continue
            _, update = defended(defense_key, victim)
            label = infer_labels(update, model)
            metrics = reconstruction_metrics(class_means[label], images[victim : victim + 1], metrics=METRICS)
            results["runs"][run_key] = {
                "metrics": {k: float(metrics[k]) for k in METRICS},
                "label_correct": bool(label[0] == labels[victim]),
            }
    write_json(out, results)
    for attack, defense_key, adaptive in cells:
        key = cell_key(attack, defense_key, adaptive)
        for victim in range(args.victims):
            run_key = f"{key}|{indices[victim]}"
            if run_key in results["runs"]:
                continue
            defense, update = defended(defense_key, victim)
            target = AttackTarget(model, update, defense=defense, image_shape=(1, 32, 32), normalization=norm)
            started = time.perf_counter()
            reconstruction = make_attack_for(attack, adaptive, args).reconstruct(target)
            metrics = reconstruction_metrics(reconstruction.images, images[victim : victim + 1], metrics=METRICS)
            results["runs"][run_key] = {
                "metrics": {k: float(metrics[k]) for k in METRICS},
                "evaluations": reconstruction.evaluations,
                "seconds": time.perf_counter() - started,
                "loss": reconstruction.loss,
                "label_correct": bool(reconstruction.labels[0] == labels[victim]),
            }
            write_json(out, results)
            print(
                f"{run_key}: psnr {metrics['psnr']:.2f} ssim {metrics['ssim']:.3f} "
                f"({time.perf_counter() - started:.0f} s)",
                flush=True,
            )
    return results


def _summary(runs: dict[str, Any], key: str) -> dict[str, Any] | None:
    found = {k.rsplit("|", 1)[1]: v for k, v in runs.items() if k.rsplit("|", 1)[0] == key}
    if not found:
        return None
    return {"victims": found, **{m: statistics.fmean(v["metrics"][m] for v in found.values()) for m in METRICS}}


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> str:
    """Victims where a beats b on ``metric`` (lower MSE, higher SSIM/PSNR), over victims both have."""
    if a is None or b is None:
        return "-"
    common = sorted(set(a["victims"]) & set(b["victims"]))
    sign = -1 if metric == "mse" else 1
    wins = sum(sign * (a["victims"][v]["metrics"][metric] - b["victims"][v]["metrics"][metric]) > 0 for v in common)
    if not common:
        return "-"
    mean_a = statistics.fmean(a["victims"][v]["metrics"][metric] for v in common)
    mean_b = statistics.fmean(b["victims"][v]["metrics"][metric] for v in common)
    digits = 4 if metric == "mse" else 3
    return f"{wins}/{len(common)} ({mean_a:.{digits}f} vs {mean_b:.{digits}f})"


def _fmt(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "not run"
    return f"{summary['mse']:.4f} / {summary['ssim']:.3f} / {summary['psnr']:.1f} (n={len(summary['victims'])})"


def table(results: dict[str, Any]) -> str:
    """Markdown tables of both claims: mean MSE / SSIM / PSNR per cell beside the reference, and paired wins."""
    runs = results["runs"]
    config = results.get("config", {})
    lines = [
        f"Setting: {config.get('victims')} victims (test slice, victim_indices seed {config.get('victim_seed')}), "
        f"untrained `{config.get('victim')}` (seed {config.get('seed')}), prior `{config.get('prior')}`, "
        f"budget {config.get('budget')} evaluations per attack (population {config.get('population')}). "
        "Cells: mean MSE / SSIM / PSNR (dB) over the victims the cell finished (n); wins = victims where the first "
        "attack is better on that metric, with both attacks' means over those common victims in brackets.",
        "",
        "### Claim 1: GGL-CMA vs Inverting Gradients",
        "",
        "| defense | adaptive | prior-only reference | GGL-CMA | Inverting Gradients | GGL-CMA wins (MSE, SSIM) |",
        "|---|---|---|---|---|---|",
    ]
    for defense_key in DEFENSES:
        reference = _summary(runs, cell_key("reference", defense_key, False))
        for adaptive in (False, True):
            noise = defense_key.startswith("gaussian")
            source = False if noise else adaptive
            ggl = _summary(runs, cell_key("ggl-cma", defense_key, source))
            ig = _summary(runs, cell_key("ig", defense_key, source))
            note = " (identity simulation: same as not adaptive)" if noise and adaptive else ""
            lines.append(
                f"| {defense_key} | {'yes' if adaptive else 'no'}{note} | {_fmt(reference)} | {_fmt(ggl)} | "
                f"{_fmt(ig)} | {_paired(ggl, ig, 'mse')}, {_paired(ggl, ig, 'ssim')} |"
            )
    lines += [
        "",
        "### Claim 2: GGL-CMA vs GGL-Adam vs GGL-BO",
        "",
        "| defense | adaptive | prior-only reference | GGL-CMA | GGL-Adam | GGL-BO | CMA wins vs Adam (MSE) | "
        "CMA wins vs BO (MSE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for defense_key, adaptive in (("gaussian-0.01", False), ("gaussian-0.1", False), ("sparsification-0.9", True)):
        reference = _summary(runs, cell_key("reference", defense_key, False))
        cma = _summary(runs, cell_key("ggl-cma", defense_key, adaptive))
        adam = _summary(runs, cell_key("ggl-adam", defense_key, adaptive))
        bo = _summary(runs, cell_key("ggl-bo", defense_key, adaptive))
        lines.append(
            f"| {defense_key} | {'yes' if adaptive else 'no'} | {_fmt(reference)} | {_fmt(cma)} | "
            f"{_fmt(adam)} | {_fmt(bo)} | {_paired(cma, adam, 'mse')} | {_paired(cma, bo, 'mse')} |"
        )
    seconds = [v["seconds"] for v in runs.values() if "seconds" in v]
    by_attack: dict[str, list[float]] = {}
    for key, value in runs.items():
        if "seconds" in value:
            by_attack.setdefault(key.split("|")[0], []).append(value["seconds"])
    timing = ", ".join(f"{ATTACK_LABELS[a]} {statistics.fmean(s):.0f} s" for a, s in sorted(by_attack.items()))
    if seconds:
        lines += ["", f"Mean wall time per reconstruction (shared 2-core CPU): {timing}."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.filterwarnings("ignore", message=".*LPIPS.*")
    if args.report_only is not None:
        merged: dict[str, Any] = {"runs": {}}
        for name in args.report_only or [args.out]:
            data = json.loads(Path(name).read_text())
            merged["runs"].update(data["runs"])
            merged.setdefault("config", data.get("config", {}))
        Path(args.table).write_text(table(merged))
        return 0
    if args.victims < 1 or args.budget < 1 or args.population < 1:
        print("error: --victims, --budget and --population must be positive", file=sys.stderr)
        return 2
    results = run(args)
    Path(args.table).parent.mkdir(parents=True, exist_ok=True)
    Path(args.table).write_text(table(results))
    return 0 if all(math.isfinite(v["metrics"]["mse"]) for v in results["runs"].values()) else 1


if __name__ == "__main__":
    sys.exit(main())
