"""Gradient-inversion attacks (DLG, iDLG, Inverting Gradients, GGL), their shared objective and search.

Build one by name with ``make_attack(name, **params)``; ``ATTACKS`` lists the registered classes. Adding an attack
is one module with a ``@register_attack("name")`` class plus one import line below.
"""

from ggl.attacks.base import (
    ATTACKS,
    AttackTarget,
    GradientInversionAttack,
    Reconstruction,
    make_attack,
    register_attack,
)
from ggl.attacks.dlg import DLG
from ggl.attacks.ggl import GGL
from ggl.attacks.idlg import IDLG
from ggl.attacks.inverting import InvertingGradients

__all__ = [
    "ATTACKS",
    "AttackTarget",
    "DLG",
    "GGL",
    "IDLG",
    "InvertingGradients",
    "GradientInversionAttack",
    "Reconstruction",
    "make_attack",
    "register_attack",
]
