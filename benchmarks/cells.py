"""The cell vocabulary: what one unit of benchmark work is, how a suite expands into cells, and their seeds.

A cell is (victim, defense setting, attack, seed); with the suite name its key is the results store's primary key.
Three kinds: an attack on the defended update; its no-information **control** (the same attack, budget and seed on
the defended update of another image of the same inferred class, its key the attack's plus ``"control"``); and
a prior-only **reference** (without a defense from the clean update's label, and again per defense setting for
those made from the label alone, from the label inferred from the defended update). ``shard`` deals cells
round-robin to ranks, ``seed_from`` derives every seed from plain data (so the same key gives the same number on
any machine), and ``code_version`` names the code that computed a row.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from ggl.io import canonical_json

from .config import CONTROL, AttackConfig, DefenseConfig, SuiteConfig

Item = TypeVar("Item")

MATCH_LOSS = "match_loss"
"""Row diagnostic: 1 - cosine between the reconstruction's plain gradient and the update the attack received."""
STILL_IMPROVING = "still_improving"
"""Row diagnostic: 1 when the attack's search was still improving when its budget ran out (``ggl.attacks``)."""
MSE_R = "mse_r"
"""Row measure: MSE of the victim model's penultimate-layer features, reconstruction vs original (GGL's MSE-R)."""
STAGE_META = "stage:"
"""Store metadata key prefix (``stage:SUITE``) of a trained victim's stage, cache key and accuracies."""
SIMULATION_OK = "simulation_ok"
"""Row diagnostic: 1 when the defense's ``simulate`` passed ``ggl.defenses.check_simulation`` for the victim."""

CellKey = tuple[int, str, str, int]
"""(victim, defense JSON, attack JSON, seed): a cell's key within its suite."""


@dataclass(frozen=True)
class Cell:
    """One unit of work. ``defense`` is None for the per-victim references; ``control`` marks a control cell."""

    victim: int
    defense: DefenseConfig | None
    attack: AttackConfig
    seed: int
    control: bool = False

    @property
    def defense_json(self) -> str:
        return canonical_json(dict(self.defense.spec) if self.defense is not None else None)

    @property
    def attack_json(self) -> str:
        return canonical_json(self.attack_key())

    def attack_key(self) -> dict[str, Any]:
        """The attack as stored: its key, plus ``"control"`` for a control cell."""
        return {**self.attack.key(), "control": CONTROL} if self.control else self.attack.key()

    @property
    def attack_label(self) -> str:
        return f"{self.attack.label} (control)" if self.control else self.attack.label

    def key(self) -> CellKey:
        """(victim, defense JSON, attack JSON, seed); with the suite name, the store's primary key."""
        return (self.victim, self.defense_json, self.attack_json, self.seed)

    @property
    def kind(self) -> str:
        if self.attack.is_reference:
            return "reference"
        return "control" if self.control else "attack"

    def describe(self) -> str:
        defense = self.defense.label if self.defense is not None else "-"
        return f"victim {self.victim} | {defense} | {self.attack_label} | seed {self.seed}"


def expand_cells(suite: SuiteConfig) -> list[Cell]:
    """Every cell of the suite, victim-major, so consecutive cells share work: per victim and seed its own references,
    then per defense setting the label references, the attacks and (when the suite has them) their controls."""
    cells: list[Cell] = []
    for victim in range(suite.victims.count):
        for seed in suite.seeds:
            cells.extend(Cell(victim, None, reference, seed) for reference in suite.reference_attacks())
            for defense in suite.defenses:
                cells.extend(Cell(victim, defense, reference, seed) for reference in suite.label_references())
                cells.extend(Cell(victim, defense, attack, seed) for attack in suite.attacks)
                if suite.controls:
                    cells.extend(Cell(victim, defense, attack, seed, control=True) for attack in suite.attacks)
    return cells


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
    """Round-robin share of ``items`` for ``rank`` of ``world_size`` (every item in exactly one share)."""
    if world_size < 1 or not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size) and world_size >= 1, got rank={rank}, {world_size=}")
    return list(items[rank::world_size])


def seed_from(*parts: Any) -> int:
    """A 63-bit seed derived from plain-data ``parts`` (stable across runs and machines)."""
    digest = hashlib.sha256(canonical_json(list(parts)).encode()).hexdigest()
    return int(digest[:15], 16)


CODE_PATHS = ("ggl", "benchmarks", "setup.cfg", "pyproject.toml")
"""The paths whose uncommitted changes make a checkout's code version ``-dirty`` (reports and docs do not)."""


def code_version() -> str:
    """``git describe --always --tags`` of the source tree when it is a checkout, ``-dirty`` when ``CODE_PATHS``
    have uncommitted changes (a rewritten report folder is not a code change), else the package version."""
    import ggl

    root = Path(ggl.__file__).resolve().parent.parent
    if (root / ".git").exists():
        try:
            described = _git(root, "describe", "--always", "--tags")
            changed = _git(root, "status", "--porcelain", "--untracked-files=no", "--", *CODE_PATHS)
            if described:
                return f"git:{described}" + ("-dirty" if changed else "")
        except (OSError, subprocess.SubprocessError):
            pass
    return f"ggl-bench {ggl.__version__}"


def _git(root: Path, *arguments: str) -> str:
    return subprocess.run(
        ["git", *arguments], cwd=root, capture_output=True, text=True, timeout=10, check=True
    ).stdout.strip()
