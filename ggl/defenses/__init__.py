"""Gradient-degradation defenses, each with its attacker-side simulation.

``make_defense(name, **params)`` builds one from the registry ``DEFENSES``; importing this package registers
every family below.
"""

from ggl.defenses.base import DEFAULT_SEED, DEFENSES, Defense, make_defense, register_defense
from ggl.defenses.noise import GaussianNoise, LaplacianNoise, NoDefense

__all__ = [
    "DEFAULT_SEED",
    "DEFENSES",
    "Defense",
    "GaussianNoise",
    "LaplacianNoise",
    "NoDefense",
    "make_defense",
    "register_defense",
]
