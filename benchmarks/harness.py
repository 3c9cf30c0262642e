"""The harness: the cells of a suite (``benchmarks.cells``) become rows of the results store.

For each attack cell the harness builds the victim batch (the only place the private images exist), the client's
shared update, the defended update (its generator seeded from the cell key without the attack, so every attack
faces the same defended update), runs ``attack.reconstruct`` on an ``AttackTarget`` (no private images in it) and
scores the reconstruction against the ground truth. Beside the metrics a row carries three diagnostics (names in
``benchmarks.cells``): the common matching loss of the attacker's pick, whether the search was still improving
when its budget ran out, and whether the defense's ``simulate`` passed ``ggl.defenses.check_simulation`` on the
victim's clean update. A control cell runs the same attack on the defended update of another image of the class
inferred from the defended update, and is scored against the same victim. Reference cells are the prior-only
pseudo-attacks of ``benchmarks.references``: per defense setting from the label inferred from the defended
update, and the prior ceiling once per victim.

Cells are independent: ``shard(cells, rank, world_size)`` deals them round-robin to ranks, all writing to the same
SQLite store (WAL mode). A cell found in the store is skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ggl.attacks import ATTACKS, AttackTarget, make_attack
from ggl.attacks.objective import gradient_distance
from ggl.checks import positive_number
from ggl.data import DataNotFoundError, make_datamodule
from ggl.defenses import SimulationCheck, build_defense, check_simulation
from ggl.fl import VICTIMS, infer_labels, make_victim
from ggl.fl.protocol import UpdateProtocol
from ggl.fl.training import TrainingSpec, victim_stage
from ggl.io import canonical_json
from ggl.metrics import match_reconstructions, mse_representation, reconstruction_metrics
from ggl.priors import load_prior

from .cells import (
    MATCH_LOSS,
    MSE_R,
    SIMULATION_OK,
    STAGE_META,
    STILL_IMPROVING,
    Cell,
    CellKey,
    code_version,
    expand_cells,
    seed_from,
    shard,
)
from .config import CONTROL, REFERENCE_PREFIX, AttackConfig, DefenseConfig, SuiteConfig, SuiteError
from .references import reference_images
from .store import (
    FAILED,
    FINISHED,
    HELD,
    CellClaims,
    CellRow,
    FailureRow,
    ResultsStore,
    VictimRow,
)
from .utility import UtilityConfig, utility_cost


class MissingRequirement(RuntimeError):
    """The suite needs data, weights or a device this machine lacks; the message lists what is missing."""


CONTROL_DRAWS = 100_000
"""Most random draws searching the victims split for a control image of one class."""

CLAIM_POLL_SECONDS = 2.0
"""How often a run waiting for cells another run holds looks again."""

LOG_PROGRESS_SECONDS = 30.0
"""Least seconds between two progress-bar lines when stderr is not a terminal (a log file)."""


class CellTimeout(Exception):
    """A cell ran past the per-cell time limit (``Harness(cell_seconds=...)``)."""


def victim_cache() -> Path:
    """Where trained victim stages are cached: ``$GGL_BENCH_CACHE/victims``, by default under
    ``$XDG_CACHE_HOME/ggl-bench`` (``~/.cache/ggl-bench``). A file's name is its configuration's hash."""
    default = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ggl-bench"
    return Path(os.environ.get("GGL_BENCH_CACHE") or default) / "victims"


@contextmanager
def cell_time_limit(seconds: float | None) -> Iterator[None]:
    """Raise ``CellTimeout`` in the main thread when the block runs longer than ``seconds`` (None: no limit).

    A ``SIGALRM`` timer (``setitimer(ITIMER_REAL)``; each worker process has its own): the exception arrives between
    Python steps, so a defense or attack that sleeps or loops is stopped; one native call that never returns is not.
    """
    if seconds is None:
        yield
        return

    def expire(signum: int, frame: Any) -> None:
        raise CellTimeout(f"the cell ran longer than the per-cell time limit of {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, previous)


@dataclass
class RunSummary:
    """What one ``Harness.run`` did."""

    total: int = 0
    skipped: int = 0
    computed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    elsewhere: int = 0  # stored meanwhile by another run on the same store

    def lines(self) -> list[str]:
        lines = [
            f"{self.total} cells: {self.skipped} already in the store, {self.computed} computed, "
            + (f"{self.elsewhere} computed by another run, " if self.elsewhere else "")
            + f"{len(self.failed)} failed ({self.seconds:.1f} s)"
        ]
        lines += [f"  FAILED {what}: {why}" for what, why in self.failed]
        return lines


@dataclass
class _Victim:
    images: torch.Tensor  # (B, C, H, W) in [0, 1]: the ground truth, never given to an attack
    labels: torch.Tensor
    inputs: torch.Tensor  # normalised, on the run's device
    update: Any  # the clean SharedUpdate
    labels_hat: torch.Tensor


_Reconstructed = tuple[torch.Tensor, torch.Tensor, int, float, dict[str, float], list[float]]
"""A cell's reconstruction: images, labels, evaluations, seconds, the row's diagnostics, the search's loss trace."""


@dataclass
class _Setting:
    """One defense setting on one victim and seed: the defended update and what the cells derive from it once."""

    key: tuple[int, str, int]  # (victim, defense JSON, seed)
    defense: Any
    defended: Any  # the defended SharedUpdate every attack of the setting faces
    labels: torch.Tensor  # inferred from the defended update, as the attacks infer them (on the CPU)
    control: Any = None  # the control update, built by the first control cell
    check: SimulationCheck | None = None  # the simulation check, made by the first attack or control cell


HPARAM_METRICS = ("psnr", "ssim", MATCH_LOSS)
"""The row metrics a cell's row of the TensorBoard hparams table shows, beside its seconds and evaluations."""


def flat_hparams(prefix: str, value: Any) -> dict[str, float | str]:
    """``value`` as TensorBoard hparams: a mapping's entries under ``prefix.key`` (nested ones joined by dots),
    finite numbers as numbers, everything else (text, booleans, lists, None) as text: the hparams plugin takes
    only numbers and strings."""
    if isinstance(value, Mapping):
        flat: dict[str, float | str] = {}
        for key, item in value.items():
            flat.update(flat_hparams(f"{prefix}.{key}", item))
        return flat
    if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
        return {prefix: value}
    return {prefix: value if isinstance(value, str) else canonical_json(value)}


class TensorBoardLog:
    """Per computed cell: its final scalars and reconstruction, the search's loss curve and a row of the hparams
    table; one writer per rank.

    The final scalars take the victim index as their step (one curve per defense and attack across victims); the
    loss curve (``Reconstruction.trace``, all trials in order) takes the search step. The hparams plugin reads one
    session per TensorBoard run, so each cell's row (the attack's and the defense's parameters flattened, and its
    final metrics) is a small run of its own under ``cells/``, written once when the cell is done.
    """

    def __init__(self, folder: Path, multiple_seeds: bool) -> None:
        self.folder = folder
        self.multiple_seeds = multiple_seeds
        self._writer: Any = None

    def add(self, row: CellRow, trace: Sequence[float] = ()) -> None:
        """Log one stored row and its search's loss after every step (empty for a reference cell); the writer
        starts with the first row, so runs that compute nothing write nothing."""
        from torch.utils.tensorboard import SummaryWriter

        if self._writer is None:
            self._writer = SummaryWriter(str(self.folder))
        pair = f"{row.defense_label}/{row.attack_label}"
        seed = f"/seed{row.seed}" if self.multiple_seeds else ""
        tag = pair + seed
        for name, value in sorted(row.metrics.items()):
            if math.isfinite(value):
                self._writer.add_scalar(f"{tag}/{name}", value, global_step=row.victim)
        self._writer.add_scalar(f"{tag}/seconds", row.seconds, global_step=row.victim)
        self._writer.add_scalar(f"{tag}/evaluations", row.evaluations, global_step=row.victim)
        self._writer.add_images(f"{tag}/reconstruction", row.images, global_step=row.victim)
        curve = f"{pair}/victim{row.victim}{seed}/search_loss"
        for step, loss in enumerate(trace):
            if math.isfinite(loss):
                self._writer.add_scalar(curve, loss, global_step=step)
        self._add_session(row)

    def session_name(self, row: CellRow) -> str:
        """The folder of ``row``'s hparams session under ``cells/``: victim, defense, attack (and seed)."""
        seed = f" seed{row.seed}" if self.multiple_seeds else ""
        text = f"victim{row.victim} {row.defense_label} {row.attack_label}{seed}"
        return re.sub(r"[^\w.=+,()-]+", "_", text).strip("_")

    def _add_session(self, row: CellRow) -> None:
        """``row``'s session of the hparams table: its parameters, and its final metrics as the session's scalars."""
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        params: dict[str, float | str] = {
            "kind": row.kind,
            "victim": row.victim,
            "seed": row.seed,
            "defense": row.defense_label,
            "attack": row.attack_label,
            **(flat_hparams("defense", row.defense) if row.defense is not None else {}),
            **flat_hparams("attack", row.attack),
        }
        metrics = {name: row.metrics[name] for name in HPARAM_METRICS if name in row.metrics}
        metrics.update(seconds=row.seconds, evaluations=float(row.evaluations))
        metrics = {name: value for name, value in metrics.items() if math.isfinite(value)}
        _, start, end = hparams(params, metrics)  # no experiment summary: the plugin unites the sessions' hparams
        with SummaryWriter(str(self.folder / "cells" / self.session_name(row))) as session:
            session.file_writer.add_summary(start)
            session.file_writer.add_summary(end)
            for name, value in metrics.items():
                session.add_scalar(name, value)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


class Harness:
    """Runs the cells of one suite into one results store.

    Args:
        suite: the validated suite. store: the results store (may be set later, after ``preflight``).
        rank, world_size: this process's share of the cells. device: "cpu", "cuda" or None (CUDA when available).
        progress: show a progress bar over this rank's cells. tensorboard_dir: per cell its scalars, image, search
            loss curve and hparams row (``TensorBoardLog``).
        log: where one-line messages go. references_only: compute only the prior-only reference rows (no attack
            cells, no utility costs). cell_seconds: per-cell time limit (None: none); a cell past it is recorded
            as failed with its reason.
    """

    def __init__(
        self,
        suite: SuiteConfig,
        store: ResultsStore | None,
        rank: int = 0,
        world_size: int = 1,
        device: str | None = None,
        progress: bool = True,
        tensorboard_dir: str | Path | None = None,
        log: Callable[[str], None] | None = None,
        references_only: bool = False,
        cell_seconds: float | None = None,
    ) -> None:
        self.suite = suite
        self.store = store
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.tensorboard = (
            TensorBoardLog(Path(tensorboard_dir) / f"rank{rank}", len(suite.seeds) > 1)
            if tensorboard_dir is not None
            else None
        )
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.references_only = references_only
        self.cell_seconds = None if cell_seconds is None else positive_number("cell_seconds", cell_seconds)
        self.config_hash = suite.config_hash()
        self.code_version = code_version()
        self.protocol = UpdateProtocol(**asdict(suite.protocol))
        self._datamodule: Any = None
        self._model: Any = None
        self.stage: dict[str, Any] | None = None
        self._prior: Any = None
        self._indices: list[int] | None = None
        self._victims: dict[int, _Victim] = {}
        self._setting_cache: _Setting | None = None
        self._done_together: set[CellKey] = set()  # stored beside the cell they were computed with

    # ------------------------------------------------------------------------------------------------ preflight
    def preflight(self) -> None:
        """Check everything a run needs before the first cell; raise ``MissingRequirement`` or ``SuiteError``.

        Missing data, weights or GPU are collected into one message; bad attack/defense parameters name the field.
        """
        suite = self.suite
        missing = self._missing_requirements()
        if missing:
            raise MissingRequirement(
                f"suite {suite.name!r} ({suite.source}) cannot run on this machine; missing:\n  - "
                + "\n  - ".join(missing)
            )
        try:
            self.model()
        except DataNotFoundError as error:
            needed = "the victim's training data" if suite.model.train is not None else "the victims' data"
            raise MissingRequirement(f"suite {suite.name!r}: {needed} missing: {error}") from None
        except FileNotFoundError as error:
            raise MissingRequirement(f"suite {suite.name!r}: victim model checkpoint missing: {error}") from None
        except (ValueError, TypeError) as error:
            raise SuiteError(suite.source, "model", str(error)) from None
        self._check_defenses_and_attacks()
        if suite.utility.enabled and not self.references_only:
            self._check_utility()
        if any(r.name == REFERENCE_PREFIX + "class-mean" for r in suite.reference_attacks()) and not hasattr(
            self.datamodule(), "class_means"
        ):
            raise SuiteError(
                suite.source,
                "references.class_mean",
                f"datamodule {suite.datamodule.name!r} has no class_means(); set it to false",
            )

    def _missing_requirements(self) -> list[str]:
        """GPU, files, data and prior this machine lacks (bad datamodule or prior options raise ``SuiteError``)."""
        suite = self.suite
        missing: list[str] = []
        if suite.requires.gpu and not torch.cuda.is_available():
            missing.append("a CUDA GPU (torch.cuda.is_available() is False)")
        for path in suite.requires.files:
            expanded = Path(os.path.expandvars(os.path.expanduser(path)))
            if not expanded.exists():
                missing.append(f"file {expanded}")
        try:
            self.datamodule()
        except (ValueError, TypeError) as error:
            raise SuiteError(suite.source, "datamodule", str(error)) from None
        except (FileNotFoundError, RuntimeError) as error:
            missing.append(f"data: {error}")
        else:
            try:
                self._victim_indices()
            except ValueError as error:
                raise SuiteError(suite.source, "victims", f"victims.count x victims.batch_size: {error}") from None
            except (FileNotFoundError, RuntimeError) as error:
                missing.append(f"data: {error}")
        if suite.prior is not None:
            try:
                self.prior()
            except FileNotFoundError as error:
                missing.append(f"prior: {error}")
            except ImportError as error:
                missing.append(f"prior {suite.prior!r}: {error}")
            except ValueError as error:
                raise SuiteError(suite.source, "prior", str(error)) from None
        return missing

    def _check_defenses_and_attacks(self) -> None:
        """Build every defense and attack once, so a bad parameter stops the run before any cell."""
        suite = self.suite
        for defense in suite.defenses:
            try:
                built = build_defense(dict(defense.spec))
            except (ValueError, TypeError) as error:
                raise SuiteError(suite.source, f"defenses ({defense.label})", str(error)) from None
            if built.fedsgd_only and not self.protocol.is_fedsgd:
                raise SuiteError(
                    suite.source,
                    f"defenses ({defense.label})",
                    f"{built.name} recomputes a FedSGD gradient, so it cannot defend a {suite.protocol.describe()} "
                    "update; leave it out of this suite's defenses or use update.algorithm: fedsgd",
                )
        for attack in suite.attacks:
            try:
                make_attack(**self._attack_params(attack, suite.seeds[0]))
            except (ValueError, TypeError) as error:
                raise SuiteError(suite.source, f"attacks ({attack.label})", str(error)) from None
            except FileNotFoundError as error:
                raise MissingRequirement(f"suite {suite.name!r}: attack {attack.label}: {error}") from None

    def _check_utility(self) -> None:
        """The utility options as ``utility_cost`` takes them, its victim included (a typo fails here, not 23 times
        after the run)."""
        try:
            config = UtilityConfig.from_options(self.suite.utility.options)
            VICTIMS.lookup(config.cosine_victim)
        except (ValueError, TypeError) as error:
            raise SuiteError(self.suite.source, "utility.options", str(error)) from None

    # ------------------------------------------------------------------------------------------- lazy pieces
    def datamodule(self) -> Any:
        if self._datamodule is None:
            datamodule = make_datamodule(self.suite.datamodule.name, **dict(self.suite.datamodule.options))
            datamodule.setup("predict")
            self._datamodule = datamodule
        return self._datamodule

    def _victim_indices(self) -> list[int]:
        if self._indices is None:
            victims = self.suite.victims
            self._indices = self.datamodule().victim_indices(victims.count * victims.batch_size, victims.seed)
        return self._indices

    def model(self) -> Any:
        """The victim at the round's weights: as initialised, from ``model.checkpoint``, or trained to the suite's
        stage (``model.train``; cached by its configuration's hash, its accuracies in the store's metadata)."""
        if self._model is None:
            datamodule = self.datamodule()
            config = self.suite.model
            shape = tuple(datamodule.image_shape)
            if config.train is None:
                model = make_victim(
                    config.name, datamodule.num_classes, shape, seed=config.seed, checkpoint=config.checkpoint
                )
            else:
                stage = victim_stage(
                    config.name,
                    num_classes=datamodule.num_classes,
                    image_shape=shape,
                    model_seed=config.seed,
                    datamodule=datamodule,
                    datamodule_key=asdict(self.suite.datamodule),
                    spec=TrainingSpec(**asdict(config.train)),
                    cache_dir=victim_cache(),
                )
                model = stage.model
                self.stage = {
                    "stage": config.train.stage,
                    "key": stage.key,
                    "train_accuracy": stage.train_accuracy,
                    "test_accuracy": stage.test_accuracy,
                }
            self._model = model.to(self.device)
        return self._model

    def prior(self) -> Any:
        if self._prior is None and self.suite.prior is not None:
            prior = load_prior(self.suite.prior)
            if isinstance(prior, torch.nn.Module):
                prior = prior.eval().requires_grad_(False).to(self.device)
            self._prior = prior
        return self._prior

    def victim(self, index: int) -> _Victim:
        """The ground truth and clean update of victim ``index`` (stored in the ``victims`` table once)."""
        if index not in self._victims:
            batch = self.suite.victims.batch_size
            indices = self._victim_indices()[index * batch : (index + 1) * batch]
            datamodule = self.datamodule()
            images, labels = datamodule.victim_batch(indices)
            inputs = datamodule.normalization.normalize(images).to(self.device)
            model = self.model()
            update = self.protocol.client_update(model, inputs, labels.to(self.device))
            labels_hat = infer_labels(update, model).cpu()
            self._victims = {index: _Victim(images, labels, inputs, update, labels_hat)}
            assert self.store is not None
            self.store.put_victim(
                VictimRow(self.suite.name, index, list(indices), labels.tolist(), images.numpy().astype(np.float32))
            )
        return self._victims[index]

    # ------------------------------------------------------------------------------------------------ running
    def cells(self) -> list[Cell]:
        """This rank's cells (only the reference cells when ``references_only``); an attack cell and the control it
        is computed with (``paired``) fall to the same rank."""
        cells = expand_cells(self.suite)
        if self.references_only:
            cells = [cell for cell in cells if cell.kind == "reference" and cell.defense is None]
        units: dict[Any, list[Cell]] = {}
        for cell in cells:
            pair = self.paired(cell)
            units.setdefault(cell.key() if pair is None else pair[0].key(), []).append(cell)
        return [cell for unit in shard(list(units.values()), self.rank, self.world_size) for cell in unit]

    def paired(self, cell: Cell) -> tuple[Cell, Cell] | None:
        """The attack cell and its control cell that are computed together as one population (``batch_controls``,
        for an attack with ``joint_targets``), whichever of them a run still needs: their numbers then never
        depend on that. None for any other cell."""
        if not self.suite.batch_controls or cell.kind == "reference":
            return None
        if not ATTACKS.lookup(cell.attack.name).searches_together(dict(cell.attack.spec)):
            return None
        return replace(cell, control=False), replace(cell, control=True)

    def run(self, stop: Callable[[], bool] | None = None, also_finished: set[CellKey] | None = None) -> RunSummary:
        """Compute this rank's unfinished cells (and utility costs); failures are recorded and listed, not raised.

        Each cell is claimed in the store before it is computed: another run on the same store skips it, and waits
        for it at the end (taking it over if its owner dies). A failed cell (an error, or past ``cell_seconds``) is
        recorded in the store with its reason.

        Args:
            stop: polled before each cell; True ends the run early (what is done stays done).
            also_finished: keys finished in other stores (other ranks' shards), skipped as well.
        """
        if self.store is None:
            raise RuntimeError("Harness.run needs a results store")
        if self.cell_seconds is not None and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("a per-cell time limit (cell_seconds) needs the main thread: it uses SIGALRM")
        start = time.perf_counter()
        summary = RunSummary()
        self.store.claim_context(self.suite.name, self.suite.context())
        self.model()
        if self.stage is not None:
            self.store.set_meta(f"{STAGE_META}{self.suite.name}", canonical_json(self.stage))
        if self.suite.utility.enabled and not self.references_only:
            self._utility_phase(summary)
        cells = self.cells()
        summary.total = len(cells)
        finished = self.store.finished_keys(self.suite.name) | (also_finished or set())
        pending = [cell for cell in cells if cell.key() not in finished]
        summary.skipped = len(cells) - len(pending)
        bar = self._progress(len(cells), summary.skipped)
        try:
            with CellClaims(self.store, self.suite.name) as claims:
                held = self._run_cells(pending, claims, summary, bar, stop)
                if held:
                    self.log(f"waiting for {len(held)} cells another run on this store is computing")
                while held:
                    time.sleep(CLAIM_POLL_SECONDS)
                    held = self._run_cells(held, claims, summary, bar, stop, retry_failed=False)
        finally:
            if bar is not None:
                bar.close()
            if self.tensorboard is not None:
                self.tensorboard.close()
        summary.seconds = time.perf_counter() - start
        return summary

    def _run_cells(
        self,
        cells: list[Cell],
        claims: CellClaims,
        summary: RunSummary,
        bar: Any,
        stop: Callable[[], bool] | None,
        retry_failed: bool = True,
    ) -> list[Cell]:
        """Compute every cell this run can claim; return those another live run holds (none after ``stop``)."""
        held: list[Cell] = []
        for cell in cells:
            if stop is not None and stop():
                return []
            if cell.key() in self._done_together:
                if bar is not None:
                    bar.update(1)
                continue
            taken = claims.take(cell.key(), retry_failed)
            if taken is not None and taken[0] == HELD:
                held.append(cell)
                continue
            if taken is None:
                if bar is not None:
                    bar.set_postfix_str(cell.describe()[:60], refresh=False)
                self._run_cell(cell, summary, claims, retry_failed)
            elif taken[0] == FAILED:
                summary.failed.append((cell.describe(), f"failed in another run: {taken[1]}"))
            elif taken[0] == FINISHED:
                summary.elsewhere += 1
            if bar is not None:
                bar.update(1)
        return held

    def _run_cell(self, cell: Cell, summary: RunSummary, claims: CellClaims, retry_failed: bool = True) -> None:
        """Compute and store one claimed cell (a paired cell with its partner, which is stored too when this run can
        claim it); a failure (an error, or the time limit, per cell computed) is recorded in the store and listed,
        never raised (the other cells go on)."""
        assert self.store is not None
        pair = self.paired(cell)
        together, stored = (list(pair) if pair is not None else [cell]), [cell]
        partner = [other for other in together if other != cell]
        if partner and claims.take(partner[0].key(), retry_failed) is None:
            stored.append(partner[0])
        limit = None if self.cell_seconds is None else self.cell_seconds * len(together)
        try:
            self.victim(cell.victim)  # the ground truth is stored outside the time limit
            with cell_time_limit(limit):
                results = self.compute(together)
        except Exception as error:  # one failed cell must not stop the others
            reason = f"{type(error).__name__}: {error}"
            self.log(f"cell failed: {cell.describe()}\n{traceback.format_exc(limit=4)}")
            for each in stored:
                summary.failed.append((each.describe(), reason))
                self.store.put_failure(self._failure(each, reason), claims.owner)
        else:
            for each in stored:
                row, trace = results[together.index(each)]
                self.store.put_cell(row)
                summary.computed += 1
                if self.tensorboard is not None:
                    self.tensorboard.add(row, trace)
        self._done_together.update(each.key() for each in stored[1:])

    def _identity(self, cell: Cell) -> dict[str, Any]:
        """The fields that name ``cell`` in the store (``CellIdentity``): key, kind, labels, provenance."""
        return {
            "suite": self.suite.name,
            "victim": cell.victim,
            "defense": dict(cell.defense.spec) if cell.defense is not None else None,
            "attack": cell.attack_key(),
            "seed": cell.seed,
            "kind": cell.kind,
            "defense_label": cell.defense.label if cell.defense is not None else "prior only",
            "attack_label": cell.attack_label,
            "config_hash": self.config_hash,
            "code_version": self.code_version,
        }

    def _failure(self, cell: Cell, reason: str) -> FailureRow:
        """The store's record of a failed cell: its key, labels, provenance and reason."""
        return FailureRow(**self._identity(cell), reason=reason)

    def _progress(self, total: int, done: int) -> Any:
        """The cells' progress bar on stderr (None without ``progress``); redrawn at most every
        ``LOG_PROGRESS_SECONDS`` when stderr is not a terminal, so a log file gets few lines."""
        if not self.progress:
            return None
        from tqdm import tqdm

        return tqdm(
            total=total,
            initial=done,
            desc=f"{self.suite.name} cells" + (f" (rank {self.rank}/{self.world_size})" if self.world_size > 1 else ""),
            unit="cell",
            file=sys.stderr,
            dynamic_ncols=True,
            mininterval=0.1 if sys.stderr.isatty() else LOG_PROGRESS_SECONDS,
        )

    def _utility_phase(self, summary: RunSummary) -> None:
        """Compute the utility costs of this rank's defense settings missing from the store, then log that the phase
        is done and how long it took (``benchmarks.run`` announces it before; no progress bar runs meanwhile)."""
        start, failed_before = time.perf_counter(), len(summary.failed)
        defenses = shard(self.suite.defenses, self.rank, self.world_size)
        computed = sum(self._utility(defense, summary) for defense in defenses)
        if not computed:
            return
        failed = len(summary.failed) - failed_before
        rank = f"[rank {self.rank}/{self.world_size}] " if self.world_size > 1 else ""
        self.log(
            f"{rank}utility cost: done, {computed} defense settings in {time.perf_counter() - start:.1f} s"
            + (f" ({failed} failed)" if failed else "")
        )

    def _utility(self, defense: DefenseConfig, summary: RunSummary) -> bool:
        """Compute and store the utility cost of ``defense`` unless the store has it; whether it was computed (a
        failure is listed in ``summary`` and counts as computed)."""
        options = {"seed": self.suite.utility.seed, **dict(self.suite.utility.options)}
        assert self.store is not None
        if self.store.utility(defense.spec, options) is not None:
            return False
        start = time.perf_counter()
        try:
            metrics = utility_cost(dict(defense.spec), **options)
        except Exception as error:
            summary.failed.append((f"utility cost of {defense.label}", f"{type(error).__name__}: {error}"))
            self.log(f"utility cost failed for {defense.label}\n{traceback.format_exc(limit=4)}")
            return True
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.store.put_utility(
            defense.spec, options, clean, self.config_hash, self.code_version, time.perf_counter() - start
        )
        return True

    # -------------------------------------------------------------------------------------------------- cells
    def _attack_params(self, attack: AttackConfig, seed: int) -> dict[str, Any]:
        return {**dict(attack.spec), "seed": seed, "adaptive": attack.adaptive}

    def _setting(self, cell: Cell, victim: _Victim) -> _Setting:
        """The cell's defense setting on its victim and seed (the last one is kept: cells come victim-major)."""
        assert cell.defense is not None
        key = (cell.victim, cell.defense_json, cell.seed)
        if self._setting_cache is None or self._setting_cache.key != key:
            defense = build_defense(dict(cell.defense.spec))
            generator = torch.Generator().manual_seed(
                seed_from(self.suite.name, cell.victim, dict(cell.defense.spec), cell.seed)
            )
            defended = defense(
                victim.update,
                model=self.model(),
                images=victim.inputs,
                labels=victim.labels.to(self.device),
                generator=generator,
            )
            labels = infer_labels(defended, self.model()).cpu()
            self._setting_cache = _Setting(key, defense, defended, labels)
        return self._setting_cache

    def _control_images(self, cell: Cell, labels: torch.Tensor) -> torch.Tensor:
        """One image per label (B, C, H, W) in [0, 1]: a seeded draw from the victims split, of the same class and
        never one of the suite's victims (the public split of a datamodule need not be on the machine)."""
        datamodule = self.datamodule()
        excluded = set(self._victim_indices())
        total = len(datamodule.victims)
        generator = torch.Generator().manual_seed(seed_from(self.suite.name, cell.victim, cell.seed, CONTROL))
        chosen: list[int] = []
        for label in labels.tolist():
            for _ in range(CONTROL_DRAWS):
                index = int(torch.randint(total, (1,), generator=generator))
                if index not in excluded and index not in chosen and int(datamodule.victim_batch([index])[1]) == label:
                    chosen.append(index)
                    break
            else:
                raise RuntimeError(
                    f"no image of class {label} outside the suite's victims in {CONTROL_DRAWS} draws for the control"
                )
        return datamodule.victim_batch(chosen)[0]

    def _control(self, cell: Cell, setting: _Setting) -> Any:
        """The control update: the defended update of another image of each class inferred from the defended
        update, through the same defense (its noise drawn from the control's own seed)."""
        assert cell.defense is not None
        if setting.control is None:
            labels = setting.labels.to(self.device)
            inputs = self.datamodule().normalization.normalize(self._control_images(cell, setting.labels))
            inputs = inputs.to(self.device)
            generator = torch.Generator().manual_seed(
                seed_from(self.suite.name, cell.victim, dict(cell.defense.spec), cell.seed, CONTROL)
            )
            update = self.protocol.client_update(self.model(), inputs, labels)
            setting.control = setting.defense(
                update, model=self.model(), images=inputs, labels=labels, generator=generator
            )
        return setting.control

    def _simulation_check(self, cell: Cell, victim: _Victim, setting: _Setting) -> SimulationCheck:
        """``check_simulation`` of the setting's defense on the victim's clean update."""
        assert cell.defense is not None
        if setting.check is None:
            setting.check = check_simulation(
                setting.defense,
                victim.update,
                model=self.model(),
                images=victim.inputs,
                labels=victim.labels.to(self.device),
                seed=seed_from(self.suite.name, cell.victim, dict(cell.defense.spec), cell.seed, "simulation-check"),
            )
        return setting.check

    def _attacks(self, cells: Sequence[Cell], victim: _Victim) -> list[_Reconstructed]:
        """Reconstruct from the defended update (a control cell: from the control update), the cells (one, or an
        attack and its control, ``paired``) as one ``reconstruct_together``: per cell its images, labels,
        evaluations, seconds as the attack reports them, the row's diagnostics and the search's loss trace."""
        setting = self._setting(cells[0], victim)
        received = [self._control(cell, setting) if cell.control else setting.defended for cell in cells]
        attack = make_attack(**self._attack_params(cells[0].attack, cells[0].seed))
        targets = [
            AttackTarget(
                self.model(),
                update,
                defense=setting.defense,
                image_shape=tuple(self.datamodule().image_shape),
                normalization=self.datamodule().normalization,
                protocol=self.protocol,
            )
            for update in received
        ]
        accelerator = "gpu" if self.device.type == "cuda" else "cpu"
        if len(targets) == 1:
            reconstructions = [attack.reconstruct(targets[0], accelerator=accelerator)]
        else:
            reconstructions = attack.reconstruct_together(targets, accelerator=accelerator)
        check = self._simulation_check(cells[0], victim, setting)
        return [self._reconstructed(r, update, check) for r, update in zip(reconstructions, received)]

    def _reconstructed(self, reconstruction: Any, received: Any, check: SimulationCheck) -> _Reconstructed:
        """A cell's ``_Reconstructed`` from the attack's ``Reconstruction`` of ``received``."""
        images = reconstruction.images.detach().cpu().float().clamp(0, 1)
        labels_hat = reconstruction.labels.detach().cpu().long().reshape(-1)
        diagnostics = {MATCH_LOSS: self._match_loss(images, labels_hat, received), SIMULATION_OK: float(check.passed)}
        if "still_improving" in reconstruction.extras:
            diagnostics[STILL_IMPROVING] = float(bool(reconstruction.extras["still_improving"]))
        evaluations, seconds = int(reconstruction.evaluations), float(reconstruction.seconds)
        return images, labels_hat, evaluations, seconds, diagnostics, [float(loss) for loss in reconstruction.trace]

    def _match_loss(self, images: torch.Tensor, labels: torch.Tensor, received: Any) -> float:
        """The common distance of the attacker's pick: 1 - cosine similarity between the update the protocol makes
        from ``images`` with ``labels`` and the received update (no defense simulation: nothing a defense says enters
        it, and the cosine ignores the update's scale)."""
        inputs = self.datamodule().normalization.normalize(images).to(self.device)
        gradients = self.protocol.client_update(self.model(), inputs, labels.to(self.device)).gradients
        trial = [g.unsqueeze(0) for g in gradients]
        with torch.no_grad():
            return float(gradient_distance(trial, [g.to(self.device) for g in received.gradients], "cosine")[0])

    def _reference(self, cell: Cell, victim: _Victim) -> _Reconstructed:
        """A prior-only pseudo-attack: the inferred label and the prior, never the gradient otherwise. Per defense
        setting the label is the one inferred from the defended update, as the attacks infer it."""
        start = time.perf_counter()
        labels = victim.labels_hat if cell.defense is None else self._setting(cell, victim).labels
        generator = torch.Generator().manual_seed(seed_from(self.suite.name, cell.victim, cell.attack_json, cell.seed))
        prior = None if cell.attack.name == REFERENCE_PREFIX + "class-mean" else self.prior()
        images, evaluations = reference_images(
            cell.attack,
            datamodule=self.datamodule(),
            prior=prior,
            images=victim.images,
            labels=labels,
            generator=generator,
            device=self.device,
        )
        return images, labels, evaluations, time.perf_counter() - start, {}, []

    def _mse_r(self, images: torch.Tensor, victim: _Victim) -> float:
        """MSE-R of the reconstruction, its images matched to the victim's as the image metrics match them."""
        matched = images[match_reconstructions(images, victim.images)]
        inputs = self.datamodule().normalization.normalize(matched).to(self.device)
        return float(mse_representation(self.model(), inputs, victim.inputs).mean())

    def compute(self, cells: Sequence[Cell]) -> list[tuple[CellRow, list[float]]]:
        """Run one cell, or a ``paired`` attack and control together: per cell its row (not yet stored) and, beside
        it, the search's loss after every step (empty for a reference cell), which the store does not keep and
        TensorBoard shows."""
        victim = self.victim(cells[0].victim)
        if cells[0].attack.is_reference:
            return [self._row(cell, victim, self._reference(cell, victim)) for cell in cells]
        return [self._row(cell, victim, result) for cell, result in zip(cells, self._attacks(cells, victim))]

    def _row(self, cell: Cell, victim: _Victim, reconstructed: _Reconstructed) -> tuple[CellRow, list[float]]:
        """The cell's row (and trace) from its reconstruction, scored against the victim's images."""
        images, labels_hat, evaluations, seconds, diagnostics, trace = reconstructed
        if tuple(images.shape) != tuple(victim.images.shape):
            raise RuntimeError(f"reconstruction has shape {tuple(images.shape)}, expected {tuple(victim.images.shape)}")
        metrics = {
            **reconstruction_metrics(images, victim.images, labels_hat, victim.labels),
            MSE_R: self._mse_r(images, victim),
            **diagnostics,
        }
        row = CellRow(
            **self._identity(cell),
            seconds=seconds,
            evaluations=evaluations,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            labels=labels_hat.tolist(),
            images=images.numpy().astype(np.float32),
        )
        return row, trace
