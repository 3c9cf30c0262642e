"""GGL's Table 3 (Li et al., CVPR 2022, arXiv 2203.15696) beside this benchmark's numbers, on the paper's scales.

    python -m benchmarks.run --suite paper-celeba
    python -m benchmarks.table3 --store results/paper-celeba --suite paper-celeba --out docs/table3_celeba.md

The paper's cells (``benchmarks/paper_table3.json``) are MSE-I / PSNR / LPIPS-VGG / MSE-R for four defenses
(noise sigma 0.1, clipping bound 4, 90% sparsification, Soteria 80%) and five attacks (DLG, iDLG, IG, GI, GGL).
Its images are on the [-1, 1] scale: MSE-I is 4 times our ``mse`` (on [0, 1]) and its PSNR, ``-10 log10(MSE-I)``,
is 6.02 dB below our ``psnr``. Every printed PSNR there equals ``-10 log10`` of the printed mean MSE-I (to
rounding), so ours is computed the same way: from the mean MSE-I over the victims, not as a mean of per-image PSNR.

Per defense column the verdict asks: does GGL have the highest PSNR here exactly when it had it there, among the
attacks both tables have? The paper's own clipping column has IG ahead of GGL, so "holds" there means GGL loses.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from ggl.io import atomic_write, canonical_json

from .cli import HelpFormatter
from .config import output_file

PAPER_TABLE3 = Path(__file__).with_name("paper_table3.json")
GGL = "GGL"
"""GGL's key among the paper's attacks."""
DATASETS = {"celeba": "CelebA", "imagenet": "ImageNet"}
"""The paper's dataset for each of our datamodules that it used."""
MSE_FLOOR = 1e-10
"""PSNR uses ``max(MSE-I, 1e-10)``, as ``ggl.metrics.PSNR_MSE_FLOOR`` (kept here so no torch is imported)."""

Ours = dict[tuple[str, str], dict[str, Any]]
"""Our cells: ``(spec_json(defense spec), attack name) -> {mse_i, psnr, victims, attack, [lpips], [mse_r]}``."""


class AttackRow(Protocol):
    """What ``ours_from_rows`` reads of a results-store row (``benchmarks.store.CellRow``)."""

    @property
    def kind(self) -> str: ...

    @property
    def victim(self) -> int: ...

    @property
    def defense(self) -> dict[str, Any] | None: ...

    @property
    def attack(self) -> dict[str, Any]: ...

    @property
    def metrics(self) -> dict[str, float]: ...


def load_paper(path: str | Path = PAPER_TABLE3) -> dict[str, Any]:
    """The paper's Table 3 as plain data: ``source``, ``setting``, ``defenses``, ``attacks`` and ``results``."""
    return json.loads(Path(path).read_text(encoding="utf-8"))


def spec_json(spec: Mapping[str, Any]) -> str:
    """Canonical JSON of a defense spec with every number as a float, so ``bound: 4`` and ``bound: 4.0`` match."""
    return canonical_json(
        {k: float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v for k, v in spec.items()}
    )


def signed_unit_psnr(mse_i: float) -> float:
    """The paper's PSNR of an MSE on the [-1, 1] scale: ``-10 log10(MSE-I)``, the MSE floored at ``MSE_FLOOR``."""
    return -10 * math.log10(max(mse_i, MSE_FLOOR))


# ----------------------------------------------------------------------------------------------------------------
# Our cells from the results store


def _preference(attack: Mapping[str, Any]) -> tuple[bool, bool, str]:
    """Sort key of a variant of an attack: not adaptive first, then (GGL) CMA-ES first, then by spec."""
    rest = {k: v for k, v in attack.items() if k != "adaptive"}
    return bool(attack.get("adaptive", False)), attack.get("search", "cma") != "cma", canonical_json(rest)


def _cell(rows: list[AttackRow]) -> dict[str, Any]:
    """Means over one variant's rows; LPIPS and MSE-R only when every row has them (the same victims)."""
    mse_i = statistics.fmean(4 * float(row.metrics["mse"]) for row in rows)
    cell: dict[str, Any] = {
        "mse_i": mse_i,
        "psnr": signed_unit_psnr(mse_i),
        "victims": len({row.victim for row in rows}),
        "attack": dict(rows[0].attack),
    }
    for name in ("lpips", "mse_r"):
        if all(name in row.metrics for row in rows):
            cell[name] = statistics.fmean(float(row.metrics[name]) for row in rows)
    return cell


def ours_from_rows(rows: Iterable[AttackRow]) -> Ours:
    """Our cells from the store's attack rows, by defense spec (``spec_json``) and attack name.

    The paper's baselines are not adaptive, so of an attack's variants under one defense the non-adaptive rows are
    used when present, else the adaptive ones; then, for GGL, the CMA-ES search before the others. The cell
    records the chosen spec (``attack``). MSE-I is the mean over the rows (victims, and seeds when several) of
    4 x ``mse``; PSNR is ``signed_unit_psnr`` of that mean, as the paper's printed PSNR is of its mean MSE-I.
    """
    groups: dict[tuple[str, str], dict[tuple[bool, bool, str], list[AttackRow]]] = {}
    for row in rows:
        if row.kind == "attack" and row.defense is not None:
            key = (spec_json(row.defense), str(row.attack["name"]))
            groups.setdefault(key, {}).setdefault(_preference(row.attack), []).append(row)
    return {key: _cell(variants[min(variants)]) for key, variants in sorted(groups.items())}


# ----------------------------------------------------------------------------------------------------------------
# The comparison


def ggl_wins(cells: Mapping[str, Mapping[str, Any]]) -> bool | None:
    """True when GGL's PSNR is above every other attack's in ``cells`` (attack key -> cell); None without GGL
    or without another attack to beat."""
    if GGL not in cells or len(cells) < 2:
        return None
    return all(cells[GGL]["psnr"] > cell["psnr"] for attack, cell in cells.items() if attack != GGL)


def _verdict(cells: list[dict[str, Any]]) -> dict[str, Any]:
    """Who has the best PSNR among the attacks both tables have, there and here, and whether that agrees."""
    both = [cell for cell in cells if cell["ours"] is not None]
    paper_wins = ggl_wins({cell["attack"]: cell["paper"] for cell in both})
    ours_wins = ggl_wins({cell["attack"]: cell["ours"] for cell in both})
    if paper_wins is None:
        verdict = "n/a"
    else:
        verdict = "holds" if paper_wins == ours_wins else "does not hold"
    return {
        "compared": [cell["attack"] for cell in both],
        "paper_ggl_wins": paper_wins,
        "ours_ggl_wins": ours_wins,
        "paper_ggl_wins_all": ggl_wins({cell["attack"]: cell["paper"] for cell in cells}),
        "verdict": verdict,
    }


def table3_rows(paper: Mapping[str, Any], ours: Ours, dataset: str) -> list[dict[str, Any]]:
    """One dict per defense column of ``dataset``: ``defense``, ``label``, ``spec``, ``cells`` (per attack:
    ``attack``, ``implemented``, the ``paper`` cell and ``ours`` or None) and the verdict (``_verdict``)."""
    if dataset not in paper["results"]:
        raise ValueError(f"dataset must be one of {', '.join(paper['results'])}, got {dataset!r}")
    columns = []
    for defense in paper["defenses"]:
        published = paper["results"][dataset][defense["key"]]
        cells = [
            {
                "attack": attack["key"],
                "implemented": attack["name"] is not None,
                "paper": published[attack["key"]],
                "ours": ours.get((spec_json(defense["spec"]), attack["name"])) if attack["name"] else None,
            }
            for attack in paper["attacks"]
        ]
        column = {"defense": defense["key"], "label": defense["label"], "spec": defense["spec"], "cells": cells}
        columns.append({**column, **_verdict(cells)})
    return columns


def _format(cell: Mapping[str, Any]) -> str:
    """``MSE-I / PSNR / LPIPS / MSE-R``, a missing metric as ``-``."""
    parts = [f"{cell['mse_i']:.4f}", f"{cell['psnr']:.2f}"]
    parts += [f"{cell[name]:.{digits}f}" if name in cell else "-" for name, digits in (("lpips", 3), ("mse_r", 4))]
    return " / ".join(parts)


def _ours(cell: Mapping[str, Any]) -> tuple[str, str]:
    """Our cell and the variant it shows ("-" when the attack is not implemented here)."""
    if not cell["implemented"]:
        return "-", "not implemented here"
    if cell["ours"] is None:
        return "not run", ""
    ours = cell["ours"]
    attack = ours["attack"]
    variant = [f"search {attack['search']}"] if "search" in attack else []
    variant.append("adaptive" if attack.get("adaptive") else "not adaptive")
    return f"{_format(ours)} (n={ours['victims']})", ", ".join(variant)


def _yes_no(value: bool | None) -> str:
    return "n/a" if value is None else "yes" if value else "no"


def table3_markdown(paper: Mapping[str, Any], ours: Ours, dataset: str) -> str:
    """A Markdown page: every cell of the paper's ``dataset`` beside ours, then the verdict per defense column."""
    columns = table3_rows(paper, ours, dataset)
    source = paper["source"]
    lines = [
        f"# GGL's Table 3 ({dataset}) beside this benchmark",
        "",
        f"Paper: {source['paper']}, arXiv {source['arxiv']}, Table {source['table']}. Cells: MSE-I / PSNR (dB) / "
        "LPIPS / MSE-R. Both on the paper's scales: MSE-I is the pixel MSE on [-1, 1] (4 x the MSE on [0, 1]); "
        "PSNR is -10 log10 of the mean MSE-I, 6.02 dB below the usual PSNR on [0, 1]. The paper's LPIPS uses VGG, "
        "ours the backbone of the run; MSE-R compares penultimate-layer features. n: victims.",
        "",
        "| defense | attack | paper | here | our variant |",
        "|---|---|---|---|---|",
    ]
    for column in columns:
        for cell in column["cells"]:
            here, variant = _ours(cell)
            lines.append(f"| {column['label']} | {cell['attack']} | {_format(cell['paper'])} | {here} | {variant} |")
    lines += [
        "",
        "Does GGL have the best PSNR here exactly when it had it in the paper (among the attacks both tables have)?",
        "",
        "| defense | attacks compared | GGL best there | GGL best here | GGL best in the paper (all its attacks) | "
        "verdict |",
        "|---|---|---|---|---|---|",
    ]
    for column in columns:
        lines.append(
            f"| {column['label']} | {', '.join(column['compared']) or '-'} | {_yes_no(column['paper_ggl_wins'])} | "
            f"{_yes_no(column['ours_ggl_wins'])} | {_yes_no(column['paper_ggl_wins_all'])} | {column['verdict']} |"
        )
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------------
# Command line


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.table3`` (an option's help ends with its default)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.table3", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--store", required=True, help="results folder of the suite's run")
    parser.add_argument("--suite", required=True, help="suite name in the store")
    parser.add_argument("--dataset", default=None, help="the paper's dataset (default: from the suite's datamodule)")
    parser.add_argument("--out", required=True, help="write the Markdown page here")
    return parser


def suite_dataset(suite_meta: str | None, suite: str) -> str:
    """The paper's dataset for a suite as its run recorded it (``suite:NAME`` meta); ``ValueError`` otherwise."""
    datamodule = json.loads(suite_meta)["datamodule"]["name"] if suite_meta else None
    if datamodule not in DATASETS:
        known = "no record of the suite" if datamodule is None else f"datamodule {datamodule!r}"
        raise ValueError(f"cannot tell the paper's dataset for suite {suite!r} ({known}); give --dataset")
    return DATASETS[datamodule]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    paper = load_paper()
    try:  # the output path and the dataset are checked before the store is read
        out = output_file("--out", args.out)
        if args.dataset is not None and args.dataset not in paper["results"]:
            raise ValueError(f"--dataset must be one of {', '.join(paper['results'])}, got {args.dataset!r}")
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from .store import StoreError, existing_store

    try:
        with existing_store(args.store) as store:
            ours = ours_from_rows(store.cells(args.suite))
            if not ours:
                raise ValueError(f"no attack rows of suite {args.suite!r} in {args.store}")
            dataset = args.dataset or suite_dataset(store.get_meta(f"suite:{args.suite}"), args.suite)
    except (StoreError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    atomic_write(out, table3_markdown(paper, ours, dataset))
    return 0


if __name__ == "__main__":
    sys.exit(main())
