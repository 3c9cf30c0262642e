"""Run a benchmark suite and write its leaderboard.

    python -m benchmarks.run --suite smoke|all|paper-celeba|paper-imagenet|PATH.yaml [--out DIR]
                             [--set key=value ...] [--report-only] [--report-dir DIR] [--devices N --num-nodes M]
                             [--references-only] [--plugin PATH.py ...]
    python -m benchmarks.run --list
    python -m benchmarks.run --suite SUITE [--set key=value ...] --print-config | --dry-run

The suite expands into cells (victim x defense x attack x seed) plus prior-only reference rows; each finished cell
is committed to ``DIR/results.sqlite`` (default ``results/SUITE``), so a stopped run resumes where it stopped.
At the end the report (leaderboard tables, plots, grids, and ``rows.jsonl``: the rows without images, which
submissions and ``python -m benchmarks.leaderboard`` build on) is written to ``--report-dir`` (default ``DIR``;
``--report-dir leaderboards/SUITE`` publishes it); ``--report-only`` rewrites it from the store alone.
``--references-only`` computes only the prior-only reference rows and writes no report (``python -m
benchmarks.references --compute`` uses it). ``--list`` names the shipped suites, ``--print-config`` prints the
resolved suite as YAML and ``--dry-run`` counts its cells and estimates their time from the rows already stored;
these three compute and write nothing.

Scale-out: ``--devices N`` runs N worker processes on this machine (one GPU each when GPUs exist; at most one per
GPU, or per CPU core without GPUs), which end when their launcher ends; under torchrun or SLURM (detected with
Lightning's cluster environments) every launched process runs its share of the cells.
Exit status: 0 done; 2 bad input or missing data/weights/device (the message says what; input that needs no library
is answered before torch is imported); 1 some cells failed (listed; the finished ones are kept, and running again
retries only the failed ones).
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ggl.io import canonical_json

from .cells import STAGE_META, Cell, expand_cells, shard
from .cli import HelpFormatter
from .config import SuiteConfig, available_suites, load_suite, output_folder

if TYPE_CHECKING:
    from .harness import RunSummary
    from .store import ResultsStore

SHARDS = "shards"
LAUNCHER_PID = "GGL_LAUNCHER_PID"
"""Environment variable naming the ``--devices`` launcher's process id in each of its workers."""
PR_SET_PDEATHSIG = 1
"""Linux ``prctl`` option: the signal a process receives when its parent dies."""
CELL_KINDS = ("attack", "control", "reference")
"""The kinds of cell (``benchmarks.cells.Cell.kind``), in the order ``--dry-run`` counts them."""


@dataclass(frozen=True)
class RankInfo:
    """This process's place among the workers of one run."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    run_id: str = ""


def detect_rank() -> RankInfo | None:
    """The rank of a process started by torchrun, SLURM (srun) or ``--devices``; None when not launched.

    Lightning's cluster detection is imported only when a launcher's variables are set, so a plain command starts
    (and answers bad input) without it.
    """
    if "GGL_RUN_ID" in os.environ and "RANK" in os.environ:
        return RankInfo(
            int(os.environ["RANK"]),
            int(os.environ["WORLD_SIZE"]),
            int(os.environ.get("LOCAL_RANK", 0)),
            os.environ["GGL_RUN_ID"],
        )
    if "RANK" not in os.environ and "SLURM_NTASKS" not in os.environ:
        return None
    from lightning_fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        environment = TorchElasticEnvironment()
        run_id = os.environ.get("TORCHELASTIC_RUN_ID", "") + os.environ.get("MASTER_PORT", "")
        return RankInfo(environment.global_rank(), environment.world_size(), environment.local_rank(), run_id)
    if SLURMEnvironment.detect() and int(os.environ.get("SLURM_NTASKS", "1")) > 1:
        slurm = SLURMEnvironment()
        run_id = f"slurm-{os.environ.get('SLURM_JOB_ID', '')}-{os.environ.get('SLURM_STEP_ID', '')}"
        return RankInfo(slurm.global_rank(), slurm.world_size(), slurm.local_rank(), run_id)
    return None


def pin_gpu(local_rank: int) -> None:
    """Give this worker one GPU (the ``local_rank``-th visible one) before CUDA starts."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible:
        entries = [v for v in visible.split(",") if v.strip()]
        if len(entries) > 1:
            os.environ["CUDA_VISIBLE_DEVICES"] = entries[local_rank % len(entries)]
    else:
        os.environ["CUDA_VISIBLE_DEVICES"] = str(local_rank)


def visible_gpus(devices: Path = Path("/dev")) -> int:
    """GPUs this process may use, counted without starting CUDA: the NVIDIA device files (``/dev/nvidiaN``),
    at most as many as ``CUDA_VISIBLE_DEVICES`` names when it is set (CUDA stops at its first invalid entry)."""
    present = sum(1 for entry in devices.glob("nvidia[0-9]*") if entry.name[6:].isdigit())
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return present
    named = 0
    for entry in visible.split(","):
        if not entry.strip() or entry.strip().startswith("-"):
            break
        named += 1
    return min(named, present)


def device_limit() -> tuple[int, str]:
    """The most ``--devices`` workers this machine can hold, and why: one per GPU, or one per CPU core."""
    gpus = visible_gpus()
    if gpus:
        return gpus, f"{gpus} visible GPU{'s' if gpus > 1 else ''} (one worker each)"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return cores, f"{cores} CPU core{'s' if cores > 1 else ''} and no GPU"


def check_counts(args: argparse.Namespace, info: RankInfo | None) -> None:
    """``--devices`` and ``--num-nodes`` at least 1, a local ``--devices`` launch at most ``device_limit()``, and
    ``--cell-seconds`` positive."""
    if args.devices < 1 or args.num_nodes < 1:
        raise ValueError(f"--devices and --num-nodes must be >= 1, got {args.devices} and {args.num_nodes}")
    if args.cell_seconds is not None and not (math.isfinite(args.cell_seconds) and args.cell_seconds > 0):
        raise ValueError(f"--cell-seconds must be a positive number of seconds, got {args.cell_seconds}")
    limit, why = device_limit()
    if info is None and args.devices > limit:
        raise ValueError(
            f"--devices {args.devices}: this machine has {why}, so at most --devices {limit}; "
            "more workers than that only slow each other down"
        )


def end_with_launcher(launcher: int) -> None:
    """A ``--devices`` worker ends (SIGTERM) when its launcher ends, even by ``kill -9``: never left running alone.

    Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``) does it; elsewhere, or if prctl fails, a daemon thread
    polls the parent's process id. SIGTERM raises ``SystemExit`` wherever the worker is (Lightning passes it on
    inside a fit), so the worker leaves through its ``finally`` blocks and releases its cell claims.
    """
    signal.signal(signal.SIGTERM, _end_worker)
    if sys.platform.startswith("linux"):
        try:
            armed = ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) == 0
        except (OSError, AttributeError):
            armed = False
        if armed:
            if os.getppid() != launcher:  # the launcher ended before the signal was armed
                os.kill(os.getpid(), signal.SIGTERM)
            return
    threading.Thread(target=_watch_launcher, args=(launcher,), name="launcher-watch", daemon=True).start()


def _end_worker(signum: int, frame: object) -> None:
    """SIGTERM in a worker: leave now, with the conventional status 128 + signal."""
    raise SystemExit(128 + signum)


def _watch_launcher(launcher: int, every: float = 1.0) -> None:
    """Poll the parent's process id; once it is no longer ``launcher``, end this process with SIGTERM."""
    while os.getppid() == launcher:
        time.sleep(every)
    os.kill(os.getpid(), signal.SIGTERM)


def base_paths(args: argparse.Namespace, suite: SuiteConfig) -> tuple[Path, Path]:
    """``--out`` and ``--report-dir`` as given (defaults ``results/SUITE`` and ``--out``), before any variant."""
    base = suite.name.rsplit(".", 1)[0] if args.variant else suite.name
    out = Path(args.out) if args.out else Path("results") / base
    return out, Path(args.report_dir) if args.report_dir else out


def output_paths(args: argparse.Namespace, suite: SuiteConfig) -> tuple[Path, Path]:
    """``--out`` and ``--report-dir`` (defaults ``results/SUITE`` and ``--out``; a variant's are their subfolders
    named after it), checked before any work: folders this process can write in or create (``--report-only`` only
    reads ``--out``)."""
    out, report_dir = base_paths(args, suite)
    if args.variant:
        out, report_dir = out / args.variant, report_dir / args.variant
    if args.report_only and os.path.lexists(out) and not out.is_dir():
        raise ValueError(f"--out {str(out)!r} is a file; name the folder holding results.sqlite")
    if not args.report_only:
        output_folder("--out", out)
    if not args.references_only:
        output_folder("--report-dir", report_dir)
    return out, report_dir


def build_parser() -> argparse.ArgumentParser:
    """The command line; ``--suite`` is needed by everything but ``--list`` (``main`` checks it)."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {__package__}.run", description=__doc__, formatter_class=HelpFormatter
    )
    parser.add_argument(
        "--suite", default=None, help="a shipped suite name (smoke, all, ...; see --list) or a YAML path"
    )
    parser.add_argument("--out", default=None, help="output folder holding the results store (default: results/SUITE)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a suite field: dotted key, YAML value (e.g. victims.count=2, attacks.*.budget=50)",
    )
    parser.add_argument("--report-only", action="store_true", help="rewrite the report from the store; compute nothing")
    parser.add_argument(
        "--report-dir",
        default=None,
        help="where the report goes (default: --out); leaderboards/SUITE overwrites the published board",
    )
    parser.add_argument(
        "--devices", type=int, default=1, help="worker processes on this node: at most one per GPU, or per CPU core"
    )
    parser.add_argument("--num-nodes", type=int, default=1, help="nodes (launch with srun or torchrun on each)")
    parser.add_argument(
        "--plugin",
        dest="plugins",
        action="append",
        default=[],
        metavar="PATH.py",
        help="a Python file of custom defenses, victims or datamodules, named module:Class by its stem (repeatable)",
    )
    parser.add_argument(
        "--cell-seconds",
        type=float,
        default=None,
        metavar="S",
        help="per-cell time limit: a cell still running after S seconds is recorded as failed, with the reason "
        "(default: none)",
    )
    parser.add_argument("--variant", default=None, help="only this variant of a suite with variants (default: all)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-tensorboard", action="store_true", help="no TensorBoard event files")
    parser.add_argument(
        "--references-only", action="store_true", help="compute only the prior-only reference rows; no report"
    )
    parser.add_argument("--list", action="store_true", help="list the shipped suites with their descriptions and exit")
    parser.add_argument(
        "--print-config", action="store_true", help="print the resolved suite (after --set) as YAML and exit"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="print the suite's cell counts and a time estimate from the rows already stored, and exit",
    )
    return parser


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def list_suites(width: int = 100) -> str:
    """One line per shipped suite: its name and the start of its description (or why it does not load)."""
    names = available_suites()
    column = max((len(name) for name in names), default=0) + 2
    lines = []
    for name in names:
        try:
            description = load_suite(name).description
        except ValueError as error:  # SuiteError included
            description = f"(does not load: {error})"
        lines.append(name.ljust(column) + textwrap.shorten(description or "-", width - column, placeholder=" ..."))
    return "\n".join(lines)


def print_config(suite: SuiteConfig) -> str:
    """The resolved suite (every default filled in, every ``--set`` applied) as YAML, its name and hash on top."""
    import yaml

    header = f"# suite {suite.name}, config hash {suite.config_hash()} (from {suite.source})\n"
    return header + yaml.safe_dump(suite.to_dict(), sort_keys=False, default_flow_style=False, width=120)


def planned_cells(suite: SuiteConfig, references_only: bool = False) -> list[Cell]:
    """The cells a run of ``suite`` computes: all of them, or the prior-only references for ``--references-only``."""
    cells = expand_cells(suite)
    if references_only:
        return [cell for cell in cells if cell.kind == "reference" and cell.defense is None]
    return cells


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def dry_run(suite: SuiteConfig, out: Path, args: argparse.Namespace) -> str:
    """What a run would do: cells per kind, those already stored, and a time estimate; nothing is written.

    The estimate is the mean seconds per cell of each kind over the rows of ``suite`` already in the store at ``out``
    (opened read-only), times the cells still to compute, divided among ``--devices`` x ``--num-nodes`` workers.
    """
    from .store import STORE_NAME, StoreError, existing_store

    cells = planned_cells(suite, args.references_only)
    counts = {kind: sum(cell.kind == kind for cell in cells) for kind in CELL_KINDS}
    lines = [
        f"suite {suite.name} (config hash {suite.config_hash()}): {len(cells)} cells: "
        + ", ".join(f"{counts[kind]} {kind}" for kind in CELL_KINDS)
    ]
    utility_pending = 0 if args.references_only or not suite.utility.enabled else len(suite.defenses)
    seconds: dict[str, list[float]] = {kind: [] for kind in CELL_KINDS}
    utility_seconds: list[float] = []
    finished: set[tuple[int, str, str, int]] = set()
    path = out / STORE_NAME
    if path.is_file():
        try:
            with existing_store(out) as store:
                for row in store.cells(suite.name):
                    seconds.setdefault(row.kind, []).append(row.seconds)
                finished = store.finished_keys(suite.name)
                records = store.utility_records()
                options = {"seed": suite.utility.seed, **dict(suite.utility.options)}
                if utility_pending:
                    utility_pending = sum(store.utility(d.spec, options) is None for d in suite.defenses)
        except StoreError as error:
            return "\n".join([*lines, f"no estimate: the store {path} cannot be read: {error}"])
        utility_seconds = [record["seconds"] for _, _, record in records]
    pending = [cell for cell in cells if cell.key() not in finished]
    lines.append(f"in {path}: {len(cells) - len(pending)} finished, {len(pending)} to compute")
    if utility_pending:
        lines.append(f"utility cost: {utility_pending} defense settings to train first")
    rows = [value for values in seconds.values() for value in values]
    if not rows:
        lines.append("time: no estimate: no finished rows")
        return "\n".join(lines)
    overall = sum(rows) / len(rows)
    total = sum(sum(seconds[c.kind]) / len(seconds[c.kind]) if seconds.get(c.kind) else overall for c in pending)
    how = f"mean seconds per cell kind of the {len(rows)} finished rows in the store"
    if utility_pending and utility_seconds:
        total += utility_pending * sum(utility_seconds) / len(utility_seconds)
        how += f", plus the mean of its {len(utility_seconds)} utility costs"
    elif utility_pending:
        how += "; the utility costs are not counted (none stored)"
    workers = args.devices * args.num_nodes
    lines.append(f"time: about {_duration(total / workers)} on {workers} worker(s) ({how})")
    return "\n".join(lines)


def _announce_utility(suite: SuiteConfig, store: ResultsStore, info: RankInfo, references_only: bool) -> None:
    """Say on stderr that the utility costs missing from the store are trained before the cells (no progress bar)."""
    if references_only or not suite.utility.enabled:
        return
    options = {"seed": suite.utility.seed, **dict(suite.utility.options)}
    defenses = shard(suite.defenses, info.rank, info.world_size)
    missing = sum(store.utility(defense.spec, options) is None for defense in defenses)
    if missing:
        print(
            f"utility cost: training {missing} defense settings before the cells (no progress bar until done)",
            file=sys.stderr,
        )


def report(out: Path, report_dir: Path, suite: SuiteConfig) -> list[Path]:
    """Write the report of ``suite`` as configured (its cells, its utility options) from the store, opened read-only."""
    from .report import write_report
    from .store import existing_store

    with existing_store(out) as store:
        return write_report(store, report_dir, suite)


def merge_shards(out: Path) -> int:
    """Copy every rank's shard store into the main store (no duplicates) and delete the shards; rows merged."""
    from .store import ResultsStore, open_store

    merged = 0
    with open_store(out) as main:
        for path in sorted((out / SHARDS).glob("rank*.sqlite")):
            with ResultsStore(path) as shard:
                for key, value in shard.meta_items():
                    if key.startswith(("context:", "suite:", STAGE_META)):
                        main.set_meta(key, value)
                for victim in shard.victims():
                    main.put_victim(victim)
                for row in shard.cells():
                    merged += int(main.put_cell(row))
                for failure in shard.failures():
                    main.put_failure(failure)
                for defense, options, record in shard.utility_records():
                    main.put_utility(
                        defense,
                        options,
                        record["metrics"],
                        record["config_hash"],
                        record["code_version"],
                        record["seconds"],
                    )
            for suffix in ("", "-wal", "-shm"):
                Path(str(path) + suffix).unlink(missing_ok=True)
    return merged


def _finished_elsewhere(out: Path, suite: str) -> set[tuple[int, str, str, int]]:
    """Keys finished in the main store and in any shard left by an earlier run."""
    from .store import STORE_NAME, ResultsStore

    keys: set[tuple[int, str, str, int]] = set()
    for path in [out / STORE_NAME, *sorted((out / SHARDS).glob("rank*.sqlite"))]:
        if path.is_file():
            with ResultsStore(path) as store:
                keys |= store.finished_keys(suite)
    return keys


def _copy_cached_utility(out: Path, shard_store: ResultsStore) -> None:
    """Give a worker's shard the utility costs the main store already holds, so they are not computed again."""
    from .store import STORE_NAME, ResultsStore

    main = out / STORE_NAME
    if not main.is_file():
        return
    with ResultsStore(main) as store:
        records = store.utility_records()
    for defense, options, record in records:
        shard_store.put_utility(
            defense, options, record["metrics"], record["config_hash"], record["code_version"], record["seconds"]
        )


def run_rank(suite: SuiteConfig, out: Path, info: RankInfo, args: argparse.Namespace) -> int:
    """One worker: compute this rank's cells into its store (the main one, or its shard when world_size > 1)."""
    from .harness import Harness, MissingRequirement
    from .store import ResultsStore, StoreError, open_store

    harness = Harness(
        suite,
        None,
        rank=info.rank,
        world_size=info.world_size,
        progress=not args.no_progress and info.rank == 0,
        tensorboard_dir=None if args.no_tensorboard else out / "tensorboard",
        references_only=args.references_only,
        cell_seconds=args.cell_seconds,
    )
    try:
        harness.preflight()
    except (ValueError, MissingRequirement) as error:  # SuiteError and every other bad input
        return _error(str(error))
    try:
        if info.world_size > 1:
            store = ResultsStore(out / SHARDS / f"rank{info.rank}.sqlite")
        else:
            store = open_store(out)
    except StoreError as error:
        return _error(str(error))
    with store:
        harness.store = store
        try:
            store.claim_context(suite.name, suite.context())
            store.set_meta(f"suite:{suite.name}", canonical_json(suite.to_dict()))
            extra: set[tuple[int, str, str, int]] = set()
            if info.world_size > 1:
                extra = _finished_elsewhere(out, suite.name)
                _copy_cached_utility(out, store)
            if info.rank == 0 and not args.no_progress:
                _announce_utility(suite, store, info, args.references_only)
            summary = harness.run(also_finished=extra)
            if info.world_size > 1:
                store.set_meta(f"finished:{info.run_id}", "1")
        except StoreError as error:  # a store made unwritable, full or damaged mid-run
            return _error(str(error))
    prefix = f"[rank {info.rank}/{info.world_size}] " if info.world_size > 1 else ""
    for line in summary.lines():
        print(prefix + line, file=sys.stderr)
    return 1 if summary.failed else 0


def evaluate(
    suite: SuiteConfig, store: ResultsStore, *, progress: bool = True, tensorboard_dir: Path | None = None
) -> RunSummary | None:
    """Check the suite, claim the store and compute every missing cell (``benchmarks.submit``'s road).

    Returns the run's summary, or None after printing why the suite cannot run here (the caller exits with 2).
    """
    from .harness import Harness, MissingRequirement
    from .store import StoreError

    harness = Harness(suite, store, progress=progress, tensorboard_dir=tensorboard_dir)
    try:
        harness.preflight()
        store.claim_context(suite.name, suite.context())
    except (ValueError, MissingRequirement, StoreError) as error:  # SuiteError and every other bad input
        _error(str(error))
        return None
    if progress:
        _announce_utility(suite, store, RankInfo(), references_only=False)
    return harness.run()


def missing_cells(suite: SuiteConfig, out: Path, references_only: bool = False) -> list[str]:
    """Cells of ``suite`` not in the main store (after a multi-process run: the failed ones)."""
    from .store import open_store

    with open_store(out) as store:
        finished = store.finished_keys(suite.name)
    return [cell.describe() for cell in planned_cells(suite, references_only) if cell.key() not in finished]


def launch_local(args: argparse.Namespace, argv: list[str]) -> list[int]:
    """Start ``--devices`` worker processes of this command (RANK/WORLD_SIZE/LOCAL_RANK set) and wait for them."""
    run_id = uuid.uuid4().hex[:12]
    # Split the CPU cores between the workers: N workers with all cores' threads each oversubscribe the CPU,
    # and the many small operations of gradient inversion then run several times slower.
    threads = os.environ.get("OMP_NUM_THREADS") or str(max(1, (os.cpu_count() or 1) // args.devices))
    processes = []
    for rank in range(args.devices):
        environment = {
            **os.environ,
            "RANK": str(rank),
            "WORLD_SIZE": str(args.devices),
            "LOCAL_RANK": str(rank),
            "GGL_RUN_ID": run_id,
            LAUNCHER_PID: str(os.getpid()),
            "OMP_NUM_THREADS": threads,
        }
        processes.append(subprocess.Popen([sys.executable, "-m", f"{__package__}.run", *argv], env=environment))
    return [process.wait() for process in processes]


def _wait_for_ranks(out: Path, info: RankInfo, timeout: float = 3600.0) -> None:
    """Rank 0 under torchrun/SLURM: wait until every rank's shard says it finished this run."""
    from .store import ResultsStore

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = 0
        for rank in range(info.world_size):
            path = out / SHARDS / f"rank{rank}.sqlite"
            if path.is_file():
                with ResultsStore(path) as shard:
                    done += shard.get_meta(f"finished:{info.run_id}") == "1"
        if done == info.world_size:
            return
        time.sleep(2.0)
    print(f"warning: not every rank finished within {timeout:.0f} s; reporting what is stored", file=sys.stderr)


def finish(suite: SuiteConfig, out: Path, report_dir: Path, failed_before: int, references_only: bool = False) -> int:
    """Merge shards, write the report (not for ``--references-only``), list missing cells; the run's exit status."""
    from .store import StoreError

    try:
        merge_shards(out)
        missing = missing_cells(suite, out, references_only)
        paths = [] if references_only else report(out, report_dir, suite)
    except StoreError as error:
        return _error(str(error))
    if missing:
        print(f"{len(missing)} cells are not in the store (failed):", file=sys.stderr)
        for line in missing:
            print(f"  {line}", file=sys.stderr)
    if not references_only:
        print(f"report: {len(paths)} files in {report_dir}", file=sys.stderr)
    return 1 if (missing or failed_before) else 0


def report_only(suite: SuiteConfig, out: Path, report_dir: Path) -> int:
    """``--report-only``: rewrite the report from the store, opened read-only (no store file is created or changed)."""
    from .store import StoreError

    try:
        shards = sorted((out / SHARDS).glob("rank*.sqlite"))
        if shards:
            print(
                f"warning: {len(shards)} shard stores of an interrupted multi-worker run in {out / SHARDS} are not "
                "merged (--report-only writes nothing); running the suite again merges them",
                file=sys.stderr,
            )
        paths = report(out, report_dir, suite)
    except (StoreError, ValueError) as error:
        return _error(str(error))
    print(f"report: {len(paths)} files in {report_dir}", file=sys.stderr)
    return 0


def run_suite(
    suite: SuiteConfig, out: Path, report_dir: Path, info: RankInfo | None, args: argparse.Namespace, argv: list[str]
) -> int:
    """Compute the suite's cells (here, in ``--devices`` local workers, or as ``info``'s rank), then report."""
    if info is None and args.num_nodes > 1:
        return _error(
            "--num-nodes > 1 needs a cluster launcher: start this command once per GPU with srun "
            "(SLURM) or torchrun --nnodes M --nproc-per-node N; each process runs its share"
        )
    if info is None and (out / SHARDS).is_dir():
        from .store import StoreError

        try:  # shards left by an interrupted multi-worker run: their cells count as finished
            merge_shards(out)
        except StoreError as error:
            return _error(str(error))
    if info is None and args.devices > 1:
        codes = launch_local(args, argv)
        if any(code == 2 for code in codes):
            return 2
        failed = sum(code != 0 for code in codes)
        return finish(suite, out, report_dir, failed, args.references_only)
    info = info or RankInfo()
    status = run_rank(suite, out, info, args)
    if status == 2:
        return 2
    if info.world_size > 1:
        if info.rank != 0 or "GGL_RUN_ID" in os.environ:
            return status  # the local launcher (or rank 0) reports
        _wait_for_ranks(out, info)
        return finish(suite, out, report_dir, status, args.references_only)
    if args.references_only:
        return status
    from .store import StoreError

    try:
        paths = report(out, report_dir, suite)
    except StoreError as error:
        return _error(str(error))
    print(f"report: {len(paths)} files in {report_dir}", file=sys.stderr)
    return status


def run_variants(suite: SuiteConfig, args: argparse.Namespace, argv: list[str]) -> int:
    """A suite with variants: each variant in turn (``--variant NAME``, same options; its store and report in the
    subfolders named after it), then the table across them (``benchmarks.report.axes``) in ``--report-dir``."""
    statuses = []
    for variant in suite.variants:
        print(f"variant {variant.name} ({variant.axis}): {variant.label}", file=sys.stderr, flush=True)
        status = main([*argv, "--variant", variant.name])
        if status == 2:
            return 2
        statuses.append(status)
    if args.print_config or args.dry_run or args.references_only:
        return max(statuses)
    from .report.axes import write_axes_report

    _, report_dir = base_paths(args, suite)
    try:
        configs = {v.name: load_suite(args.suite, args.overrides, variant=v.name) for v in suite.variants}
        paths = write_axes_report(suite, report_dir, configs)
    except ValueError as error:
        return _error(str(error))
    print(f"table across variants: {', '.join(str(path) for path in paths)}", file=sys.stderr)
    return max(statuses)


def main(argv: list[str] | None = None) -> int:
    """The command line; its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.list:
        print(list_suites())
        return 0
    if args.suite is None:
        parser.error("--suite is required (--list names the shipped suites)")
    try:
        suite = load_suite(args.suite, args.overrides, variant=args.variant)
    except ValueError as error:  # SuiteError included
        return _error(str(error))
    if suite.variants:
        return run_variants(suite, args, argv)
    if args.print_config or args.dry_run:
        out = base_paths(args, suite)[0] / (args.variant or "")
        print(print_config(suite) if args.print_config else dry_run(suite, out, args))
        return 0
    if "GGL_RUN_ID" in os.environ and LAUNCHER_PID in os.environ:
        end_with_launcher(int(os.environ[LAUNCHER_PID]))
    try:  # the input checks, before torch, Lightning or the harness is imported: a bad input answers at once
        info = detect_rank()
        check_counts(args, info)
        out, report_dir = output_paths(args, suite)
        missing = [path for path in args.plugins if not (Path(path).is_file() and path.endswith(".py"))]
        if missing:
            raise ValueError(f"--plugin {missing[0]!r}: not an existing .py file; give the path of the plugin's file")
    except ValueError as error:  # SuiteError included
        return _error(str(error))
    if info is not None and info.world_size > 1:
        pin_gpu(info.local_rank)
    if args.plugins:
        from ggl.defenses import load_plugins

        try:
            load_plugins(args.plugins)  # the only custom code a run imports; any error it raises is a ValueError
        except ValueError as error:
            return _error(str(error))
    if args.report_only:
        return report_only(suite, out, report_dir)
    return run_suite(suite, out, report_dir, info, args, argv)


if __name__ == "__main__":
    sys.exit(main())
