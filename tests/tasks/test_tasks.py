"""Built-in tasks: answers are right, the worked steps are consistent, splits are disjoint and stable."""

from __future__ import annotations

import random
import re

import pytest

from klear.tasks import TASKS, generate_problems, get_task, sft_messages, split_of, task_rows
from klear.tasks.addition import AdditionTask, column_steps, shift_steps
from klear.tasks.arithmetic import reduction_steps

BOXED = re.compile(r"\\boxed\{([^}]*)\}")


MATH_TASKS = sorted(n for n, t in TASKS.items() if getattr(t, "ability", "math") == "math")


@pytest.mark.parametrize("name", MATH_TASKS)
def test_answers_are_correct(name):
    for p in generate_problems(name, "train", 300, seed=1):
        # both tasks write questions in Python's own infix syntax, so eval is an independent check
        assert str(eval(p.question)) == p.answer
        after_think = p.solution.split("</think>", 1)[1]
        assert BOXED.findall(after_think)[-1] == p.answer
        assert p.solution.startswith("<think>\n")


def test_addition_steps_are_written_carries():
    assert column_steps(482, 9135) == ["2+5+0=7", "8+3+0=11", "4+1+1=6", "0+9+0=9"]
    assert column_steps(999, 1) == ["9+1+0=10", "9+0+1=10", "9+0+1=10"]
    rng = random.Random(0)
    for _ in range(200):
        a, b = rng.randint(100, 99999), rng.randint(100, 99999)
        lines = column_steps(a, b)
        sums = [int(line.split("=")[1]) for line in lines]
        # the answer is the last column sum followed by the units digit of each earlier column
        rebuilt = str(sums[-1]) + "".join(str(s % 10) for s in reversed(sums[:-1]))
        assert int(rebuilt) == a + b
        carries_in = [int(line.split("=")[0].split("+")[2]) for line in lines]
        assert carries_in == [0] + [s // 10 for s in sums[:-1]]


def test_addition_shift_trace_copies_locally():
    assert shift_steps(482, 9135) == [
        "482+9135",
        "48+913|2+5+0=7|7",
        "4+91|8+3+0=11|17",
        "0+9|4+1+1=6|617",
        "0+0|0+9+0=9|9617",
    ]
    assert shift_steps(999, 1)[-1] == "0+0|9+0+1=10|1000"
    rng = random.Random(1)
    for _ in range(200):
        a, b = rng.randint(100, 99999), rng.randint(100, 99999)
        lines = shift_steps(a, b)
        assert lines[-1].split("|")[-1] == str(a + b)
        prev_a, prev_b = a, b
        for line in lines[1:]:
            nums, column, _ = line.split("|")
            na, nb = (int(x) for x in nums.split("+"))
            assert (na, nb) == (prev_a // 10, prev_b // 10)
            x, y = (int(d) for d in column.split("=")[0].split("+")[:2])
            assert (x, y) == (prev_a % 10, prev_b % 10)  # the digits just dropped
            prev_a, prev_b = na, nb
    p = AdditionTask(trace="columns").sample(random.Random(0))
    assert "|" not in p.solution and str(eval(p.question)) == p.answer


@pytest.mark.parametrize(("name", "low", "high"), [("addition", 3, 5), ("addition-2to3", 2, 3)])
def test_addition_variants_draw_their_digit_range(name, low, high):
    lengths = set()
    for p in generate_problems(name, "train", 300, seed=0):
        a, b = p.question.split("+")
        lengths |= {len(a), len(b)}
        assert p.solution.split("\n")[1] == p.question  # the shift trace starts from the question
    assert lengths == set(range(low, high + 1))


def test_arithmetic_steps_reduce_one_operation_at_a_time():
    p = next(p for p in generate_problems("arithmetic", "train", 500, seed=0) if "(" in p.question)
    steps = p.solution.split("</think>")[0].removeprefix("<think>\n").strip().split("\n")
    assert steps[0] == p.question and steps[-1] == p.answer
    values = {eval(s) for s in steps}
    assert values == {int(p.answer)}  # every line has the same value
    ops = [sum(s.count(c) for c in "+-*") for s in steps]
    assert ops == list(range(ops[0], -1, -1))
    assert reduction_steps(7) == ["7"]


@pytest.mark.parametrize("name", sorted(TASKS))
def test_splits_are_disjoint_and_deterministic(name):
    train = generate_problems(name, "train", 2000, seed=0)
    test = generate_problems(name, "test", 200, seed=0)
    train_q = {p.question for p in train}
    assert len(train_q) == 2000 and len({p.question for p in test}) == 200
    assert not train_q & {p.question for p in test}
    assert all(split_of(name, p.question) == "test" for p in test)
    # a different seed draws other training problems, never held-out ones
    other = generate_problems(name, "train", 500, seed=7)
    assert not {p.question for p in other} & {p.question for p in test}
    assert [p.question for p in other] != [p.question for p in train[:500]]
    # same arguments, same problems
    assert generate_problems(name, "test", 200, seed=0) == test
    # a shorter request is a prefix of a longer one (the stream does not depend on n)
    assert generate_problems(name, "test", 50, seed=0) == test[:50]


def test_rows_have_the_rl_shape():
    rows = task_rows("addition", "test", 3, seed=0)
    assert [r["extra_info"]["index"] for r in rows] == [0, 1, 2]
    r = rows[0]
    assert r["data_source"] == "klear/addition"
    assert r["ability"] == "math"
    assert r["reward_model"]["style"] == "rule"
    assert r["prompt"] == [{"role": "user", "content": r["prompt"][0]["content"]}]
    assert str(eval(r["prompt"][0]["content"])) == r["reward_model"]["ground_truth"]
    msgs = sft_messages(r)
    assert msgs[-1] == {"role": "assistant", "content": r["extra_info"]["solution"]}
    with pytest.raises(ValueError, match="solution"):
        sft_messages({"prompt": r["prompt"], "extra_info": {}})


def test_unknown_task_and_split_are_rejected():
    with pytest.raises(ValueError, match="addition"):
        get_task("nope")
    with pytest.raises(ValueError, match="split"):
        generate_problems("addition", "val", 1)  # type: ignore[arg-type]
