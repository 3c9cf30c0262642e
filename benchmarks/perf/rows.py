"""The measurements of ``python -m benchmarks.perf`` as rows: throughput per engine against the serial loop, and
end-to-end GGL-CMA runs. Imported by the command line only after its arguments are checked (torch is slow to load).
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import math
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import torch

from ggl.attacks import AttackTarget, GradientInversionAttack, Reconstruction, make_attack
from ggl.attacks.batched import choose_engine
from ggl.attacks.search import make_search
from ggl.defenses import make_defense
from ggl.fl import shared_update

from .measure import (
    LOSSES_CHECKED,
    Setting,
    batched_losses,
    build_setting,
    candidate_flops,
    latents,
    matmul_peak_rate,
    peak_memory,
    reference_rate,
    serial_losses,
    synchronize,
    timings,
)

COMPILABLE = ("vmap",)
"""Engines ``--compile`` times compiled: ``torch.compile`` traces ``vmap(grad(...))``, but not the hooks engines'
``autograd.grad`` with respect to outputs their forward hooks captured (it fails while tracing, torch 2.14)."""


def _relative_difference(losses: torch.Tensor, reference: torch.Tensor) -> float:
    return float((losses - reference).abs().max() / reference.abs().max().clamp_min(1e-30))


def measure_setting(setting: Setting, population: int, args: argparse.Namespace) -> list[dict[str, Any]]:
    """Rows for one victim and population: serial first, then every batched engine."""
    device = setting.device
    z = latents(setting, population, args.seed)
    serial_count = min(population, args.serial_candidates)
    z_serial = z[: serial_count * setting.batch]
    serial_objective = setting.objective("serial")
    serial_call = functools.partial(serial_losses, setting, serial_objective, z_serial)
    serial_losses_timed, serial_memory, method = peak_memory(serial_call, device)
    reference = serial_losses_timed[: min(population, LOSSES_CHECKED)]
    serial_seconds = statistics.median(timings(serial_call, device, args.repeats, args.max_seconds, warm_up=False))
    serial_rate = serial_count / serial_seconds
    flops = candidate_flops(setting)
    reference_flops_per_s, _ = reference_rate(setting, population * setting.batch, args.repeats, args.max_seconds)
    limit_rate = reference_flops_per_s / flops
    peak_rate = args.peak_flops_per_s / flops
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
        "peak_flops_per_s": args.peak_flops_per_s,
        "peak_candidates_per_s": peak_rate,
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
            "peak_share": serial_rate / peak_rate,
            "peak_memory_mib": serial_memory,
            "seconds_median": serial_seconds,
            "candidates_timed": serial_count,
            "losses": reference.tolist(),
            "loss_max_relative_difference": 0.0,
        }
    ]
    for engine in args.engine_names:
        rows.append(engine_row(setting, engine, z, reference, serial_rate, limit_rate, common, args))
        if args.compile != "none" and engine in COMPILABLE:
            rows.append(engine_row(setting, engine, z, reference, serial_rate, limit_rate, common, args, compiled=True))
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
    compiled: bool = False,
) -> dict[str, Any]:
    """The throughput row of one batched engine, its losses checked against the serial ``reference``; ``compiled``:
    its call through ``torch.compile(mode=args.compile)``, the first call (tracing, compiling) timed apart."""
    population = common["population"]
    checked = reference.numel()
    population_objective = setting.objective(engine, args.chunk_size)
    objective: Callable[[torch.Tensor], torch.Tensor] = population_objective
    compile_seconds = None
    if compiled:
        objective = torch.compile(population_objective.__call__, mode=args.compile)
        synchronize(setting.device)
        began = time.perf_counter()
        batched_losses(setting, objective, z)
        synchronize(setting.device)
        compile_seconds = time.perf_counter() - began
    call = functools.partial(batched_losses, setting, objective, z)
    losses, memory, _ = peak_memory(call, setting.device)
    seconds = statistics.median(timings(call, setting.device, args.repeats, args.max_seconds, warm_up=False))
    rate = population / seconds
    return {
        **common,
        "measurement": "throughput",
        "engine": (engine if engine != "auto" else f"auto:{population_objective.engine_name}")
        + (f"+compile:{args.compile}" if compiled else ""),
        "compile_seconds": compile_seconds,
        "candidates_per_s": rate,
        "speedup": rate / serial_rate,
        "limit_share": rate / limit_rate,
        "peak_share": rate / common["peak_candidates_per_s"],
        "peak_memory_mib": memory,
        "seconds_median": seconds,
        "candidates_timed": population,
        "chunk_size": population_objective.automatic_chunk_size(population),
        "losses": losses[:checked].tolist(),
        "loss_max_relative_difference": _relative_difference(losses[:checked], reference),
    }


def cma_reconstruction(
    setting: Setting, population: int, budget: int, engine: str, seed: int
) -> tuple[float, float, int]:
    """One GGL-CMA run over the generator's latent with the attack's own search (``make_search("cma")``):
    (seconds, best loss, evaluations). Each generation is scored in one batched call, or one candidate at a time
    for ``serial``."""
    search = make_search("cma", setting.generator.latent_dim, population, budget, seed=seed)
    objective = setting.objective(engine)
    score = serial_losses if engine == "serial" else batched_losses
    score(setting, objective, latents(setting, population, seed))  # warm-up, as in the throughput timings
    synchronize(setting.device)
    began = time.perf_counter()
    while not search.done:
        asked = search.ask()
        z = asked.repeat_interleave(setting.batch, dim=0).to(setting.device)
        search.tell(asked, score(setting, objective, z).cpu())
    synchronize(setting.device)
    return time.perf_counter() - began, search.best_loss, search.evaluations


def adaptive_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Adaptive throughput: the population objective with each defense's simulation, per engine, against the
    serial loop with the same simulation (``inner`` only where the defense has a ``linear_simulation``)."""
    rows: list[dict[str, Any]] = []
    setting = build_setting(
        args.adaptive_victim, args.image_size, args.channels, args.batch, args.torch_device, args.seed
    )
    z = latents(setting, args.adaptive_population, args.seed)
    for spec in args.defense_specs:
        rows += _adaptive_defense_rows(setting, make_defense(**spec), z, args)
    return rows


def _adaptive_defense_rows(
    setting: Setting, defense: Any, z: torch.Tensor, args: argparse.Namespace
) -> list[dict[str, Any]]:
    """Serial, ``hooks`` and (where the simulation is linear) ``inner`` rows for one defense."""
    population = args.adaptive_population
    serial_z = z[: min(population, args.serial_candidates) * setting.batch]
    serial_objective = setting.objective("serial", defense=defense)
    reference = torch.empty(0)
    linear = defense.linear_simulation(setting.defended(defense)) is not None
    rows: list[dict[str, Any]] = []
    serial_rate = math.nan
    for engine in ("serial", "hooks", "inner") if linear else ("serial", "hooks"):
        objective = serial_objective if engine == "serial" else setting.objective(engine, args.chunk_size, defense)
        score, inputs = (serial_losses, serial_z) if engine == "serial" else (batched_losses, z)
        call = functools.partial(score, setting, objective, inputs)
        losses, memory, _ = peak_memory(call, setting.device)
        losses = losses[: min(population, LOSSES_CHECKED)]
        reference = losses if engine == "serial" else reference
        seconds = statistics.median(timings(call, setting.device, args.repeats, args.max_seconds, warm_up=False))
        rate = inputs.shape[0] / setting.batch / seconds
        serial_rate = rate if engine == "serial" else serial_rate
        rows.append(
            {
                "measurement": "adaptive",
                "victim": setting.victim,
                "image_size": setting.image_size,
                "channels": setting.channels,
                "batch": setting.batch,
                "population": population,
                "device": str(setting.device),
                "defense": defense.spec,
                "engine": engine,
                "chunk_size": objective.automatic_chunk_size(population) if engine != "serial" else 1,
                "candidates_per_s": rate,
                "serial_candidates_per_s": serial_rate,
                "speedup": rate / serial_rate,
                "peak_memory_mib": memory,
                "loss_max_relative_difference": _relative_difference(losses, reference),
            }
        )
        print(
            f"{setting.victim:>9} P={population:<4} {defense.name:>14} {engine:>6}: {rate:8.1f} cand/s "
            f"x{rate / serial_rate:5.2f} serial",
            file=sys.stderr,
            flush=True,
        )
    return rows


def end_to_end_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    setting = build_setting(args.e2e_victim, args.image_size, args.channels, args.batch, args.torch_device, args.seed)
    limit_rate = reference_rate(setting, args.e2e_population * setting.batch, 1, args.max_seconds)[0]
    limit_rate /= candidate_flops(setting)
    serial_seconds, serial_best, _ = cma_reconstruction(
        setting, args.e2e_population, args.e2e_budget, "serial", args.seed
    )
    rows = []
    for engine in ["serial", *args.e2e_engine_names]:
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


RESTART_ATTACKS = {"inverting_gradients": 1, "idlg": 20}
"""Attacks timed with restarts, and the objective evaluations one of their steps makes (an L-BFGS step up to 20)."""


def restarts_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Inverting Gradients (Adam) and iDLG (L-BFGS) with R restarts on LeNet: one fit a trial (sequential) against
    one batched population, from the same seed and for about ``restarts_iterations`` evaluations a restart; the
    seconds of the fastest of ``repeats`` + 1 runs of each and the largest difference in a trial's final loss."""
    setting = build_setting("lenet", args.image_size, args.channels, args.batch, args.torch_device, args.seed)
    update = shared_update(setting.model, setting.private, setting.labels)
    target = AttackTarget(
        setting.model,
        update,
        image_shape=(setting.channels, setting.image_size, setting.image_size),
        normalization=setting.normalization,
    )
    accelerator = "gpu" if setting.device.type == "cuda" else "cpu"
    rows = []
    for name, per_step in RESTART_ATTACKS.items():
        steps = max(1, args.restarts_iterations // per_step)
        options = {"iterations": steps, "restarts": args.restarts, "seed": args.seed}
        results = {}
        for batched in (False, True):
            attack = make_attack(name, batch_restarts=batched, **options)
            run = functools.partial(attack.reconstruct, target, accelerator=accelerator)
            results[batched] = _fastest(run, setting.device, args.repeats + 1)
        (sequential, serial_seconds), (batched_run, seconds) = results[False], results[True]
        timing = {"attack": name, "restarts": args.restarts, "iterations": steps}
        rows.append(
            _timed_pair_row("restarts", args, setting, timing, ([sequential], serial_seconds), ([batched_run], seconds))
        )
    return rows


T = TypeVar("T")


def _fastest(run: Callable[[], T], device: torch.device, runs: int) -> tuple[T, float]:
    """The first result of ``runs`` calls of ``run`` and the seconds of the fastest: these whole searches last one
    or two seconds, and on a shared host one call swung their ratios by 1.5x between runs minutes apart."""
    result: T | None = None
    fastest = math.inf
    for _ in range(runs):
        synchronize(device)
        began = time.perf_counter()
        outcome = run()
        synchronize(device)
        fastest = min(fastest, time.perf_counter() - began)
        result = outcome if result is None else result
    assert result is not None
    return result, fastest


def _timed_pair_row(
    measurement: str,
    args: argparse.Namespace,
    setting: Setting,
    timing: dict[str, Any],
    apart: tuple[list[Reconstruction], float],
    together: tuple[list[Reconstruction], float],
) -> dict[str, Any]:
    """A row that times reconstructions run one way (``apart``: results, seconds) against another (``together``),
    with the largest relative difference in a trial's final loss between them."""
    difference = max(
        abs(a - b) / max(abs(a), 1e-30)
        for first, second in zip(apart[0], together[0])
        for a, b in zip(first.extras["trial_losses"], second.extras["trial_losses"])
    )
    return {
        "measurement": measurement,
        "victim": "lenet",
        "image_size": args.image_size,
        "channels": args.channels,
        "batch": args.batch,
        "device": str(setting.device),
        **timing,
        "evaluations": together[0][0].evaluations,
        "serial_seconds": apart[1],
        "seconds": together[1],
        "speedup": apart[1] / together[1],
        "loss_max_relative_difference": difference,
    }


def controls_rows(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Inverting Gradients and iDLG on LeNet, on an update and on a second update of the same labels (a
    no-information control), with R = 1 and R = ``restarts``: the two reconstructions one after another, each as it
    runs alone (R > 1: its restarts batched), against both as one population (``reconstruct_together``); the
    seconds of the fastest of ``repeats`` + 1 runs of each and the largest difference in a trial's final loss."""
    setting = build_setting("lenet", args.image_size, args.channels, args.batch, args.torch_device, args.seed)
    rng = torch.Generator().manual_seed(args.seed + 2)
    other = setting.normalization.normalize(torch.rand(setting.private.shape, generator=rng).to(setting.device))
    targets = [
        AttackTarget(
            setting.model,
            shared_update(setting.model, inputs, setting.labels),
            image_shape=(setting.channels, setting.image_size, setting.image_size),
            normalization=setting.normalization,
        )
        for inputs in (setting.private, other)
    ]
    accelerator = "gpu" if setting.device.type == "cuda" else "cpu"
    rows = []
    for name, per_step in RESTART_ATTACKS.items():
        steps = max(1, args.restarts_iterations // per_step)
        for restarts in sorted({1, args.restarts}):
            options = {"iterations": steps, "restarts": restarts, "seed": args.seed}
            alone = make_attack(name, batch_restarts=restarts > 1, **options)
            apart, serial_seconds = _fastest(
                functools.partial(_one_by_one, alone, targets, accelerator), setting.device, args.repeats + 1
            )
            joint = make_attack(name, **options)
            together, seconds = _fastest(
                functools.partial(joint.reconstruct_together, targets, accelerator=accelerator),
                setting.device,
                args.repeats + 1,
            )
            timing = {"attack": name, "restarts": restarts, "iterations": steps}
            rows.append(
                _timed_pair_row("controls", args, setting, timing, (apart, serial_seconds), (together, seconds))
            )
    return rows


def _one_by_one(
    attack: GradientInversionAttack, targets: Sequence[AttackTarget], accelerator: str
) -> list[Reconstruction]:
    """Each target's reconstruction by ``attack``, one after another."""
    return [attack.reconstruct(target, accelerator=accelerator) for target in targets]


def markdown_table(rows: Sequence[dict[str, Any]], header: str) -> str:
    """The rows as Markdown: throughput, adaptive, restarts and end-to-end tables, each where it has rows."""
    lines = [header, ""]
    for measurement, table in TABLES.items():
        selected = [row for row in rows if row["measurement"] == measurement]
        if selected:
            lines += [*table(selected), ""]
    return "\n".join(lines[:-1]) + "\n"


def _throughput_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| victim | size | P | engine | cand/s | serial cand/s | speedup | FLOP-limit cand/s | limit share "
        "| matmul-peak share | peak MiB | max rel. loss diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['victim']} | {row['channels']}x{row['image_size']} | {row['population']} | {_engine_cell(row)} "
            f"| {row['candidates_per_s']:.1f} | {row['serial_candidates_per_s']:.1f} | {row['speedup']:.2f} "
            f"| {row['limit_candidates_per_s']:.1f} | {row['limit_share']:.0%} | {row['peak_share']:.1%} "
            f"| {row['peak_memory_mib']:.0f} | {row['loss_max_relative_difference']:.1e} |"
        )
    return lines


def _engine_cell(row: dict[str, Any]) -> str:
    """The engine's name, and for a compiled engine the seconds its first call took (tracing and compiling)."""
    seconds = row.get("compile_seconds")
    return row["engine"] if seconds is None else f"{row['engine']} ({seconds:.0f} s to compile)"


def _adaptive_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| adaptive (defense simulated) | P | defense | engine | chunk | cand/s | serial cand/s | speedup | peak MiB "
        "| max rel. loss diff |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        defense = ", ".join(f"{k}={v}" for k, v in row["defense"].items() if k != "name")
        lines.append(
            f"| {row['victim']} {row['channels']}x{row['image_size']} | {row['population']} "
            f"| {row['defense']['name']}({defense}) | {row['engine']} | {row.get('chunk_size', '')} "
            f"| {row['candidates_per_s']:.1f} "
            f"| {row['serial_candidates_per_s']:.1f} | {row['speedup']:.2f} | {row['peak_memory_mib']:.0f} "
            f"| {row['loss_max_relative_difference']:.1e} |"
        )
    return lines


Table = Callable[[Sequence[dict[str, Any]]], list[str]]
"""A Markdown table of one kind of row."""


def _timed_pairs_table(title: str, evaluations: str, apart: str, together: str) -> Table:
    """The Markdown table of rows that time one way of running attacks against another, with the largest
    difference in a trial's final loss (the restarts rows, the attack-and-control rows)."""

    def table(rows: Sequence[dict[str, Any]]) -> list[str]:
        lines = [
            f"| {title} | R | steps | {evaluations} | {apart} | {together} | speedup | max rel. final-loss diff |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in rows:
            lines.append(
                f"| {row['attack']} on {row['victim']} {row['channels']}x{row['image_size']} | {row['restarts']} "
                f"| {row['iterations']} | {row.get('evaluations', '')} | {row['serial_seconds']:.2f} "
                f"| {row['seconds']:.2f} | {row['speedup']:.2f} | {row['loss_max_relative_difference']:.1e} |"
            )
        return lines

    return table


def _end_to_end_table(rows: Sequence[dict[str, Any]]) -> list[str]:
    lines = [
        "| end-to-end GGL-CMA | P | budget | engine | seconds | serial seconds | speedup | best loss |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        lines.append(
            f"| {row['victim']} {row['channels']}x{row['image_size']} | {row['population']} | {row['budget']} "
            f"| {row['engine']} | {row['seconds']:.2f} | {row['serial_seconds']:.2f} | {row['speedup']:.2f} "
            f"| {row['best_loss']:.4g} |"
        )
    return lines


TABLES: dict[str, Table] = {
    "throughput": _throughput_table,
    "adaptive": _adaptive_table,
    "restarts": _timed_pairs_table("restarts as one population", "evaluations", "sequential s", "batched s"),
    "controls": _timed_pairs_table(
        "attack and control as one population", "evaluations each", "one after another s", "together s"
    ),
    "end_to_end": _end_to_end_table,
}
"""The Markdown table of each kind of row, in the order they are printed."""


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


def precision(args: argparse.Namespace) -> str:
    """The arithmetic the rows were measured in: ``fp32``, ``tf32`` (CUDA matrix products) or ``bf16-autocast``."""
    return "bf16-autocast" if args.autocast == "bf16" else ("tf32" if args.tf32 else "fp32")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every measurement the arguments ask for, in ``precision(args)``; each row records that precision."""
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    torch.backends.cuda.matmul.allow_tf32 = args.tf32
    torch.backends.cudnn.allow_tf32 = args.tf32
    autocast = (
        torch.autocast(args.torch_device.type, dtype=torch.bfloat16)
        if args.autocast == "bf16"
        else contextlib.nullcontext()
    )
    with autocast:
        rows = _measure(args)
    for row in rows:
        row["precision"] = precision(args)
    return rows


def _measure(args: argparse.Namespace) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    args.peak_flops_per_s = matmul_peak_rate(args.torch_device, args.repeats, args.max_seconds)
    for victim in args.victims:
        began = time.perf_counter()
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
        print(f"{victim} throughput rows: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    sections = {
        "adaptive": (adaptive_rows, bool(args.defense_specs)),
        "restarts": (restarts_rows, args.restarts > 1),
        "controls": (controls_rows, args.controls),
        "end-to-end": (end_to_end_rows, bool(args.e2e_budget)),
    }
    for name, (section, wanted) in sections.items():
        if wanted:
            began = time.perf_counter()
            rows += section(args)
            print(f"{name} rows: {time.perf_counter() - began:.1f} s", file=sys.stderr, flush=True)
    return rows
