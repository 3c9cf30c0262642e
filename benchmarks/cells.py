"""The cell vocabulary: what one unit of benchmark work is, how a suite expands into cells, and their seeds.

A cell is (victim, defense setting, attack, seed); with the suite name its key is the results store's primary key.
Prior-only reference rows are cells without a defense. ``shard`` deals cells round-robin to ranks, ``seed_from``
derives every seed from plain data (so the same key gives the same number on any machine), and ``code_version``
names the code that computed a row.
"""

from __future__ import annotations

import hashlib
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from benchmarks.config import AttackConfig, DefenseConfig, SuiteConfig
from ggl.io import canonical_json

Item = TypeVar("Item")

CellKey = tuple[int, str, str, int]
"""(victim, defense JSON, attack JSON, seed): a cell's key within its suite."""


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

    def key(self) -> CellKey:
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


def shard(items: Sequence[Item], rank: int, world_size: int) -> list[Item]:
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
