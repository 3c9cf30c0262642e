"""``python -m benchmarks.perf``: candidates per second, batched vs serial, share of the FLOP limit and of the
device's matrix-product peak, memory.

Writes a JSON list of rows (one per victim x population x engine, serial included; adaptive rows per defense and
engine; Inverting Gradients' and iDLG's restarts sequential and batched, and an attack and its control apart and
as one population; end-to-end GGL-CMA rows) and a Markdown
table next to it. Exit status 0 when done, 2 on bad input. Every argument, the output path included, is checked
before torch is imported and before anything is measured.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

from ggl.io import atomic_write

from ..cli import HelpFormatter
from ..config import MAX_SEED, output_file

VICTIM_NAMES = ("convnet", "lenet", "resnet18", "resnet18-224")
"""``ggl.fl.VICTIMS``, named here so that the arguments are checked without torch (a test keeps them equal)."""
ENGINE_NAMES = ("auto", "hooks", "inner", "vmap")
"""``ggl.attacks.batched.ENGINES`` but ``serial`` (always timed), plus ``auto`` (a test keeps them equal)."""
ADAPTIVE_DEFENSES = {
    "clipping": {"name": "clipping", "bound": 0.25},
    "dpsgd": {"name": "dpsgd", "max_grad_norm": 1.0, "noise_multiplier": 0.1},
    "soteria": {"name": "soteria", "pruning_rate": 0.6},
    "sparsification": {"name": "sparsification", "ratio": 0.9},
    "sign": {"name": "sign"},
}
"""Defenses ``--defenses`` can time adaptively, at the `all` suite's stronger strengths."""
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")
"""``--compile``: none, or a ``torch.compile`` mode."""
MAX_POPULATION = 16_384
"""Largest population, chunk or candidate count: bounds the memory one measurement may take."""
INT_BOUNDS = {
    "channels": (1, 16),
    "batch": (1, 256),
    "repeats": (1, 1_000),
    "serial_candidates": (1, MAX_POPULATION),
    "e2e_population": (1, MAX_POPULATION),
    "e2e_budget": (0, 1_000_000),
    "adaptive_population": (1, MAX_POPULATION),
    "restarts": (1, 64),
    "restarts_iterations": (1, 100_000),
    "chunk_size": (0, MAX_POPULATION),
    "seed": (0, MAX_SEED),
}
"""Integer options and their allowed ranges."""


class BadInput(ValueError):
    """A command-line value that is not allowed; the message names the option."""


def _int_list(option: str, text: str) -> list[int]:
    parts = [part.strip() for part in text.split(",") if part.strip()]
    if not parts or not all(re.fullmatch(r"[0-9]{1,18}", part) for part in parts):
        raise BadInput(f"{option} must be comma-separated positive integers, got {text!r}")
    values = [int(part) for part in parts]
    if min(values) < 1 or max(values) > MAX_POPULATION:
        raise BadInput(f"{option} values must be from 1 to {MAX_POPULATION}, got {text!r}")
    return values


def _name_list(option: str, text: str, allowed: Sequence[str]) -> list[str]:
    values = [part.strip() for part in text.split(",") if part.strip()]
    bad = [value for value in values if value not in allowed]
    if not values or bad:
        raise BadInput(f"{option}: {', '.join(bad) or 'nothing given'} not allowed; allowed: {', '.join(allowed)}")
    return values


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument("--victim", default="lenet,convnet,resnet18", help="comma list of victims")
    parser.add_argument("--image-size", type=int, default=32, help="square image side (power of two, 8 to 512)")
    parser.add_argument("--channels", type=int, default=3, help="image channels")
    parser.add_argument("--batch", type=int, default=1, help="images per candidate (the client's batch B)")
    parser.add_argument("--population", default="8,32", help="comma list of population sizes P")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:i]")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls after one warm-up (median reported)")
    parser.add_argument("--max-seconds", type=float, default=10.0, help="stop repeating a timing past this")
    parser.add_argument("--engines", default="vmap,hooks,inner", help="batched engines to time (serial always runs)")
    chunk = "candidates per engine pass (0: the most whose per-candidate gradients fit the objective's 1 GiB budget)"
    parser.add_argument("--chunk-size", type=int, default=0, help=chunk)
    parser.add_argument("--serial-candidates", type=int, default=16, help="candidates the serial loop times")
    parser.add_argument(
        "--defenses",
        default="clipping,soteria,sparsification",
        help=f"defenses timed adaptively (simulation on), of {', '.join(ADAPTIVE_DEFENSES)}; '' skips",
    )
    parser.add_argument("--adaptive-victim", default="resnet18", help="victim of the adaptive rows")
    parser.add_argument("--adaptive-population", type=int, default=32, help="population P of the adaptive rows")
    restarts = "Inverting Gradients' and iDLG's restarts timed as one population (1 skips)"
    parser.add_argument("--restarts", type=int, default=4, help=restarts)
    parser.add_argument(
        "--restarts-iterations",
        type=int,
        default=100,
        help="objective evaluations of each timed restart (Adam steps; L-BFGS steps of 20 evaluations)",
    )
    controls = "skip timing each restart attack and its control as one population against one after another"
    parser.add_argument("--no-controls", dest="controls", action="store_false", help=controls)
    parser.add_argument("--e2e-victim", default="resnet18", help="victim of the end-to-end GGL-CMA run")
    parser.add_argument(
        "--e2e-engines", default="inner", help="batched engines of the end-to-end run (serial always runs)"
    )
    parser.add_argument("--e2e-population", type=int, default=32, help="CMA population of the end-to-end run")
    parser.add_argument("--e2e-budget", type=int, default=256, help="evaluations of the end-to-end run (0: skip)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the timed inputs")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 matrix products and convolutions (CUDA)")
    parser.add_argument(
        "--autocast", choices=("none", "bf16"), default="none", help="run every measurement under bf16 autocast"
    )
    parser.add_argument(
        "--compile",
        choices=COMPILE_MODES,
        default="none",
        help="also time each engine that torch.compile can trace (vmap) compiled in this mode; reduce-overhead "
        "replays CUDA graphs on a GPU; the first call (tracing, compiling) is timed apart",
    )
    parser.add_argument("--out", default="perf.json", help="JSON output; the Markdown table goes beside it (.md)")
    return parser


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The arguments, every one checked (names, ranges, device spelling, a writable ``--out``); ``BadInput`` else."""
    args = build_parser().parse_args(argv)
    args.victims = _name_list("--victim", args.victim, VICTIM_NAMES)
    args.populations = _int_list("--population", args.population)
    args.engine_names = _name_list("--engines", args.engines, ENGINE_NAMES)
    args.e2e_engine_names = _name_list("--e2e-engines", args.e2e_engines, ENGINE_NAMES)
    if not 8 <= args.image_size <= 512 or args.image_size & (args.image_size - 1):
        raise BadInput(f"--image-size must be a power of two from 8 to 512, got {args.image_size}")
    for option, (low, high) in INT_BOUNDS.items():
        if not low <= getattr(args, option) <= high:
            raise BadInput(f"--{option.replace('_', '-')} must be from {low} to {high}, got {getattr(args, option)}")
    if args.threads is not None and not 1 <= args.threads <= 1024:
        raise BadInput(f"--threads must be from 1 to 1024, got {args.threads}")
    if not (math.isfinite(args.max_seconds) and 0 < args.max_seconds <= 86_400):
        raise BadInput(f"--max-seconds must be a number of seconds above 0, at most a day, got {args.max_seconds}")
    names = _name_list("--defenses", args.defenses, tuple(ADAPTIVE_DEFENSES)) if args.defenses.strip() else []
    args.defense_specs = [ADAPTIVE_DEFENSES[name] for name in names]
    if names and args.adaptive_victim not in VICTIM_NAMES:
        raise BadInput(f"--adaptive-victim {args.adaptive_victim!r} not allowed; allowed: {', '.join(VICTIM_NAMES)}")
    if args.e2e_budget and args.e2e_victim not in VICTIM_NAMES:
        raise BadInput(f"--e2e-victim {args.e2e_victim!r} not allowed; allowed: {', '.join(VICTIM_NAMES)}")
    if not re.fullmatch(r"cpu|cuda(:[0-9]{1,3})?", args.device):
        raise BadInput(f"--device must be cpu or cuda[:index], got {args.device!r}")
    args.chunk_size = args.chunk_size or None
    try:
        output_file("--out", output_file("--out", args.out).with_suffix(".md"))
    except ValueError as error:
        raise BadInput(str(error)) from None
    return args


def _device(args: argparse.Namespace) -> str | None:
    """Set ``args.torch_device``; why the device cannot be used here, or None when it can."""
    import torch

    args.torch_device = torch.device(args.device)
    if args.torch_device.type != "cuda":
        return None
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    index = args.torch_device.index or 0
    return None if index < count else f"--device {args.device}: this machine has {count} CUDA devices"


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except BadInput as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    unusable = _device(args)
    if unusable is not None:
        print(f"error: {unusable}", file=sys.stderr)
        return 2
    import torch

    from .rows import machine_description, markdown_table, precision, run

    rows = run(args)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    for row in rows:
        row["torch_version"] = torch.__version__
    out = Path(args.out)
    atomic_write(out, json.dumps(rows, indent=1) + "\n")
    header = (
        f"Measured {stamp} on {machine_description(args.torch_device)}, torch {torch.__version__}, {precision(args)}."
    )
    atomic_write(out.with_suffix(".md"), markdown_table(rows, header))
    print(f"wrote {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return 0
