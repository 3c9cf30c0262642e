"""The shape every attack shares: one ``AttackTarget`` in, one ``Reconstruction`` out.

An attack is a ``pl.LightningModule`` with manual optimisation: one Lightning step is one search step, so the
Trainer's progress bar, callbacks and loggers apply to the search. ``reconstruct(target)`` builds the Trainer,
feeds it one dummy batch per search step and returns the best candidate over all trials (restarts).

The attacker sees the victim's architecture and weights, the (defended) shared update, the defense's public
description and known labels when given. ``AttackTarget`` has no field for the private images by design.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import KW_ONLY, dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol, TypeVar

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from ggl.attacks.objective import DISTANCES, gradient_distance
from ggl.fl.client import SharedUpdate
from ggl.fl.labels import infer_labels
from ggl.fl.normalization import Normalization


class SimulatedDefense(Protocol):
    """What an attack needs from a defense (see ``ggl.defenses``): its name, spec and attacker-side simulation."""

    name: str

    @property
    def spec(self) -> dict[str, Any]: ...

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]: ...


@dataclass(frozen=True)
class AttackTarget:
    """Everything the attacker (the server) knows about one client update.

    Attributes:
        model: the victim model with the round's weights, in the mode the client used (``eval()`` for the zoo).
        update: the shared update as received, i.e. after the defense.
        defense: the defense the client runs (its public description), or None; used only by adaptive attacks.
        image_shape: (C, H, W) of one input image.
        normalization: the model's input normalisation (identity when None is given).
        labels: known labels (B,) as a LongTensor, or None to infer them from the update.

    There is deliberately no field for the private images. Fields after ``update`` are keyword-only.
    """

    model: nn.Module
    update: SharedUpdate
    _: KW_ONLY
    defense: SimulatedDefense | None = None
    image_shape: tuple[int, int, int]
    normalization: Normalization = None  # type: ignore[assignment]
    labels: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise ValueError(f"AttackTarget.model must be an nn.Module, got {type(self.model).__name__}")
        if not isinstance(self.update, SharedUpdate):
            raise ValueError(f"AttackTarget.update must be a SharedUpdate, got {type(self.update).__name__}")
        shape = tuple(int(s) for s in self.image_shape)
        if len(shape) != 3 or min(shape) < 1:
            raise ValueError(f"AttackTarget.image_shape must be (C, H, W) with positive sizes, got {self.image_shape}")
        object.__setattr__(self, "image_shape", shape)
        if self.normalization is None:
            object.__setattr__(self, "normalization", Normalization.identity(shape[0]))
        elif len(self.normalization.mean) != shape[0]:
            raise ValueError(
                f"AttackTarget.normalization has {len(self.normalization.mean)} channels but image_shape has {shape[0]}"
            )
        parameters = list(self.model.parameters())
        if len(parameters) != len(self.update.gradients):
            raise ValueError(
                f"AttackTarget.update has {len(self.update.gradients)} gradient tensors but the model has "
                f"{len(parameters)} parameters"
            )
        if self.labels is not None:
            labels = torch.as_tensor(self.labels)
            if labels.ndim != 1 or labels.shape[0] != self.update.num_samples or labels.is_floating_point():
                raise ValueError(
                    f"AttackTarget.labels must be integer class indices of shape ({self.update.num_samples},), "
                    f"got dtype {labels.dtype} shape {tuple(labels.shape)}"
                )
            object.__setattr__(self, "labels", labels.long())
        if self.defense is not None and not callable(getattr(self.defense, "simulate", None)):
            raise ValueError("AttackTarget.defense must have a simulate(trial_gradients, received) method or be None")

    @property
    def batch_size(self) -> int:
        """B, the number of images behind the update."""
        return self.update.num_samples


@dataclass
class Reconstruction:
    """What an attack returns.

    Attributes:
        images: (B, C, H, W) in [0, 1] pixel space.
        labels: (B,) class indices the attack used or recovered.
        trace: the search loss after every step (all trials, in order).
        evaluations: objective evaluations used (one per candidate gradient computed).
        seconds: wall time of ``reconstruct``.
        extras: attack-specific plain data (best trial, per-trial losses, ...).
    """

    images: torch.Tensor
    labels: torch.Tensor
    trace: list[float]
    evaluations: int
    seconds: float
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        """The final objective value of the returned candidate (``extras["loss"]``), NaN when unknown."""
        return float(self.extras.get("loss", math.nan))


class _Steps(torch.utils.data.Dataset[int]):
    """One dummy item per search step: the Trainer's loop is the search loop."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int) -> int:
        return index


class GradientInversionAttack(pl.LightningModule):
    """Base class of all attacks: Lightning plumbing, budgets, seeding, label policy, gradient matching, logging.

    Subclasses set ``name``, call ``super().__init__(...)`` and implement:
    ``setup_search(target)`` once per reconstruction, ``start_trial(trial)`` at every restart,
    ``search_step(step) -> float`` for one optimisation step, and ``trial_result() -> (images, labels, loss)``
    with images in [0, 1]. The base keeps the best trial by loss.

    Args (shared by every attack; subclasses expose them as keyword arguments):
        iterations: search steps per trial. restarts: trials; the lowest final loss wins.
        budget: optional cap on objective evaluations over all trials (stops the search early).
        seed: seeds every random choice (initialisations); the same seed gives the same reconstruction.
        adaptive: apply ``target.defense.simulate`` to trial gradients (the attacker knows the defense).
        metric: gradient distance, one of ``ggl.attacks.objective.DISTANCES``.
        accelerator: Lightning accelerator ("cpu", "gpu", "auto"). progress_bar: show Lightning's progress bar.
        log_dir: TensorBoard directory (None: no logging). log_every: steps between image grids in the log.

    Every ``__init__`` argument is stored under its own name, so ``spec`` can list them; ``accelerator``,
    ``progress_bar``, ``log_dir`` and ``log_every`` are run options and are left out of ``spec``.
    """

    name: ClassVar[str] = "base"
    run_options: ClassVar[tuple[str, ...]] = ("accelerator", "progress_bar", "log_dir", "log_every")

    def __init__(
        self,
        *,
        iterations: int,
        restarts: int = 1,
        budget: int | None = None,
        seed: int = 0,
        adaptive: bool = False,
        metric: str = "l2",
        accelerator: str = "cpu",
        progress_bar: bool = False,
        log_dir: str | Path | None = None,
        log_every: int = 100,
    ) -> None:
        super().__init__()
        _positive_int("iterations", iterations)
        _positive_int("restarts", restarts)
        if budget is not None:
            _positive_int("budget", budget)
        _positive_int("log_every", log_every)
        if metric not in DISTANCES:
            raise ValueError(f"metric must be one of {', '.join(sorted(DISTANCES))}, got {metric!r}")
        self.automatic_optimization = False
        self.iterations = int(iterations)
        self.restarts = int(restarts)
        self.budget = None if budget is None else int(budget)
        self.seed = int(seed)
        self.adaptive = bool(adaptive)
        self.metric = metric
        self.accelerator = accelerator
        self.progress_bar = bool(progress_bar)
        self.log_dir = None if log_dir is None else str(log_dir)
        self.log_every = int(log_every)
        self._reset()

    def _reset(self) -> None:
        self.target: AttackTarget | None = None
        self.evaluations = 0
        self.trace: list[float] = []
        self.trial_losses: list[float] = []
        self._best: tuple[torch.Tensor, torch.Tensor, float, int] | None = None
        self._trial = -1
        self._trial_open = False
        self._search: dict[str, Any] = {}  # victim and received gradients; a dict so the victim is no submodule
        self.generator = torch.Generator().manual_seed(self.seed)

    # ----------------------------------------------------------------------------------------------- public API

    @property
    def spec(self) -> dict[str, Any]:
        """The attack as plain data: ``make_attack(**attack.spec)`` builds the same attack."""
        parameters: dict[str, Any] = {}
        for cls in reversed(type(self).__mro__):
            init = cls.__dict__.get("__init__")
            if init is None or not issubclass(cls, GradientInversionAttack):
                continue
            for key, parameter in inspect.signature(init).parameters.items():
                if key == "self" or parameter.kind in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                    continue
                if key not in self.run_options:
                    parameters[key] = _plain(getattr(self, key))
        return {"name": self.name, **parameters}

    def reconstruct(
        self,
        target: AttackTarget,
        logger: pl.loggers.Logger | None = None,
        callbacks: Sequence[pl.Callback] = (),
    ) -> Reconstruction:
        """Run the search against ``target`` and return the best candidate over all trials.

        Args:
            target: what the server knows (no private images).
            logger: a Lightning logger to use instead of the TensorBoard logger built from ``log_dir``.
            callbacks: extra Lightning callbacks (they see ``attack/loss`` through ``self.log``).
        """
        if not isinstance(target, AttackTarget):
            raise ValueError(f"reconstruct expects an AttackTarget, got {type(target).__name__}")
        self._reset()
        self.target = target
        if logger is None and self.log_dir is not None:
            logger = pl.loggers.TensorBoardLogger(self.log_dir, name=self.name, default_hp_metric=False)
        start = time.perf_counter()
        loader = DataLoader(_Steps(self.iterations * self.restarts), batch_size=None)
        with _quiet_lightning(), torch.random.fork_rng(devices=[]), torch.enable_grad():
            torch.manual_seed(self.seed)
            trainer = pl.Trainer(
                accelerator=self.accelerator,
                devices=1,
                max_epochs=1,
                max_steps=-1,
                logger=logger if logger is not None else False,
                callbacks=list(callbacks),
                enable_checkpointing=False,
                enable_model_summary=False,
                enable_progress_bar=self.progress_bar,
                inference_mode=False,
                num_sanity_val_steps=0,
                log_every_n_steps=1,
            )
            trainer.fit(self, train_dataloaders=loader)
        if self._best is None:
            raise RuntimeError(f"{self.name}: the search ended before any trial finished")
        images, labels, loss, best_trial = self._best
        result = Reconstruction(
            images=images.detach().cpu(),
            labels=labels.detach().cpu(),
            trace=list(self.trace),
            evaluations=self.evaluations,
            seconds=time.perf_counter() - start,
            extras={"loss": loss, "best_trial": best_trial, "trial_losses": list(self.trial_losses)},
        )
        self.target = None
        self._search = {}
        return result

    # ------------------------------------------------------------------------------------ hooks for subclasses

    def setup_search(self, target: AttackTarget) -> None:
        """Once per reconstruction, before the first trial (labels, constants). Default: nothing."""

    def start_trial(self, trial: int) -> None:
        """Initialise the variables and the optimiser of trial ``trial`` (seeded through ``self.generator``)."""
        raise NotImplementedError

    def search_step(self, step: int) -> float:
        """One optimisation step of the current trial; returns the loss after (or during) the step."""
        raise NotImplementedError

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """The current trial's candidate: images (B, C, H, W) in [0, 1], labels (B,), and its loss."""
        raise NotImplementedError

    def preview(self) -> torch.Tensor:
        """The current candidate's images (B, C, H, W) in [0, 1] for the image log; should not spend evaluations."""
        return self.trial_result()[0]

    # ------------------------------------------------------------------------------- helpers for subclasses

    @property
    def victim(self) -> nn.Module:
        """The victim model on the attack's device (a copy when the device differs; the original is untouched)."""
        assert "victim" in self._search, "victim is available only during reconstruct"
        return self._search["victim"]

    @property
    def target_gradients(self) -> list[torch.Tensor]:
        """The received update's gradients on the attack's device."""
        return self._search["gradients"]

    def resolve_labels(self) -> torch.Tensor:
        """Known labels when the target has them, otherwise ``infer_labels`` on the received update."""
        assert self.target is not None
        labels = self.target.labels
        if labels is None:
            labels = infer_labels(self.target.update, self.target.model)
        return labels.to(self.device)

    def random_images(self, scale: float = 1.0) -> torch.Tensor:
        """Seeded Gaussian start (B, C, H, W) in the model's input space, drawn from ``self.generator``."""
        assert self.target is not None
        shape = (self.target.batch_size, *self.target.image_shape)
        return (scale * torch.randn(shape, generator=self.generator)).to(self.device)

    def pixel_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds (1, C, 1, 1) of valid pixels [0, 1] in the model's normalised input space."""
        assert self.target is not None
        channels = self.target.image_shape[0]
        norm = self.target.normalization
        zeros = torch.zeros(1, channels, 1, 1, device=self.device)
        return norm.normalize(zeros), norm.normalize(zeros + 1)

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs -> images in [0, 1] (denormalised and clamped)."""
        assert self.target is not None
        return self.target.normalization.denormalize(inputs.detach()).clamp(0, 1)

    def trial_gradients(self, inputs: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Gradients (1, *param_shape) of the mean cross-entropy of ``inputs`` (B, C, H, W) at the victim's weights.

        ``labels`` are class indices (B,) or soft-label logits (B, K) (DLG). The graph is kept so the distance can
        be differentiated with respect to ``inputs``; the victim's weights and ``.grad`` are never modified.
        Counts one objective evaluation.
        """
        victim = self.victim
        names = [name for name, _ in victim.named_parameters()]
        leaves = [p.detach().requires_grad_(True) for p in victim.parameters()]
        logits = torch.func.functional_call(victim, dict(zip(names, leaves)), (inputs,))
        if labels.is_floating_point():
            loss = torch.sum(-F.softmax(labels, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, labels)
        gradients = torch.autograd.grad(loss, leaves, create_graph=True)
        self.evaluations += 1
        trial = [g.unsqueeze(0) for g in gradients]
        assert self.target is not None
        if self.adaptive and self.target.defense is not None:
            trial = list(self.target.defense.simulate(trial, received=self._received_update()))
        return trial

    def gradient_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``metric`` distance between the trial gradient of ``inputs`` and the received update (a scalar)."""
        trial = self.trial_gradients(inputs, labels)
        return gradient_distance(trial, self.target_gradients, self.metric)[0]

    # ------------------------------------------------------------------------------------ Lightning plumbing

    def configure_optimizers(self) -> None:
        """Optimisers are built per trial inside the attack (L-BFGS needs a closure, restarts need fresh state)."""
        return None

    def on_fit_start(self) -> None:
        assert self.target is not None
        model = self.target.model
        device = self.device
        first = next(model.parameters(), None)
        if first is not None and first.device != device:
            model = copy.deepcopy(model).to(device)
        self._search = {"victim": model, "gradients": [g.detach().to(device) for g in self.target.update.gradients]}
        self.setup_search(self.target)

    def training_step(self, batch: Any, batch_idx: int) -> None:
        trial, step = divmod(batch_idx, self.iterations)
        if trial != self._trial:
            self._trial = trial
            self._trial_open = True
            self.start_trial(trial)
        loss = float(self.search_step(step))
        self.trace.append(loss)
        self.log("attack/loss", loss, prog_bar=True, logger=False, on_step=True, on_epoch=False, batch_size=1)
        logger = self.logger
        if logger is not None:
            logger.log_metrics({"attack/loss": loss, "attack/evaluations": self.evaluations}, step=batch_idx)
            if (batch_idx + 1) % self.log_every == 0:
                self._log_images(self.preview(), batch_idx + 1, logger)
        out_of_budget = self.budget is not None and self.evaluations >= self.budget
        if step == self.iterations - 1 or out_of_budget:
            self._finish_trial()
        if out_of_budget:
            self.trainer.should_stop = True

    def _finish_trial(self) -> None:
        images, labels, loss = self.trial_result()
        loss = float(loss)
        self.trial_losses.append(loss)
        if self._best is None or _better(loss, self._best[2]):
            self._best = (images.detach().clone(), labels.detach().clone(), loss, self._trial)
        self._trial_open = False

    def on_train_end(self) -> None:
        if self._trial_open:  # stopped early by a callback: the unfinished trial still competes
            self._finish_trial()
        if self.logger is not None and self._best is not None:  # before Lightning finalises the logger
            self._log_images(self._best[0], len(self.trace), self.logger)

    def _received_update(self) -> SharedUpdate:
        assert self.target is not None
        update = self.target.update
        gradients = self.target_gradients
        if gradients and update.gradients[0].device != gradients[0].device:
            return update.with_gradients(gradients)
        return update

    def _log_images(self, images: torch.Tensor, step: int, logger: Any) -> None:
        experiment = getattr(logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from torchvision.utils import make_grid

        grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=min(8, images.shape[0]))
        experiment.add_image("attack/reconstruction", grid, global_step=step)


# ------------------------------------------------------------------------------------------------- registry

AttackType = TypeVar("AttackType", bound=type[GradientInversionAttack])

ATTACKS: dict[str, type[GradientInversionAttack]] = {}
"""Attack classes by registry name (dlg, idlg, inverting_gradients, ggl)."""


def register_attack(name: str) -> Callable[[AttackType], AttackType]:
    """Class decorator: register an attack under ``name`` (sets ``cls.name``); refuses duplicate names."""

    def decorate(cls: AttackType) -> AttackType:
        if name in ATTACKS:
            raise ValueError(f"attack {name!r} is already registered by {ATTACKS[name].__qualname__}")
        if not (isinstance(cls, type) and issubclass(cls, GradientInversionAttack)):
            raise ValueError(f"register_attack({name!r}) needs a GradientInversionAttack subclass, got {cls!r}")
        cls.name = name
        ATTACKS[name] = cls
        return cls

    return decorate


def make_attack(name: str, **params: Any) -> GradientInversionAttack:
    """Build a registered attack by name, e.g. ``make_attack("idlg", iterations=300, seed=1)``.

    Unknown names and unknown parameters raise ``ValueError`` listing what is allowed.
    """
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; allowed: {', '.join(sorted(ATTACKS))}")
    cls = ATTACKS[name]
    allowed = _init_parameters(cls)
    unknown = sorted(set(params) - set(allowed))
    if unknown:
        raise ValueError(
            f"attack {name!r} got unknown parameter(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return cls(**params)


def _init_parameters(cls: type[GradientInversionAttack]) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None or not issubclass(klass, GradientInversionAttack):
            continue
        for key, parameter in inspect.signature(init).parameters.items():
            if key != "self" and parameter.kind not in (parameter.VAR_KEYWORD, parameter.VAR_POSITIONAL):
                names.append(key)
    return names


def _better(loss: float, best: float) -> bool:
    """A finite loss beats a non-finite one; otherwise lower wins."""
    if not math.isfinite(best):
        return math.isfinite(loss)
    return math.isfinite(loss) and loss < best


def _positive_int(field_name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{field_name} must be a positive integer, got {value!r}")


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


class _quiet_lightning:
    """Silence Lightning's info banners and the warnings that do not apply to a search loop."""

    def __init__(self) -> None:
        self._warnings = warnings.catch_warnings()
        self._levels: dict[str, int] = {}

    def __enter__(self) -> None:
        self._warnings.__enter__()
        for message in (
            ".*does not have many workers.*",
            ".*returned `None`.*",
            ".*no optimizer.*",
            ".*number of training batches.*",
            ".*smaller than the logging interval.*",
            ".*module\\(s\\) in eval mode.*",
            ".*LeafSpec.*",
        ):
            warnings.filterwarnings("ignore", message=message)
        for name in (
            "pytorch_lightning.utilities.rank_zero",
            "pytorch_lightning.accelerators.cuda",
            "lightning.pytorch.utilities.rank_zero",
            "lightning_fabric.utilities.rank_zero",
        ):
            log = logging.getLogger(name)
            self._levels[name] = log.level
            log.setLevel(logging.WARNING)

    def __exit__(self, *exc: Any) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
        self._warnings.__exit__(*exc)
