"""`klear data convert`: the common shapes to our rows, field mapping, and errors naming file, line, field."""

from __future__ import annotations

import json

import pytest

from klear.data.convert import FieldMap, convert_record
from klear.data.schema import load_rl_rows, load_sft_rows
from klear.rewards.code import parse_tests

from .conftest import FIXTURES, read_jsonl, write_jsonl


def test_qa_to_rl_with_usual_keys(tmp_path, klear):
    out = tmp_path / "math.jsonl"
    code, stdout, _ = klear("convert", FIXTURES / "math_qa.jsonl", "--output", out, "--data-source", "toy")
    assert code == 0 and "converted 3 of 3 records" in stdout
    rows = load_rl_rows(out)
    assert [r.reward_model.ground_truth for r in rows] == ["2", "5", "6"]  # 'solution': 5 -> "5"
    assert [r.prompt[0].content for r in rows] == ["What is 1+1?", "What is 2+3?", "What is 10-4?"]
    assert {r.data_source for r in rows} == {"toy"} and [r.extra_info["index"] for r in rows] == [0, 1, 2]
    assert not (tmp_path / "math.jsonl.work").exists()  # work dir removed after success


def test_field_mapping_template_system_prompt_and_keep(tmp_path, klear):
    raw = write_jsonl(tmp_path / "raw.jsonl", [{"q": "3*3?", "gold": 9, "lvl": 2, "origin": "mine"}])
    out = tmp_path / "o.parquet"
    code, _, err = klear(
        "convert",
        raw,
        "--output",
        out,
        "--question-key",
        "q",
        "--answer-key",
        "gold",
        "--source-key",
        "origin",
        "--ability",
        "arith",
        "--keep",
        "lvl",
        "--prompt-template",
        "Solve: {question} Put the answer in \\boxed{{}}.",
        "--system-prompt",
        "Think.",
    )
    assert code == 0, err
    (row,) = load_rl_rows(out)
    assert row.data_source == "mine" and row.ability == "arith"
    assert [m.role for m in row.prompt] == ["system", "user"]
    assert row.prompt[1].content == "Solve: 3*3? Put the answer in \\boxed{}."
    assert row.reward_model.ground_truth == "9" and row.extra_info == {"index": 0, "lvl": 2}


def test_messages_to_sft_and_rl(tmp_path, klear):
    out = tmp_path / "sft.jsonl"
    assert klear("convert", FIXTURES / "sft_messages.jsonl", "--output", out, "--shape", "messages")[0] == 0
    rows = load_sft_rows(out)
    assert [m.role for m in rows[0].messages] == ["user", "assistant"]  # ShareGPT from/value read
    assert [r.source for r in rows] == ["chat-a", "chat-b"]
    assert rows[1].correct is True and rows[1].difficulty == 0.75
    raw = write_jsonl(
        tmp_path / "m.jsonl",
        [
            {
                "messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}],
                "answer": "4",
            }
        ],
    )
    assert (
        klear("convert", raw, "--output", tmp_path / "rl.json", "--shape", "messages", "--to", "rl")[0] == 0
    )
    (row,) = load_rl_rows(tmp_path / "rl.json")
    assert [m.content for m in row.prompt] == ["2+2?"] and row.reward_model.ground_truth == "4"


def test_qa_to_sft(tmp_path, klear):
    raw = write_jsonl(tmp_path / "r.jsonl", [{"question": "q?", "response": "<think>t</think>a"}])
    assert (
        klear("convert", raw, "--output", tmp_path / "s.jsonl", "--to", "sft", "--data-source", "x")[0] == 0
    )
    (row,) = load_sft_rows(tmp_path / "s.jsonl")
    assert [m.content for m in row.messages] == ["q?", "<think>t</think>a"] and row.source == "x"


def test_code_shapes_taco_lcb_humaneval(tmp_path, klear):
    counts = {}
    for name in ("code_taco", "code_lcb", "code_humaneval"):
        out = tmp_path / f"{name}.jsonl"
        code, _, err = klear("convert", FIXTURES / f"{name}.jsonl", "--output", out, "--shape", "code")
        assert code == 0, err
        rows = load_rl_rows(out)
        assert {r.ability for r in rows} == {"code"}
        for r in rows:  # the stored spec is what the code reward will run
            assert len(parse_tests(r.reward_model.ground_truth).tests) == r.extra_info["num_tests"]
        counts[name] = [r.extra_info["num_tests"] for r in rows]
        if name == "code_lcb":
            formats = [parse_tests(r.reward_model.ground_truth) for r in rows]
            assert [t.kind for t in formats[0].tests] == ["stdin", "stdin"]  # public + private
            assert formats[1].tests[0].fn_name == "add" and formats[1].tests[0].args == (
                1,
                2,
            )  # metadata.func_name
    assert counts == {"code_taco": [16, 16, 16, 3], "code_lcb": [2, 1], "code_humaneval": [1]}
    taco = load_rl_rows(tmp_path / "code_taco.jsonl")
    assert [r.data_source for r in taco] == ["taco", "taco", "apps", "taco"]  # from the 'source' key
    assert parse_tests(taco[2].reward_model.ground_truth).tests[0].fn_name == "double"


def test_bad_records_name_file_line_field_and_nothing_is_written(tmp_path, klear):
    good = {"question": "x?", "input_output": json.dumps({"inputs": ["1\n"], "outputs": ["1\n"]})}
    raw = write_jsonl(
        tmp_path / "raw.jsonl",
        [
            good,
            {"question": "y?", "input_output": json.dumps({"inputs": ["1\n", "2\n"], "outputs": ["1\n"]})},
            {"question": "z?"},
            "",
            {"question": "w?", "input_output": "{not json"},
            good,
        ],
    )
    out = tmp_path / "out.jsonl"
    code, _, err = klear("convert", raw, "--output", out, "--shape", "code")
    assert code == 2 and not out.exists()
    lines = err.strip().splitlines()
    assert lines[0] == (
        f"klear: error: {raw}: line 2: field 'input_output': 'inputs' has 2 items but 'outputs' has 1"
    )
    assert lines[1].startswith(f"klear: error: {raw}: line 3: field 'input_output': no tests field: tried")
    assert (
        lines[2]
        == f"klear: error: {raw}: line 5: field 'input_output': not valid JSON (Expecting property name enclosed in double quotes at column 2)"
    )
    assert "nothing written; 3 bad record(s)" in lines[3]
    rejected = tmp_path / "rejected.jsonl"
    code, stdout, _ = klear(
        "convert", raw, "--output", out, "--shape", "code", "--skip-invalid", "--rejected", rejected
    )
    assert code == 0 and "converted 2 of 5 records" in stdout and "3 rejected" in stdout
    assert len(load_rl_rows(out)) == 2
    assert [r["where"].rsplit(": ", 1)[1] for r in read_jsonl(rejected)] == ["line 2", "line 3", "line 5"]


def test_missing_mapped_key_lists_the_keys_present():
    fm = FieldMap(question_key="prompt_text")
    try:
        convert_record({"question": "a", "answer": "b"}, fm, 0, "d")
    except ValueError as exc:
        assert str(exc) == "field 'prompt_text': missing (the line has: answer, question)"
    else:
        raise AssertionError("no error")


def test_bad_template_is_a_setting_error(tmp_path, klear):
    code, _, err = klear(
        "convert",
        FIXTURES / "math_qa.jsonl",
        "--output",
        tmp_path / "o.jsonl",
        "--prompt-template",
        "{problem}",
    )
    assert code == 2 and "--prompt-template '{problem}'" in err


def test_template_without_question_is_refused(tmp_path, klear):
    code, _, err = klear(
        "convert",
        FIXTURES / "math_qa.jsonl",
        "--output",
        tmp_path / "o.jsonl",
        "--prompt-template",
        "Solve it.",
    )
    assert code == 2 and "has no {question}" in err and not (tmp_path / "o.jsonl").exists()


def test_output_equal_to_input_or_a_directory_is_refused_before_any_work(tmp_path, klear):
    src = tmp_path / "in.jsonl"
    src.write_bytes((FIXTURES / "math_qa.jsonl").read_bytes())
    before = src.read_bytes()
    code, _, err = klear("convert", src, "--output", src)
    assert code == 2 and "both input and output" in err and src.read_bytes() == before
    (tmp_path / "out.jsonl").mkdir()
    code, _, err = klear("convert", src, "--output", tmp_path / "out.jsonl")
    assert code == 2 and "is a directory" in err
    code, _, err = klear(
        "sft-select",
        FIXTURES / "sft_a.jsonl",
        "--output",
        FIXTURES / "sft_a.jsonl",
        "--quality",
        FIXTURES / "sft_quality.json",
    )
    assert code == 2 and "both input and output" in err


@pytest.mark.parametrize(
    "args",
    [
        ["filter-tests", "x.jsonl", "--kept", "k.jsonl", "--dropped", "d.jsonl", "--threshold", "1.5"],
        ["filter-math", "x.jsonl", "--kept", "k.jsonl", "--dropped", "d.jsonl", "--majority", "-0.1"],
        ["sft-select", "x.jsonl", "--output", "o.jsonl", "--quality", "q.json", "--easy-pass-rate", "2"],
    ],
)
def test_rates_outside_zero_one_are_refused(klear, args):
    with pytest.raises(SystemExit) as exc:
        klear(*args)
    assert exc.value.code == 2


def test_empty_input_or_corrupt_parquet_is_an_error_not_an_empty_output(tmp_path, klear):
    (tmp_path / "empty.jsonl").write_text("\n")
    code, _, err = klear("convert", tmp_path / "empty.jsonl", "--output", tmp_path / "o.jsonl")
    assert code == 2 and "no records to convert" in err and not (tmp_path / "o.jsonl").exists()
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 not really PAR1")
    code, _, err = klear("convert", tmp_path / "bad.parquet", "--output", tmp_path / "o.jsonl")
    assert code == 2 and "not a readable parquet file" in err and not (tmp_path / "o.jsonl").exists()
