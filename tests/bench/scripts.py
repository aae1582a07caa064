"""The benchmark scripts under bench/ loaded as modules, so tests can call their functions."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(stem: str) -> ModuleType:
    """``bench/<stem>.py`` as a fresh module (``klear_bench_<stem>``)."""
    spec = importlib.util.spec_from_file_location(f"klear_bench_{stem}", BENCH / f"{stem}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
