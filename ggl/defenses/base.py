"""The defense contract, the registry and parameter checking shared by every defense family.

A defense is data plus a pure function. Its parameters are plain values (``spec`` is a dict that
``make_defense(**spec)`` turns back into an equal defense, also after a YAML round trip); applying it maps a
``SharedUpdate`` to a new ``SharedUpdate``; all of its randomness comes from the ``generator`` argument.

Each defense also carries its attacker-side simulation (``simulate``): the transform an adaptive attacker who
knows the defense applies to its own trial gradients before comparing them with the received update (GGL's
"adaptive attack", Li et al., CVPR 2022, arXiv 2203.15696). It is batched over a population of P candidates and
differentiable, because attacks back-propagate through it to their latents or pixels.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch
from torch import nn

from ggl.checks import one_of
from ggl.fl.client import SharedUpdate, non_finite_kinds
from ggl.registry import Registry

DEFAULT_SEED = 0
"""Seed of the fresh generator a defense uses when it is called with ``generator=None``."""

MAX_SCALE = 1e6
"""Largest noise scale (sigma, Laplace scale, DP-SGD's clipping bound and noise multiplier) a defense accepts.

float32 overflows to inf near 3.4e38, so a scale like 1e300 turns every defended gradient into inf (and an
attack then has nothing to match). 1e6 is far above any useful setting (gradient entries are below ~1e2, so
sigma 1 already drowns them) and far below overflow, also for DP-SGD's product of two bounded scales (1e12)."""

SCALE_REASON = "a larger scale buries any gradient and overflows float32 to inf"
"""Why ``MAX_SCALE`` bounds a scale, as the error message of a scale above it says."""


def clip_factors(norms: Sequence[torch.Tensor], bound: float) -> list[torch.Tensor]:
    """``min(1, bound / norm)`` for each norm; a zero norm gives 1 (nothing to clip)."""
    return [torch.clamp(bound / norm.clamp_min(torch.finfo(norm.dtype).tiny), max=1.0) for norm in norms]


@dataclass(frozen=True)
class LinearSimulation:
    """A simulation made only of fixed masks and norm clipping, so that a population engine can evaluate it from
    per-tensor squared norms and inner products without forming each candidate's gradients.

    ``T(g)_i = s_k(g) * (M_i * g_i)``: tensor i is multiplied by its 0/1 mask ``masks[i]`` (absent: all ones; read
    off the received update, the same for every candidate), and every tensor of a group k in ``clipped`` by
    ``s_k = min(1, bound / ||M * g||_k)``, the group's masked L2 norm clipped to ``bound`` (one factor per group
    and candidate); tensors in no group keep ``s = 1``.
    """

    masks: Mapping[int, torch.Tensor] = field(default_factory=dict)
    clipped: tuple[tuple[int, ...], ...] = ()
    bound: float | None = None

    def __post_init__(self) -> None:
        if self.clipped and (self.bound is None or not self.bound > 0):
            raise ValueError(f"LinearSimulation: clipped groups need a positive bound, got {self.bound!r}")

    def apply(self, trial_gradients: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        """The simulation on P trial gradients, each (P, *parameter_shape), computed directly (the reference)."""
        masked = [t * self.masks[i].to(t).unsqueeze(0) if i in self.masks else t for i, t in enumerate(trial_gradients)]
        for group in self.clipped:
            norm = torch.stack([masked[i].flatten(1).pow(2).sum(1) for i in group]).sum(0).sqrt()
            (factor,) = clip_factors([norm], float(self.bound or 0.0))
            for i in group:
                masked[i] = masked[i] * factor.view(-1, *([1] * (masked[i].ndim - 1)))
        return masked


DEFENSES: Registry[type[Defense]] = Registry("defense")
"""Defense classes by registry name (``none``, ``gaussian``, ``clipping``, ...)."""

DefenseType = TypeVar("DefenseType", bound="type[Defense]")


class Defense:
    """Base class: a named, parametrised transform of a shared update plus its attacker-side simulation.

    Subclasses set ``name`` and ``parameters`` (the ordered names of the constructor's arguments, stored as
    attributes of the same names), validate them in ``__init__`` and implement ``apply``; stochastic
    defenses draw every random number from the generator they receive. ``needs_batch`` marks defenses that
    recompute the update from the private batch (Soteria, DP-SGD): they require ``model``, ``images`` and
    ``labels``; ``fedsgd_only`` marks those that replace a FedSGD gradient (DP-SGD, MixUp), checked once here
    against the update's algorithm and batch size. ``simulate`` defaults to the identity, which is right for
    zero-mean noise.
    """

    name: ClassVar[str] = ""
    parameters: ClassVar[tuple[str, ...]] = ()
    needs_batch: ClassVar[bool] = False
    fedsgd_only: ClassVar[bool] = False
    deterministic: ClassVar[bool] = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        """Refuse a subclass that replaces ``__call__``: the checks of what enters and leaves a defense live there."""
        super().__init_subclass__(**kwargs)
        if "__call__" in vars(cls):
            raise TypeError(f"{cls.__name__} overrides Defense.__call__; implement apply(update, ...) instead")

    def __call__(
        self,
        update: SharedUpdate,
        *,
        model: nn.Module | None = None,
        images: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> SharedUpdate:
        """Return the defended update (a new ``SharedUpdate``; the input is not modified).

        Args:
            update: the client's clean update.
            model, images, labels: the victim and its private batch (normalised inputs (B, C, H, W), labels
                (B,)); only defenses with ``needs_batch`` use them.
            generator: source of all randomness. ``None`` means a fresh ``torch.Generator`` seeded with
                ``DEFAULT_SEED`` (so an unseeded call is still reproducible, and two such calls draw the same
                noise).

        Raises:
            ValueError: naming the defense, when the update it receives has non-finite values, or when what
                ``apply`` returns does not match the update (count, shapes, dtypes, devices) or is non-finite.
        """
        if not isinstance(update, SharedUpdate):
            raise ValueError(f"{self.name}: update must be a SharedUpdate, got {type(update).__name__}")
        received = non_finite(update.gradients)
        if received:
            raise ValueError(
                f"defense {self.name!r} received an update with non-finite values in {received}: the clean update "
                "is non-finite before any defense, so there is nothing to defend or attack"
            )
        if self.needs_batch:
            given = {"model": model, "images": images, "labels": labels}
            missing = [key for key, value in given.items() if value is None]
            if missing:
                raise ValueError(f"defense {self.name!r} needs the victim and its batch; missing: {', '.join(missing)}")
        if self.fedsgd_only:
            _check_fedsgd_batch(self.name, update, images)
        if generator is None:
            generator = torch.Generator().manual_seed(DEFAULT_SEED)
        gradients = self.apply(update, model=model, images=images, labels=labels, generator=generator)
        check_output(self.name, update, gradients)
        applied = [*update.metadata.get("defenses", ()), self.spec]
        return update.with_gradients(tuple(gradients), defenses=applied, **self.notes())

    def apply(
        self,
        update: SharedUpdate,
        *,
        model: nn.Module | None,
        images: torch.Tensor | None,
        labels: torch.Tensor | None,
        generator: torch.Generator,
    ) -> list[torch.Tensor]:
        """The defended gradients, one tensor per entry of ``update.gradients``."""
        raise NotImplementedError

    def notes(self) -> dict[str, Any]:
        """Extra plain-data metadata for the defended update (public facts an attacker may use)."""
        return {}

    def simulate(self, trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> list[torch.Tensor]:
        """Attacker-side simulation on P trial gradients, each (P, *parameter_shape); identity by default."""
        check_trials(trial_gradients, received)
        return list(trial_gradients)

    def linear_simulation(self, received: SharedUpdate) -> LinearSimulation | None:
        """``simulate`` for this received update as masks and norm clipping, or None when it is not of that form.

        Lets the inner-product engine run adaptive attacks without per-candidate gradients. The default is the
        identity when ``simulate`` is the inherited identity, and None (use ``simulate``) when a subclass
        replaced ``simulate`` without describing it here.
        """
        return LinearSimulation() if type(self).simulate is Defense.simulate else None

    @property
    def spec(self) -> dict[str, Any]:
        """Plain-data description: ``{"name": ..., **parameters}``; ``make_defense(**spec)`` round-trips."""
        return {"name": self.name, **{key: getattr(self, key) for key in self.parameters}}

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Defense) and self.spec == other.spec

    def __hash__(self) -> int:
        return hash(tuple(sorted((key, repr(value)) for key, value in self.spec.items())))

    def __repr__(self) -> str:
        arguments = ", ".join(f"{key}={getattr(self, key)!r}" for key in self.parameters)
        return f"{type(self).__name__}({arguments})"


def register_defense(cls: DefenseType) -> DefenseType:
    """Class decorator adding a ``Defense`` subclass to ``DEFENSES`` under its ``name``; refuses duplicates."""
    if not (isinstance(cls, type) and issubclass(cls, Defense)):
        raise TypeError(f"register_defense expects a Defense subclass, got {cls!r}")
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no registry name (set the class attribute `name`)")
    DEFENSES.add(cls.name, cls)
    return cls


def make_defense(name: str, **params: Any) -> Defense:
    """Build a registered defense from its name and parameters (``make_defense(**defense.spec)`` round-trips).

    Raises:
        ValueError: unknown name (the message suggests the closest registered ones), unknown parameter, or a
            parameter outside its allowed values (the message names the parameter and what is allowed).
    """
    cls = DEFENSES.lookup(name)
    unknown = sorted(set(params) - set(cls.parameters))
    if unknown:
        allowed = ", ".join(cls.parameters) or "none"
        raise ValueError(f"defense {name!r} has no parameter {', '.join(unknown)}; allowed parameters: {allowed}")
    return cls(**params)


def _check_fedsgd_batch(name: str, update: SharedUpdate, images: torch.Tensor | None) -> None:
    """A defense that recomputes a FedSGD gradient from the batch needs a FedSGD update of that same batch."""
    algorithm = update.metadata.get("algorithm", "fedsgd")
    if algorithm != "fedsgd":
        raise ValueError(
            f"{name}: the update's algorithm must be fedsgd ({name} recomputes a FedSGD gradient from the private "
            f"batch), got {algorithm!r}"
        )
    if images is not None and images.shape[0] != update.num_samples:
        raise ValueError(
            f"{name}: images has {images.shape[0]} samples but the update was computed on {update.num_samples}"
        )


def non_finite(gradients: Sequence[torch.Tensor]) -> str:
    """Where ``gradients`` hold NaN or inf (``"gradients[2] (NaN)"``, the first three and a count of the rest);
    empty when all are finite."""
    found = []
    for index, gradient in enumerate(gradients):
        kinds = non_finite_kinds(gradient)
        if kinds:
            found.append(f"gradients[{index}] ({', '.join(kinds)})")
    more = f" and {len(found) - 3} more tensors" if len(found) > 3 else ""
    return ", ".join(found[:3]) + more


def check_output(name: str, update: SharedUpdate, gradients: Any) -> None:
    """Raise a ValueError naming defense ``name`` unless ``gradients`` match ``update``'s tensors and are finite.

    Checked where the update leaves the defense, so a broken defense fails its cells with its own name instead of
    an error (or a silent initial guess) inside the attack.
    """
    if not isinstance(gradients, (list, tuple)) or not all(isinstance(g, torch.Tensor) for g in gradients):
        raise ValueError(f"defense {name!r} returned {type(gradients).__name__}, expected a list of tensors")
    if len(gradients) != len(update.gradients):
        raise ValueError(
            f"defense {name!r} returned {len(gradients)} gradient tensors, expected {len(update.gradients)}"
        )
    for index, (out, clean) in enumerate(zip(gradients, update.gradients)):
        for what, got, expected in (
            ("shape", tuple(out.shape), tuple(clean.shape)),
            ("dtype", out.dtype, clean.dtype),
            ("device", out.device, clean.device),
        ):
            if got != expected:
                raise ValueError(f"defense {name!r} returned gradients[{index}] with {what} {got}, expected {expected}")
    bad = non_finite(gradients)
    if bad:
        raise ValueError(f"defense {name!r} returned non-finite values in {bad}")


def check_trials(trial_gradients: Sequence[torch.Tensor], received: SharedUpdate) -> None:
    """Raise ValueError unless each trial tensor is (P, *shape) of the matching received gradient."""
    if len(trial_gradients) != len(received.gradients):
        raise ValueError(
            f"trial_gradients has {len(trial_gradients)} tensors but the received update has {len(received.gradients)}"
        )
    for index, (trial, target) in enumerate(zip(trial_gradients, received.gradients)):
        if tuple(trial.shape[1:]) != tuple(target.shape):
            raise ValueError(
                f"trial_gradients[{index}] has shape {tuple(trial.shape)}, expected (P, *{tuple(target.shape)})"
            )


def as_float(
    defense: str,
    parameter: str,
    value: Any,
    *,
    low: float | None = None,
    high: float | None = None,
    low_open: bool = False,
    high_open: bool = False,
    reason: str = "",
) -> float:
    """``value`` as a finite float within the given interval, else a ValueError naming ``parameter``.

    Numeric strings are accepted because YAML 1.1 reads ``1e-2`` (without a dot) as a string. ``reason`` (why the
    interval is what it is) is appended to the message of a value outside it.
    """
    interval = (
        f"{'(' if low_open else '['}{'-inf' if low is None else low}, "
        f"{'inf' if high is None else high}{')' if high_open else ']'}"
    )
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{defense}: {parameter} must be a number in {interval}, got {value!r}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ValueError(f"{defense}: {parameter} must be a number in {interval}, got {value!r}")
    too_low = low is not None and (number <= low if low_open else number < low)
    too_high = high is not None and (number >= high if high_open else number > high)
    if too_low or too_high:
        why = f" ({reason})" if reason else ""
        raise ValueError(f"{defense}: {parameter} must be in {interval}, got {value!r}{why}")
    return number


def as_int(defense: str, parameter: str, value: Any, *, low: int, high: int) -> int:
    """``value`` as an integer in [low, high], else a ValueError naming ``parameter``."""
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ValueError(f"{defense}: {parameter} must be an integer in [{low}, {high}], got {value!r}") from None
    if isinstance(value, bool) or number != float(value) or not low <= number <= high:
        raise ValueError(f"{defense}: {parameter} must be an integer in [{low}, {high}], got {value!r}")
    return number


def as_choice(defense: str, parameter: str, value: Any, allowed: Sequence[str]) -> str:
    """``value`` if it is one of ``allowed``, else a ValueError naming ``parameter`` and the allowed values."""
    return str(one_of(f"{defense}: {parameter}", value, allowed))


def sample_like(tensor: torch.Tensor, generator: torch.Generator, draw: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Draw a tensor shaped like ``tensor`` on the generator's device with ``draw(shape, generator=, device=,
    dtype=)``, then move it to the tensor's device (so a CPU generator also seeds noise for CUDA updates)."""
    sample = draw(tuple(tensor.shape), generator=generator, device=generator.device, dtype=tensor.dtype)
    return sample.to(tensor.device)


def group_norms(tensors: Sequence[torch.Tensor], batched: bool, per_layer: bool) -> list[torch.Tensor]:
    """L2 norms of each tensor (``per_layer``) or one global norm, over all but the leading dim if ``batched``.

    Returns one norm a tensor (a scalar, or shape (P,) when ``batched``); in global mode the same norm repeated.
    """
    if batched:
        squares = [t.flatten(1).pow(2).sum(1) for t in tensors]
    else:
        squares = [t.pow(2).sum() for t in tensors]
    if per_layer:
        return [s.sqrt() for s in squares]
    total = torch.stack(squares).sum(0).sqrt()
    return [total] * len(tensors)
