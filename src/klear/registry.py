"""Resolving an extension point's name: a key of its registry dict, or user code as ``pkg.module:attr``.

Each extension point keeps its own explicit dict (``LOSSES``, ``ADVANTAGES``,
``REWARDS``, ``BACKENDS``); this is the one lookup they share.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any


def resolve(name: str, registry: Mapping[str, Any], what: str) -> Any:
    """``registry[name]``, or the attribute a dotted ``'pkg.module:attr'`` path names."""
    if name in registry:
        return registry[name]
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            return getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as exc:
            raise KeyError(f"{what} {name!r}: cannot import it ({exc})") from None
    raise KeyError(f"unknown {what} {name!r}; allowed: {', '.join(sorted(registry))}, or 'pkg.module:attr'")
