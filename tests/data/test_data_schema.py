"""RL and SFT rows: validation messages name file, line (row/item) and field; writers round-trip."""

from __future__ import annotations

import json

import pytest

from klear.data.schema import (
    DataError,
    detect_kind,
    iter_records,
    iter_rows,
    load_rl_rows,
    load_sft_rows,
    write_rows,
)
from klear.rewards.code import parse_tests

from .conftest import write_jsonl

RL = {
    "data_source": "demo",
    "ability": "math",
    "prompt": [{"role": "user", "content": "1+1?"}],
    "reward_model": {"style": "rule", "ground_truth": "2"},
}
TESTS = {"inputs": ["1\n", "2\n"], "outputs": ["2\n", "4\n"]}
CODE = {**RL, "ability": "code", "reward_model": {"style": "rule", "ground_truth": json.dumps(TESTS)}}
SFT = {
    "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}],
    "source": "s",
    "difficulty": 0.25,
    "correct": False,
}


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        (
            {**SFT, "messages": [{"role": "user", "content": "hi"}]},
            "line 2: field 'messages': Value error, no assistant",
        ),
        ({**SFT, "difficulty": 1.5}, "line 2: field 'difficulty': Input should be less than or equal to 1"),
        ({**SFT, "correct": "maybe"}, "line 2: field 'correct'"),
        ({"source": "s"}, "line 2: field 'messages': Field required"),
    ],
)
def test_sft_errors_name_file_line_field(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "s.jsonl", [SFT, bad])
    with pytest.raises(DataError) as exc:
        load_sft_rows(path)
    assert str(exc.value).startswith(f"{path}: ") and needle in str(exc.value)


def test_code_row_tests_are_checked_at_load(tmp_path):
    bad = {**CODE, "reward_model": {"ground_truth": json.dumps({"inputs": ["1"], "outputs": []})}}
    path = write_jsonl(tmp_path / "c.jsonl", [CODE, bad])
    with pytest.raises(DataError) as exc:
        load_rl_rows(path)
    assert (
        f"{path}: line 2: field 'reward_model.ground_truth': 'inputs' has 1 items but 'outputs' has 0"
        in str(exc.value)
    )
    assert len(load_rl_rows(write_jsonl(tmp_path / "ok.jsonl", [CODE]))) == 1


def test_iter_rows_collects_every_error_when_asked(tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [RL, {**RL, "prompt": []}, RL, {"ability": "math"}])
    errors: list[str] = []
    rows = list(iter_rows(path, "rl", errors))
    assert [w for w, _ in rows] == ["line 1", "line 3"]
    assert [e.split(": ")[1] for e in errors] == ["line 2", "line 4"]


@pytest.mark.parametrize("suffix", [".jsonl", ".json", ".parquet"])
def test_rl_and_sft_rows_round_trip(tmp_path, suffix):
    code_obj = {**CODE, "reward_model": {"style": "rule", "ground_truth": TESTS}, "extra_info": {}}
    rl = [RL, code_obj, {**RL, "extra_info": {"index": 3}}]
    assert write_rows(tmp_path / f"rl{suffix}", rl) == 3
    back = load_rl_rows(tmp_path / f"rl{suffix}")
    assert [r.ability for r in back] == ["math", "code", "math"]
    # parquet stores a non-string ground truth as JSON text; the code reward reads both
    assert parse_tests(back[1].reward_model.ground_truth).tests == parse_tests(TESTS).tests
    assert back[2].extra_info["index"] == 3
    write_rows(tmp_path / f"sft{suffix}", [SFT, {**SFT, "difficulty": None}])
    sft = load_sft_rows(tmp_path / f"sft{suffix}")
    assert sft[0].difficulty == 0.25 and sft[0].correct is False and sft[1].difficulty is None
    assert detect_kind(tmp_path / f"sft{suffix}") == "sft" and detect_kind(tmp_path / f"rl{suffix}") == "rl"


def test_parquet_and_json_locations(tmp_path):
    write_rows(tmp_path / "p.parquet", [RL, {**RL, "data_source": None}])
    with pytest.raises(DataError, match=r"p\.parquet: row 2: field 'data_source'"):
        load_rl_rows(tmp_path / "p.parquet")
    (tmp_path / "j.json").write_text(json.dumps([RL, RL, {**RL, "reward_model": "x"}]))
    with pytest.raises(DataError, match=r"j\.json: item 3: field 'reward_model'"):
        load_rl_rows(tmp_path / "j.json")


def test_write_rows_is_atomic_and_checks_suffix(tmp_path):
    out = tmp_path / "o.jsonl"
    write_rows(out, [RL])

    def boom():
        yield RL
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_rows(out, boom())
    assert len(load_rl_rows(out)) == 1  # the old file, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.jsonl"]  # no temp file left
    with pytest.raises(DataError, match="unsupported output type"):
        write_rows(tmp_path / "o.csv", [RL])


def test_parquet_stores_nested_empty_objects(tmp_path):
    rows = [{**RL, "extra_info": {"filter": {"flags": {}, "k": 2}}}] * 2
    write_rows(tmp_path / "n.parquet", rows)
    assert load_rl_rows(tmp_path / "n.parquet")[0].extra_info == {"filter": {"flags": None, "k": 2}}


@pytest.mark.parametrize(
    "name, content, needle",
    [
        (
            "latin1.jsonl",
            b'{"prompt": "ok", "answer": "1"}\n{"prompt": "caf\xe9"}\n',
            "line 2: not UTF-8 text",
        ),
        ("binary.json", b"\x89PNG\r\n\x1a\n\x00\xff", "not UTF-8 text"),
        ("corrupt.parquet", b"PAR1 this is not a parquet file PAR1", "not a readable parquet file"),
    ],
)
def test_undecodable_files_are_data_errors_naming_file_and_line(tmp_path, name, content, needle):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError) as err:
        list(iter_records(path))
    assert str(path) in str(err.value) and needle in str(err.value)


def test_a_directory_is_not_reported_as_missing(tmp_path):
    (tmp_path / "rows.jsonl").mkdir()
    with pytest.raises(DataError, match="is a directory"):
        list(iter_records(tmp_path / "rows.jsonl"))


@pytest.mark.parametrize("gt", [{"answer": "2"}, None, True, [], [["2"]]])
def test_a_math_answer_of_the_wrong_type_is_refused(tmp_path, gt):
    path = write_jsonl(tmp_path / "r.jsonl", [RL, {**RL, "reward_model": {"ground_truth": gt}}])
    with pytest.raises(DataError, match=r"line 2: field 'reward_model.ground_truth': a math answer must be"):
        load_rl_rows(path)


@pytest.mark.parametrize("gt", ["2", 2, 2.5, ["1", "-2"]])
def test_math_answers_that_score(tmp_path, gt):
    path = write_jsonl(tmp_path / "r.jsonl", [{**RL, "reward_model": {"ground_truth": gt}}])
    assert load_rl_rows(path)[0].reward_model.ground_truth == gt
