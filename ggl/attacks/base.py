"""The shape every attack shares: one ``AttackTarget`` in, one ``Reconstruction`` out.

An attack is a ``pl.LightningModule``. Its hyperparameters are its constructor arguments, recorded by
``save_hyperparameters`` (``attack.spec == {"name": attack.name, **attack.hparams}``); run options (accelerator,
progress bar, logger, callbacks) are arguments of ``reconstruct``, so they never enter a spec. ``reconstruct``
runs the trials (restarts) as a plain loop, one ``Trainer.fit`` per trial with ``max_steps=iterations`` over a
loader of the step indices: ``configure_optimizers`` draws the trial's start and returns its optimiser, every
Lightning step is one search step under manual optimisation, and the trial with the lowest final loss wins. An
attack whose trials are independent (Inverting Gradients' Adam, DLG's and iDLG's L-BFGS chains) may run them all
in one fit as one batched population (``parallel_trials``); the result is the sequential one up to float rounding
(tested), with the same traces per trial. ``reconstruct_together`` runs the trials of several updates of one victim
(an attack and its no-information control) the same way, as T x R chains of one population, each target with its
own ``Reconstruction`` (``joint_targets``). Every ``Reconstruction`` says whether the winning trial was still
improving when it ended (``still_improving``).

The attacker sees the victim's architecture and weights, the (defended) shared update, the defense's public
description and known labels when given. ``AttackTarget`` has no field for the private images by design.
"""

from __future__ import annotations

import copy
import functools
import inspect
import logging
import math
import time
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import KW_ONLY, dataclass, field
from typing import Any, ClassVar, NamedTuple, Protocol, TypeVar, cast

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from pytorch_lightning.utilities.parsing import AttributeDict
from torch import nn

from ggl.attacks.batched import JointObjective, PopulationObjective
from ggl.attacks.convolutions import cpu_convolutions
from ggl.attacks.objective import DISTANCES, gradient_distance
from ggl.checks import boolean, non_negative_int, one_of, positive_int
from ggl.fl.client import SharedUpdate, non_finite_kinds
from ggl.fl.labels import infer_labels
from ggl.fl.normalization import Normalization
from ggl.fl.protocol import UpdateProtocol
from ggl.registry import Registry


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
        protocol: the round's update rule (``ggl.fl.protocol.UpdateProtocol``), which the server sets; None reads
            it from ``update.metadata`` (FedSGD when the update records none). Attacks simulate it on their
            candidates: FedAvg's local steps are unrolled.

    There is deliberately no field for the private images. Fields after ``update`` are keyword-only.
    """

    model: nn.Module
    update: SharedUpdate
    _: KW_ONLY
    defense: SimulatedDefense | None = None
    image_shape: tuple[int, int, int]
    normalization: Normalization = None  # type: ignore[assignment]
    labels: torch.Tensor | None = None
    protocol: UpdateProtocol = None  # type: ignore[assignment]

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
        if self.protocol is None:
            object.__setattr__(self, "protocol", UpdateProtocol.from_metadata(self.update.metadata))
        elif not isinstance(self.protocol, UpdateProtocol):
            raise ValueError(f"AttackTarget.protocol must be an UpdateProtocol or None, got {self.protocol!r}")
        self._check_gradients()
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

    def _check_gradients(self) -> None:
        """The update must have one finite floating tensor per model parameter, of its shape.

        A malformed or non-finite update would make every attack return its initial guess without a flag (NaN
        losses), so it is refused here with the defense named, where the update meets the attack.
        """
        named = getattr(self.defense, "name", type(self.defense).__name__)
        source = "AttackTarget.update" if self.defense is None else f"update from defense {named!r}"
        parameters = list(self.model.parameters())
        gradients = self.update.gradients
        if len(parameters) != len(gradients):
            raise ValueError(
                f"{source} has {len(gradients)} gradient tensors but the model has {len(parameters)} parameters"
            )
        for index, (gradient, parameter) in enumerate(zip(gradients, parameters)):
            if not isinstance(gradient, torch.Tensor) or not gradient.is_floating_point():
                raise ValueError(f"{source}: gradients[{index}] must be a floating-point tensor, got {gradient!r:.80}")
            if gradient.shape != parameter.shape:
                raise ValueError(
                    f"{source}: gradients[{index}] has shape {tuple(gradient.shape)} but the model's parameter "
                    f"has {tuple(parameter.shape)}"
                )
            kinds = non_finite_kinds(gradient)
            if kinds:
                raise ValueError(
                    f"{source} has non-finite values ({' and '.join(kinds)}) in gradients[{index}]; an attack on it "
                    "would only return its initial guess"
                )

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
        extras: plain data: ``loss``, ``best_trial``, ``trial_losses``, ``still_improving`` (see
            ``still_improving``: whether the winning trial's search was still improving when its budget ran
            out), and attack-specific entries.
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


@dataclass
class EvaluationBudget:
    """The one count of objective evaluations of a reconstruction, against an optional cap (``limit``).

    Every candidate gradient an attack computes is spent here once, by the objective that computes it
    (``GradientInversionAttack.trial_gradients`` for one candidate, GGL's ``population_loss`` for a population).
    """

    limit: int | None
    spent: int = 0

    def spend(self, count: int) -> None:
        """Record ``count`` more evaluations."""
        self.spent += count

    @property
    def exhausted(self) -> bool:
        """Whether the cap is reached (never without a cap)."""
        return self.limit is not None and self.spent >= self.limit


class _Candidate(NamedTuple):
    images: torch.Tensor
    labels: torch.Tensor
    loss: float
    trial: int


@dataclass
class _Outcome:
    """One target's share of a reconstruction: its evaluations, its trials' traces and losses, its best candidate."""

    budget: EvaluationBudget
    trace: list[float] = field(default_factory=list)
    trial_losses: list[float] = field(default_factory=list)
    trial_starts: list[int] = field(default_factory=list)
    trial_converged: list[bool] = field(default_factory=list)
    best: _Candidate | None = None

    def trial_trace(self, trial: int) -> list[float]:
        """The losses recorded during trial ``trial`` (a slice of ``trace``)."""
        end = self.trial_starts[trial + 1] if trial + 1 < len(self.trial_starts) else len(self.trace)
        return self.trace[self.trial_starts[trial] : end]


@dataclass
class _Run:
    """The state of one ``reconstruct`` (or ``reconstruct_together``) call: its targets, one ``_Outcome`` each, and
    the index of the target the attack's helpers refer to (``active``). A plain object, so the victim never becomes
    a submodule."""

    targets: list[AttackTarget]
    outcomes: list[_Outcome]
    log_every: int
    watched: bool = False
    parallel: int = 1
    active: int = 0
    chain_traces: list[list[float]] = field(default_factory=list)
    trial: int = 0
    prepared: bool = False
    stopped: bool = False
    victim: nn.Module | None = None
    gradients: list[list[torch.Tensor]] = field(default_factory=list)

    @property
    def target(self) -> AttackTarget:
        return self.targets[self.active]

    @property
    def spent(self) -> int:
        """Evaluations over all targets."""
        return sum(outcome.budget.spent for outcome in self.outcomes)

    @property
    def exhausted(self) -> bool:
        """Whether any target's budget is spent (the search stops at a step boundary)."""
        return any(outcome.budget.exhausted for outcome in self.outcomes)


RUN_OPTIONS = ("accelerator", "progress_bar", "logger", "callbacks", "log_every")
"""Keyword arguments of ``reconstruct``; a constructor refuses them (they are not hyperparameters)."""


class GradientInversionAttack(pl.LightningModule):
    """Base class of all attacks: hyperparameters, restarts, the evaluation budget, seeding, labels, logging.

    A subclass sets ``name`` (through ``register_attack``), takes its own keyword arguments plus ``**shared``
    (forwarded here), validates its own with ``ggl.checks`` before calling ``super().__init__(**shared)``, and
    implements the trial as Lightning hooks:

    - ``configure_optimizers()``: once per trial, draw the start from ``self.rng`` and return its optimiser(s).
      Lightning calls it before ``on_fit_start``, so it may use ``self.target`` but not ``prepare``'s results.
    - ``prepare(target)``: once per reconstruction, on the attack's device, before the first step (labels...).
    - ``search_step(step) -> float``: one optimisation step (``self.optimizers()``); the loss to record.
    - ``trial_result() -> (images in [0, 1], labels, loss)``: the trial's candidate; optionally ``preview()``.
    - optionally ``search_converged() -> bool``: the optimiser ended the trial itself (read for ``still_improving``).

    ``save_hyperparameters()`` here records the arguments of every ``__init__`` in the chain as they stand when it
    runs, so the converted values of a subclass's own arguments are what ``hparams`` and ``spec`` hold.

    Args (shared by every attack):
        iterations: search steps per trial. restarts: trials; the lowest final loss wins.
        budget: optional cap on objective evaluations over all trials (stops the search at a step boundary).
        seed: seeds every random choice (initialisations); the same seed gives the same reconstruction.
        adaptive: apply ``target.defense.simulate`` to trial gradients (the attacker knows the defense).
        metric: gradient distance, one of ``ggl.attacks.objective.DISTANCES``.
    """

    name: ClassVar[str] = "base"

    def __init__(
        self,
        *,
        iterations: int,
        restarts: int = 1,
        budget: int | None = None,
        seed: int = 0,
        adaptive: bool = False,
        metric: str = "l2",
    ) -> None:
        super().__init__()
        positive_int("iterations", iterations)
        positive_int("restarts", restarts)
        if budget is not None:
            positive_int("budget", budget)
        non_negative_int("seed", seed)
        boolean("adaptive", adaptive)
        one_of("metric", metric, sorted(DISTANCES))
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.rng = torch.Generator().manual_seed(seed)
        self._run: _Run | None = None

    # ----------------------------------------------------------------------------------------------- public API

    @property
    def hparams(self) -> AttributeDict:
        """The constructor arguments as recorded by ``save_hyperparameters`` (always an ``AttributeDict`` here)."""
        return cast(AttributeDict, super().hparams)

    @property
    def spec(self) -> dict[str, Any]:
        """The attack as plain data: ``make_attack(**attack.spec)`` builds the same attack."""
        return {"name": self.name, **self.hparams}

    @classmethod
    def hyperparameter_names(cls) -> list[str]:
        """The keyword arguments the constructor chain accepts, sorted, each once."""
        names: set[str] = set()
        for klass in cls.__mro__:
            init = klass.__dict__.get("__init__")
            if init is not None and issubclass(klass, GradientInversionAttack):
                parameters = inspect.signature(init).parameters.values()
                names.update(p.name for p in parameters if p.kind is p.KEYWORD_ONLY)
        return sorted(names)

    def reconstruct(
        self,
        target: AttackTarget,
        *,
        accelerator: str = "cpu",
        progress_bar: bool = False,
        logger: pl.loggers.Logger | None = None,
        callbacks: Sequence[pl.Callback] = (),
        log_every: int = 100,
    ) -> Reconstruction:
        """Run the search against ``target`` and return the best candidate over all trials.

        Args:
            target: what the server knows (no private images).
            accelerator: Lightning accelerator ("cpu", "gpu", "auto").
            progress_bar: show Lightning's progress bar (one bar a trial).
            logger: a Lightning logger (None: no logging). It receives ``attack/loss``, ``attack/evaluations``
                and ``attack/trial`` every step, at steps counted over all trials, and with a TensorBoard
                logger an image grid ``attack/reconstruction`` every ``log_every`` steps and of the best at the end.
            callbacks: Lightning callbacks; they see ``attack/loss`` in ``trainer.callback_metrics`` and may end
                the search with ``trainer.should_stop`` (the current trial's candidate still competes).
            log_every: steps between the logged image grids.
        """
        if not isinstance(target, AttackTarget):
            raise ValueError(f"reconstruct expects an AttackTarget, got {type(target).__name__}")
        return self.reconstruct_together(
            [target],
            accelerator=accelerator,
            progress_bar=progress_bar,
            logger=logger,
            callbacks=callbacks,
            log_every=log_every,
        )[0]

    def reconstruct_together(
        self,
        targets: Sequence[AttackTarget],
        *,
        accelerator: str = "cpu",
        progress_bar: bool = False,
        logger: pl.loggers.Logger | None = None,
        callbacks: Sequence[pl.Callback] = (),
        log_every: int = 100,
    ) -> list[Reconstruction]:
        """``reconstruct`` of several updates of one victim (an attack and its no-information control), searched as
        one population: the R trials of each of the T targets run as T x R chains of one fit, every step scores
        all chains in one batched pass (``ggl.attacks.batched.JointObjective``), and each target gets the
        ``Reconstruction`` its own run gives from the same seed, up to float rounding (tested). Its ``seconds``
        are the shared wall time divided by T; its evaluations and budget its own.

        Needs an attack that supports it (``joint_targets``) and targets that share the model (the same object),
        image shape, normalisation, protocol, batch size and defense. Arguments as in ``reconstruct``.
        """
        targets = self._checked_targets(targets)
        progress_bar, callbacks = boolean("progress_bar", progress_bar), tuple(callbacks)
        outcomes = [_Outcome(EvaluationBudget(self.hparams.budget)) for _ in targets]
        self._run = run = _Run(targets, outcomes, positive_int("log_every", log_every))
        run.watched = logger is not None or progress_bar or bool(callbacks)
        run.parallel = self.chain_count
        self.rng = torch.Generator().manual_seed(self.hparams.seed)
        start = time.perf_counter()
        first = targets[0]
        images_per_pass = self.candidates_per_pass() * first.batch_size
        try:
            with (
                _quiet_lightning(),
                torch.random.fork_rng(devices=[]),
                torch.enable_grad(),
                cpu_convolutions(first.model, first.image_shape, images_per_pass),
            ):
                torch.manual_seed(self.hparams.seed)
                for trial in range(1 if run.parallel > 1 else self.hparams.restarts):
                    run.trial = trial
                    run.outcomes[0].trial_starts.append(len(run.outcomes[0].trace))
                    trainer = self._make_trainer(accelerator, progress_bar, logger, callbacks)
                    trainer.fit(self, train_dataloaders=range(self.hparams.iterations))
                    if run.stopped:
                        break
            seconds = (time.perf_counter() - start) / len(targets)
            return [self._result(outcome, seconds) for outcome in run.outcomes]
        finally:
            self._run = None

    def _checked_targets(self, targets: Sequence[AttackTarget]) -> list[AttackTarget]:
        """``targets`` as a list, refused with the reason when this attack cannot search them together."""
        targets = list(targets)
        if not targets or not all(isinstance(t, AttackTarget) for t in targets):
            raise ValueError("reconstruct_together expects a non-empty sequence of AttackTarget")
        if len(targets) == 1:
            return targets
        if not self.searches_together(self.hparams):
            raise ValueError(f"attack {self.name!r} cannot search several targets together; reconstruct each")
        first = targets[0]
        for index, other in enumerate(targets[1:], start=1):
            shared = {
                "model": other.model is first.model,
                "image_shape": other.image_shape == first.image_shape,
                "normalization": other.normalization == first.normalization,
                "protocol": other.protocol == first.protocol,
                "batch_size": other.batch_size == first.batch_size,
                "defense": other.defense is first.defense,
            }
            differing = [name for name, same in shared.items() if not same]
            if differing:
                raise ValueError(
                    f"targets[{index}] differs from targets[0] in {', '.join(differing)}; targets searched together "
                    "share the victim model (the same object), its input and protocol, the batch size and the defense"
                )
        return targets

    # ------------------------------------------------------------------------------------ hooks for subclasses

    def prepare(self, target: AttackTarget) -> None:
        """Once per reconstruction, on the attack's device, before the first step. Default: nothing."""

    def search_step(self, step: int) -> float | torch.Tensor:
        """One optimisation step of the current trial; returns the loss after (or during) the step (the R losses
        (R,) with ``parallel_trials`` R > 1)."""
        raise NotImplementedError

    def trial_result(self) -> tuple[torch.Tensor, torch.Tensor, float | torch.Tensor]:
        """The current trial's candidate: images (B, C, H, W) in [0, 1], labels (B,), and its loss (for trials run
        together, see ``parallel_trials``)."""
        raise NotImplementedError

    def preview(self) -> torch.Tensor:
        """The current candidate's images (B, C, H, W) in [0, 1] for the image log; should not spend evaluations."""
        return self.trial_result()[0]

    def parallel_trials(self) -> int:
        """How many trials one fit runs together (1: one fit a trial). With R > 1, ``configure_optimizers`` draws
        all R starts, ``search_step`` returns the R losses and ``trial_result`` R candidates: images
        (R, B, C, H, W), labels (B,) shared or (R, B) per trial, and losses (R,). Default: 1."""
        return 1

    def candidates_per_pass(self) -> int:
        """Candidates one objective evaluation scores together (each a batch of B images); it decides the CPU
        convolution kernels (``ggl.attacks.convolutions``). Default: ``chain_count``."""
        return self.chain_count

    joint_targets: ClassVar[bool] = False
    """Whether ``reconstruct_together`` may search several targets as one population. An attack that sets it runs
    ``chain_count`` chains (T targets x R trials, target-major) wherever it would run ``parallel_trials``, draws
    their starts with ``chain_starts``, builds its objective per target (``for_each_target``, ``joint_objective``)
    and spends per chain (``spend_chains``)."""

    @classmethod
    def searches_together(cls, hparams: Mapping[str, Any]) -> bool:
        """Whether an attack with these hyperparameters can search several targets together (``joint_targets``)."""
        return cls.joint_targets

    def search_converged(self) -> bool | list[bool]:
        """Whether the running trial's optimiser ended the search by its own convergence test (one answer per trial
        when trials run together; a single False then means none did). Default: False.

        Read once at the end of every trial; True makes ``still_improving`` False for that trial whatever its trace
        (an optimiser that has declared convergence would not use more budget).
        """
        return False

    # ------------------------------------------------------------------------------- helpers for subclasses

    @property
    def target(self) -> AttackTarget:
        """The target of the running reconstruction."""
        return self._active().target

    @property
    def target_count(self) -> int:
        """T, the targets of the running reconstruction (1 for ``reconstruct``)."""
        return len(self._active().targets)

    @property
    def chain_count(self) -> int:
        """Chains one fit runs: T targets x R restarts when several targets run together, else ``parallel_trials``."""
        targets = self.target_count
        return targets * self.hparams.restarts if targets > 1 else self.parallel_trials()

    @property
    def chains_per_target(self) -> int:
        """The chains of each target in one fit (``chain_count`` / T)."""
        return self.chain_count // self.target_count

    @property
    def chain_groups(self) -> torch.Tensor:
        """The target index of every chain (``chain_count``,), target-major."""
        return torch.arange(self.target_count).repeat_interleave(self.chains_per_target)

    def chain_labels(self, labels: Sequence[torch.Tensor]) -> torch.Tensor:
        """The labels (``chain_count``, B) of every chain: its target's, from ``labels`` (one (B,) per target)."""
        return torch.stack(list(labels)).to(self.device)[self.chain_groups.to(self.device)]

    def chain_starts(self, draw: Callable[[], Any]) -> list[Any]:
        """The chains' starts: ``draw()`` once per trial, from ``self.rng``, and the same R starts for every target
        (each target's own run draws them from the same seed)."""
        return [draw() for _ in range(self.chains_per_target)] * self.target_count

    def for_each_target(self, make: Callable[[int], Any]) -> list[Any]:
        """``make(index)`` once per target, with ``target``, ``target_gradients`` and ``received_update`` referring
        to that target meanwhile."""
        run = self._active()
        results = []
        try:
            for index in range(len(run.targets)):
                run.active = index
                results.append(make(index))
        finally:
            run.active = 0
        return results

    def joint_objective(self, labels: Sequence[torch.Tensor | None], engine: str) -> JointObjective:
        """One ``population_objective`` per target (with its ``labels``), evaluated together; call it with the
        chains' ``chain_groups``."""
        return JointObjective(self.for_each_target(lambda index: self.population_objective(labels[index], engine)))

    def spend_chains(self, chains: Sequence[int]) -> None:
        """One evaluation for each of ``chains``, counted against its own target's budget."""
        run, per_target = self._active(), self.chains_per_target
        for chain in chains:
            run.outcomes[int(chain) // per_target].budget.spend(1)

    @property
    def current_trial(self) -> int:
        """The index of the running trial (restart), from 0."""
        return self._active().trial

    @property
    def evaluations(self) -> int:
        """Objective evaluations spent so far in the running reconstruction (over all its targets)."""
        return self._active().spent

    def spend(self, count: int) -> None:
        """Count ``count`` objective evaluations against the (active target's) budget (the objectives call this,
        once each)."""
        run = self._active()
        run.outcomes[run.active].budget.spend(count)

    @property
    def victim(self) -> nn.Module:
        """The victim model on the attack's device (a copy when the device differs; the original is untouched)."""
        victim = self._active().victim
        assert victim is not None, "the victim is available from on_fit_start on"
        return victim

    @property
    def target_gradients(self) -> list[torch.Tensor]:
        """The received update's gradients on the attack's device."""
        run = self._active()
        return run.gradients[run.active]

    def resolve_labels(self) -> torch.Tensor:
        """Known labels when the target has them, otherwise ``infer_labels`` on the received update."""
        labels = self.target.labels
        if labels is None:
            labels = infer_labels(self.target.update, self.target.model)
        return labels.to(self.device)

    def random_images(self, scale: float = 1.0) -> torch.Tensor:
        """Seeded Gaussian start (B, C, H, W) in the model's input space, drawn from ``self.rng``."""
        shape = (self.target.batch_size, *self.target.image_shape)
        return (scale * torch.randn(shape, generator=self.rng)).to(self.device)

    def pixel_box(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Lower and upper bounds (1, C, 1, 1) of valid pixels [0, 1] in the model's normalised input space."""
        channels = self.target.image_shape[0]
        norm = self.target.normalization
        zeros = torch.zeros(1, channels, 1, 1, device=self.device)
        return norm.normalize(zeros), norm.normalize(zeros + 1)

    def to_pixels(self, inputs: torch.Tensor) -> torch.Tensor:
        """Normalised model inputs -> images in [0, 1] (denormalised and clamped)."""
        return self.target.normalization.denormalize(inputs.detach()).clamp(0, 1)

    def trial_gradients(self, inputs: torch.Tensor, labels: torch.Tensor) -> list[torch.Tensor]:
        """Gradients (1, *param_shape) of the mean cross-entropy of ``inputs`` (B, C, H, W) at the victim's weights;
        under FedAvg the update the target's protocol makes from ``inputs`` (its local steps unrolled).

        ``labels`` are class indices (B,) or soft-label logits (B, K) (DLG). The graph is kept so the distance can
        be differentiated with respect to ``inputs``; the victim's weights and ``.grad`` are never modified.
        Spends one objective evaluation.
        """
        victim = self.victim
        if not self.target.protocol.is_fedsgd:
            self.spend(1)
            trial = self.target.protocol.candidate_updates(victim, inputs.unsqueeze(0), labels, create_graph=True)
            return self._simulated(trial)
        names = [name for name, _ in victim.named_parameters()]
        leaves = [p.detach().requires_grad_(True) for p in victim.parameters()]
        logits = torch.func.functional_call(victim, dict(zip(names, leaves)), (inputs,))
        if labels.is_floating_point():
            loss = torch.sum(-F.softmax(labels, dim=-1) * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, labels)
        gradients = torch.autograd.grad(loss, leaves, create_graph=True)
        self.spend(1)
        return self._simulated([g.unsqueeze(0) for g in gradients])

    def _simulated(self, trial: list[torch.Tensor]) -> list[torch.Tensor]:
        """``trial`` through the defense's simulation when the attack is adaptive."""
        if self.hparams.adaptive and self.target.defense is not None:
            return list(self.target.defense.simulate(trial, received=self.received_update()))
        return trial

    def gradient_loss(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """``metric`` distance between the trial gradient of ``inputs`` and the received update (a scalar)."""
        trial = self.trial_gradients(inputs, labels)
        return gradient_distance(trial, self.target_gradients, self.hparams.metric)[0]

    def population_objective(self, labels: torch.Tensor | None, engine: str) -> PopulationObjective:
        """A batched objective against the received update with the attack's metric (``labels`` None: soft labels
        at every call); when adaptive, the defense's ``simulate`` and, where it has one, its ``linear_simulation``
        (so the ``inner`` engine can run it)."""
        simulate, linear = None, None
        defense = self.target.defense
        if self.hparams.adaptive and defense is not None:
            received = self.received_update()
            simulate = functools.partial(defense.simulate, received=received)
            describe = getattr(defense, "linear_simulation", None)
            linear = describe(received) if describe is not None else None
        return PopulationObjective(
            self.victim,
            self.target_gradients,
            labels,
            metric=self.hparams.metric,
            simulate=simulate,
            engine=engine,
            linear_simulation=linear,
            protocol=self.target.protocol,
        )

    def received_update(self) -> SharedUpdate:
        """The received update with its gradients on the attack's device (what a defense simulation compares to)."""
        update = self.target.update
        gradients = self.target_gradients
        if gradients and update.gradients[0].device != gradients[0].device:
            return update.with_gradients(gradients)
        return update

    # ------------------------------------------------------------------------------------ Lightning plumbing

    def on_fit_start(self) -> None:
        """On the first trial: the victim and the received gradients on the attack's device, then ``prepare``."""
        run = self._active()
        if run.prepared:
            return
        model = run.target.model
        first = next(model.parameters(), None)
        if first is not None and first.device != self.device:
            model = copy.deepcopy(model).to(self.device)
        run.victim = model
        run.gradients = [[g.detach().to(self.device) for g in target.update.gradients] for target in run.targets]
        run.prepared = True
        self.prepare(run.target)

    def training_step(self, step: int, batch_idx: int) -> None:
        """One search step (the batch is the step index): ``search_step``, then the trace, the log, the budget."""
        run = self._active()
        value = self.search_step(step)
        if run.parallel > 1:
            losses = [float(v) for v in torch.as_tensor(value).reshape(-1).tolist()]
            run.chain_traces = run.chain_traces or [[] for _ in losses]
            for trace, chain_loss in zip(run.chain_traces, losses):
                trace.append(chain_loss)
            loss = min(losses, key=lambda v: (math.isnan(v), v))
        else:
            loss = float(value)
        trace = run.outcomes[0].trace
        trace.append(loss)
        if run.watched:
            self._log_step(run, loss, len(trace) - 1)
        if self.logger is not None and len(trace) % run.log_every == 0:
            self._log_images(self.preview(), len(trace))
        if run.exhausted:
            self.trainer.should_stop = True

    def _log_step(self, run: _Run, loss: float, step: int) -> None:
        """The step's metrics for loggers, callbacks and the progress bar (skipped when nobody reads them: Lightning's
        ``log`` costs about a millisecond a call, a third of an Inverting Gradients step on LeNet)."""
        metrics = {"attack/loss": loss, "attack/evaluations": run.spent, "attack/trial": run.trial}
        metrics["step"] = step  # the loggers' x-axis, over all trials (Lightning's restarts each fit)
        for key, value in metrics.items():
            self.log(
                key,
                torch.tensor(value, dtype=torch.float64),
                prog_bar=key == "attack/loss",
                logger=self.logger is not None,
                on_step=True,
                on_epoch=False,
                batch_size=1,
            )

    def on_train_end(self) -> None:
        """The trial's candidate competes (however the trial ended); the last trial logs the best images."""
        run = self._active()
        images, labels, loss = self.trial_result()
        converged = self.search_converged()
        per_target = run.parallel // len(run.targets)
        if run.parallel > 1:
            flags = converged if isinstance(converged, (list, tuple)) else [False] * run.parallel
            own_labels = labels.ndim == 2
            candidates = [
                (images[c], labels[c] if own_labels else labels, float(value), divmod(c, per_target), bool(flags[c]))
                for c, value in enumerate(torch.as_tensor(loss).tolist())
            ]
        else:
            candidates = [(images, labels, float(loss), (0, run.trial), bool(converged))]
        for trial_images, trial_labels, trial_loss, (index, trial), trial_converged in candidates:
            outcome = run.outcomes[index]
            outcome.trial_losses.append(trial_loss)
            outcome.trial_converged.append(trial_converged)
            if outcome.best is None or _better(trial_loss, outcome.best.loss):
                kept = (trial_images.detach().clone(), trial_labels.detach().clone())
                outcome.best = _Candidate(*kept, trial_loss, trial)
        if run.parallel > 1:
            for index, outcome in enumerate(run.outcomes):
                chains = run.chain_traces[index * per_target : (index + 1) * per_target]
                outcome.trace = [value for trace in chains for value in trace]
                outcome.trial_starts = [r * len(chains[0]) for r in range(per_target)]
        run.stopped = self.trainer.should_stop
        last = run.parallel > 1 or run.trial == self.hparams.restarts - 1
        first = run.outcomes[0]
        if self.logger is not None and first.best is not None and (run.stopped or last):
            self._log_images(first.best.images, len(first.trace))  # before Lightning finalises the logger

    # ------------------------------------------------------------------------------------------------ private

    def _active(self) -> _Run:
        if self._run is None:
            raise RuntimeError(f"{self.name}: this is available only inside reconstruct()")
        return self._run

    def _make_trainer(
        self, accelerator: str, progress_bar: bool, logger: pl.loggers.Logger | None, callbacks: tuple[pl.Callback, ...]
    ) -> pl.Trainer:
        """A Trainer for one trial; it gets its own list of callbacks (Lightning appends its defaults to it)."""
        return pl.Trainer(
            accelerator=accelerator,
            devices=1,
            max_epochs=1,
            max_steps=self.hparams.iterations,
            logger=logger if logger is not None else False,
            callbacks=list(callbacks),
            enable_checkpointing=False,
            enable_model_summary=False,
            enable_progress_bar=progress_bar,
            inference_mode=False,
            num_sanity_val_steps=0,
            log_every_n_steps=1,
        )

    def _result(self, outcome: _Outcome, seconds: float) -> Reconstruction:
        best = outcome.best
        if best is None:
            raise RuntimeError(f"{self.name}: the search ended before any trial finished")
        return Reconstruction(
            images=best.images.detach().cpu(),
            labels=best.labels.detach().cpu(),
            trace=list(outcome.trace),
            evaluations=outcome.budget.spent,
            seconds=seconds,
            extras={
                "loss": best.loss,
                "best_trial": best.trial,
                "trial_losses": list(outcome.trial_losses),
                "still_improving": still_improving(
                    outcome.trial_trace(best.trial), converged=outcome.trial_converged[best.trial]
                ),
            },
        )

    def _log_images(self, images: torch.Tensor, step: int) -> None:
        experiment = getattr(self.logger, "experiment", None)
        if experiment is None or not hasattr(experiment, "add_image"):
            return
        from torchvision.utils import make_grid

        grid = make_grid(images.detach().cpu().clamp(0, 1), nrow=min(8, images.shape[0]))
        experiment.add_image("attack/reconstruction", grid, global_step=step)


# ------------------------------------------------------------------------------------------------- registry

AttackType = TypeVar("AttackType", bound=type[GradientInversionAttack])

ATTACKS: Registry[type[GradientInversionAttack]] = Registry("attack")
"""Attack classes by registry name (dlg, idlg, inverting_gradients, ggl)."""


def register_attack(name: str) -> Callable[[AttackType], AttackType]:
    """Class decorator: ``ATTACKS.register(name)`` that also sets ``cls.name`` (the ``name`` of its spec)."""

    def decorate(cls: AttackType) -> AttackType:
        if not (isinstance(cls, type) and issubclass(cls, GradientInversionAttack)):
            raise ValueError(f"register_attack({name!r}) needs a GradientInversionAttack subclass, got {cls!r}")
        ATTACKS.add(name, cls)
        cls.name = name
        return cls

    return decorate


def make_attack(name: str, **hparams: Any) -> GradientInversionAttack:
    """Build a registered attack by name, e.g. ``make_attack("idlg", iterations=300, seed=1)``.

    Unknown names and unknown parameters raise ``ValueError`` listing what is allowed; run options (accelerator,
    logger, ...) are refused here because they belong to ``reconstruct``.
    """
    cls = ATTACKS.lookup(name)
    allowed = cls.hyperparameter_names()
    unknown = sorted(set(hparams) - set(allowed))
    if unknown:
        hint = ""
        if set(unknown) & {*RUN_OPTIONS, "log_dir"}:
            hint = f" (run options are arguments of reconstruct(): {', '.join(RUN_OPTIONS)}; log_dir is a logger)"
        raise ValueError(
            f"attack {name!r} got unknown parameter(s) {', '.join(unknown)}{hint}; allowed: {', '.join(allowed)}"
        )
    return cls(**hparams)


TAIL_FRACTION = 0.2
"""The end of a trial that ``still_improving`` inspects: its last 20% of steps (at least one)."""
MIN_RELATIVE_GAIN = 0.01
"""The gain over the tail that counts as improvement: more than 1% of the best loss before it."""
ROUNDING_FLOOR = 1e-12
"""Gains up to this fraction of the trial's largest finite |loss| are float rounding, not improvement."""


def still_improving(trace: Sequence[float], *, converged: bool = False) -> bool:
    """Whether a trial's search was still improving when it ended (``Reconstruction.extras["still_improving"]``).

    ``trace`` is the trial's loss after each step. With n steps, the tail is the last ``max(1, ceil(0.2 n))``
    steps and the head the steps before it. The trial is still improving when the lowest finite loss of the tail
    is below the lowest finite loss of the head by more than ``max(0.01 * |head best|, 1e-12 * scale)``, where
    scale is the largest finite |loss| of the trace (the floor keeps float rounding near a zero loss from
    counting). It is not when ``converged`` (the optimiser ended the search itself, e.g. L-BFGS met its
    tolerances), when n < 2 (no head to compare with), or when the tail has no finite loss; a head without a
    finite loss and a tail with one counts as improving. A budget or iteration count that cuts a search off
    mid-descent gives True; a flat or converged search gives False.
    """
    values = [float(value) for value in trace]
    if converged or len(values) < 2:
        return False
    split = len(values) - max(1, math.ceil(TAIL_FRACTION * len(values)))
    head = [value for value in values[:split] if math.isfinite(value)]
    tail = [value for value in values[split:] if math.isfinite(value)]
    if not tail:
        return False
    if not head:
        return True
    before, after = min(head), min(tail)
    scale = max(abs(value) for value in head + tail)
    return before - after > max(MIN_RELATIVE_GAIN * abs(before), ROUNDING_FLOOR * scale)


def _better(loss: float, best: float) -> bool:
    """A finite loss beats a non-finite one; otherwise lower wins."""
    if not math.isfinite(best):
        return math.isfinite(loss)
    return math.isfinite(loss) and loss < best


@contextmanager
def _quiet_lightning() -> Iterator[None]:
    """Silence Lightning's per-fit info banners and the two warnings that do not apply to an attack.

    One ``Trainer.fit`` a trial would print the device banner ("GPU available: ...") and the "``max_steps``
    reached" line every trial; they are logged at INFO, so those loggers are raised to WARNING. Two warnings
    remain necessary to silence: "Found N module(s) in eval mode", because GGL's generative prior is a frozen
    submodule kept in eval mode on purpose (Lightning never switches it); and torch's FutureWarning about
    ``LeafSpec``, raised by Lightning's own loader flattening (``CombinedLoader``) on every fit with this
    torch, which an attack cannot avoid.
    """
    names = ("pytorch_lightning.utilities.rank_zero", "pytorch_lightning.accelerators.cuda")
    levels = {name: logging.getLogger(name).level for name in names}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
        warnings.filterwarnings("ignore", message=r".*LeafSpec.*", category=FutureWarning)
        for name in names:
            logging.getLogger(name).setLevel(logging.WARNING)
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)
