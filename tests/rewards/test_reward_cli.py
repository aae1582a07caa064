"""`klear reward score` end to end on temporary files: output rows, summary, bad rows, atomic output."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from klear.cli import main


def row(truth: str, **extra: object) -> dict:
    return {
        "data_source": "aime",
        "ability": "math",
        "prompt": [{"role": "user", "content": "compute"}],
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"index": 0},
        **extra,
    }


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_score_file_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps(row("\\frac{1}{2}", response="<think>hm</think> so \\boxed{0.5}")),
            "",  # blank lines are skipped
            json.dumps(
                row(
                    "3",
                    responses=["<think>a</think>\\boxed{3}", "<think>a</think>\\boxed{4}", "<think>cut off"],
                )
            ),
        ],
    )
    out = tmp_path / "sub" / "out.jsonl"
    rc = main(["reward", "score", "--input", str(src), "--output", str(out), "reward.num_workers=1"])
    assert rc == 0
    lines = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(lines) == 2
    first, second = lines
    assert first["prompt"] == [{"role": "user", "content": "compute"}]  # the row is kept as is
    assert first["reward"]["score"] == 1.0 and first["reward"]["correct"] is True
    assert first["reward"]["answer"] == "0.5"
    assert [r["score"] for r in second["rewards"]] == [1.0, -1.0, -0.5]
    assert second["rewards"][2]["flags"] == ["format", "no_answer"]
    summary = capsys.readouterr().out
    assert "scored 4 responses from 2 rows" in summary
    assert "accuracy 0.5000" in summary
    assert "mean score 0.1250" in summary  # (1 + 1 - 1 - 0.5) / 4
    assert "no_answer=1" in summary and "format=1" in summary
    assert "items/s" in summary
    assert [p.name for p in out.parent.iterdir()] == ["out.jsonl"]  # no temp file left


def test_overrides_change_scores(tmp_path: Path) -> None:
    src = write_jsonl(tmp_path / "in.jsonl", [json.dumps(row("3", response="<think>a</think>\\boxed{4}"))])
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
            "reward.math.negative=0",
        ]
    )
    assert rc == 0
    assert json.loads(out.read_text())["reward"]["score"] == 0.0


def test_bad_rows_reported_with_line_numbers_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = write_jsonl(
        tmp_path / "in.jsonl",
        [
            json.dumps(row("1", response="<think>a</think>\\boxed{1}")),
            '{"data_source": "aime", "ability": "math", "response": ',  # truncated JSON
            json.dumps(row("1")),  # no response
            json.dumps(
                {"ability": "math", "reward_model": {"style": "rule"}, "response": "x"}
            ),  # no ground truth
            json.dumps({"ability": "poetry", "reward_model": {"ground_truth": "x"}, "response": "x"}),
        ],
    )
    out = tmp_path / "out.jsonl"
    rc = main(["reward", "score", "--input", str(src), "--output", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert f"{src}:2: not valid JSON" in err
    assert f"{src}:3: needs exactly one of 'response'" in err
    assert f"{src}:4: missing 'reward_model.ground_truth'" in err
    assert f"{src}:5: no reward function for data_source=None, ability='poetry'" in err
    assert f"{src}:1:" not in err
    assert "nothing written" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl"]  # no output, no temp file


def test_missing_input_and_bad_override(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.jsonl"
    assert main(["reward", "score", "--input", str(tmp_path / "nope.jsonl"), "--output", str(out)]) == 2
    assert "not found" in capsys.readouterr().err
    src = write_jsonl(tmp_path / "in.jsonl", [json.dumps(row("1", response="x"))])
    assert main(["reward", "score", "--input", str(src), "--output", str(out), "reward.num_workerz=2"]) == 2
    assert "num_workerz" in capsys.readouterr().err
    assert not out.exists()
