"""Gradient-degradation defenses, each with its attacker-side simulation.

``make_defense(name, **params)`` builds one from the registry ``DEFENSES``; importing this package registers
every family below.
"""

from ggl.defenses.audit import SimulationCheck, check_simulation
from ggl.defenses.base import DEFAULT_SEED, DEFENSES, Defense, LinearSimulation, make_defense, register_defense
from ggl.defenses.clipping import Clipping
from ggl.defenses.dpsgd import DPSGD, PrivacyGuarantee, clip_per_sample, per_sample_gradients, privacy_guarantee
from ggl.defenses.loader import build_defense as build_defense
from ggl.defenses.loader import load_plugins as load_plugins
from ggl.defenses.mixup import MixUp, mix_batch
from ggl.defenses.noise import GaussianNoise, LaplacianNoise, NoDefense
from ggl.defenses.quantization import Quantization, Sign
from ggl.defenses.soteria import Soteria, representation_scores
from ggl.defenses.sparsification import Sparsification

__all__ = [
    "DEFAULT_SEED",
    "DEFENSES",
    "DPSGD",
    "Clipping",
    "Defense",
    "GaussianNoise",
    "LaplacianNoise",
    "LinearSimulation",
    "MixUp",
    "NoDefense",
    "PrivacyGuarantee",
    "Quantization",
    "Sign",
    "SimulationCheck",
    "Soteria",
    "Sparsification",
    "check_simulation",
    "clip_per_sample",
    "make_defense",
    "mix_batch",
    "per_sample_gradients",
    "privacy_guarantee",
    "register_defense",
    "representation_scores",
]
