"""The measurements of ``python -m benchmarks.perf`` as rows: throughput per engine against the serial loop, and
end-to-end GGL-CMA runs. Imported by the command line only after its arguments are checked (torch is slow to load).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ggl.attacks.batched import choose_engine

from .measure import (
    LOSSES_CHECKED,
    Setting,
    batched_losses,
    build_setting,
    candidate_flops,
    latents,
    peak_memory_mib,
    reference_rate,
    serial_losses,
    timings,
)


def _relative_difference(losses: torch.Tensor, reference: torch.Tensor) -> float:
    return float((losses - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def measure_setting(setting: Setting, population: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for one victim and population: serial first, then every batched engine."""
    device = setting.device
    z = latents(setting, population, args.seed)
    serial_count = min(population, args.serial_candidates)
    z_serial = z[: serial_count * setting.batch]
    serial_objective = setting.objective("serial")
    checked = min(population, LOSSES_CHECKED)
    reference = serial_losses(setting, serial_objective, z[: checked * setting.batch])
    serial_seconds = statistics.median(
        timings(lambda: serial_losses(setting, serial_objective, z_serial), device, args.repeats, args.max_seconds)
    )
    serial_rate = serial_count / serial_seconds
    serial_memory, method = peak_memory_mib(lambda: serial_losses(setting, serial_objective, z_serial), device)
    flops = candidate_flops(setting)
    reference_flops_per_s, _ = reference_rate(setting, population * setting.batch, args.repeats, args.max_seconds)
    limit_rate = reference_flops_per_s / flops
    common = {
        "victim": setting.victim,
        "image_size": setting.image_size,
        "channels": setting.channels,
        "batch": setting.batch,
        "population": population,
        "device": str(device),
        "auto_engine": choose_engine(setting.model),
        "serial_candidates_per_s": serial_rate,
        "flops_per_candidate": flops,
        "reference_flops_per_s": reference_flops_per_s,
        "limit_candidates_per_s": limit_rate,
        "memory_method": method,
        "serial_losses": reference.tolist(),
    }
    rows = [
        {
            **common,
            "measurement": "throughput",
            "engine": "serial",
            "candidates_per_s": serial_rate,
            "speedup": 1.0,
            "limit_share": serial_rate / limit_rate,
            "peak_memory_mib": serial_memory,
            "seconds_median": serial_seconds,
            "candidates_timed": serial_count,
            "losses": reference.tolist(),
            "loss_max_relative_difference": 0.0,
        }
    ]
    for engine in args.engine_names:
        rows.append(engine_row(setting, engine, z, reference, serial_rate, limit_rate, common, args))
    return rows


def engine_row(
    setting: Setting,
    engine: str,
    z: torch.Tensor,
    reference: torch.Tensor,
    serial_rate: float,
    limit_rate: float,
    common: dict[str, Any],
    args: argparse.Namespace,
) -> dict[str, Any]:
    """The throughput row of one batched engine, its losses checked against the serial ``reference``."""
    population = common["population"]
    checked = reference.numel()
    objective = setting.objective(engine, args.chunk_size)
    losses = batched_losses(setting, objective, z)
    seconds = statistics.median(
        timings(lambda: batched_losses(setting, objective, z), setting.device, args.repeats, args.max_seconds)
    )
    memory, _ = peak_memory_mib(lambda: batched_losses(setting, objective, z), setting.device)
    rate = population / seconds
    return {
        **common,
        "measurement": "throughput",
        "engine": engine if engine != "auto" else f"auto:{objective.engine_name}",
        "candidates_per_s": rate,
        "speedup": rate / serial_rate,
        "limit_share": rate / limit_rate,
        "peak_memory_mib": memory,
        "seconds_median": seconds,
        "candidates_timed": population,
        "losses": losses[:checked].tolist(),
        "loss_max_relative_difference": _relative_difference(losses[:checked], reference),
    }


def cma_reconstruction(
    setting: Setting, population: int, budget: int, engine: str, seed: int
) -> tuple[float, float, int]:
    """One GGL-CMA run over the generator's latent: (seconds, best loss, evaluations).

    nevergrad's ``ParametrizedCMA(popsize=P, elitist=False)`` with ``num_workers=P``: ask P, score them (one
    batched call, or one candidate at a time for ``serial``), tell P.
    """
    import nevergrad as ng

    parametrization = ng.p.Array(shape=(setting.generator.latent_dim,))
    parametrization.random_state = np.random.RandomState(seed)
    optimizer = ng.optimizers.ParametrizedCMA(popsize=population, elitist=False)(
        parametrization=parametrization, budget=budget, num_workers=population
    )
    objective = setting.objective(engine)
    score = serial_losses if engine == "serial" else batched_losses
    score(setting, objective, latents(setting, population, seed))  # warm-up, as in the throughput timings
    best, evaluations = float("inf"), 0
    began = time.perf_counter()
    while evaluations < budget:
        asked = [optimizer.ask() for _ in range(min(population, budget - evaluations))]
        z = torch.as_tensor(np.stack([candidate.value for candidate in asked]), dtype=torch.float32)
        z = z.repeat_interleave(setting.batch, dim=0).to(setting.device)
        losses = score(setting, objective, z).tolist()
        for candidate, loss in zip(asked, losses):
            optimizer.tell(candidate, loss)
        best = min(best, *losses)
        evaluations += len(asked)
    return time.perf_counter() - began, best, evaluations


def end_to_end_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    setting = build_setting(args.e2e_victim, args.image_size, args.channels, args.batch, args.torch_device, args.seed)
    limit_rate = reference_rate(setting, args.e2e_population * setting.batch, 1, args.max_seconds)[0]
    limit_rate /= candidate_flops(setting)
    serial_seconds, serial_best, _ = cma_reconstruction(
        setting, args.e2e_population, args.e2e_budget, "serial", args.seed
    )
    rows = []
    for engine in ["serial", *args.engine_names]:
        if engine == "serial":
            seconds, best, evaluations = serial_seconds, serial_best, args.e2e_budget
        else:
            seconds, best, evaluations = cma_reconstruction(
                setting, args.e2e_population, args.e2e_budget, engine, args.seed
            )
        rate = evaluations / seconds
        rows.append(
            {
                "measurement": "end_to_end",
                "victim": setting.victim,
                "image_size": setting.image_size,
                "channels": setting.channels,
                "batch": setting.batch,
                "population": args.e2e_population,
                "device": str(setting.device),
                "engine": engine,
                "budget": evaluations,
                "seconds": seconds,
                "serial_seconds": serial_seconds,
                "best_loss": best,
                "serial_best_loss": serial_best,
                "candidates_per_s": rate,
                "serial_candidates_per_s": evaluations / serial_seconds,
                "speedup": serial_seconds / seconds,
                "limit_share": rate / limit_rate,
            }
        )
    return rows


def markdown_table(rows: Sequence[dict[str, Any]], header: str) -> str:
    """The rows as Markdown: throughput table, then the end-to-end table."""
    lines = [header, ""]
    throughput = [row for row in rows if row["measurement"] == "throughput"]
    if throughput:
        lines += [
            "| victim | size | P | engine | cand/s | serial cand/s | speedup | FLOP-limit cand/s | limit share "
            "| peak MiB | max rel. loss diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for row in throughput:
            lines.append(
                f"| {row['victim']} | {row['channels']}x{row['image_size']} | {row['population']} | {row['engine']} "
                f"| {row['candidates_per_s']:.1f} | {row['serial_candidates_per_s']:.1f} | {row['speedup']:.2f} "
                f"| {row['limit_candidates_per_s']:.1f} | {row['limit_share']:.0%} | {row['peak_memory_mib']:.0f} "
                f"| {row['loss_max_relative_difference']:.1e} |"
            )
    e2e = [row for row in rows if row["measurement"] == "end_to_end"]
    if e2e:
        lines += [
            "",
            "| end-to-end GGL-CMA | P | budget | engine | seconds | serial seconds | speedup | best loss |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in e2e:
            lines.append(
                f"| {row['victim']} {row['channels']}x{row['image_size']} | {row['population']} | {row['budget']} "
                f"| {row['engine']} | {row['seconds']:.2f} | {row['serial_seconds']:.2f} | {row['speedup']:.2f} "
                f"| {row['best_loss']:.4g} |"
            )
    return "\n".join(lines) + "\n"


def machine_description(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    model = platform.processor() or "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, {torch.get_num_threads()} torch threads"


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    for victim in args.victims:
        setting = build_setting(victim, args.image_size, args.channels, args.batch, args.torch_device, args.seed)
        for population in args.populations:
            for row in measure_setting(setting, population, args):
                rows.append(row)
                print(
                    f"{row['victim']:>9} P={population:<4} {row['engine']:>11}: {row['candidates_per_s']:8.1f} cand/s "
                    f"x{row['speedup']:5.2f} serial, {row['limit_share']:5.0%} of FLOP limit",
                    file=sys.stderr,
                    flush=True,
                )
    if args.e2e_budget:
        rows += end_to_end_rows(args)
    return rows
