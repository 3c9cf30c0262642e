"""Build a defense from its spec: a registered name, or ``module:Class`` from code the user named.

Suites and leaderboard submissions name defenses the same way: ``{name: gaussian, sigma: 0.1}``, or
``{name: my_defense:MyDefense, strength: 2}`` for custom code. ``module:Class`` resolves as ``ggl.plugins`` says
(a project module or a plugin file named with ``--plugin``; anything else refused without importing it); the
class must be a subclass of ``Defense`` (not ``Defense`` itself) and its parameters must be among the class's
``parameters``; only then is it instantiated. Every refusal is a ``ValueError`` naming the defense and the fix.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ggl.defenses.base import Defense, make_defense
from ggl.plugins import is_custom_name, resolve_class
from ggl.plugins import load_plugins as load_plugins


def build_defense(spec: Mapping[str, Any]) -> Defense:
    """A defense from ``{"name": ..., **params}``: ``make_defense`` for registered names, else ``module:Class``.

    A ``module:Class`` defense is resolved by ``ggl.plugins.resolve_class`` (a ``Defense`` subclass of a project
    module or a loaded plugin); its parameters must be in the class's ``parameters``. Every problem, including
    any error its constructor raises, is a ``ValueError`` naming the defense.
    """
    name = str(spec["name"])
    params = {k: v for k, v in spec.items() if k != "name"}
    if not is_custom_name(name):
        return make_defense(name, **params)
    cls = resolve_class(name, Defense, "defense")
    unknown = sorted(set(params) - set(cls.parameters))
    if unknown:
        allowed = ", ".join(cls.parameters) or "none"
        raise ValueError(f"defense {name!r} has no parameter {', '.join(unknown)}; allowed parameters: {allowed}")
    try:
        return cls(**params)
    except Exception as error:  # a custom constructor's error is a bad spec, reported with the defense's name
        problem = f"{type(error).__name__}: {error}"
        raise ValueError(f"defense {name!r}: bad parameters {sorted(params)} ({problem})") from None
