"""Gradient-inversion attacks (DLG, iDLG, Inverting Gradients, GGL), their shared objective and search.

Build one by name with ``make_attack(name, **hparams)`` and run it with
``attack.reconstruct(target, accelerator=..., logger=...)``; ``ATTACKS`` is the registry of attack classes.
Adding an attack is one module with a ``@register_attack("name")`` class (its own arguments plus ``**shared``)
and one import line below.
"""

from ggl.attacks.base import (
    ATTACKS,
    RUN_OPTIONS,
    AttackTarget,
    EvaluationBudget,
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
    "EvaluationBudget",
    "GGL",
    "IDLG",
    "InvertingGradients",
    "GradientInversionAttack",
    "RUN_OPTIONS",
    "Reconstruction",
    "make_attack",
    "register_attack",
]
