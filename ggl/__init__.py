"""ggl-bench: audit privacy defenses in federated learning with gradient-inversion attacks.

Subpackages: ``ggl.fl`` (victim models, shared updates, label inference), ``ggl.defenses``,
``ggl.attacks``, ``ggl.priors``, ``ggl.data`` and ``ggl.metrics``. Importing ``ggl`` imports nothing heavy.
"""

__version__ = "0.1.0"
