"""The base of every config section, the error a bad recipe raises, and registry-name checks."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict

from klear.errors import KlearError


class ConfigError(KlearError, ValueError):
    """A recipe or override that cannot be loaded; the message says exactly why."""


class Section(BaseModel):
    """Base of every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _check_registry_name(value: str, registry_module: str, registry_name: str) -> str:
    """Accept a registered name or an importable ``package.module:function`` path to user code."""
    import importlib

    from klear.registry import resolve

    registry = getattr(importlib.import_module(registry_module), registry_name)
    try:
        resolve(value, registry, f"{registry_name} entry")
    except KeyError as exc:
        raise ValueError(exc.args[0]) from None
    return value
