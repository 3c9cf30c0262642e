"""Build a defense from its spec: a registered name, or ``module:Class`` from any importable module.

Suites and leaderboard submissions name defenses the same way (``{name: gaussian, sigma: 0.1}`` or
``{name: mypackage.defenses:MyDefense, strength: 2}``), so the one loader lives beside the registry.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from ggl.defenses.base import make_defense


def build_defense(spec: Mapping[str, Any]) -> Any:
    """A defense from ``{"name": ..., **params}``: ``make_defense`` for registered names, else ``module:Class``.

    A ``module:Class`` defense must be callable and have ``simulate(trial_gradients, received)``. Every problem
    (module not importable, no such class, bad parameters, missing methods) is a ``ValueError`` naming the defense.
    """
    name = str(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if ":" not in name:
        return make_defense(name, **params)
    module_name, _, class_name = name.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"defense {name!r}: cannot import module {module_name!r} ({error})") from None
    cls = getattr(module, class_name, None)
    if cls is None:
        raise ValueError(f"defense {name!r}: module {module_name!r} has no attribute {class_name!r}")
    try:
        defense = cls(**params)
    except TypeError as error:
        raise ValueError(f"defense {name!r}: bad parameters {sorted(params)} ({error})") from None
    for needed in ("__call__", "simulate"):
        if not callable(getattr(defense, needed, None)):
            raise ValueError(f"defense {name!r} must be callable and have simulate(trial_gradients, received)")
    return defense
