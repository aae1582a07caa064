"""The 8B RL recipes against the reference scripts (Klear-Reasoner recipe/dapo/perf_run_dapo_ours_*.sh),
and the transformers floor that packed training relies on."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from klear.config import load_recipe

ROOT = Path(__file__).resolve().parents[1]

#: The reference scripts' values (math, code), as the recipes must carry them.
REFERENCE = {
    "math": {"lr": 1e-6, "ppo_mini_batch_size": 16},
    "code": {"lr": 5e-7, "ppo_mini_batch_size": 32},
}
PROMPT, RESPONSE = 1024 * 4, 1024 * 32


@pytest.mark.parametrize("name", ["math", "code"])
def test_8b_recipe_values_equal_the_reference_or_say_why(name):
    path = ROOT / "recipes" / f"klear-8b-{name}-rl.yaml"
    cfg = load_recipe(path)
    ref = REFERENCE[name]
    assert cfg.optim.lr == ref["lr"] and cfg.trainer.ppo_mini_batch_size == ref["ppo_mini_batch_size"]
    assert (cfg.trainer.train_batch_size, cfg.trainer.gen_batch_size, cfg.rollout.n) == (128, 256, 8)
    assert (cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.clip_ratio_c, cfg.loss.sft_alpha) == (
        0.2,
        0.28,
        10.0,
        0.1,
    )
    assert (cfg.optim.warmup_steps, cfg.optim.weight_decay, cfg.optim.grad_clip) == (10, 0.1, 1.0)
    assert cfg.data.max_prompt_length == PROMPT and cfg.rollout.max_new_tokens == RESPONSE
    # the engine's context holds a full prompt plus a full response, as the reference's max_model_len
    assert cfg.rollout.vllm.max_model_len == PROMPT + RESPONSE
    # no sequence parallelism here: one whole sequence must fit one micro-batch
    assert cfg.trainer.micro_batch_tokens >= PROMPT + RESPONSE
    # values that differ from the reference say so on their line
    text = path.read_text()
    for key in ("max_num_gen_batches", "micro_batch_tokens", "max_model_len", "truncation", "save_every"):
        (line,) = [ln for ln in text.splitlines() if re.match(rf"\s*{key}:", ln)]
        assert "reference" in line, f"{key}: no comment naming the reference's value"


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in re.findall(r"\d+", text)[:3])


def test_transformers_floor_covers_packing_and_dtype():
    import transformers

    (spec,) = re.findall(r'^\s*"transformers>=([^"]+)"', (ROOT / "pyproject.toml").read_text(), re.M)
    floor = _version(spec)
    assert floor >= (4, 56)  # from_pretrained(dtype=...); packing boundaries need 4.53.1
    assert _version(transformers.__version__) >= floor


def test_packed_examples_do_not_attend_to_each_other(tmp_path):
    """Changing the first example of a packed row leaves the second one's log-probs exactly as they
    were; with positions that do not restart (no boundary) the same change leaks through."""
    from transformers import AutoModelForCausalLM

    from klear.models.tiny import build_tiny_model
    from klear.train.common import token_logprobs

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m", seed=1)).eval()
    g = torch.Generator().manual_seed(0)
    a, a2, b = (torch.randint(5, 100, (n,), generator=g) for n in (9, 9, 7))
    restart = torch.cat([torch.arange(9), torch.arange(7)])[None]
    running = torch.arange(16)[None]
    with torch.no_grad():

        def second(first, positions):
            return token_logprobs(model, torch.cat([first, b])[None], positions)[0, 9:-1]

        alone = token_logprobs(model, b[None], torch.arange(7)[None])[0, :-1]
        assert torch.allclose(second(a, restart), alone, atol=1e-5)
        assert torch.equal(second(a, restart), second(a2, restart))
        assert not torch.allclose(second(a, running), second(a2, running), atol=1e-3)
