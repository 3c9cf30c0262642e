"""Do GGL's two claims hold on the embedded default? A query over the results store of the ``ggl-claims`` suite.

    python -m benchmarks.run --suite ggl-claims                      # the experiment (benchmarks/suites/)
    python -m benchmarks.claims --store results/ggl-claims --table docs/ggl_claims.md --json docs/ggl_claims.json

Claim 1 (Li et al., CVPR 2022, arXiv 2203.15696): GGL with CMA-ES reconstructs better (MSE, SSIM) than
Inverting Gradients under Gaussian noise (sigma 0.01, 0.1) and 90% sparsification, adaptive and not.
Claim 2: GGL-CMA beats GGL-Adam and GGL-BO. Every cell stands beside the prior-only reference: the mean public
image of the inferred class, which costs no search at all.

The store's rows become *runs* keyed ``attack|defense|plain-or-adaptive|dataset index`` (``ggl-cma``, ``ig``,
``ggl-adam``, ``ggl-bo``; ``gaussian-0.01``, ``sparsification-0.9``; the class-mean reference as ``reference``
under every defense), and the tables compare runs over the victims both cells finished. For noise defenses the
attacker-side simulation is the identity, so the adaptive row shows the adaptive cells when stored, else the
non-adaptive ones.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ggl.io import atomic_write, pretty_json

from .cli import HelpFormatter
from .config import MAX_SEED, REFERENCE_PREFIX, format_value, output_file

if TYPE_CHECKING:
    from .store import CellRow, ResultsStore, VictimRow

SUITE = "ggl-claims"
HEADER = """# GGL's claims at equal evaluation budgets

How these numbers are made: the grid is the `ggl-claims` suite (`benchmarks/suites/ggl-claims.yaml`) run through
the harness, and the tables are a query over its results store:

```bash
python -m benchmarks.run --suite ggl-claims          # about an hour on 2 CPU cores; resumes when stopped
python -m benchmarks.claims --store results/ggl-claims --table docs/ggl_claims.md --json docs/ggl_claims.json
```

"""
DEFENSES = ("gaussian-0.01", "gaussian-0.1", "sparsification-0.9")
ATTACK_LABELS = {"ggl-cma": "GGL-CMA", "ig": "Inverting Gradients", "ggl-adam": "GGL-Adam", "ggl-bo": "GGL-BO"}
CLAIM2 = (("gaussian-0.01", False), ("gaussian-0.1", False), ("sparsification-0.9", True))
METRICS = ("mse", "psnr", "ssim")


def cell_key(attack: str, defense: str, adaptive: bool) -> str:
    return f"{attack}|{defense}|{'adaptive' if adaptive else 'plain'}"


def defense_key(spec: Mapping[str, Any]) -> str:
    """``gaussian-0.01`` for ``{name: gaussian, sigma: 0.01}``: the name, then each parameter value by name."""
    return "-".join([str(spec["name"]), *(format_value(v) for k, v in sorted(spec.items()) if k != "name")])


def attack_key(spec: Mapping[str, Any]) -> str:
    """``ig`` for Inverting Gradients, ``ggl-SEARCH`` for GGL, the registered name otherwise."""
    if spec["name"] == "inverting_gradients":
        return "ig"
    if spec["name"] == "ggl":
        return f"ggl-{spec.get('search', 'cma')}"
    return str(spec["name"])


def _run(row: CellRow, truth: VictimRow) -> dict[str, Any]:
    run: dict[str, Any] = {
        "metrics": {name: float(row.metrics[name]) for name in METRICS},
        "label_correct": row.labels == truth.labels,
    }
    if row.kind == "attack":
        run.update(evaluations=row.evaluations, seconds=row.seconds)
    return run


def runs_from_rows(rows: Sequence[CellRow], victims: Sequence[VictimRow], seed: int = 0) -> dict[str, dict[str, Any]]:
    """The runs of one seed: attack rows under their keys, class-mean reference rows under every defense."""
    truth = {v.victim: v for v in victims}
    index = {v.victim: "+".join(str(i) for i in v.indices) for v in victims}
    chosen = [r for r in rows if r.seed == seed and r.victim in truth]
    defenses = sorted({defense_key(r.defense) for r in chosen if r.defense is not None})
    runs: dict[str, dict[str, Any]] = {}
    for row in chosen:
        if row.kind == "attack" and row.defense is not None:
            key = cell_key(attack_key(row.attack), defense_key(row.defense), bool(row.attack["adaptive"]))
            runs[f"{key}|{index[row.victim]}"] = _run(row, truth[row.victim])
        elif row.defense is None and row.attack["name"] == REFERENCE_PREFIX + "class-mean":
            for defense in defenses:
                runs[f"{cell_key('reference', defense, False)}|{index[row.victim]}"] = _run(row, truth[row.victim])
    return dict(sorted(runs.items()))


def setting(suite_config: Mapping[str, Any]) -> dict[str, Any]:
    """The setting line's values from a resolved suite (``SuiteConfig.to_dict()``, as the store keeps it)."""
    specs = [a["spec"] for a in suite_config["attacks"]]
    cma: Mapping[str, Any] = next((spec for spec in specs if attack_key(spec) == "ggl-cma"), {})
    return {
        "victims": suite_config["victims"]["count"],
        "victim_seed": suite_config["victims"]["seed"],
        "victim": suite_config["model"]["name"],
        "seed": suite_config["model"]["seed"],
        "prior": suite_config["prior"],
        "budget": cma.get("budget"),
        "population": cma.get("population"),
    }


def results_from_store(store: ResultsStore, suite: str = SUITE, seed: int = 0) -> dict[str, Any]:
    """``{"config": setting, "runs": runs}`` of ``suite`` in ``store`` (the suite as its run recorded it)."""
    from .config import load_suite

    meta = store.get_meta(f"suite:{suite}")
    suite_config = json.loads(meta) if meta else load_suite(suite).to_dict()
    rows = store.cells(suite)
    config = setting(suite_config)
    config["config_hashes"] = sorted({row.config_hash for row in rows})
    config["code_versions"] = sorted({row.code_version for row in rows})
    return {"config": config, "runs": runs_from_rows(rows, store.victims(suite), seed)}


# ----------------------------------------------------------------------------------------------------------------
# The tables


def _summary(runs: Mapping[str, Any], key: str) -> dict[str, Any] | None:
    found = {k.rsplit("|", 1)[1]: v for k, v in runs.items() if k.rsplit("|", 1)[0] == key}
    if not found:
        return None
    return {"victims": found, **{m: statistics.fmean(v["metrics"][m] for v in found.values()) for m in METRICS}}


def _paired(a: dict[str, Any] | None, b: dict[str, Any] | None, metric: str) -> str:
    """Victims where a beats b on ``metric`` (lower MSE, higher SSIM/PSNR), over victims both have."""
    if a is None or b is None:
        return "-"
    common = sorted(set(a["victims"]) & set(b["victims"]))
    if not common:
        return "-"
    sign = -1 if metric == "mse" else 1
    wins = sum(sign * (a["victims"][v]["metrics"][metric] - b["victims"][v]["metrics"][metric]) > 0 for v in common)
    mean_a = statistics.fmean(a["victims"][v]["metrics"][metric] for v in common)
    mean_b = statistics.fmean(b["victims"][v]["metrics"][metric] for v in common)
    digits = 4 if metric == "mse" else 3
    return f"{wins}/{len(common)} ({mean_a:.{digits}f} vs {mean_b:.{digits}f})"


def _fmt(summary: dict[str, Any] | None) -> str:
    if summary is None:
        return "not run"
    return f"{summary['mse']:.4f} / {summary['ssim']:.3f} / {summary['psnr']:.1f} (n={len(summary['victims'])})"


def _setting_line(config: Mapping[str, Any]) -> str:
    return (
        f"Setting: {config.get('victims')} victims (test slice, victim_indices seed {config.get('victim_seed')}), "
        f"untrained `{config.get('victim')}` (seed {config.get('seed')}), prior `{config.get('prior')}`, "
        f"budget {config.get('budget')} evaluations per attack (population {config.get('population')}). "
        "Cells: mean MSE / SSIM / PSNR (dB) over the victims the cell finished (n); wins = victims where the first "
        "attack is better on that metric, with both attacks' means over those common victims in brackets."
        + _provenance_line(config)
    )


def _provenance_line(config: Mapping[str, Any]) -> str:
    """Where the rows came from (config hash and code version), when the results record it."""
    hashes, versions = config.get("config_hashes"), config.get("code_versions")
    if not hashes or not versions:
        return ""
    return f" Rows: config hash {', '.join(hashes)}, code {', '.join(versions)}."


def _claim1_cell(runs: Mapping[str, Any], attack: str, defense: str, adaptive: bool) -> dict[str, Any] | None:
    """The cell's runs; an adaptive cell under noise (identity simulation) falls back to the non-adaptive runs."""
    found = _summary(runs, cell_key(attack, defense, adaptive))
    if found is None and adaptive and defense.startswith("gaussian"):
        return _summary(runs, cell_key(attack, defense, False))
    return found


def _claim1(runs: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Claim 1: GGL-CMA vs Inverting Gradients",
        "",
        "| defense | adaptive | prior-only reference | GGL-CMA | Inverting Gradients | GGL-CMA wins (MSE, SSIM) |",
        "|---|---|---|---|---|---|",
    ]
    for defense in DEFENSES:
        reference = _summary(runs, cell_key("reference", defense, False))
        for adaptive in (False, True):
            noise = defense.startswith("gaussian")
            ggl, ig = (_claim1_cell(runs, attack, defense, adaptive) for attack in ("ggl-cma", "ig"))
            note = " (identity simulation: same as not adaptive)" if noise and adaptive else ""
            lines.append(
                f"| {defense} | {'yes' if adaptive else 'no'}{note} | {_fmt(reference)} | {_fmt(ggl)} | "
                f"{_fmt(ig)} | {_paired(ggl, ig, 'mse')}, {_paired(ggl, ig, 'ssim')} |"
            )
    return lines


def _claim2(runs: Mapping[str, Any]) -> list[str]:
    lines = [
        "### Claim 2: GGL-CMA vs GGL-Adam vs GGL-BO",
        "",
        "| defense | adaptive | prior-only reference | GGL-CMA | GGL-Adam | GGL-BO | CMA wins vs Adam (MSE) | "
        "CMA wins vs BO (MSE) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for defense, adaptive in CLAIM2:
        reference = _summary(runs, cell_key("reference", defense, False))
        cma = _summary(runs, cell_key("ggl-cma", defense, adaptive))
        adam = _summary(runs, cell_key("ggl-adam", defense, adaptive))
        bo = _summary(runs, cell_key("ggl-bo", defense, adaptive))
        lines.append(
            f"| {defense} | {'yes' if adaptive else 'no'} | {_fmt(reference)} | {_fmt(cma)} | "
            f"{_fmt(adam)} | {_fmt(bo)} | {_paired(cma, adam, 'mse')} | {_paired(cma, bo, 'mse')} |"
        )
    return lines


def table(results: Mapping[str, Any]) -> str:
    """Markdown tables of both claims: mean MSE / SSIM / PSNR per cell beside the reference, and paired wins."""
    runs = results["runs"]
    lines = [_setting_line(results.get("config", {})), "", *_claim1(runs), "", *_claim2(runs)]
    by_attack: dict[str, list[float]] = {}
    for key, value in runs.items():
        if "seconds" in value:
            by_attack.setdefault(key.split("|")[0], []).append(value["seconds"])
    if by_attack:
        timing = ", ".join(f"{ATTACK_LABELS[a]} {statistics.fmean(s):.0f} s" for a, s in sorted(by_attack.items()))
        lines += ["", f"Mean wall time per reconstruction (shared 2-core CPU): {timing}."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.claims`` (an option's help ends with its default)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.claims", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--store", default=f"results/{SUITE}", help="results folder of the suite's run")
    parser.add_argument("--suite", default=SUITE, help="suite name in the store")
    parser.add_argument("--seed", type=int, default=0, help="which attack seed's rows to read")
    parser.add_argument("--table", default=None, help="write a Markdown page with the tables here (default: print)")
    parser.add_argument("--json", default=None, help="write the setting and every run here (default: not written)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:  # every output path is checked before the store is read
        if not 0 <= args.seed <= MAX_SEED:
            raise ValueError(f"--seed must be an integer from 0 to 2**63 - 1, got {args.seed}")
        for option in ("table", "json"):
            if getattr(args, option):
                output_file(f"--{option}", getattr(args, option))
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .store import StoreError, existing_store

    try:
        with existing_store(args.store) as store:
            results = results_from_store(store, args.suite, args.seed)
    except StoreError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if not results["runs"]:
        print(f"error: no rows of suite {args.suite!r} (seed {args.seed}) in {args.store}", file=sys.stderr)
        return 2
    text = table(results)
    if args.table:
        atomic_write(Path(args.table), HEADER + text)
    else:
        print(text, end="")
    if args.json:
        atomic_write(Path(args.json), pretty_json(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
