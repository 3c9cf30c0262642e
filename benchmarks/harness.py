"""The harness: a suite becomes cells, each cell becomes one row of the results store.

A cell is (victim, defense setting, attack, seed). For each one the harness builds the victim batch (the only
place the private images exist), the client's shared update, the defended update (its generator seeded from the
cell key without the attack, so every attack faces the same defended update), runs ``attack.reconstruct`` on an
``AttackTarget`` (no private images in it) and scores the reconstruction against the ground truth.

Prior-only reference rows are pseudo-attacks computed per (victim, seed), independent of the defense: the mean
public image of the inferred class, a random prior sample of that class, and the prior's ceiling (its latent fitted
with the pixels known). They tell how much a prior "recovers" without any leakage.

Cells are independent: ``shard(cells, rank, world_size)`` deals them round-robin to ranks, all writing to the same
SQLite store (WAL mode). A cell found in the store is skipped, so a killed run resumes where it stopped.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.config import (
    REFERENCE_PREFIX,
    AttackConfig,
    DefenseConfig,
    SuiteConfig,
    SuiteError,
    canonical_json,
)
from benchmarks.store import CellRow, ResultsStore, VictimRow


class MissingRequirement(RuntimeError):
    """The suite needs data, weights or a device this machine lacks; the message lists what is missing."""


@dataclass(frozen=True)
class Cell:
    """One unit of work. ``defense`` is None for prior-only reference rows."""

    victim: int
    defense: DefenseConfig | None
    attack: AttackConfig
    seed: int

    @property
    def defense_json(self) -> str:
        return canonical_json(dict(self.defense.spec) if self.defense is not None else None)

    @property
    def attack_json(self) -> str:
        return canonical_json(self.attack.key())

    def key(self) -> tuple[int, str, str, int]:
        """(victim, defense JSON, attack JSON, seed); with the suite name, the store's primary key."""
        return (self.victim, self.defense_json, self.attack_json, self.seed)

    @property
    def kind(self) -> str:
        return "reference" if self.attack.is_reference else "attack"

    def describe(self) -> str:
        defense = self.defense.label if self.defense is not None else "-"
        return f"victim {self.victim} | {defense} | {self.attack.label} | seed {self.seed}"


def expand_cells(suite: SuiteConfig) -> list[Cell]:
    """Every cell of the suite, victim-major (references first), so consecutive cells share work."""
    cells: list[Cell] = []
    for victim in range(suite.victims.count):
        for seed in suite.seeds:
            cells.extend(Cell(victim, None, reference, seed) for reference in suite.reference_attacks())
            for defense in suite.defenses:
                cells.extend(Cell(victim, defense, attack, seed) for attack in suite.attacks)
    return cells


def shard(items: Sequence[Any], rank: int, world_size: int) -> list[Any]:
    """Round-robin share of ``items`` for ``rank`` of ``world_size`` (every item in exactly one share)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, {world_size=}")
    return list(items[rank::world_size])


def seed_from(*parts: Any) -> int:
    """A 63-bit seed derived from plain-data ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()
    return int(digest[:15], 16)


def code_version() -> str:
    """``git describe --always --dirty`` of the source tree when it is a checkout, else the package version."""
    import ggl

    root = Path(ggl.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            described = subprocess.run(
                ["git", "describe", "--always", "--dirty", "--tags"],
                cwd=root,
                capture_output=True,
                text=True,
                timeout=10,
                check=True,
            ).stdout.strip()
            if described:
                return f"git:{described}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"ggl-bench {ggl.__version__}"


# ----------------------------------------------------------------------------------------------------------------
# Components: the library functions the harness calls (replaceable, e.g. to give a test a tiny attack).


def build_defense(spec: dict[str, Any]) -> Any:
    """A defense from its spec: a registered name (``make_defense``) or ``module:Class`` with parameters."""
    name = str(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if ":" not in name:
        from ggl.defenses import make_defense

        return make_defense(name, **params)
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"defense {name!r}: cannot import module {module_name!r} ({error})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"defense {name!r}: module {module_name!r} has no attribute {class_name!r}")
    try:
        defense = cls(**params)
    except TypeError as error:
        raise ValueError(f"defense {name!r}: bad parameters {sorted(params)} ({error})") from None
    for needed in ("__call__", "simulate"):
        if not callable(getattr(defense, needed, None)):
            raise ValueError(f"defense {name!r} must be callable and have simulate(trial_gradients, received)")
    return defense


def _default_utility(spec: dict[str, Any], seed: int, **options: Any) -> dict[str, float]:
    from benchmarks.utility import utility_cost

    return dict(utility_cost(spec, seed=seed, **options))


def _default_load_prior(name: str) -> Any:
    from ggl.priors import load_prior

    return load_prior(name)


def _default_make_attack(name: str, **params: Any) -> Any:
    from ggl.attacks import make_attack

    return make_attack(name, **params)


def _default_metrics(
    images: torch.Tensor, original: torch.Tensor, labels_hat: torch.Tensor, labels: torch.Tensor
) -> dict[str, float]:
    from ggl.metrics import reconstruction_metrics

    return dict(reconstruction_metrics(images, original, labels_hat, labels))


@dataclass(frozen=True)
class Components:
    """The library calls the harness makes; the defaults are the real ones."""

    make_attack: Callable[..., Any] = _default_make_attack
    build_defense: Callable[[dict[str, Any]], Any] = build_defense
    metrics: Callable[..., dict[str, float]] = _default_metrics
    utility: Callable[..., dict[str, float]] = _default_utility
    load_prior: Callable[[str], Any] = _default_load_prior


# ----------------------------------------------------------------------------------------------------------------


@dataclass
class RunSummary:
    """What one ``Harness.run`` did."""

    total: int = 0
    skipped: int = 0
    computed: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0

    def lines(self) -> list[str]:
        lines = [
            f"{self.total} cells: {self.skipped} already in the store, {self.computed} computed, "
            f"{len(self.failed)} failed ({self.seconds:.1f} s)"
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


class Harness:
    """Runs the cells of one suite into one results store.

    Args:
        suite: the validated suite. store: the results store (may be set later, after ``preflight``).
        components: library calls (defaults: the real ones).
        rank, world_size: this process's share of the cells. device: "cpu", "cuda" or None (CUDA when available).
        progress: show a progress bar over this rank's cells. tensorboard_dir: scalars and images per cell.
        log: where one-line messages go.
    """

    def __init__(
        self,
        suite: SuiteConfig,
        store: ResultsStore | None,
        components: Components | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: str | None = None,
        progress: bool = True,
        tensorboard_dir: str | Path | None = None,
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.suite = suite
        self.store = store
        self.components = components or Components()
        self.rank = rank
        self.world_size = world_size
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.progress = progress
        self.tensorboard_dir = Path(tensorboard_dir) if tensorboard_dir is not None else None
        self.log = log or (lambda message: print(message, file=sys.stderr))
        self.config_hash = suite.config_hash()
        self.code_version = code_version()
        self._datamodule: Any = None
        self._model: Any = None
        self._prior: Any = None
        self._indices: list[int] | None = None
        self._victims: dict[int, _Victim] = {}
        self._defended_cache: tuple[tuple[int, str, int], Any, Any] | None = None
        self._writer: Any = None

    # ------------------------------------------------------------------------------------------------ preflight
    def preflight(self) -> None:
        """Check everything a run needs before the first cell; raise ``MissingRequirement`` or ``SuiteError``.

        Missing data, weights or GPU are collected into one message; bad attack/defense parameters name the field.
        """
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
            self._victim_indices()
        except (FileNotFoundError, ValueError, RuntimeError) as error:
            if isinstance(error, ValueError) and "unknown datamodule" in str(error):
                missing.append(f"datamodule: {error}")
            elif isinstance(error, ValueError):
                raise SuiteError(suite.source, "datamodule", str(error)) from None
            else:
                missing.append(f"data: {error}")
        if suite.prior is not None:
            try:
                self.prior()
            except FileNotFoundError as error:
                missing.append(f"prior: {error}")
            except (ValueError, ImportError) as error:
                if isinstance(error, ImportError):
                    missing.append(f"prior {suite.prior!r}: {error}")
                else:
                    raise SuiteError(suite.source, "prior", str(error)) from None
        if missing:
            raise MissingRequirement(
                f"suite {suite.name!r} ({suite.source}) cannot run on this machine; missing:\n  - "
                + "\n  - ".join(missing)
            )
        try:
            self.model()
        except FileNotFoundError as error:
            raise MissingRequirement(f"suite {suite.name!r}: victim model checkpoint missing: {error}") from None
        except ValueError as error:
            raise SuiteError(suite.source, "model", str(error)) from None
        for defense in suite.defenses:
            try:
                self.components.build_defense(dict(defense.spec))
            except (ValueError, TypeError) as error:
                raise SuiteError(suite.source, f"defenses ({defense.label})", str(error)) from None
        for attack in suite.attacks:
            try:
                self.components.make_attack(**self._attack_params(attack, suite.seeds[0]))
            except (ValueError, TypeError) as error:
                raise SuiteError(suite.source, f"attacks ({attack.label})", str(error)) from None
            except FileNotFoundError as error:
                raise MissingRequirement(f"suite {suite.name!r}: attack {attack.label}: {error}") from None
        if any(r.name == REFERENCE_PREFIX + "class-mean" for r in suite.reference_attacks()) and not hasattr(
            self.datamodule(), "class_means"
        ):
            raise SuiteError(
                suite.source,
                "references.class_mean",
                f"datamodule {suite.datamodule.name!r} has no class_means(); set it to false",
            )

    # ------------------------------------------------------------------------------------------- lazy pieces
    def datamodule(self) -> Any:
        if self._datamodule is None:
            from ggl.data import make_datamodule

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
        if self._model is None:
            from ggl.fl import make_victim

            datamodule = self.datamodule()
            config = self.suite.model
            model = make_victim(
                config.name,
                num_classes=datamodule.num_classes,
                image_shape=tuple(datamodule.image_shape),
                seed=config.seed,
                checkpoint=config.checkpoint,
            )
            self._model = model.to(self.device)
        return self._model

    def prior(self) -> Any:
        if self._prior is None and self.suite.prior is not None:
            prior = self.components.load_prior(self.suite.prior)
            if isinstance(prior, torch.nn.Module):
                prior = prior.eval().requires_grad_(False).to(self.device)
            self._prior = prior
        return self._prior

    def victim(self, index: int) -> _Victim:
        """The ground truth and clean update of victim ``index`` (stored in the ``victims`` table once)."""
        if index not in self._victims:
            from ggl.fl import infer_labels, shared_update

            batch = self.suite.victims.batch_size
            indices = self._victim_indices()[index * batch : (index + 1) * batch]
            datamodule = self.datamodule()
            images, labels = datamodule.victim_batch(indices)
            inputs = datamodule.normalization.normalize(images).to(self.device)
            model = self.model()
            update = shared_update(model, inputs, labels.to(self.device))
            labels_hat = infer_labels(update, model).cpu()
            self._victims = {index: _Victim(images, labels, inputs, update, labels_hat)}
            assert self.store is not None
            self.store.put_victim(
                VictimRow(self.suite.name, index, list(indices), labels.tolist(), images.numpy().astype(np.float32))
            )
        return self._victims[index]

    # ------------------------------------------------------------------------------------------------ running
    def cells(self) -> list[Cell]:
        """This rank's cells."""
        return shard(expand_cells(self.suite), self.rank, self.world_size)

    def run(
        self, stop: Callable[[], bool] | None = None, also_finished: set[tuple[int, str, str, int]] | None = None
    ) -> RunSummary:
        """Compute this rank's unfinished cells (and utility costs); failures are listed, not raised.

        Args:
            stop: polled before each cell; True ends the run early (what is done stays done).
            also_finished: keys finished in other stores (other ranks' shards), skipped as well.
        """
        if self.store is None:
            raise RuntimeError("Harness.run needs a results store")
        start = time.perf_counter()
        summary = RunSummary()
        self.store.claim_context(self.suite.name, self.suite.context())
        if self.suite.utility.enabled:
            for defense in shard(self.suite.defenses, self.rank, self.world_size):
                self._utility(defense, summary)
        cells = self.cells()
        summary.total = len(cells)
        finished = self.store.finished_keys(self.suite.name) | (also_finished or set())
        pending = [cell for cell in cells if cell.key() not in finished]
        summary.skipped = len(cells) - len(pending)
        bar = self._progress(len(cells), summary.skipped)
        try:
            for cell in pending:
                if stop is not None and stop():
                    break
                if bar is not None:
                    bar.set_postfix_str(cell.describe()[:60], refresh=False)
                try:
                    row = self.compute(cell)
                except Exception as error:  # one failed cell must not stop the others
                    summary.failed.append((cell.describe(), f"{type(error).__name__}: {error}"))
                    self.log(f"cell failed: {cell.describe()}\n{traceback.format_exc(limit=4)}")
                else:
                    self.store.put_cell(row)
                    summary.computed += 1
                    self._tensorboard(row)
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
            if self._writer is not None:
                self._writer.close()
        summary.seconds = time.perf_counter() - start
        return summary

    def _progress(self, total: int, done: int) -> Any:
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
        )

    def _utility(self, defense: DefenseConfig, summary: RunSummary) -> None:
        options = {"seed": self.suite.utility.seed, **dict(self.suite.utility.options)}
        assert self.store is not None
        if self.store.utility(defense.spec, options) is not None:
            return
        start = time.perf_counter()
        try:
            metrics = self.components.utility(dict(defense.spec), **options)
        except Exception as error:
            summary.failed.append((f"utility cost of {defense.label}", f"{type(error).__name__}: {error}"))
            self.log(f"utility cost failed for {defense.label}\n{traceback.format_exc(limit=4)}")
            return
        clean = {k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))}
        self.store.put_utility(
            defense.spec, options, clean, self.config_hash, self.code_version, time.perf_counter() - start
        )

    def _attack_params(self, attack: AttackConfig, seed: int) -> dict[str, Any]:
        params = {**dict(attack.spec), "seed": seed, "adaptive": attack.adaptive}
        if self.device.type == "cuda":
            params["accelerator"] = "gpu"
        return params

    def _defended(self, cell: Cell, victim: _Victim) -> tuple[Any, Any]:
        assert cell.defense is not None
        key = (cell.victim, cell.defense_json, cell.seed)
        if self._defended_cache is None or self._defended_cache[0] != key:
            defense = self.components.build_defense(dict(cell.defense.spec))
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
            self._defended_cache = (key, defense, defended)
        return self._defended_cache[1], self._defended_cache[2]

    def compute(self, cell: Cell) -> CellRow:
        """Run one cell and return its row (not yet stored)."""
        victim = self.victim(cell.victim)
        if cell.attack.is_reference:
            start = time.perf_counter()
            images, labels_hat, evaluations = self._reference(cell, victim)
            seconds = time.perf_counter() - start
        else:
            from ggl.attacks import AttackTarget

            defense, defended = self._defended(cell, victim)
            attack = self.components.make_attack(**self._attack_params(cell.attack, cell.seed))
            target = AttackTarget(
                self.model(),
                defended,
                defense=defense,
                image_shape=tuple(self.datamodule().image_shape),
                normalization=self.datamodule().normalization,
            )
            reconstruction = attack.reconstruct(target)
            images = reconstruction.images.detach().cpu().float().clamp(0, 1)
            labels_hat = reconstruction.labels.detach().cpu().long().reshape(-1)
            evaluations, seconds = int(reconstruction.evaluations), float(reconstruction.seconds)
        if tuple(images.shape) != tuple(victim.images.shape):
            raise RuntimeError(f"reconstruction has shape {tuple(images.shape)}, expected {tuple(victim.images.shape)}")
        metrics = self.components.metrics(images, victim.images, labels_hat, victim.labels)
        return CellRow(
            suite=self.suite.name,
            victim=cell.victim,
            defense=dict(cell.defense.spec) if cell.defense is not None else None,
            attack=cell.attack.key(),
            seed=cell.seed,
            kind=cell.kind,
            defense_label=cell.defense.label if cell.defense is not None else "prior only",
            attack_label=cell.attack.label,
            config_hash=self.config_hash,
            code_version=self.code_version,
            seconds=seconds,
            evaluations=evaluations,
            metrics={k: float(v) for k, v in metrics.items() if isinstance(v, (int, float))},
            labels=labels_hat.tolist(),
            images=images.numpy().astype(np.float32),
        )

    # ----------------------------------------------------------------------------------------- references
    def _reference(self, cell: Cell, victim: _Victim) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Prior-only pseudo-attacks: they use the inferred label and the prior, never the gradient otherwise."""
        kind = cell.attack.name[len(REFERENCE_PREFIX) :]
        labels_hat = victim.labels_hat
        if kind == "class-mean":
            means = self.datamodule().class_means()
            return means[labels_hat].float().clamp(0, 1), labels_hat, 0
        prior = self.prior()
        if prior is None:
            raise RuntimeError(f"reference {kind} needs a prior; the suite has none")
        generator = torch.Generator().manual_seed(seed_from(self.suite.name, cell.victim, cell.attack_json, cell.seed))
        conditional = int(getattr(prior, "num_classes", 0) or 0) > 0
        y = labels_hat.to(self.device) if conditional else None
        if kind == "prior-sample":
            z = prior.sample(len(labels_hat), generator=generator).to(self.device)
            with torch.no_grad():
                return self._to_victim_shape(prior(z, y)), labels_hat, 1
        if kind == "prior-ceiling":
            return (
                self._ceiling(cell, victim, prior, y, generator),
                labels_hat,
                (int(cell.attack.spec["steps"]) * int(cell.attack.spec["restarts"])),
            )
        raise RuntimeError(f"unknown reference kind {kind!r}")

    def _to_victim_shape(self, images: torch.Tensor) -> torch.Tensor:
        from ggl.priors.registry import adapt_images

        return adapt_images(images, tuple(self.datamodule().image_shape)).detach().cpu().float().clamp(0, 1)

    def _ceiling(
        self, cell: Cell, victim: _Victim, prior: Any, y: torch.Tensor | None, generator: torch.Generator
    ) -> torch.Tensor:
        """Fit the latent to the known pixels (Adam on z, restarts batched): the best the prior can represent."""
        from ggl.priors.registry import adapt_images

        steps, restarts, lr = (
            int(cell.attack.spec["steps"]),
            int(cell.attack.spec["restarts"]),
            float(cell.attack.spec["lr"]),
        )
        batch = victim.images.shape[0]
        target = victim.images.to(self.device).repeat(restarts, 1, 1, 1)
        labels = y.repeat(restarts) if y is not None else None
        latent = prior.sample(batch * restarts, generator=generator).to(self.device).requires_grad_(True)
        optimizer = torch.optim.Adam([latent], lr=lr)
        shape = tuple(self.datamodule().image_shape)
        with torch.enable_grad():
            for _ in range(steps):
                optimizer.zero_grad()
                errors = (adapt_images(prior(latent, labels), shape) - target).pow(2).flatten(1).mean(1)
                errors.sum().backward()
                optimizer.step()
        with torch.no_grad():
            images = adapt_images(prior(latent, labels), shape).clamp(0, 1)
            errors = (images - target).pow(2).flatten(1).mean(1).view(restarts, batch)
            best = errors.argmin(0)
            chosen = images.view(restarts, batch, *shape)[best, torch.arange(batch)]
        return chosen.detach().cpu().float()

    # ---------------------------------------------------------------------------------------- tensorboard
    def _tensorboard(self, row: CellRow) -> None:
        if self.tensorboard_dir is None:
            return
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(str(self.tensorboard_dir / f"rank{self.rank}"))
        tag = f"{row.defense_label}/{row.attack_label}" + (f"/seed{row.seed}" if len(self.suite.seeds) > 1 else "")
        for name, value in sorted(row.metrics.items()):
            if math.isfinite(value):
                self._writer.add_scalar(f"{tag}/{name}", value, global_step=row.victim)
        self._writer.add_scalar(f"{tag}/seconds", row.seconds, global_step=row.victim)
        self._writer.add_scalar(f"{tag}/evaluations", row.evaluations, global_step=row.victim)
        self._writer.add_images(f"{tag}/reconstruction", row.images, global_step=row.victim)
