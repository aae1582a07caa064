"""``data.max_prompt_length`` with ``data.truncation``: error names file, line and length; drop and
left are counted; ``klear data validate`` reports the same prompts training would act on."""

from __future__ import annotations

import pytest

from klear.data.prompts import PromptTooLongError, fit_prompts, many_prompt_ids, prompt_ids

from .conftest import write_jsonl

#: The tiny tokenizer is character-level; its chat template adds 19 tokens around one user turn:
#: <|im_start|> "user\n" ... <|im_end|> "\n" <|im_start|> "assistant\n" = 1 + 5 + 1 + 1 + 1 + 10.
TEMPLATE_TOKENS = 19


@pytest.fixture(scope="module")
def tokenizer():
    from klear.models.tiny import build_tokenizer

    return build_tokenizer()


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory, tokenizer):
    path = tmp_path_factory.mktemp("tok")
    tokenizer.save_pretrained(path)
    return path


def row(text: str) -> dict:
    return {
        "data_source": "d",
        "ability": "math",
        "prompt": [{"role": "user", "content": text}],
        "reward_model": {"style": "rule", "ground_truth": "1"},
    }


ROWS = [row("a" * 5), row("b" * 30), row("c" * 10)]  # 24, 49 and 29 tokens
WHERE = ["f.jsonl: line 1", "f.jsonl: line 2", "f.jsonl: line 3"]


def test_lengths_are_counted_as_the_backend_encodes(tokenizer):
    assert [len(prompt_ids(tokenizer, r["prompt"])) for r in ROWS] == [
        5 + TEMPLATE_TOKENS,
        30 + TEMPLATE_TOKENS,
        10 + TEMPLATE_TOKENS,
    ]


def test_batch_encoding_equals_the_backends_one_by_one(tokenizer):
    prompts = [r["prompt"] for r in ROWS] + ["plain text", [7, 8, 9]]
    assert many_prompt_ids(tokenizer, prompts) == [prompt_ids(tokenizer, p) for p in prompts]


def test_drop_leaves_long_prompts_out_and_counts_them(tokenizer):
    kept, stats = fit_prompts(ROWS, tokenizer, 29, "drop", WHERE)
    assert kept == [ROWS[0], ROWS[2]]  # 29 tokens is exactly the limit: kept
    assert (stats.rows, stats.dropped, stats.truncated, stats.longest) == (3, 1, 0, 49)
    assert stats.metrics() == {"data/prompts_dropped_too_long": 1.0, "data/prompts_truncated": 0.0}


def test_left_keeps_the_last_tokens(tokenizer):
    kept, stats = fit_prompts(ROWS, tokenizer, 29, "left", WHERE)
    assert (stats.dropped, stats.truncated) == (0, 1)
    assert kept[0] is ROWS[0] and kept[2] is ROWS[2]
    full = prompt_ids(tokenizer, ROWS[1]["prompt"])
    assert kept[1]["prompt"] == full[-29:] and len(kept[1]["prompt"]) == 29
    # the end of the prompt (the generation prompt) survives; the head of the user turn goes
    assert tokenizer.decode(kept[1]["prompt"]).endswith("b" * 10 + "<|im_end|>\n<|im_start|>assistant\n")
    assert kept[1]["reward_model"] == ROWS[1]["reward_model"]
    assert ROWS[1]["prompt"][0]["content"] == "b" * 30  # the input row is not modified


def test_error_names_file_line_and_length(tokenizer):
    with pytest.raises(
        PromptTooLongError, match=r"^f\.jsonl: line 2: prompt is 49 tokens, over data\.max_prompt_length = 29"
    ):
        fit_prompts(ROWS, tokenizer, 29, "error", WHERE)
    kept, stats = fit_prompts(ROWS, tokenizer, 49, "error", WHERE)
    assert kept == ROWS and stats.dropped == stats.truncated == 0


def test_bad_truncation_value_is_refused_at_config_load():
    from klear.config import ConfigError, RLConfig, build_config

    with pytest.raises(ConfigError, match="truncation"):
        build_config(RLConfig, {"data": {"truncation": "right"}}, "test")
    with pytest.raises(ConfigError, match="max_prompt_length"):
        build_config(RLConfig, {"data": {"max_prompt_length": 0}}, "test")
    assert build_config(RLConfig, {}, "test").data.truncation == "drop"


def test_validate_reports_prompts_over_the_limit(tmp_path, klear, tokenizer_dir):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    code, out, _ = klear("validate", path, "--tokenizer", tokenizer_dir, "--max-prompt-length", 29)
    assert code == 0
    assert "prompts over max_prompt_length 29: 1 (data.truncation drop: dropped)" in out
    assert f"{path}: line 2: prompt is 49 tokens" in out
    assert f"{path}: line 1:" not in out and f"{path}: line 3:" not in out
    code, out, _ = klear(
        "validate", path, "--tokenizer", tokenizer_dir, "--max-prompt-length", 29, "--truncation", "error"
    )
    assert code == 1 and "training stops on the first" in out
    code, out, err = klear("validate", path, "--max-prompt-length", 29)
    assert code == 2 and "give --tokenizer" in err


def test_validate_takes_the_limit_from_a_recipe(tmp_path, klear, tokenizer_dir):
    path = write_jsonl(tmp_path / "p.jsonl", ROWS)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        f"kind: rl\nmodel:\n  path: {tokenizer_dir}\ndata:\n  max_prompt_length: 24\n  truncation: left\n"
    )
    code, out, _ = klear("validate", path, "--config", recipe)
    assert code == 0
    assert "prompts over max_prompt_length 24: 2 (data.truncation left: truncated on the left)" in out
    # the tiny model's own tokenizer when the recipe has no model.path
    recipe.write_text("kind: rl\nmodel:\n  tiny: true\ndata:\n  max_prompt_length: 29\n  truncation: error\n")
    code, out, _ = klear("validate", path, "--config", recipe)
    assert code == 1 and "prompts over max_prompt_length 29: 1" in out
