"""The rollout backend an evaluation samples from: a local model directory, with YaRN applied to its
config when asked, and what ``summary.json`` records about the model."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klear.eval.rundir import EvalError


@dataclass(frozen=True)
class YarnSetting:
    """YaRN rope scaling asked for on the command line (see :mod:`klear.models.yarn`)."""

    factor: float
    original_max_position_embeddings: int


def load_backend(
    name: str,
    model_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    yarn: YarnSetting | None = None,
    dtype: str = "auto",
    device: str | None = None,
    max_batch_size: int | None = None,
) -> Any:
    """A rollout backend for a local model directory, with YaRN applied to the model config when asked.

    ``hf``: the config is loaded, passed through :func:`klear.models.yarn.apply_yarn`,
    and the model built from it, so the scaling the model runs with is exactly the
    config recorded in ``summary.json``. Other registered backends (vLLM) are
    built with ``cls.from_pretrained(model_dir, seed=..., yarn=(factor, original))``;
    the vLLM backend turns that into ``hf_overrides`` holding the whole rope section
    :func:`klear.models.yarn.apply_yarn` writes (rope_theta included).
    """
    from klear.rollout import backend_class

    try:
        cls = backend_class(name)
    except (ValueError, ImportError, AttributeError) as err:
        raise EvalError(f"--backend {name}: {err}") from None
    path = Path(model_dir)
    if not path.is_dir():
        raise EvalError(f"model directory {str(path)!r} does not exist")
    if name != "hf":
        kwargs: dict[str, Any] = {"seed": seed}
        if yarn is not None:
            kwargs["yarn"] = (yarn.factor, yarn.original_max_position_embeddings)
        return cls.from_pretrained(str(path), **kwargs)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if yarn is not None:
        from klear.models.yarn import apply_yarn

        config = apply_yarn(config, yarn.factor, yarn.original_max_position_embeddings)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return cls(model, tokenizer, seed=seed, max_batch_size=max_batch_size)


def model_description(backend: Any, model_dir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """What ``summary.json`` records about the model: path, backend, and the rotary settings it ran with."""
    info: dict[str, Any] = {"path": str(Path(model_dir).resolve()), "backend": name}
    config = getattr(getattr(backend, "model", None), "config", None)
    if config is not None:
        info["max_position_embeddings"] = getattr(config, "max_position_embeddings", None)
        rope = getattr(config, "rope_parameters", None)
        if rope is None:
            rope = getattr(config, "rope_scaling", None)
        info["rope"] = json.loads(json.dumps(rope, default=str)) if rope is not None else None
        info["architecture"] = (getattr(config, "architectures", None) or [None])[0]
    return info
