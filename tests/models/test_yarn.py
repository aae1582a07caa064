"""YaRN on a transformers config: the paper's 64K setting, and what a model built from it does."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from klear.models.yarn import (
    PAPER_MAX_MODEL_LEN,
    apply_yarn,
    yarn_max_positions,
    yarn_overrides,
)

transformers = pytest.importorskip("transformers")


def tiny_qwen3(**kwargs):
    return transformers.Qwen3Config(
        vocab_size=64,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
        **kwargs,
    )


def test_paper_setting_on_qwen3_config():
    base = tiny_qwen3()
    base.rope_parameters["rope_theta"] = 1_000_000.0
    scaled = apply_yarn(base, 2.5, 32768)
    assert scaled.max_position_embeddings == PAPER_MAX_MODEL_LEN == 81920
    assert scaled.rope_parameters == {
        "rope_theta": 1_000_000.0,
        "rope_type": "yarn",
        "factor": 2.5,
        "original_max_position_embeddings": 32768,
    }
    # The input is untouched: the same base config can serve a short run.
    assert base.rope_parameters["rope_type"] == "default" and base.max_position_embeddings == 32768


def test_yarn_survives_save_and_load(tmp_path):
    scaled = apply_yarn(tiny_qwen3())
    scaled.save_pretrained(tmp_path)
    again = transformers.AutoConfig.from_pretrained(tmp_path)
    assert again.rope_parameters["rope_type"] == "yarn"
    assert again.rope_parameters["factor"] == 2.5
    assert again.rope_parameters["original_max_position_embeddings"] == 32768
    assert again.max_position_embeddings == 81920


def test_model_built_from_it_uses_yarn_frequencies():
    torch = pytest.importorskip("torch")
    # rope_theta 1e6 (Qwen3's): the lowest frequency's wavelength (~1.1M positions) is far beyond 32768,
    # so YaRN interpolates it fully; the highest (~6 positions) is far below, so it is kept as is.
    config = tiny_qwen3()
    config.rope_parameters["rope_theta"] = 1_000_000.0
    plain = transformers.Qwen3Model(config).rotary_emb
    yarn = transformers.Qwen3Model(apply_yarn(config)).rotary_emb
    # YaRN's attention temperature: 0.1 ln(factor) + 1.
    assert yarn.attention_scaling == pytest.approx(0.1 * math.log(2.5) + 1.0)
    assert plain.attention_scaling == 1.0
    # Highest frequency kept, lowest interpolated by the factor.
    assert torch.allclose(yarn.inv_freq[0], plain.inv_freq[0])
    assert torch.allclose(yarn.inv_freq[-1], plain.inv_freq[-1] / 2.5)


def test_transformers4_style_config_gets_rope_scaling():
    config = SimpleNamespace(rope_theta=1e6, rope_scaling=None, max_position_embeddings=32768)
    scaled = apply_yarn(config, 2.5, 32768)
    assert scaled.rope_scaling == {
        "rope_type": "yarn",
        "factor": 2.5,
        "original_max_position_embeddings": 32768,
    }
    assert scaled.max_position_embeddings == 81920 and config.rope_scaling is None


def test_refuses_stacking_and_bad_values():
    llama3 = SimpleNamespace(
        rope_scaling={"rope_type": "llama3", "factor": 8.0}, max_position_embeddings=8192
    )
    with pytest.raises(ValueError, match="llama3"):
        apply_yarn(llama3)
    with pytest.raises(ValueError, match=">= 1"):
        yarn_max_positions(0.5, 32768)
    with pytest.raises(ValueError, match="whole number"):
        yarn_max_positions(2.5, 32767)
    # Re-applying yarn (e.g. a different factor) replaces the old setting.
    assert apply_yarn(apply_yarn(tiny_qwen3()), 2.0, 32768).rope_parameters["factor"] == 2.0


def test_overrides_for_engines():
    assert yarn_overrides(rope_theta=1e6) == {
        "rope_parameters": {
            "rope_type": "yarn",
            "factor": 2.5,
            "original_max_position_embeddings": 32768,
            "rope_theta": 1e6,
        },
        "max_position_embeddings": 81920,
    }
