"""`klear reward score` never crashes on what a row holds (issue 12, item 6): every row is read,
scored or flagged, and written -- lone surrogates, NUL, invalid UTF-8, 10 MB responses, ground truths
nested deeper than JSON or pickle can follow, huge ground truths."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klear.cli import main
from klear.rewards.rows import Deep, dump_row, parse_row, top_level_members

OK = "<think>t</think> so \\boxed{3}"


def row(truth: object, ability: str = "math", **extra: object) -> dict:
    return {"data_source": "d", "ability": ability, "reward_model": {"ground_truth": truth}, **extra}


def deep_list(depth: int) -> str:
    return "[" * depth + "]" * depth


def test_hostile_rows_are_all_scored_or_flagged_and_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    lines: list[bytes] = [
        json.dumps(row("3", response=OK + "\ud800")).encode(),  # lone surrogate: valid JSON
        json.dumps(row("3", responses=["\udfff\ud800" + OK, "<think>\x00</think>\\boxed{3\x00}"])).encode(),
        json.dumps(row("3", response="<think>\x00</think>\\boxed{3}")).encode().replace(b"\\u0000", b"\x00"),
        json.dumps(row("3", response=OK)).encode().replace(b"so", b"s\xff\xfe"),  # invalid UTF-8
        json.dumps(row("3", response="x" * 10_000_000 + OK)).encode(),  # 10 MB
        json.dumps(row("3" * 2_000_000, response=OK)).encode(),  # a 2 MB ground truth
        # nested deeper than Python's JSON reader: kept as text, flagged, written back unchanged
        (
            '{"data_source": "d", "ability": "math", "reward_model": {"ground_truth": '
            + deep_list(100_000)
            + '}, "extra_info": {"i": 7}, "response": "<think></think>\\\\boxed{1}"}'
        ).encode(),
        # decodable but deeper than pickle can send to a worker
        (
            '{"ability": "math", "reward_model": {"ground_truth": '
            + deep_list(950)
            + '}, "response": "<think></think>\\\\boxed{1}"}'
        ).encode(),
        # a code ground truth that is a JSON string nested too deep to decode in the worker
        json.dumps(row(deep_list(100_000), ability="code", response=OK)).encode(),
    ]
    src = tmp_path / "in.jsonl"
    src.write_bytes(b"\n".join(lines) + b"\n")
    out = tmp_path / "out.jsonl"
    rc = main(
        [
            "reward",
            "score",
            "--input",
            str(src),
            "--output",
            str(out),
            "reward.num_workers=1",
            "--no-progress",
        ]
    )
    assert rc == 0
    captured = capsys.readouterr()
    assert f"{src}:4: invalid UTF-8 replaced by U+FFFD" in captured.err
    assert "scored 10 responses from 9 rows" in captured.out
    written = out.read_text(encoding="utf-8").splitlines()  # valid UTF-8 throughout
    assert len(written) == len(lines)
    rows = [parse_row(line) for line in written]
    rewards = [r.get("reward") or r["rewards"] for r in rows]

    assert rows[0]["response"] == OK + "\ud800"  # the surrogate round-trips as an escape
    assert rewards[0]["score"] == 1.0
    assert rows[1]["responses"][0].startswith("\udfff\ud800")
    assert [r["score"] for r in rewards[1]] == [1.0, -1.0]  # "3\x00" is not 3
    assert rewards[2]["score"] == 1.0
    assert "\ufffd" in rows[3]["response"] and "invalid UTF-8" in rewards[3]["detail"]
    assert rewards[4]["score"] == 1.0 and len(rows[4]["response"]) > 10_000_000
    assert rewards[5]["score"] == -1.0 and rewards[5]["flags"] == ["timeout"]  # too big to parse in time
    assert rewards[6]["flags"] == ["error"] and "nested deeper" in rewards[6]["detail"]
    assert rows[6]["extra_info"] == {"i": 7}
    assert isinstance(rows[6]["reward_model"], Deep)
    assert rows[6]["reward_model"].raw == '{"ground_truth": ' + deep_list(100_000) + "}"
    assert rewards[7]["flags"] == ["error"] and "could not be sent" in rewards[7]["detail"]
    assert rewards[8]["flags"] == ["error"] and "RecursionError" in rewards[8]["detail"]


def test_rows_too_deep_to_encode_are_written_from_their_original_text() -> None:
    original = '{"a": ' + deep_list(5000) + ', "b": "\\ud800"}'
    nested: list = []
    for _ in range(4999):
        nested = [nested]
    row = {"a": nested, "b": "\ud800"}  # what the reader decoded (json.dumps cannot write it back)
    line = dump_row(row, {"reward": {"score": 1.0}}, original)
    assert [k for k, _ in top_level_members(line)] == ["a", "b", "reward"]
    assert parse_row(line)["b"] == "\ud800"
    with pytest.raises(RecursionError):
        dump_row(row, {"reward": {}})  # without the original text there is nothing else to write


@pytest.mark.parametrize(
    "text", ['{"a": 1', '{"a" 1}', '{"a": 1} x', "[1]", '{"a": ' + "[" * 5000 + "]" * 4999 + "}"]
)
def test_broken_lines_are_still_errors(text: str) -> None:
    from klear.rewards.rows import LineError

    with pytest.raises(LineError):
        top_level_members(text)
