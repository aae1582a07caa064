"""Resuming into a run directory only when it is the same run.

``klear rl`` started again with the same ``run.out_dir`` resumes from the latest checkpoint. That
is right when the run was interrupted, and wrong when the config changed under it (another loss,
another learning rate, other data): the checkpoint would continue a different experiment and the
metrics would mix two. :func:`check_resume` compares the resolved config with the one the run saved
(``OUT/config.yaml``) and refuses a difference outside :data:`SAFE_TO_CHANGE`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from klear.config import ConfigError

#: Keys (or key prefixes, ending with ".") that may change between the start and a resume: how long
#: to train, how often to log/checkpoint/validate, and where the engines run (checkpoints load on any
#: rank count). Everything else defines the experiment.
SAFE_TO_CHANGE: tuple[str, ...] = (
    "run.name",
    "run.out_dir",
    "trainer.total_steps",
    "trainer.max_steps",  # klear sft: train longer or shorter
    "trainer.log_every",
    "trainer.eval_every",
    "trainer.save_every",
    "trainer.num_threads",
    "validation.every",
    "logging.",
    "dist.",
    "reward.num_workers",
)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``; lists stay values."""
    if not isinstance(data, dict):
        return {prefix.rstrip("."): data}
    out: dict[str, Any] = {}
    for key, value in data.items():
        out.update(flatten(value, f"{prefix}{key}."))
    return out


def config_changes(saved: dict[str, Any], current: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """Dotted key -> (saved value, current value) for every key that differs and is not safe to change."""
    old, new = flatten(saved), flatten(current)
    changes = {}
    for key in sorted(set(old) | set(new)):
        if old.get(key, "<unset>") == new.get(key, "<unset>"):
            continue
        if any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_TO_CHANGE):
            continue
        changes[key] = (old.get(key, "<unset>"), new.get(key, "<unset>"))
    return changes


def check_resume(out_dir: str | Path, current: dict[str, Any], command: str = "klear rl") -> None:
    """Refuse to resume ``out_dir`` under a config that defines a different experiment.

    ``current`` is the resolved config (``cfg.model_dump(mode="json")``). Nothing to check when the
    directory holds no saved config.
    """
    saved_path = Path(out_dir) / "config.yaml"
    if not saved_path.is_file():
        return
    try:
        saved = yaml.safe_load(saved_path.read_text(encoding="utf-8")) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{saved_path}: unreadable saved config ({exc}); use a new run.out_dir") from None
    changes = config_changes(saved, current)
    if not changes:
        return
    shown = [f"  {k}: {old!r} -> {new!r}" for k, (old, new) in list(changes.items())[:20]]
    if len(changes) > 20:
        shown.append(f"  ... and {len(changes) - 20} more")
    raise ConfigError(
        f"{out_dir} holds a checkpoint of a run with a different config ({saved_path}):\n"
        + "\n".join(shown)
        + f"\nresume it anyway with `{command} ... --resume-anyway`, start over there with `--no-resume`,"
        " or give a new run.out_dir"
    )
