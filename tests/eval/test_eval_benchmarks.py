"""Loading the shared benchmark files, other files by field mapping or detection, HumanEval and LiveCodeBench."""

from __future__ import annotations

import base64
import gzip
import json
import pickle
import re
import zlib
from pathlib import Path

import pytest

from klear.eval.benchmarks import (
    BENCHMARKS_DIR_ENV,
    BenchmarkError,
    FieldMap,
    Problem,
    benchmark_name,
    benchmarks_dir,
    detect_fields,
    last_boxed,
    load_benchmark,
    read_rows,
)
from klear.eval.code_benchmarks import filter_by_date

AIME24_FIRST = {"2024-II-1": "73", "2024-I-1": "204", "2024-I-15": "721"}
AIME25_SOME = {"0": "70", "1": "588", "14": "735", "29": "240"}
HMMT25_SOME = {"0": "103", "2": "\\frac{1}{576}", "29": "\\sqrt{\\frac{95}{24}}"}


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


# ----------------------------------------------------------------------------- shared files


@pytest.mark.parametrize(
    ("name", "expected"), [("aime24", AIME24_FIRST), ("aime25", AIME25_SOME), ("hmmt25", HMMT25_SOME)]
)
def test_shared_benchmarks_load_with_known_answers(name, expected):
    problems = load_benchmark(name)
    assert len(problems) == 30
    assert [p.index for p in problems] == list(range(30))
    assert len({p.id for p in problems}) == 30
    by_id = {p.id: p for p in problems}
    for pid, answer in expected.items():
        assert by_id[pid].answer == answer
    for p in problems:
        assert p.ability == "math" and p.data_source == name and p.tests is None
        assert len(p.question) > 40 and "\\boxed" not in p.answer
        if name.startswith("aime"):  # AIME answers are integers 0..999
            assert re.fullmatch(r"\d{1,3}", p.answer), (p.id, p.answer)


def test_aime24_ids_cover_both_contests():
    ids = {p.id for p in load_benchmark("AIME24")}
    assert ids == {f"2024-{part}-{i}" for part in ("I", "II") for i in range(1, 16)}


def test_shared_files_by_path_auto_detect_the_same_fields():
    directory = benchmarks_dir()
    expected = {
        "aime24": FieldMap("messages", "meta.answer", "meta.unique_id"),
        "aime25": FieldMap("messages", "meta.solution", "meta.unique_id"),
        "hmmt25": FieldMap("messages", "answer", "id"),
    }
    for name, fields in expected.items():
        path = directory / f"{name}.jsonl"
        assert detect_fields(read_rows(path)) == fields
        by_path = load_benchmark(path)
        by_name = load_benchmark(name)
        assert [(p.id, p.question, p.answer) for p in by_path] == [
            (p.id, p.question, p.answer) for p in by_name
        ]


def test_hmmt_solution_field_holds_the_boxed_answer():
    # The trap that made the reference judge score every HMMT row -1: `solution` is "\boxed{...}".
    problems = load_benchmark("hmmt25", answer_key="solution")
    assert problems[0].answer == "\\boxed{103}"
    assert last_boxed(problems[0].answer) == load_benchmark("hmmt25")[0].answer


def test_benchmarks_dir_env_var(tmp_path, monkeypatch):
    write_jsonl(
        tmp_path / "aime24.jsonl",
        [{"messages": [{"role": "user", "content": "Q?"}], "meta": {"unique_id": "x", "answer": "1"}}],
    )
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path))
    assert benchmarks_dir() == tmp_path
    assert [(p.id, p.answer) for p in load_benchmark("aime24")] == [("x", "1")]
    monkeypatch.setenv(BENCHMARKS_DIR_ENV, str(tmp_path / "nope"))
    with pytest.raises(BenchmarkError, match=BENCHMARKS_DIR_ENV):
        load_benchmark("aime25")


def test_unknown_name_is_a_clear_error():
    with pytest.raises(
        BenchmarkError, match=r"neither a known benchmark \(aime24, aime25, hmmt25, humaneval\)"
    ):
        load_benchmark("aime99")


def test_benchmark_name():
    assert benchmark_name("AIME24") == "aime24"
    assert benchmark_name("/data/lcb_v5.jsonl.gz") == "lcb_v5"
    assert benchmark_name("x/test.parquet") == "test"


# ----------------------------------------------------------------------------- other files


def test_auto_detection_plain_and_nested(tmp_path):
    plain = write_jsonl(
        tmp_path / "plain.jsonl", [{"problem": "1+1?", "answer": 2}, {"problem": "2+2?", "answer": "4"}]
    )
    problems = load_benchmark(plain)
    assert [(p.id, p.question, p.answer, p.data_source) for p in problems] == [
        ("0", "1+1?", "2", "plain"),
        ("1", "2+2?", "4", "plain"),
    ]
    # verl-style rows: chat prompt, answer under reward_model.ground_truth, id under extra_info.
    verl = write_jsonl(
        tmp_path / "verl.jsonl",
        [
            {
                "data_source": "x",
                "prompt": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "3*3?"}],
                "reward_model": {"style": "rule", "ground_truth": "9"},
                "extra_info": {"index": 17},
            }
        ],
    )
    (problem,) = load_benchmark(verl)
    assert (problem.id, problem.question, problem.answer) == ("17", "3*3?", "9")


def test_weak_solution_field_is_unboxed(tmp_path):
    path = write_jsonl(
        tmp_path / "math.jsonl", [{"question": "q", "solution": "so x = 3, hence \\boxed{\\frac{1}{2}}."}]
    )
    assert load_benchmark(path)[0].answer == "\\frac{1}{2}"


def test_ambiguous_fields_are_a_clear_error(tmp_path):
    path = write_jsonl(
        tmp_path / "amb.jsonl",
        [
            {"question": "q1", "answer": "1", "target": "1"},
            {"question": "q2", "answer": "2", "target": "3"},
        ],
    )
    with pytest.raises(BenchmarkError) as err:
        load_benchmark(path)
    message = str(err.value)
    assert (
        f"{path}:2" in message and "'answer'" in message and "'target'" in message and "answer_key" in message
    )
    assert [p.answer for p in load_benchmark(path, answer_key="target")] == ["1", "3"]
    both_questions = write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "prompt": "b", "answer": "1"}])
    with pytest.raises(BenchmarkError, match="question_key"):
        load_benchmark(both_questions)
    assert load_benchmark(both_questions, question_key="prompt")[0].question == "b"


def test_explicit_keys_with_dotted_and_list_paths(tmp_path):
    path = write_jsonl(
        tmp_path / "odd.jsonl",
        [{"turns": [{"text": "first"}, {"text": "the question"}], "gold": {"value": 12}, "key": "k1"}],
    )
    (problem,) = load_benchmark(path, question_key="turns.1.text", answer_key="gold.value", id_key="key")
    assert (problem.id, problem.question, problem.answer) == ("k1", "the question", "12")


def test_no_detectable_field_names_the_keys(tmp_path):
    path = write_jsonl(tmp_path / "bare.jsonl", [{"text": "q", "label": "1"}])
    with pytest.raises(BenchmarkError, match=r"no question field found.*\['label', 'text'\]"):
        load_benchmark(path)
    with pytest.raises(BenchmarkError, match="no reference answer field"):
        load_benchmark(path, question_key="text")


def test_malformed_rows_name_file_line_and_field(tmp_path):
    bad_json = tmp_path / "bad.jsonl"
    bad_json.write_text(
        '{"question": "a", "answer": "1"}\n\n{"question": "b", "answer": \n', encoding="utf-8"
    )
    with pytest.raises(BenchmarkError, match=rf"{re.escape(str(bad_json))}:3: invalid JSON"):
        load_benchmark(bad_json)
    missing = write_jsonl(tmp_path / "missing.jsonl", [{"question": "a", "answer": "1"}, {"question": "b"}])
    with pytest.raises(BenchmarkError, match=rf"{re.escape(str(missing))}:2: field 'answer' is missing"):
        load_benchmark(missing)
    empty_q = write_jsonl(
        tmp_path / "emptyq.jsonl", [{"question": "a", "answer": "1"}, {"question": " ", "answer": "2"}]
    )
    with pytest.raises(BenchmarkError, match=r":2: field 'question' is empty"):
        load_benchmark(empty_q)
    not_obj = write_jsonl(tmp_path / "list.jsonl", [[1, 2]])
    with pytest.raises(BenchmarkError, match=r":1: expected a JSON object"):
        load_benchmark(not_obj)
    dup = write_jsonl(
        tmp_path / "dup.jsonl",
        [{"id": 1, "question": "a", "answer": "1"}, {"id": 1, "question": "b", "answer": "2"}],
    )
    with pytest.raises(BenchmarkError, match=r":2: id '1' \(field 'id'\) already used at .*:1"):
        load_benchmark(dup)


def test_json_and_gzip_files(tmp_path):
    rows = [{"id": "a", "question": "q", "answer": "1"}]
    (tmp_path / "x.json").write_text(json.dumps(rows), encoding="utf-8")
    with gzip.open(tmp_path / "y.jsonl.gz", "wt", encoding="utf-8") as handle:
        handle.write(json.dumps(rows[0]) + "\n")
    assert load_benchmark(tmp_path / "x.json")[0].id == "a"
    assert load_benchmark(tmp_path / "y.jsonl.gz")[0].data_source == "y"
    (tmp_path / "z.csv").write_text("a,b\n")
    with pytest.raises(BenchmarkError, match="unsupported file type"):
        load_benchmark(tmp_path / "z.csv")


def test_parquet_without_pyarrow_says_how_to_install(tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(b"PAR1")
    try:
        import pyarrow  # noqa: F401
    except ImportError:
        with pytest.raises(BenchmarkError, match="pip install pyarrow"):
            load_benchmark(path)
    else:
        pytest.skip("pyarrow is installed; the missing-dependency message cannot be exercised")


def test_parquet_with_pyarrow(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "t.parquet"
    pq.write_table(pa.Table.from_pylist([{"problem": "q", "answer": "5"}]), path)
    assert [(p.question, p.answer) for p in load_benchmark(path)] == [("q", "5")]


def test_problem_roundtrip():
    problem = load_benchmark("hmmt25")[3]
    assert Problem.from_dict(json.loads(json.dumps(problem.to_dict()))) == problem


# ----------------------------------------------------------------------------- code


def test_humaneval_loads_164_code_problems():
    problems = load_benchmark("humaneval")
    assert len(problems) == 164
    first = problems[0]
    assert first.id == "HumanEval/0" and first.ability == "code" and first.answer is None
    assert set(first.tests) == {"test", "entry_point"}
    assert (
        first.tests["entry_point"] == "has_close_elements" and "def check(candidate)" in first.tests["test"]
    )
    assert first.meta["prompt"] in first.question
    assert first.meta["reference_solution"].startswith(first.meta["prompt"])
    assert len({p.id for p in problems}) == 164


def test_humaneval_reference_solutions_pass_their_tests_in_process():
    # Trusted code from the package itself (not a model): runs the first few in-process as a loader sanity check.
    for problem in load_benchmark("humaneval")[:5]:
        scope: dict = {}
        exec(problem.meta["reference_solution"] + "\n" + problem.tests["test"], scope)
        scope["check"](scope[problem.tests["entry_point"]])


def lcb_compress(tests: list) -> str:
    return base64.b64encode(zlib.compress(pickle.dumps(json.dumps(tests)))).decode()


def lcb_rows() -> list[dict]:
    return [
        {
            "question_title": "Add",
            "question_content": "Read a and b; print a+b.",
            "platform": "atcoder",
            "question_id": "abc001_a",
            "contest_date": "2024-09-01T00:00:00",
            "starter_code": "",
            "difficulty": "easy",
            "public_test_cases": json.dumps([{"input": "1 2\n", "output": "3\n", "testtype": "stdin"}]),
            "private_test_cases": lcb_compress([{"input": "5 5\n", "output": "10\n", "testtype": "stdin"}]),
            "metadata": "{}",
        },
        {
            "question_title": "Two Sum",
            "question_content": "Return indices of two numbers adding to target.",
            "platform": "leetcode",
            "question_id": "1",
            "contest_date": "2025-03-01T00:00:00",
            "starter_code": "class Solution:\n    def twoSum(self, nums: List[int], target: int) -> List[int]:\n        ",
            "difficulty": "easy",
            "public_test_cases": [{"input": "[2, 7, 11]\n9", "output": "[0, 1]", "testtype": "functional"}],
            "private_test_cases": "",
            "metadata": json.dumps({"func_name": "twoSum"}),
        },
    ]


def test_livecodebench_file_loads_stdin_and_functional(tmp_path):
    path = write_jsonl(tmp_path / "lcb_v5.jsonl", lcb_rows())
    stdin_problem, functional = load_benchmark(path)
    assert stdin_problem.id == "abc001_a" and stdin_problem.ability == "code"
    assert stdin_problem.tests == {
        "tests": [
            {"input": "1 2\n", "output": "3\n", "testtype": "stdin"},
            {"input": "5 5\n", "output": "10\n", "testtype": "stdin"},
        ],
        "fn_name": None,
    }
    assert stdin_problem.question.startswith("Read a and b") and "standard input" in stdin_problem.question
    assert functional.tests["fn_name"] == "twoSum"
    assert functional.tests["tests"][0]["testtype"] == "functional"
    assert "def twoSum" in functional.question  # the signature the functional tests call
    assert functional.meta["question_raw"] == "Return indices of two numbers adding to target."
    assert functional.meta["platform"] == "leetcode"
    assert [p.id for p in filter_by_date([stdin_problem, functional], "2024-08-01", "2025-02-01")] == [
        "abc001_a"
    ]
    assert [p.id for p in filter_by_date([stdin_problem, functional], "2025-02-01", "2025-05-01")] == ["1"]


def test_livecodebench_errors(tmp_path):
    rows = lcb_rows()
    rows[1]["metadata"] = "{}"
    path = write_jsonl(tmp_path / "nofn.jsonl", rows)
    with pytest.raises(
        BenchmarkError,
        match=r":2: public_test_cases\[0\] is a functional test but metadata.func_name is missing",
    ):
        load_benchmark(path)
    rows = lcb_rows()
    rows[0]["private_test_cases"] = "not json and not base64!"
    with pytest.raises(BenchmarkError, match=r":1: field 'private_test_cases' is neither a JSON list"):
        load_benchmark(write_jsonl(tmp_path / "garbled.jsonl", rows))
    rows = lcb_rows()
    rows[0]["public_test_cases"] = [{"input": "1"}]
    with pytest.raises(BenchmarkError, match=r"public_test_cases\[0\].output is missing"):
        load_benchmark(write_jsonl(tmp_path / "noout.jsonl", rows))


def test_livecodebench_compressed_field_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    rows = lcb_rows()
    rows[0]["private_test_cases"] = base64.b64encode(zlib.compress(pickle.dumps(Evil()))).decode()
    with pytest.raises(BenchmarkError, match="refusing to load"):
        load_benchmark(write_jsonl(tmp_path / "evil.jsonl", rows))


def test_plain_tests_list_rows_are_code(tmp_path):
    path = write_jsonl(
        tmp_path / "code.jsonl",
        [{"id": "c1", "question": "echo", "tests": [{"input": "x\n", "output": "x\n"}]}],
    )
    (problem,) = load_benchmark(path)
    assert problem.ability == "code"
    assert problem.tests == {
        "tests": [{"input": "x\n", "output": "x\n", "testtype": "stdin"}],
        "fn_name": None,
    }
