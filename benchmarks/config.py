"""Typed, validated suite configurations read from YAML, with ``--set key=value`` overrides.

A suite names everything one leaderboard needs: the datamodule, the victim model, the prior, the attacks with their
budgets, the defense grid, the victims and the seeds. ``load_suite("smoke")`` reads ``benchmarks/suites/smoke.yaml``
(or any path), applies overrides such as ``victims.count=2`` or ``attacks.*.budget=10`` (dotted keys; ``*`` means
every list entry; values are parsed as YAML), and returns a frozen ``SuiteConfig``. Every problem raises
``SuiteError`` naming the file, the field and what is allowed.

Defense families may list several strengths: ``{name: gaussian, sigma: [0.001, 0.01, 0.1]}`` expands into three
settings (the product over every list-valued parameter), the way foolbox sweeps epsilons in one call.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ggl.checks import boolean, non_negative_int, positive_int, positive_number
from ggl.io import canonical_json

SUITES_PACKAGE = __name__.rpartition(".")[0]
"""This package: ``benchmarks`` in a checkout, ``ggl_bench`` when installed; ``suites/`` in it holds the suites."""
REFERENCE_PREFIX = "reference:"
REFERENCE_KINDS = ("class-mean", "prior-sample", "prior-ceiling")
LABEL_REFERENCES = ("class-mean", "prior-sample")
"""References an attacker makes from the label alone: computed again per defense setting, from the label the
attacker infers from the defended update (the ceiling needs the pixels and is computed once per victim)."""
CALIBRATION_CHECKS = ("same_as_none", "no_information", "near_ceiling")
"""Known answers a calibration suite checks (``benchmarks.report.calibration`` defines each)."""
CONTROL = "same-class-other-image"
"""The no-information control's kind, recorded in a control cell's key (``benchmarks.cells``)."""
TOP_LEVEL_FIELDS = (
    "name",
    "description",
    "datamodule",
    "model",
    "prior",
    "victims",
    "seeds",
    "adaptive",
    "attacks",
    "defenses",
    "references",
    "utility",
    "requires",
    "controls",
    "batch_controls",
    "calibration",
    "update",
    "variants",
)
MAX_SUITE_BYTES = 1 << 20
"""Largest suite file read (1 MiB); real suites are a few KiB."""
MAX_VALUES = 100_000
"""Most values a suite may hold once its YAML aliases are expanded (a billion-laughs file is refused at once)."""
MAX_DEPTH = 32
"""Deepest nesting of a suite's values (and most parts of a dotted ``--set`` key)."""
MAX_SETTINGS = 10_000
"""Most defense settings a suite's strength sweeps may expand into."""
MAX_CELLS = 1_000_000
"""Most cells (victims x seeds x (defense settings x attacks + references)) one suite may hold."""
MAX_SEED = 2**63 - 1
"""Largest seed: every seed must fit the 64-bit signed integer torch's generators take."""
VARIANT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,39}")
"""A variant name is a folder name and the suffix of its suite's name (``realistic.batch-4``)."""
UPDATE_ALGORITHMS = ("fedsgd", "fedavg")
"""The update protocols a suite may name (``ggl.fl.protocol.ALGORITHMS``; a test keeps the two in step)."""
OPTIMIZERS = ("sgd", "adam")
"""Optimisers of a victim's training stage (``ggl.fl.training``)."""
SUITE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
"""A suite name is part of file names (``results/NAME``): letters, digits, ``.``, ``_``, ``-``, at most 100."""

Check = Callable[[str, Any], Any]
"""A value check of ``ggl.checks``' shape: ``check(field, value)`` returns the value or raises ``ValueError``."""


class SuiteError(ValueError):
    """A suite file or override is invalid; the message names the file, the field and the allowed values."""

    def __init__(self, source: str, field_name: str, message: str) -> None:
        self.source = source
        self.field = field_name
        super().__init__(f"{source}: field '{field_name}': {message}")


def short_hash(value: Any) -> str:
    """First 12 hex digits of the SHA-256 of ``canonical_json(value)``."""
    return hashlib.sha256(canonical_json(value).encode()).hexdigest()[:12]


def format_value(value: Any) -> str:
    """Compact, stable text for a parameter value in labels (``0.01``, ``1e-05``, ``true``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


@dataclass(frozen=True)
class DataModuleConfig:
    """Which datamodule holds the victims (``ggl.data.make_datamodule(name, **options)``)."""

    name: str = "embedded"
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class TrainConfig:
    """A training stage of the victim (``ggl.fl.training.TrainingSpec``): ``epochs`` over the datamodule's public
    split, seeded; 0 epochs is the untrained model."""

    epochs: int = 0
    lr: float = 0.05
    batch_size: int = 32
    seed: int = 0
    optimizer: str = "sgd"

    @property
    def stage(self) -> str:
        """``untrained`` or ``N epochs``: how tables name the stage."""
        return "untrained" if self.epochs == 0 else f"{self.epochs} epoch{'s' if self.epochs > 1 else ''}"


@dataclass(frozen=True)
class ModelConfig:
    """The victim model (``ggl.fl.make_victim(name, seed=seed, checkpoint=checkpoint)``), trained per ``train``
    when given (untrained otherwise). ``name`` may be ``module:Class``, as for defenses."""

    name: str = "lenet"
    seed: int = 0
    checkpoint: str | None = None
    train: TrainConfig | None = None


@dataclass(frozen=True)
class UpdateConfig:
    """The FL update protocol (``ggl.fl.protocol.UpdateProtocol``): ``fedsgd`` or ``fedavg`` with its local steps."""

    algorithm: str = "fedsgd"
    local_steps: int = 1
    local_lr: float = 0.1
    local_batch_size: int | None = None

    def describe(self) -> str:
        """``FedSGD``, or ``FedAvg (5 steps, lr 0.1)``."""
        if self.algorithm == "fedsgd":
            return "FedSGD"
        batch = "" if self.local_batch_size is None else f", mini-batch {self.local_batch_size}"
        return f"FedAvg ({self.local_steps} steps, lr {self.local_lr:g}{batch})"


@dataclass(frozen=True)
class VariantConfig:
    """One protocol setting of a suite with ``variants``: the suite with ``overrides`` (dotted keys, as ``--set``)
    applied, run into its own store as the suite ``BASE.NAME``; ``axis`` groups variants in the combined table."""

    name: str
    label: str
    axis: str
    overrides: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class VictimsConfig:
    """How many private batches are attacked, of which size, drawn with which seed."""

    count: int = 8
    seed: int = 0
    batch_size: int = 1


@dataclass(frozen=True)
class AttackConfig:
    """One attack of the suite.

    Attributes:
        label: the name shown in tables (``GGL (CMA-ES)``).
        spec: ``make_attack(**spec)`` arguments, ``name`` included, seed excluded (the cell gives it).
        adaptive: the attacker knows the defense and simulates it (``AttackTarget.defense`` is set).
    """

    label: str
    spec: Mapping[str, Any]
    adaptive: bool = True

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def is_reference(self) -> bool:
        return self.name.startswith(REFERENCE_PREFIX)

    def key(self) -> dict[str, Any]:
        """What identifies the attack in the results store."""
        return {**self.spec, "adaptive": self.adaptive}


@dataclass(frozen=True)
class DefenseConfig:
    """One defense setting: ``make_defense(**spec)``, or ``module:Class`` as ``spec["name"]`` with parameters."""

    label: str
    spec: Mapping[str, Any]

    @property
    def name(self) -> str:
        return str(self.spec["name"])

    @property
    def family(self) -> str:
        return self.name


@dataclass(frozen=True)
class ReferencesConfig:
    """Prior-only reference rows computed per victim (what an attacker gets from the label and the prior alone).

    Attributes:
        class_mean: score the mean public image of the inferred class.
        prior_sample: score a random prior sample of the inferred class.
        ceiling_steps: Adam steps fitting the prior's latent to the known pixels (0 disables the ceiling).
        ceiling_restarts: random starts of that fit, the best kept. ceiling_lr: its learning rate.
    """

    class_mean: bool = True
    prior_sample: bool = True
    ceiling_steps: int = 200
    ceiling_restarts: int = 2
    ceiling_lr: float = 0.05

    def attacks(self, has_prior: bool) -> tuple[AttackConfig, ...]:
        """The reference pseudo-attacks this configuration produces."""
        found = []
        if self.class_mean:
            found.append(AttackConfig("prior only: class mean", {"name": REFERENCE_PREFIX + "class-mean"}, False))
        if has_prior and self.prior_sample:
            found.append(AttackConfig("prior only: random sample", {"name": REFERENCE_PREFIX + "prior-sample"}, False))
        if has_prior and self.ceiling_steps > 0:
            spec = {
                "name": REFERENCE_PREFIX + "prior-ceiling",
                "steps": self.ceiling_steps,
                "restarts": self.ceiling_restarts,
                "lr": self.ceiling_lr,
            }
            found.append(AttackConfig("prior ceiling (pixels known)", spec, False))
        return tuple(found)


@dataclass(frozen=True)
class UtilityConfig:
    """Utility cost of each defense setting via ``benchmarks.utility.utility_cost(spec, seed=seed, **options)``."""

    enabled: bool = True
    seed: int = 0
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RequiresConfig:
    """What a suite needs beyond the package: a CUDA device, files (data, weights) that must exist."""

    gpu: bool = False
    files: tuple[str, ...] = ()


@dataclass(frozen=True)
class SuiteConfig:
    """A whole suite, validated. ``source`` is the file it came from (for messages)."""

    name: str
    description: str
    datamodule: DataModuleConfig
    model: ModelConfig
    prior: str | None
    victims: VictimsConfig
    seeds: tuple[int, ...]
    attacks: tuple[AttackConfig, ...]
    defenses: tuple[DefenseConfig, ...]
    references: ReferencesConfig
    utility: UtilityConfig
    requires: RequiresConfig
    controls: bool = True
    batch_controls: bool = False
    calibration: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    update: UpdateConfig | None = None
    variants: tuple[VariantConfig, ...] = ()
    source: str = "<memory>"

    def to_dict(self) -> dict[str, Any]:
        """Plain data (JSON-able), without ``source``. Unset optional sections (``update``, ``variants``,
        ``model.train``, ``batch_controls`` when false) are left out, so a suite that does not use them keeps its
        configuration hash."""
        data = asdict(self)
        data.pop("source")
        for key in ("update", "variants", "batch_controls"):
            if not data[key]:
                data.pop(key)
        if data["model"]["train"] is None:
            data["model"].pop("train")
        return json.loads(canonical_json(data))

    @property
    def protocol(self) -> UpdateConfig:
        """The update protocol (FedSGD when the suite sets none)."""
        return self.update or UpdateConfig()

    def variant(self, name: str) -> VariantConfig:
        """The variant called ``name``; ``SuiteError`` listing the variants otherwise."""
        for variant in self.variants:
            if variant.name == name:
                return variant
        names = ", ".join(v.name for v in self.variants) or "none"
        raise SuiteError(self.source, "variants", f"has no variant {name!r}; its variants: {names}")

    def config_hash(self) -> str:
        """Hash of the whole resolved suite: recorded with every row."""
        return short_hash(self.to_dict())

    def context(self) -> dict[str, Any]:
        """What every cell's result depends on besides its key; one store holds one context."""
        data = self.to_dict()
        context = {key: data[key] for key in ("datamodule", "model", "prior")}
        context["victims"] = {"seed": self.victims.seed, "batch_size": self.victims.batch_size}
        for key in ("update", "batch_controls"):  # batching rounds differently, so a store holds one choice
            if key in data:
                context[key] = data[key]
        return context

    def reference_attacks(self) -> tuple[AttackConfig, ...]:
        return self.references.attacks(self.prior is not None)

    def label_references(self) -> tuple[AttackConfig, ...]:
        """The references computed per defense setting (those an attacker makes from the label alone)."""
        names = {REFERENCE_PREFIX + kind for kind in LABEL_REFERENCES}
        return tuple(reference for reference in self.reference_attacks() if reference.name in names)

    def cells_per_victim(self) -> int:
        """Cells of one victim and seed: attacks (and their controls) and label references per setting, plus every
        reference once from the clean update's label."""
        per_setting = len(self.attacks) * (2 if self.controls else 1) + len(self.label_references())
        return len(self.defenses) * per_setting + len(self.reference_attacks())


# ----------------------------------------------------------------------------------------------------------------
# Option tables: what a datamodule and the utility cost accept, checked when the suite is read (no torch needed)


def seed_value(field_name: str, value: Any) -> int:
    """An integer seed in [0, 2**63 - 1] (what torch's generators take)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise ValueError(f"{field_name} must be an integer from 0 to 2**63 - 1, got {value!r}")
    return value


def text_value(field_name: str, value: Any) -> str:
    """A non-empty string."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{field_name} must be a non-empty string, got {value!r}")
    return value


def optional_text(field_name: str, value: Any) -> str | None:
    """A non-empty string, or None."""
    return None if value is None else text_value(field_name, value)


def embedded_image_size(field_name: str, value: Any) -> int:
    """Side of the embedded Fashion-MNIST images: an integer from 8 to 512 (the originals are 28 px)."""
    if isinstance(value, bool) or not isinstance(value, int) or not 8 <= value <= 512:
        raise ValueError(f"{field_name} must be an integer from 8 to 512, got {value!r}")
    return value


_LOADER_OPTIONS: dict[str, Check] = {
    "data_root": optional_text,
    "batch_size": positive_int,
    "num_workers": non_negative_int,
    "seed": seed_value,
}
DATAMODULE_OPTIONS: dict[str, dict[str, Check]] = {
    "embedded": {**_LOADER_OPTIONS, "download": boolean, "image_size": embedded_image_size},
    "fashion-mnist": {**_LOADER_OPTIONS, "download": boolean, "image_size": embedded_image_size},
    "celeba": {**_LOADER_OPTIONS, "image_size": positive_int, "attribute": text_value},
    "imagenet": {**_LOADER_OPTIONS, "normalization": text_value},
    "lfw": {
        "batch_size": positive_int,
        "num_workers": non_negative_int,
        "seed": seed_value,
        "image_size": embedded_image_size,
    },
}
"""Datamodule name -> its constructor's keyword arguments and their checks (``ggl.data.DATAMODULES``; a test keeps
the two in step). The constructors check the values that need their data (CelebA sizes and attributes, ImageNet
normalisations)."""

UTILITY_DATA = ("embedded-fashion-mnist",)
"""Training and evaluation data the utility cost may use (``data`` option): ``embedded-fashion-mnist`` is a fixed
class-stratified split of the 1,000 Fashion-MNIST images shipped in the package (``benchmarks/utility.py``)."""


def utility_data(field_name: str, value: Any) -> str:
    """One of ``UTILITY_DATA``."""
    if value not in UTILITY_DATA:
        raise ValueError(f"{field_name} must be one of {', '.join(UTILITY_DATA)}, got {value!r}")
    return value


UTILITY_OPTIONS: dict[str, Check] = {
    "data": utility_data,
    "seeds": positive_int,
    "steps": positive_int,
    "batch_size": positive_int,
    "lr": positive_number,
    "hidden": positive_int,
    "eval_images": positive_int,
    "cosine_victim": text_value,
    "cosine_victims": positive_int,
    "cosine_batch_size": positive_int,
}
"""Options of ``benchmarks.utility.utility_cost`` and their checks; ``utility.UtilityConfig`` has these fields.
``data`` names the training data and ``seeds`` how many seeded runs each reported number averages."""


# ----------------------------------------------------------------------------------------------------------------
# Reading and validating


def suite_path(name_or_path: str | Path) -> Path:
    """A suite name (``smoke``) resolves to the shipped ``benchmarks/suites/NAME.yaml``; anything else is a path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    shipped = resources.files(SUITES_PACKAGE) / "suites" / f"{name_or_path}.yaml"
    return Path(str(shipped))


def available_suites() -> list[str]:
    """Names of the shipped suites."""
    folder = Path(str(resources.files(SUITES_PACKAGE) / "suites"))
    return sorted(p.stem for p in folder.glob("*.yaml"))


class _TooLarge(yaml.YAMLError):
    """A YAML document past the bounds of a suite (values after alias expansion, nesting, recursion)."""


class _BoundedLoader(getattr(yaml, "CSafeLoader", yaml.SafeLoader)):  # type: ignore[misc]
    """The safe loader (libyaml's when installed: fast, nesting capped at 1,000 levels) refusing a document whose
    aliases would expand past ``MAX_VALUES`` values."""

    def construct_document(self, node: yaml.Node) -> Any:
        _check_expansion(node)
        return super().construct_document(node)


def _node_children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []


def _check_expansion(root: yaml.Node) -> None:
    """Count the values of ``root`` with every alias expanded, without expanding them (each node sized once).

    Raises ``_TooLarge`` past ``MAX_VALUES`` values, ``MAX_DEPTH`` levels or on a recursive alias.
    """
    sizes: dict[int, int] = {}
    path = [(root, iter(_node_children(root)))]
    on_path = {id(root)}
    while path:
        node, children = path[-1]
        child = next(children, None)
        if child is None:
            path.pop()
            on_path.discard(id(node))
            sizes[id(node)] = min(MAX_VALUES + 1, 1 + sum(sizes[id(c)] for c in _node_children(node)))
            if sizes[id(node)] > MAX_VALUES:
                raise _TooLarge(f"its aliases expand to more than {MAX_VALUES:,} values; write the values out")
        elif id(child) in on_path:
            raise _TooLarge("an alias refers to a value that contains it (a recursive structure)")
        elif id(child) not in sizes:
            if len(path) >= MAX_DEPTH:
                raise _TooLarge(f"values are nested deeper than {MAX_DEPTH} levels")
            on_path.add(id(child))
            path.append((child, iter(_node_children(child))))


def parse_yaml(text: str, source: str, field_name: str) -> Any:
    """YAML text -> plain data, safely and within the bounds above; ``SuiteError`` naming ``field_name`` otherwise."""
    try:
        return yaml.load(text, Loader=_BoundedLoader)  # noqa: S506 - a safe loader
    except _TooLarge as error:
        raise SuiteError(source, field_name, f"refused: {error}") from None
    except yaml.YAMLError as error:
        raise SuiteError(source, field_name, f"not valid YAML: {_yaml_problem(error)}") from None
    except RecursionError:
        raise SuiteError(source, field_name, f"values are nested deeper than {MAX_DEPTH} levels") from None


def _yaml_problem(error: yaml.YAMLError) -> str:
    """One line saying what is wrong and where (line and column counted from 1)."""
    problem = getattr(error, "problem", None) or str(error).splitlines()[0]
    context = getattr(error, "context", None)
    mark = getattr(error, "problem_mark", None)
    where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
    return f"{context}: {problem}{where}" if context else f"{problem}{where}"


def _suite_text(path: Path, source: str) -> str:
    """The suite file's text: an existing regular file of at most ``MAX_SUITE_BYTES`` bytes of UTF-8."""
    if path.is_dir():
        raise SuiteError(source, "<file>", "is a folder; give a suite name or the path of a .yaml file")
    if path.exists() and not path.is_file():
        raise SuiteError(source, "<file>", "is not a regular file; give the path of a .yaml file")
    if not path.is_file():
        raise SuiteError(source, "<file>", f"no such file; shipped suites: {', '.join(available_suites())}")
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_SUITE_BYTES + 1)
    except OSError as error:
        raise SuiteError(source, "<file>", f"cannot be read: {error.strerror or error}") from None
    if len(data) > MAX_SUITE_BYTES:
        raise SuiteError(source, "<file>", f"is larger than {MAX_SUITE_BYTES:,} bytes; a suite is a few KiB of YAML")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as error:
        where = f"byte {data[error.start]:#04x} at offset {error.start}"
        raise SuiteError(source, "<file>", f"is not UTF-8 text ({where}); save it as UTF-8") from None


def read_yaml(path: Path, source: str) -> dict[str, Any]:
    """The suite file as a mapping (see ``_suite_text`` and ``parse_yaml`` for the bounds); ``SuiteError`` otherwise."""
    data = parse_yaml(_suite_text(path, source), source, "<file>")
    if data is None:
        raise SuiteError(source, "<file>", "is empty; a suite needs at least name, attacks and defenses")
    if not isinstance(data, dict):
        raise SuiteError(source, "<file>", f"must be a mapping of fields, got {type(data).__name__}")
    return data


def parse_override(text: str) -> tuple[str, Any]:
    """``"victims.count=2"`` -> ``("victims.count", 2)``; the value is parsed as YAML."""
    if "=" not in text:
        raise SuiteError("--set", text, "expected key=value (dotted key, YAML value)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise SuiteError("--set", text, "empty key")
    if len(key.split(".")) > MAX_DEPTH:
        raise SuiteError("--set", key[:80], f"a key has at most {MAX_DEPTH} dotted parts")
    if len(raw) > MAX_SUITE_BYTES:
        raise SuiteError("--set", key, f"the value is longer than {MAX_SUITE_BYTES:,} characters")
    value = parse_yaml(raw, "--set", key) if raw.strip() else None
    return key, value


def count_values(data: Any, limit: int = MAX_VALUES) -> int:
    """Values in ``data`` (mappings count keys and values), shared ones once per use; stops past ``limit``.

    Nesting deeper than ``MAX_DEPTH`` counts as past the limit.
    """
    count = 0
    pending: list[tuple[Any, int]] = [(data, 0)]
    while pending and count <= limit:
        value, depth = pending.pop()
        count += 1 if depth <= MAX_DEPTH else limit + 1
        if isinstance(value, dict):
            pending.extend((item, depth + 1) for pair in value.items() for item in pair)
        elif isinstance(value, list):
            pending.extend((item, depth + 1) for item in value)
    return count


def apply_override(data: dict[str, Any], key: str, value: Any) -> None:
    """Set ``value`` at the dotted ``key`` in ``data`` (integers index lists; ``*`` sets every list entry)."""
    parts = key.split(".")
    size = count_values(value)
    copies = [0]

    def place(node: Any, where: Any, here: str) -> None:
        copies[0] += size
        if copies[0] > MAX_VALUES:
            raise SuiteError("--set", here, f"would copy more than {MAX_VALUES:,} values into the suite")
        node[where] = copy.deepcopy(value)

    def descend(node: Any, index: int, trail: str) -> None:
        part = parts[index]
        last = index == len(parts) - 1
        here = f"{trail}.{part}" if trail else part
        if isinstance(node, list):
            if part == "*":
                targets = list(range(len(node)))
            elif re.fullmatch(r"-?[0-9]{1,18}", part) and -len(node) <= int(part) < len(node):
                targets = [int(part)]
            else:
                allowed = f"use an index 0..{len(node) - 1} or *"
                raise SuiteError("--set", here, f"is a list of {len(node)} entries: {allowed}")
            for target in targets:
                if last:
                    place(node, target, here)
                else:
                    descend(node[target], index + 1, here)
            return
        if not isinstance(node, dict):
            raise SuiteError("--set", here, f"cannot set a field inside a value of type {type(node).__name__}")
        if last:
            place(node, part, here)
            return
        if part not in node or node[part] is None:
            node[part] = {}
        descend(node[part], index + 1, here)

    if parts[0] not in TOP_LEVEL_FIELDS:
        raise SuiteError("--set", key, f"unknown field; allowed: {', '.join(TOP_LEVEL_FIELDS)}")
    descend(data, 0, "")


class _Fields:
    """Typed reads from one mapping with errors that name the field."""

    def __init__(self, source: str, prefix: str, data: Any, allowed: Sequence[str] | None = None) -> None:
        self.source = source
        self.prefix = prefix
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise SuiteError(source, prefix, f"must be a mapping, got {type(data).__name__}")
        if allowed is not None:
            unknown = sorted(set(data) - set(allowed), key=str)
            if unknown:
                raise SuiteError(source, self.name(unknown[0]), f"unknown field; allowed: {', '.join(allowed)}")
        self.data = data

    def name(self, key: str) -> str:
        return f"{self.prefix}.{key}" if self.prefix else key

    def error(self, key: str, message: str) -> SuiteError:
        return SuiteError(self.source, self.name(key), message)

    def text(self, key: str, default: str | None = None, required: bool = False) -> str | None:
        value = self.data.get(key, default)
        if value is None:
            if required:
                raise self.error(key, "is required (a string)")
            return None
        if not isinstance(value, str) or not value:
            raise self.error(key, f"must be a non-empty string, got {value!r}")
        return value

    def seed(self, key: str) -> int:
        """A seed: an integer in [0, 2**63 - 1] (default 0)."""
        return int(self.checked(key, 0, seed_value))

    def checked(self, key: str, default: Any, check: Callable[[str, Any], Any]) -> Any:
        """``check(field, value)`` from ``ggl.checks`` on one field; its error becomes a ``SuiteError``."""
        value = self.data.get(key, default)
        try:
            return check(self.name(key), value)
        except ValueError as error:
            raise self.error(key, str(error).removeprefix(f"{self.name(key)} ")) from None

    def flag(self, key: str, default: bool) -> bool:
        value = self.data.get(key, default)
        if not isinstance(value, bool):
            raise self.error(key, f"must be true or false, got {value!r}")
        return value

    def mapping(self, key: str) -> dict[str, Any]:
        value = self.data.get(key)
        value = {} if value is None else value
        if not isinstance(value, dict):
            raise self.error(key, f"must be a mapping, got {type(value).__name__}")
        return dict(value)


def _check_plain(source: str, where: str, value: Any) -> None:
    """Parameters must be plain data (they become JSON keys)."""
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SuiteError(source, f"{where}.{key}", f"parameter names must be strings, got {key!r}")
            _check_plain(source, f"{where}.{key}", item)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            _check_plain(source, f"{where}.{index}", item)
    elif value is not None and not isinstance(value, (str, int, float, bool)):
        raise SuiteError(source, where, f"must be plain data (string, number, boolean, list, mapping), got {value!r}")


def _attack_label(spec: Mapping[str, Any]) -> str:
    names = {"dlg": "DLG", "idlg": "iDLG", "inverting_gradients": "Inverting Gradients", "ggl": "GGL"}
    label = names.get(str(spec["name"]), str(spec["name"]))
    if spec["name"] == "ggl" and "search" in spec:
        label += f" ({spec['search']})"
    return label


def _read_attacks(source: str, data: Any, adaptive_flags: tuple[bool, ...]) -> tuple[AttackConfig, ...]:
    if not isinstance(data, list) or not data:
        raise SuiteError(source, "attacks", "must be a non-empty list of attack specs ({name: dlg, budget: 300, ...})")
    attacks: list[AttackConfig] = []
    for index, entry in enumerate(data):
        where = f"attacks.{index}"
        if not isinstance(entry, dict):
            raise SuiteError(source, where, f"must be a mapping with a 'name', got {entry!r}")
        spec = dict(entry)
        name = spec.get("name")
        if not isinstance(name, str) or not name:
            raise SuiteError(
                source, f"{where}.name", "is required (a registered attack: dlg, idlg, inverting_gradients, ggl)"
            )
        if name.startswith(REFERENCE_PREFIX):
            raise SuiteError(
                source,
                f"{where}.name",
                f"names starting with {REFERENCE_PREFIX!r} are reserved for "
                "the prior-only reference rows (see 'references')",
            )
        if "seed" in spec:
            raise SuiteError(source, f"{where}.seed", "attack seeds come from the suite's 'seeds' list")
        label = spec.pop("label", None)
        if label is not None and not isinstance(label, str):
            raise SuiteError(source, f"{where}.label", f"must be a string, got {label!r}")
        flags = adaptive_flags
        if "adaptive" in spec:
            own = spec.pop("adaptive")
            if not isinstance(own, bool):
                raise SuiteError(source, f"{where}.adaptive", f"must be true or false, got {own!r}")
            flags = (own,)
        _check_plain(source, where, spec)
        base = label or _attack_label(spec)
        for flag in flags:
            plain = len(flags) == 1 and (label is not None or flags == adaptive_flags)
            shown = base if plain else f"{base}{'' if flag else ' non-adaptive'}"
            attacks.append(AttackConfig(shown, spec, flag))
    seen: set[str] = set()
    for index, attack in enumerate(attacks):
        key = canonical_json(attack.key())
        if key in seen:
            raise SuiteError(source, f"attacks.{index}", "duplicates an earlier attack (same name and parameters)")
        seen.add(key)
    return tuple(attacks)


def defense_label(spec: Mapping[str, Any]) -> str:
    """``gaussian(sigma=0.01)``; ``none`` for no parameters."""
    params = [f"{k}={format_value(v)}" for k, v in sorted(spec.items()) if k != "name"]
    return f"{spec['name']}({', '.join(params)})" if params else str(spec["name"])


def expand_defense(source: str, where: str, entry: Any) -> list[DefenseConfig]:
    """One defense family entry -> its settings (the product over list-valued parameters)."""
    if not isinstance(entry, dict):
        raise SuiteError(source, where, f"must be a mapping with a 'name', got {entry!r}")
    spec = dict(entry)
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise SuiteError(source, f"{where}.name", "is required (a registered defense, or module:Class)")
    label = spec.pop("label", None)
    if label is not None and not isinstance(label, str):
        raise SuiteError(source, f"{where}.label", f"must be a string, got {label!r}")
    _check_plain(source, where, spec)
    swept = [k for k, v in spec.items() if isinstance(v, list) and k != "name"]
    for key in swept:
        if not spec[key]:
            raise SuiteError(source, f"{where}.{key}", "an empty list sweeps nothing; give one value or more")
    if math.prod(len(spec[k]) for k in swept) > MAX_SETTINGS:
        raise SuiteError(source, where, f"its lists sweep more than {MAX_SETTINGS:,} settings; sweep fewer values")
    settings = []
    for values in itertools.product(*(spec[k] for k in swept)):
        setting = {**spec, **dict(zip(swept, values))}
        shown = defense_label(setting)
        if label:
            swept_text = ", ".join(f"{k}={format_value(v)}" for k, v in zip(swept, values))
            shown = f"{label} ({swept_text})" if swept else label
        settings.append(DefenseConfig(shown, setting))
    return settings


def _read_defenses(source: str, data: Any) -> tuple[DefenseConfig, ...]:
    if not isinstance(data, list) or not data:
        raise SuiteError(
            source, "defenses", "must be a non-empty list of defense specs ({name: gaussian, sigma: [0.001, 0.01]})"
        )
    defenses: list[DefenseConfig] = []
    for index, entry in enumerate(data):
        defenses.extend(expand_defense(source, f"defenses.{index}", entry))
        if len(defenses) > MAX_SETTINGS:
            raise SuiteError(source, "defenses", f"sweeps more than {MAX_SETTINGS:,} settings; sweep fewer values")
    seen: set[str] = set()
    labels: dict[str, str] = {}
    for defense in defenses:
        key = canonical_json(dict(defense.spec))
        if key in seen:
            raise SuiteError(source, "defenses", f"setting {defense.label} appears twice")
        seen.add(key)
        label = " ".join(defense.label.split()).casefold()
        if label in labels:
            raise SuiteError(
                source,
                "defenses",
                f"settings {labels[label]} and {defense.label} share a display label; labels name the table rows "
                "and grid files, so they must differ",
            )
        labels[label] = defense.label
    return tuple(defenses)


def _read_datamodule(source: str, data: Any) -> DataModuleConfig:
    fields = _Fields(source, "datamodule", data, ("name", "options"))
    name = fields.text("name", default="embedded") or "embedded"
    if ":" in name:  # module:Class, resolved and built (its options checked) by the run's preflight
        options = fields.mapping("options")
        _check_plain(source, fields.name("options"), options)
        return DataModuleConfig(name, options)
    if name not in DATAMODULE_OPTIONS:
        raise fields.error("name", f"unknown datamodule {name!r}; allowed: {', '.join(DATAMODULE_OPTIONS)}")
    return DataModuleConfig(name, _read_options(fields, DATAMODULE_OPTIONS[name]))


def _read_options(fields: _Fields, table: Mapping[str, Check]) -> dict[str, Any]:
    """The ``options`` mapping of a section, each option checked against ``table`` (names and values)."""
    options = fields.mapping("options")
    for name, value in options.items():
        field_name = fields.name(f"options.{name}")
        if name not in table:
            raise SuiteError(fields.source, field_name, f"is not an option; allowed: {', '.join(table)}")
        try:
            table[name](field_name, value)
        except ValueError as error:
            raise SuiteError(fields.source, field_name, str(error).removeprefix(f"{field_name} ")) from None
    return options


def _read_model(source: str, data: Any) -> ModelConfig:
    fields = _Fields(source, "model", data, ("name", "seed", "checkpoint", "train"))
    name = fields.text("name", default="lenet") or "lenet"
    train = None
    if fields.data.get("train") is not None:
        allowed = ("epochs", "lr", "batch_size", "seed", "optimizer")
        stage = _Fields(source, "model.train", fields.data["train"], allowed)
        optimizer = stage.text("optimizer", default="sgd")
        if optimizer not in OPTIMIZERS:
            raise stage.error("optimizer", f"must be one of {', '.join(OPTIMIZERS)}, got {optimizer!r}")
        train = TrainConfig(
            stage.checked("epochs", 0, non_negative_int),
            stage.checked("lr", 0.05, positive_number),
            stage.checked("batch_size", 32, positive_int),
            stage.seed("seed"),
            str(optimizer),
        )
    if train is not None and fields.data.get("checkpoint") is not None:
        raise fields.error("train", "and model.checkpoint both give the weights; keep one")
    return ModelConfig(name, fields.seed("seed"), fields.text("checkpoint"), train)


def _read_update(source: str, data: Any) -> UpdateConfig | None:
    """The ``update`` section: ``{algorithm: fedsgd | fedavg, local_steps, local_lr, local_batch_size}``."""
    if data is None:
        return None
    fields = _Fields(source, "update", data, ("algorithm", "local_steps", "local_lr", "local_batch_size"))
    algorithm = fields.text("algorithm", default="fedsgd")
    if algorithm not in UPDATE_ALGORITHMS:
        raise fields.error("algorithm", f"must be one of {', '.join(UPDATE_ALGORITHMS)}, got {algorithm!r}")
    local = [key for key in ("local_steps", "local_batch_size") if fields.data.get(key) is not None]
    if algorithm == "fedsgd" and local:
        raise fields.error(local[0], "applies to fedavg only (FedSGD shares one full-batch gradient)")
    batch = fields.data.get("local_batch_size")
    return UpdateConfig(
        str(algorithm),
        fields.checked("local_steps", 1, positive_int),
        fields.checked("local_lr", 0.1, positive_number),
        None if batch is None else fields.checked("local_batch_size", None, positive_int),
    )


def _read_variants(source: str, data: Any) -> tuple[VariantConfig, ...]:
    """``variants``: a list of ``{name, label, axis, set: {dotted.key: value}}``."""
    if data is None:
        return ()
    if not isinstance(data, list) or not data:
        raise SuiteError(source, "variants", "must be a non-empty list of {name, label, axis, set} mappings")
    variants = []
    for index, entry in enumerate(data):
        fields = _Fields(source, f"variants.{index}", entry, ("name", "label", "axis", "set"))
        name = fields.text("name", required=True)
        if name is None or not VARIANT_NAME.fullmatch(name):
            raise fields.error(
                "name", f"must be 1-40 lower-case letters, digits or '-' (it names a folder), got {name!r}"
            )
        overrides = fields.mapping("set")
        _check_plain(source, fields.name("set"), overrides)
        if any(key.split(".")[0] in ("name", "variants") for key in overrides):
            raise fields.error("set", "may not change the suite's name or variants")
        label = fields.text("label", default=name) or name
        variants.append(VariantConfig(name, label, fields.text("axis", default="protocol") or "protocol", overrides))
    names = [variant.name for variant in variants]
    if len(set(names)) != len(names):
        raise SuiteError(source, "variants", f"names must differ, got {', '.join(names)}")
    return tuple(variants)


def _read_prior(source: str, prior: Any) -> str | None:
    if prior is not None and (not isinstance(prior, str) or not prior):
        raise SuiteError(source, "prior", f"must be a prior name or checkpoint path, or null; got {prior!r}")
    return prior


def _read_victims(source: str, data: Any) -> VictimsConfig:
    fields = _Fields(source, "victims", data, ("count", "seed", "batch_size"))
    return VictimsConfig(
        fields.checked("count", 8, positive_int),
        fields.seed("seed"),
        fields.checked("batch_size", 1, positive_int),
    )


def _read_seeds(source: str, seeds: Any) -> tuple[int, ...]:
    """A seed or a non-empty list of distinct seeds >= 0."""
    if isinstance(seeds, int) and not isinstance(seeds, bool):
        seeds = [seeds]
    if (
        not isinstance(seeds, list)
        or not seeds
        or any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= MAX_SEED for s in seeds)
        or len(set(seeds)) != len(seeds)
    ):
        shown = repr(seeds) if len(repr(seeds)) < 200 else repr(seeds)[:200] + "..."
        needs = "must be a non-empty list of distinct integers from 0 to 2**63 - 1"
        raise SuiteError(source, "seeds", f"{needs}, got {shown}")
    return tuple(seeds)


def _read_adaptive(source: str, adaptive: Any) -> tuple[bool, ...]:
    """``true``, ``false`` or ``[true, false]``: whether attacks simulate the defense (both gives two rows)."""
    if isinstance(adaptive, bool):
        adaptive = [adaptive]
    if (
        not isinstance(adaptive, list)
        or not adaptive
        or any(not isinstance(a, bool) for a in adaptive)
        or len(set(adaptive)) != len(adaptive)
    ):
        raise SuiteError(source, "adaptive", f"must be true, false or [true, false]; got {adaptive!r}")
    return tuple(adaptive)


def _read_references(source: str, data: Any) -> ReferencesConfig:
    allowed = ("class_mean", "prior_sample", "ceiling_steps", "ceiling_restarts", "ceiling_lr")
    fields = _Fields(source, "references", data, allowed)
    return ReferencesConfig(
        fields.flag("class_mean", True),
        fields.flag("prior_sample", True),
        fields.checked("ceiling_steps", 200, non_negative_int),
        fields.checked("ceiling_restarts", 2, positive_int),
        fields.checked("ceiling_lr", 0.05, positive_number),
    )


def _read_utility(source: str, data: Any) -> UtilityConfig:
    fields = _Fields(source, "utility", data, ("enabled", "seed", "options"))
    options = _read_options(fields, UTILITY_OPTIONS)
    return UtilityConfig(fields.flag("enabled", True), fields.seed("seed"), options)


def _read_calibration(source: str, data: Any, suite: SuiteConfig) -> dict[str, tuple[str, ...]]:
    """``{check: [defense label, ...]}``: each check of ``CALIBRATION_CHECKS`` with the settings it applies to."""
    fields = _Fields(source, "calibration", data, CALIBRATION_CHECKS)
    labels = {defense.label for defense in suite.defenses}
    checks: dict[str, tuple[str, ...]] = {}
    for check in CALIBRATION_CHECKS:
        chosen = fields.data.get(check, [])
        if not isinstance(chosen, list) or any(not isinstance(label, str) for label in chosen):
            raise fields.error(check, f"must be a list of defense labels, got {chosen!r}")
        unknown = sorted(set(chosen) - labels)
        if unknown:
            raise fields.error(check, f"names no defense setting of the suite: {', '.join(unknown)}")
        if chosen:
            checks[check] = tuple(chosen)
    if "same_as_none" in checks and "none" not in labels:
        raise fields.error("same_as_none", "needs the setting 'none' in the suite's defenses")
    return checks


def _read_flag(source: str, field_name: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise SuiteError(source, field_name, f"must be true or false, got {value!r}")
    return value


def _read_requires(source: str, data: Any) -> RequiresConfig:
    fields = _Fields(source, "requires", data, ("gpu", "files"))
    files = fields.data.get("files", [])
    if not isinstance(files, list) or any(not isinstance(f, str) for f in files):
        raise SuiteError(source, "requires.files", f"must be a list of paths, got {files!r}")
    return RequiresConfig(fields.flag("gpu", False), tuple(files))


def build_suite(data: dict[str, Any], source: str) -> SuiteConfig:
    """Validate a suite mapping (as read from YAML, overrides applied) into a ``SuiteConfig``."""
    if count_values(data) > MAX_VALUES:
        raise SuiteError(source, "<file>", f"holds more than {MAX_VALUES:,} values or {MAX_DEPTH} levels of nesting")
    top = _Fields(source, "", data, TOP_LEVEL_FIELDS)
    name = top.text("name", required=True)
    if name is None or not SUITE_NAME.fullmatch(name):
        raise top.error("name", f"must be 1-100 letters, digits, '.', '_' or '-' (it names files), got {name!r}")
    description = data.get("description") or ""
    if not isinstance(description, str):
        raise SuiteError(source, "description", f"must be a string, got {description!r}")
    datamodule = _read_datamodule(source, data.get("datamodule"))
    model = _read_model(source, data.get("model"))
    prior = _read_prior(source, data.get("prior"))
    victims = _read_victims(source, data.get("victims"))
    seeds = _read_seeds(source, data.get("seeds", [0]))
    attacks = _read_attacks(source, data.get("attacks"), _read_adaptive(source, data.get("adaptive", [True])))
    suite = SuiteConfig(
        name=name,
        description=description,
        datamodule=datamodule,
        model=model,
        prior=prior,
        victims=victims,
        seeds=seeds,
        attacks=attacks,
        defenses=_read_defenses(source, data.get("defenses")),
        references=_read_references(source, data.get("references")),
        utility=_read_utility(source, data.get("utility")),
        requires=_read_requires(source, data.get("requires")),
        controls=_read_flag(source, "controls", data.get("controls", True)),
        batch_controls=_read_flag(source, "batch_controls", data.get("batch_controls", False)),
        update=_read_update(source, data.get("update")),
        variants=_read_variants(source, data.get("variants")),
        source=source,
    )
    if suite.batch_controls and not suite.controls:
        raise SuiteError(source, "batch_controls", "needs controls: true (there are no controls to batch)")
    suite = replace(suite, calibration=_read_calibration(source, data.get("calibration"), suite))
    if suite.victims.count * len(suite.seeds) * suite.cells_per_victim() > MAX_CELLS:
        product = "victims x seeds x (defense settings x (attacks, controls, references) + references)"
        raise SuiteError(source, "victims.count", f"{product} exceeds {MAX_CELLS:,} cells")
    return suite


def load_suite(name_or_path: str | Path, overrides: Sequence[str] = (), variant: str | None = None) -> SuiteConfig:
    """Read a shipped suite by name or a YAML file by path, apply ``key=value`` overrides, validate.

    With ``variant``, the suite of that variant: named ``NAME.VARIANT``, the variant's ``set`` applied first and
    the command line's overrides after (so they win), without ``variants``.
    """
    path = suite_path(name_or_path)
    source = str(path) if path.is_file() else str(name_or_path)
    data = read_yaml(path, source)
    parsed = [parse_override(text) for text in overrides]
    for key, value in parsed:
        apply_override(data, key, value)
    suite = build_suite(data, source)
    if variant is None:
        return suite
    chosen = suite.variant(variant)
    data = {key: value for key, value in data.items() if key != "variants"}
    data["name"] = f"{suite.name}.{chosen.name}"
    for key, value in [*chosen.overrides.items(), *parsed]:
        try:
            apply_override(data, key, value)
        except SuiteError as error:
            raise SuiteError(source, f"variants ({chosen.name}).set.{key}", str(error).split(": ", 2)[-1]) from None
    return build_suite(data, f"{source} (variant {chosen.name})")


# ----------------------------------------------------------------------------------------------------------------
# Output paths, checked before any work so that hours of results are never lost at the end


def output_folder(option: str, path: str | Path) -> Path:
    """``path`` as a folder this process can write in, or create; ``ValueError`` naming ``option`` otherwise.

    Nothing is created: the nearest existing folder on the way is probed with a temporary folder, removed at once.
    """
    folder = Path(path).expanduser()
    if os.path.lexists(folder) and not folder.is_dir():
        raise ValueError(f"{option} {str(path)!r} is a file, not a folder; name a folder (it is created if missing)")
    _check_writable(option, str(path), folder)
    return folder


def output_file(option: str, path: str | Path) -> Path:
    """``path`` as a file this process can write: not a folder, in a folder it can write in or create."""
    file = Path(path).expanduser()
    if file.is_dir() or str(path).endswith(("/", os.sep)):
        raise ValueError(f"{option} {str(path)!r} is a folder; name a file")
    _check_writable(option, str(path), file.parent)
    return file


def _check_writable(option: str, shown: str, folder: Path) -> None:
    """``ValueError`` unless a file can be made in ``folder`` or in the nearest existing folder above it."""
    existing = next(p for p in (folder, *folder.parents) if os.path.lexists(p))
    if not existing.is_dir():
        raise ValueError(f"{option} {shown!r}: {str(existing)!r} is a file, so nothing can be made under it")
    try:
        tempfile.TemporaryDirectory(dir=existing, prefix=".ggl-probe-").cleanup()
    except OSError as error:
        where = f"{option} {shown!r}: cannot write in {str(existing)!r}"
        raise ValueError(f"{where} ({error.strerror or error}); name a writable place") from None
