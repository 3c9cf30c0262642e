"""One registry for every named family (attacks, defenses, searches, engines, priors, datamodules, victims).

In the style of nevergrad's ``Registry``: a dict from name to object with a ``register`` decorator. Duplicate names
are refused, and every unknown-name error reads the same and suggests the closest registered names.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")
Registered = TypeVar("Registered")


class Registry(dict[str, T]):
    """Registered objects of one kind by name.

    Args:
        kind: what the entries are, for messages ("attack", "defense", "prior", ...).
    """

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind

    def register(self, name: str) -> Callable[[Registered], Registered]:
        """Decorator: register a class or function under ``name``; a name already taken is refused."""

        def decorate(obj: Registered) -> Registered:
            self.add(name, obj)  # type: ignore[arg-type]
            return obj

        return decorate

    def add(self, name: str, obj: T) -> None:
        """Register ``obj`` under ``name``; ``ValueError`` if the name is taken."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"a {self.kind} name must be a non-empty string, got {name!r}")
        if name in self:
            owner = getattr(self[name], "__qualname__", repr(self[name]))
            raise ValueError(f"{self.kind} {name!r} is already registered by {owner}")
        self[name] = obj

    def lookup(self, name: Any) -> T:
        """The entry registered as ``name``; ``ValueError`` naming the allowed names and the closest ones."""
        if isinstance(name, str) and name in self:
            return self[name]
        raise ValueError(self.unknown(name))

    def unknown(self, name: Any) -> str:
        """The one message for a name that is not registered."""
        hint = ""
        if isinstance(name, str):
            close = difflib.get_close_matches(name, list(self), n=3, cutoff=0.6)
            if close:
                hint = f" (did you mean {' or '.join(repr(c) for c in close)}?)"
        return f"unknown {self.kind} {name!r}{hint}; allowed: {', '.join(sorted(self))}"
