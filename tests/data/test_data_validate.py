"""`klear data validate`: summary counts, token-length percentiles by hand, every bad row listed."""

from __future__ import annotations

import json

import pytest

from klear.data.summary import percentiles

from .conftest import FIXTURES, write_jsonl

#: Chat-template tokens around one user turn with the tiny character-level tokenizer:
#: <|im_start|> "user\n" ... <|im_end|> "\n" <|im_start|> "assistant\n" = 1 + 5 + 1 + 1 + 1 + 10.
TEMPLATE_TOKENS = 19


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory):
    from klear.models.tiny import build_tokenizer

    path = tmp_path_factory.mktemp("tok")
    build_tokenizer().save_pretrained(path)
    return path


def test_percentiles_nearest_rank():
    assert percentiles([5, 1, 3, 2, 4]) == {"p50": 3.0, "p90": 5.0, "p99": 5.0, "max": 5.0}
    assert percentiles(list(range(1, 101))) == {"p50": 50.0, "p90": 90.0, "p99": 99.0, "max": 100.0}
    assert percentiles([]) == {}


def test_rl_summary_with_tokenizer(tmp_path, klear, tokenizer_dir):
    out = tmp_path / "m.jsonl"
    assert klear("convert", FIXTURES / "math_qa.jsonl", "--output", out)[0] == 0
    code, stdout, _ = klear("validate", out, "--tokenizer", tokenizer_dir)
    assert code == 0
    # prompts "What is 1+1?" (12 chars), "What is 2+3?" (12), "What is 10-4?" (13); one token per char
    p50, top = 12 + TEMPLATE_TOKENS, 13 + TEMPLATE_TOKENS
    assert f"{out}: rl rows: 3 valid, 0 invalid" in stdout
    assert "data_source: math_qa 3" in stdout and "ability: math 3" in stdout
    assert f"prompt tokens: p50 {p50}  p90 {top}  p99 {top}  max {top}" in stdout
    code, stdout, _ = klear("validate", out)
    assert "prompt chars: p50 12  p90 13  p99 13  max 13" in stdout


def test_sft_summary(tmp_path, klear):
    out = tmp_path / "s.parquet"
    assert klear("convert", FIXTURES / "sft_messages.jsonl", "--output", out, "--shape", "messages")[0] == 0
    code, stdout, _ = klear("validate", out)
    assert code == 0 and "sft rows: 2 valid" in stdout
    assert "source: chat-a 1, chat-b 1" in stdout and "correct: None 1, True 1" in stdout
    assert "difficulty_x100: p50 75" in stdout


def test_every_bad_row_is_listed_and_exit_code_is_1(tmp_path, klear):
    good = json.loads((FIXTURES / "math_qa.jsonl").read_text().splitlines()[0])
    row = {"data_source": "d", "prompt": good["question"], "reward_model": {"ground_truth": "2"}}
    path = write_jsonl(
        tmp_path / "v.jsonl",
        [
            row,
            {**row, "reward_model": {}},
            row,
            {**row, "ability": "code"},
            {**row, "prompt": [{"role": "x"}]},
        ],
    )
    code, stdout, err = klear("validate", path, "--kind", "rl")
    assert code == 1 and "rl rows: 2 valid, 3 invalid" in stdout
    lines = err.strip().splitlines()
    assert lines[0] == f"klear: error: {path}: line 2: field 'reward_model.ground_truth': Field required"
    assert lines[1].startswith(
        f"klear: error: {path}: line 4: field 'reward_model.ground_truth': code ground truth"
    )
    assert lines[2].startswith(f"klear: error: {path}: line 5: field 'prompt.0.role'")
    bad_json = write_jsonl(tmp_path / "j.jsonl", [row, "{oops"])
    code, _, err = klear("validate", bad_json)
    assert code == 2 and f"{bad_json}: line 2: invalid JSON" in err
    code, _, err = klear("validate", tmp_path / "missing.jsonl")
    assert code == 2 and "file not found" in err
