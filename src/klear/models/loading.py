"""Loading and saving models, the device, and the precision policy: master weights in
``model.dtype``, compute in ``model.compute_dtype`` (autocast on one device; FSDP2's
MixedPrecisionPolicy on ranks, see :func:`klear.train.learner.fsdp_shard`)."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch

from klear.config import ModelConfig

# ---------------------------------------------------------------------------------------------
# Device, precision, model
# ---------------------------------------------------------------------------------------------


def quiet_transformers() -> None:
    """Our own progress output replaces transformers' per-load progress bars and info logs."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def precision(model: ModelConfig | str, device: torch.device) -> tuple[torch.dtype, torch.dtype | None]:
    """(master weight dtype, autocast dtype or None) for the ``model`` config section on ``device``.

    ``model.dtype`` is what the weights and AdamW state are held in (auto: float32);
    ``model.compute_dtype`` what the arithmetic runs in (auto: bfloat16 on a CUDA GPU that
    has it when ``model.dtype`` is auto -- the usual mixed precision, AdamW updates stay
    exact -- else ``model.dtype``; on CPU plain float32 is faster than emulated bfloat16).
    Autocast is used when the two differ. A bare string is read as ``model.dtype``.
    """
    cfg = ModelConfig(tiny=True, dtype=model) if isinstance(model, str) else model
    cuda_bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    weight = _DTYPES[cfg.weight_dtype()]
    compute = _DTYPES[cfg.compute_dtype_on(cuda_bf16)]
    return weight, (compute if compute != weight else None)


def autocast(device: torch.device, dtype: torch.dtype | None) -> AbstractContextManager:
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()


def resolve_model_dir(cfg: ModelConfig, out_dir: str | Path, seed: int) -> Path:
    """The HF directory to start from: ``model.path``, or the tiny model built under ``out_dir/init``."""
    if cfg.path is not None:
        path = Path(cfg.path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"model.path = {str(path)!r}: no config.json there; expected a local Hugging Face model directory"
            )
        return path
    from klear.models.tiny import build_tiny_model

    return build_tiny_model(Path(out_dir) / "init", seed=seed)


def load_model(path: str | Path, cfg: ModelConfig, device: torch.device) -> tuple[torch.nn.Module, Any]:
    """Load (model, tokenizer) from a local HF directory, in the weight dtype ``cfg.dtype`` asks for."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    weight_dtype, _ = precision(cfg, device)
    config = AutoConfig.from_pretrained(path)
    if cfg.yarn_factor is not None and cfg.yarn_original_max_position is not None:
        from klear.models.yarn import apply_yarn

        config = apply_yarn(config, cfg.yarn_factor, cfg.yarn_original_max_position)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=weight_dtype).to(device)
    if cfg.gradient_checkpointing:  # non-reentrant: works under no_grad, with FSDP2 and unused inputs
        kwargs = {"use_reentrant": False}
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x's name
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
        model.config.use_cache = False
    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer
