"""Loading: YAML + dotted overrides -> validated model, with readable errors."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from klear.config.base import ConfigError
from klear.config.rewards import RewardConfig
from klear.config.rl import RLConfig
from klear.config.sft import SFTConfig

M = TypeVar("M", bound=BaseModel)


def _allowed_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at ``loc`` (a pydantic error location) in ``model``."""
    cur: Any = model
    for part in loc[:-1]:
        field = cur.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            return []
        cur = ann
    return list(cur.model_fields)


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = ".".join(str(p) for p in loc) or "<root>"
        value = e.get("input")
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            lines.append(f"  {key}: unknown key{hint}; allowed here: {', '.join(allowed)}")
            continue
        msg = e["msg"].removeprefix("Value error, ")
        if isinstance(value, dict):  # a cross-field rule: the message names the keys itself
            lines.append(f"  {key}: {msg}")
        else:
            lines.append(f"  {key} = {json.dumps(value, default=str)}: {msg}")
    return "\n".join(lines)


def parse_override(item: str) -> tuple[list[str], Any]:
    """``a.b.c=value`` -> (["a", "b", "c"], value parsed as YAML scalar/list)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r}: expected key.path=value")
    key, raw = item.split("=", 1)
    parts = key.strip().split(".")
    if not all(parts):
        raise ConfigError(f"override {item!r}: empty key segment in {key!r}")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {item!r}: value is not valid YAML ({exc})") from None
    return parts, value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Return a copy of ``data`` with each dotted override set (sections are created as needed)."""
    out = json.loads(json.dumps(data))  # deep copy of plain YAML data
    for item in overrides:
        parts, value = parse_override(item)
        cur = out
        for p in parts[:-1]:
            nxt = cur.setdefault(p, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {p!r} is a value ({nxt!r}), not a section")
            cur = nxt
        cur[parts[-1]] = value
    return out


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe {str(path)!r} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not UTF-8 text (byte {exc.start + 1})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"recipe {str(path)!r} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {str(path)!r}: top level must be a mapping, got {type(data).__name__}")
    return data


def build_config(model: type[M], data: dict[str, Any], source: str = "<dict>") -> M:
    """Validate plain data into ``model`` or raise ConfigError naming key, value and what is allowed."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_errors(err, model, source)) from None


def load_config(model: type[M], recipe: str | Path | None = None, overrides: list[str] | None = None) -> M:
    """Load a recipe (optional) and apply dotted overrides, validating everything."""
    data = read_yaml(recipe) if recipe is not None else {}
    data = apply_overrides(data, overrides or [])
    source = str(recipe) if recipe is not None else "defaults"
    if overrides:
        source += " + overrides " + " ".join(overrides)
    return build_config(model, data, source)


def save_config(cfg: BaseModel, out_dir: str | Path, name: str = "config.yaml") -> Path:
    """Write the fully resolved config next to a run's outputs (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / name
    from klear.io import write_atomic

    write_atomic(target, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return target


CONFIG_KINDS: dict[str, type[BaseModel]] = {"rl": RLConfig, "sft": SFTConfig}


def load_recipe(recipe: str | Path, overrides: list[str] | None = None, kind: str | None = None) -> BaseModel:
    """Load a recipe whose schema is named by its top-level ``kind`` (``rl`` or ``sft``; default ``rl``)."""
    data = read_yaml(recipe)
    kind = kind or data.get("kind", "rl")
    if kind not in CONFIG_KINDS:
        raise ConfigError(f"recipe {str(recipe)!r}: kind = {kind!r}: allowed: {', '.join(CONFIG_KINDS)}")
    return load_config(CONFIG_KINDS[kind], recipe, overrides)


def load_reward_config(recipe: str | None, overrides: list[str] | None = None) -> RewardConfig:
    """The ``reward`` section of an RL recipe (defaults without one) with dotted overrides: what the
    offline scorers (``klear reward score``, the data filters) use."""
    cfg = load_recipe(recipe, overrides) if recipe else load_config(RLConfig, None, overrides)
    if not hasattr(cfg, "reward"):
        raise ConfigError(f"recipe {recipe!r} has no 'reward' section (is it an RL recipe?)")
    return cfg.reward
