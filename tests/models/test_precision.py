"""Precision settings: master weight dtype vs compute dtype, and the refusal of updates that round away."""

from __future__ import annotations

import pytest
import torch

from klear.config import ConfigError, ModelConfig, RLConfig, SFTConfig, build_config, lowest_exact_lr
from klear.models.loading import precision


def test_rounding_threshold_by_hand():
    # bf16 keeps 7 mantissa bits: a weight of 0.02 has spacing 0.02 * 2^-7, half of it 0.02 * 2^-8
    assert lowest_exact_lr("bfloat16") == pytest.approx(0.02 / 256)
    assert lowest_exact_lr("float16") == pytest.approx(0.02 / 2048)
    assert lowest_exact_lr("float32") == 0.0
    w = torch.tensor(0.02, dtype=torch.bfloat16)
    assert w - 1e-6 == w  # an lr-1e-6 step vanishes, as the threshold says
    assert w - torch.tensor(lowest_exact_lr("bfloat16") * 1.01, dtype=torch.bfloat16) != w


@pytest.mark.parametrize("kind", [RLConfig, SFTConfig])
def test_low_precision_weights_at_a_small_lr_are_refused(kind):
    with pytest.raises(ConfigError) as err:
        build_config(kind, {"model": {"tiny": True, "dtype": "bfloat16"}, "optim": {"lr": 1e-6}})
    assert "model.dtype" in str(err.value) and "optim.lr" in str(err.value)
    assert "allow_low_precision_weights" in str(err.value)
    ok = {
        "model": {"tiny": True, "dtype": "bfloat16", "allow_low_precision_weights": True},
        "optim": {"lr": 1e-6},
    }
    assert build_config(kind, ok).model.dtype == "bfloat16"
    # float16 has a lower threshold: 5e-5 is fine there, not in bfloat16
    assert build_config(kind, {"model": {"tiny": True, "dtype": "float16"}, "optim": {"lr": 5e-5}})
    with pytest.raises(ConfigError, match=r"model\.dtype"):
        build_config(kind, {"model": {"tiny": True, "dtype": "bfloat16"}, "optim": {"lr": 5e-5}})
    mixed = {"model": {"tiny": True, "dtype": "float32", "compute_dtype": "bfloat16"}, "optim": {"lr": 1e-7}}
    assert build_config(kind, mixed).model.compute_dtype == "bfloat16"


def test_bad_compute_dtype_and_chunk_are_refused():
    with pytest.raises(ConfigError, match=r"compute_dtype"):
        build_config(RLConfig, {"model": {"tiny": True, "compute_dtype": "int8"}})
    for kind in (RLConfig, SFTConfig):
        with pytest.raises(ConfigError, match=r"logits_chunk_tokens"):
            build_config(kind, {"trainer": {"logits_chunk_tokens": -1}})
        assert build_config(kind, {"trainer": {"logits_chunk_tokens": 0}}).trainer.logits_chunk_tokens == 0


def test_precision_and_engine_dtype():
    cpu = torch.device("cpu")
    assert precision(ModelConfig(tiny=True), cpu) == (torch.float32, None)  # auto on CPU: plain fp32
    assert precision(ModelConfig(tiny=True, dtype="float32", compute_dtype="bfloat16"), cpu) == (
        torch.float32,
        torch.bfloat16,
    )
    assert precision(ModelConfig(tiny=True, dtype="bfloat16"), cpu) == (torch.bfloat16, None)
    assert precision("float32", cpu) == (torch.float32, None)
    assert ModelConfig(tiny=True).engine_dtype() == "bfloat16"  # auto: bf16 compute on a GPU
    assert ModelConfig(tiny=True, dtype="float32").engine_dtype() == "float32"
    assert ModelConfig(tiny=True, dtype="float32", compute_dtype="bfloat16").engine_dtype() == "bfloat16"
    assert ModelConfig(tiny=True, dtype="float16").engine_dtype() == "float16"
    assert ModelConfig(tiny=True).compute_dtype_on(cuda_bf16=False) == "float32"


def test_8b_recipes_keep_float32_master_weights():
    from pathlib import Path

    from klear.config import load_config

    root = Path(__file__).resolve().parents[2]
    for name, kind in (
        ("klear-8b-math-rl", RLConfig),
        ("klear-8b-code-rl", RLConfig),
        ("klear-8b-sft", SFTConfig),
    ):
        cfg = load_config(kind, root / "recipes" / f"{name}.yaml")
        assert (cfg.model.dtype, cfg.model.compute_dtype) == ("float32", "bfloat16"), name
        assert cfg.model.engine_dtype() == "bfloat16"
