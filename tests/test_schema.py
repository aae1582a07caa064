"""RL rows load from jsonl/json; errors name file, line and field."""

import json

import pytest

from klear.data.schema import DataError, load_rl_rows

ROW = {
    "data_source": "demo",
    "ability": "math",
    "prompt": [{"role": "user", "content": "1+1?"}],
    "reward_model": {"style": "rule", "ground_truth": "2"},
}


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_loads_jsonl_and_json(tmp_path):
    rows = load_rl_rows(write_jsonl(tmp_path / "a.jsonl", [ROW, {**ROW, "prompt": "2+2?"}]))
    assert len(rows) == 2 and rows[1].prompt[0].content == "2+2?"
    (tmp_path / "b.json").write_text(json.dumps([ROW]))
    assert load_rl_rows(tmp_path / "b.json")[0].reward_model.ground_truth == "2"


@pytest.mark.parametrize(
    ("bad", "needle"),
    [
        ("{not json", "line 2: invalid JSON"),
        (
            {k: v for k, v in ROW.items() if k != "reward_model"},
            "line 2: field 'reward_model': Field required",
        ),
        ({**ROW, "prompt": [{"role": "robot", "content": "x"}]}, "line 2: field 'prompt.0.role'"),
        ({**ROW, "prompt": []}, "line 2: field 'prompt'"),
        ([1, 2], "line 2: expected an object, got list"),
    ],
)
def test_errors_name_file_line_field(tmp_path, bad, needle):
    path = write_jsonl(tmp_path / "d.jsonl", [ROW, bad])
    with pytest.raises(DataError) as exc:
        load_rl_rows(path)
    assert str(path) in str(exc.value) and needle in str(exc.value)


def test_missing_empty_and_unsupported(tmp_path):
    with pytest.raises(DataError, match="file not found"):
        load_rl_rows(tmp_path / "none.jsonl")
    with pytest.raises(DataError, match="no rows"):
        load_rl_rows(write_jsonl(tmp_path / "e.jsonl", []))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unsupported file type"):
        load_rl_rows(tmp_path / "x.csv")
