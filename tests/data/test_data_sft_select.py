"""`klear data sft-select`: source ranking, correctness by difficulty, duplicates; counts by hand.

The fixtures (sft_b.jsonl read first, then sft_a.jsonl; quality A 0.9, B 0.7, C 0.5; top 2):

  b1 near duplicate of a3 (a comma added)              -> duplicate_near (A ranks above B)
  b2 unique, right, no difficulty                      -> kept
  b3 wrong, no difficulty (counts as easy)             -> incorrect_easy
  a1 right, easy                                       -> kept
  a2 wrong, easy (pass rate 0.8)                       -> incorrect_easy
  a3 wrong, hard (pass rate 0.1)                       -> kept
  a4 a1 with other case and spacing                    -> duplicate_exact
  a5 unverified, easy                                  -> kept
  c1 source C is third                                 -> source_not_selected
"""

from __future__ import annotations

import json
import sys

import pytest

from klear.data.schema import DataError, load_sft_rows
from klear.data.sft_select import (
    MinHasher,
    correctness_verdict,
    normalise_text,
    rank_sources,
    read_quality_file,
    shingles,
)

from .conftest import FIXTURES, read_jsonl, write_jsonl

INPUTS = [FIXTURES / "sft_b.jsonl", FIXTURES / "sft_a.jsonl"]


def test_correctness_by_difficulty_table():
    assert correctness_verdict(0.9, False, 0.5) == "incorrect_easy"
    assert correctness_verdict(0.5, False, 0.5) == "incorrect_easy"  # at the threshold: easy
    assert correctness_verdict(0.49, False, 0.5) is None  # hard: kept
    assert correctness_verdict(0.9, None, 0.5) is None  # unverified: kept
    assert correctness_verdict(0.9, True, 0.5) is None
    assert correctness_verdict(None, False, 0.5) == "incorrect_easy"
    assert correctness_verdict(None, False, 0.5, unknown_is_hard=True) is None


def test_minhash_is_deterministic_and_estimates_jaccard():
    a = normalise_text("Prove that there are infinitely many primes of the form 4k+3 and give an example.")
    b = normalise_text("Prove that there are infinitely many primes of the form 4k+3, and give an example.")
    sa, sb = set(shingles(a, 5)), set(shingles(b, 5))
    exact = len(sa & sb) / len(sa | sb)
    h1, h2 = MinHasher(seed=3), MinHasher(seed=3)
    assert h1.signature(a) == h2.signature(a)
    assert abs(h1.similarity(h1.signature(a), h1.signature(b)) - exact) < 0.1
    unrelated = normalise_text("How many ways can 8 rooks be placed on a chessboard?")
    assert h1.similarity(h1.signature(a), h1.signature(unrelated)) < 0.2
    assert normalise_text("  A\tB\n  c ") == "a b c"


def test_select_counts_by_hand(tmp_path, klear):
    out, dropped = tmp_path / "sft.jsonl", tmp_path / "dropped.jsonl"
    code, stdout, err = klear(
        "sft-select",
        *INPUTS,
        "--output",
        out,
        "--dropped",
        dropped,
        "--quality",
        FIXTURES / "sft_quality.json",
    )
    assert code == 0, err
    kept = load_sft_rows(out)
    assert [r.messages[0].content[:20] for r in kept] == [
        "How many ways can 8 ",  # b2
        "Find the sum of all ",  # a1
        "Prove that there are",  # a3: the hard problem's wrong answer stays
        "What is the remainde",  # a5
    ]
    reasons = [(r["source"], r["selection"]["reason"]) for r in read_jsonl(dropped)]
    assert reasons == [
        ("B", "duplicate_near"),
        ("B", "incorrect_easy"),
        ("A", "incorrect_easy"),
        ("A", "duplicate_exact"),
        ("C", "source_not_selected"),
    ]
    near = read_jsonl(dropped)[0]["selection"]
    assert near["duplicate_of"].endswith("sft_a.jsonl: line 3") and near["similarity"] >= 0.8
    assert len(load_sft_rows(dropped)) == 5  # dropped rows load back too
    report = json.loads((tmp_path / "sft.report.json").read_text())
    assert report["kept"] == 4 and report["rows"] == 9
    assert [(s["source"], s["rank"], s["selected"], s["kept"]) for s in report["sources"]] == [
        ("A", 1, True, 3),
        ("B", 2, True, 1),
        ("C", 3, False, 0),
    ]
    assert report["sources"][0]["kept_unverified_or_wrong_hard"] == 1  # a3
    assert "kept 4 of 9 rows" in stdout


def test_options_change_the_counts(tmp_path, klear):
    out = tmp_path / "o.jsonl"
    q = FIXTURES / "sft_quality.json"
    base = ["sft-select", *INPUTS, "--output", out, "--quality", q, "--force"]
    assert klear(*base, "--top-k", "3")[0] == 0 and len(load_sft_rows(out)) == 5  # + c1
    assert klear(*base, "--no-near")[0] == 0 and len(load_sft_rows(out)) == 5  # + b1
    assert klear(*base, "--unknown-is-hard")[0] == 0 and len(load_sft_rows(out)) == 5  # + b3
    assert klear(*base, "--per-prompt", "2")[0] == 0 and len(load_sft_rows(out)) == 6  # + b1, a4
    assert klear(*base, "--top-k", "1")[0] == 0 and len(load_sft_rows(out)) == 3  # A only: a1, a3, a5


def test_quality_measured_by_a_command_once_per_source(tmp_path, klear):
    log = tmp_path / "calls.log"
    script = tmp_path / "score.py"
    script.write_text(
        "import json, sys\n"
        "rows = [json.loads(l) for l in open(sys.argv[1])]\n"
        f"open({str(log)!r}, 'a').write(sys.argv[2] + ' ' + str(len(rows)) + '\\n')\n"
        "print('measuring...')\n"
        "print({'A': 0.2, 'B': 0.9, 'C': 0.5}[sys.argv[2]])\n"
    )
    args = [
        "sft-select",
        *INPUTS,
        "--output",
        tmp_path / "o.jsonl",
        "--keep-work",
        "--quality-command",
        f"{sys.executable} {script} {{file}} {{source}}",
    ]
    code, _, err = klear(*args)
    assert code == 0, err
    assert sorted(log.read_text().split("\n")[:-1]) == ["A 5", "B 3", "C 1"]
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert [s["source"] for s in report["sources"] if s["selected"]] == ["B", "C"]
    assert report["shards"] == {"total": 1, "computed": 1, "reused": 0}
    assert (
        klear(*args, "--force")[0] == 0
    )  # cached in the work directory: not measured again, features reused
    assert len(log.read_text().splitlines()) == 3
    report = json.loads((tmp_path / "o.report.json").read_text())
    assert report["shards"] == {"total": 1, "computed": 0, "reused": 1}


def test_quality_errors(tmp_path, klear):
    q = tmp_path / "q.json"
    q.write_text(json.dumps({"A": 1, "B": "high"}))
    with pytest.raises(DataError, match=r"q\.json: key 'B': field 'score': 'high' is not a number"):
        read_quality_file(q)
    tsv = tmp_path / "q.tsv"
    tsv.write_text("# source score\nA\t0.5\nB 0.25\nC\n")
    with pytest.raises(DataError, match=r"q\.tsv: line 4: expected 'source<TAB>score'"):
        read_quality_file(tsv)
    tsv.write_text("A\t0.5\nB 0.25\n")
    assert read_quality_file(tsv) == {"A": 0.5, "B": 0.25}
    with pytest.raises(DataError, match=r"no quality score for source\(s\) 'C'"):
        rank_sources({"A": 1.0, "B": 0.0}, ["A", "B", "C"], 2)
    code, _, err = klear("sft-select", *INPUTS, "--output", tmp_path / "o.jsonl", "--quality", tsv)
    assert code == 2 and "no quality score for source(s) 'C'" in err
    code, _, err = klear(
        "sft-select",
        *INPUTS,
        "--output",
        tmp_path / "o.jsonl",
        "--quality-command",
        f"{sys.executable} -c \"print('n/a')\"",
    )
    assert code == 2 and "last line of stdout must be a number, got 'n/a'" in err
    assert not (tmp_path / "o.jsonl").exists()


def test_bad_sft_row_names_file_line_field(tmp_path, klear):
    bad = write_jsonl(
        tmp_path / "bad.jsonl", [{"messages": [{"role": "user", "content": "q"}], "source": "A"}]
    )
    code, _, err = klear(
        "sft-select", bad, "--output", tmp_path / "o.jsonl", "--quality", FIXTURES / "sft_quality.json"
    )
    assert code == 2 and f"{bad}: line 1: field 'messages': Value error, no assistant message" in err
