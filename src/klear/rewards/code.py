"""Code reward: run the response's program against the problem's tests in the sandbox.

The program is the last ```python block after the last ``</think>`` (as the
reference). Tests come in the three formats users have (:func:`parse_tests`); at most
``max_tests`` are run, chosen per problem with a seed so that every response of a
prompt group is judged on the same tests (a fair group baseline for GRPO). Outputs
are compared outside the sandbox, token by token after whitespace normalisation:
integers exactly, other numbers within ``float_tol``; call results structurally.

Score (paper Sec. 3, code RL): soft = pass rate p mapped by ``soft_mapping``
(``pass_rate``: p; ``signed``: 2p - 1, the reference); hard = all or nothing, mapped
the same way. A response that cannot be judged cleanly carries flags
(``format``, ``no_answer``, ``timeout``, ``error``, ``sandbox_restart``), never a
silent 0.

Verdicts cannot be forged from inside the solution's process: expected outputs of
stdin and call tests never enter the sandbox (a call's return value comes back as
JSON and is compared here), and a HumanEval ``check(candidate)`` runs in a separate
judge process that never runs solution code: it calls the solution through pipes and
admits only plain data back (see ``sandbox/_harness.py``). What stays possible:
helpers the check takes from the prompt (HumanEval's ``poly``, ``encode_cyclic``)
are the solution's own, as in every HumanEval harness.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import time
from dataclasses import dataclass
from typing import Any, Literal

from klear.config import CodeRewardConfig, RewardConfig
from klear.rewards.compare import tokens_match, values_match
from klear.rewards.sandbox import SandboxError, TestRun, get_sandbox
from klear.types import RewardResult

THINK_END = "</think>"
#: Test outcomes that are failures of the sandbox, not verdicts on the program: the result is
#: flagged ``infra`` (masked out of training with ``reward.mask_failures``).
INFRA_REASONS = frozenset({"sandbox_restart", "server_error"})
_CODE_BLOCK = re.compile(r"```(?:python|py|python3)[ \t]*\n(.*?)```", re.DOTALL | re.IGNORECASE)


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


def extract_code(response: str) -> str | None:
    """The last ```python block after the last ``</think>``; None if either is missing.

    Without ``</think>`` there is no final answer (the reference scores the text after
    ``</think>`` only); :func:`code_reward` flags that case ``format``.
    """
    if THINK_END not in response:
        return None
    tail = response.rsplit(THINK_END, 1)[1]
    blocks = _CODE_BLOCK.findall(tail)
    if not blocks:
        return None
    code = blocks[-1]
    return code if code.strip() else None


# ---------------------------------------------------------------------------------------------
# Tests: the three formats users have
# ---------------------------------------------------------------------------------------------


def output_floor(expected: Any) -> int:
    """Stdout the sandbox keeps for a test at least, whatever ``sandbox.max_output_bytes`` says.

    A correct answer must never fail as ``output_limit``: twice the expected output plus
    64 KiB (room for trailing whitespace and formatting), rounded up to 64 KiB steps: the
    figure is the same for every expected output from 1 byte to 32 KiB, so it tells a
    solution that might read it nothing about short answers.
    """
    need = 2 * len(str(expected).encode("utf-8", "surrogatepass")) + (64 << 10)
    return -(-need // (64 << 10)) * (64 << 10)


@dataclass(frozen=True)
class TestCase:
    """One test. kind stdin: ``stdin`` -> ``expected`` (text); call: ``fn_name(*args)`` ->
    ``expected`` (a JSON value); check: HumanEval ``test_code`` defining ``check(candidate)``."""

    __test__ = False  # not a pytest class, despite the name

    kind: Literal["stdin", "call", "check"]
    stdin: str = ""
    expected: Any = None
    fn_name: str | None = None
    args: tuple[Any, ...] = ()
    test_code: str | None = None
    entry_point: str | None = None

    def payload(self) -> dict[str, Any]:
        """What the sandbox receives: everything but the expected output."""
        if self.kind == "stdin":
            return {"kind": "stdin", "stdin": self.stdin, "min_output": output_floor(self.expected)}
        if self.kind == "call":
            return {"kind": "call", "fn_name": self.fn_name, "args": list(self.args)}
        return {"kind": "check", "test": self.test_code, "entry_point": self.entry_point}

    def size(self) -> int:
        """Rough size of the test, for shortest-first selection."""
        if self.kind == "stdin":
            return len(self.stdin) + len(str(self.expected))
        return len(json.dumps([self.args, self.expected], default=str)) + len(self.test_code or "")


@dataclass(frozen=True)
class TestSpec:
    """All tests of one problem, and which format they came in (apps | livecodebench | humaneval)."""

    __test__ = False

    tests: tuple[TestCase, ...]
    source_format: str
    key: str  # a stable digest of the ground truth, seeds the per-problem test sample


def _as_text(value: Any, what: str) -> str:
    """A stdin/stdout field: a string, or a list of lines (as some TACO rows have)."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return "\n".join(value)
    raise ValueError(f"{what} must be a string or a list of strings, got {type(value).__name__}")


def _parse_apps(gt: dict[str, Any]) -> list[TestCase]:
    inputs, outputs = gt["inputs"], gt["outputs"]
    if not isinstance(inputs, list) or not isinstance(outputs, list):
        raise ValueError("'inputs' and 'outputs' must be lists")
    if len(inputs) != len(outputs):
        raise ValueError(f"'inputs' has {len(inputs)} items but 'outputs' has {len(outputs)}")
    fn_name = gt.get("fn_name")
    if fn_name is not None and (not isinstance(fn_name, str) or not fn_name.isidentifier()):
        raise ValueError(f"'fn_name' must be a Python identifier, got {fn_name!r}")
    tests = []
    for i, (inp, out) in enumerate(zip(inputs, outputs, strict=True)):
        if fn_name:
            args = inp if isinstance(inp, list) else [inp]
            tests.append(TestCase(kind="call", fn_name=fn_name, args=tuple(args), expected=out))
        else:
            tests.append(
                TestCase(
                    kind="stdin", stdin=_as_text(inp, f"inputs[{i}]"), expected=_as_text(out, f"outputs[{i}]")
                )
            )
    return tests


def _parse_lcb(items: list[Any], fn_name: str | None) -> list[TestCase]:
    tests = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or "input" not in item or "output" not in item:
            raise ValueError(f"test [{i}] must be an object with 'input' and 'output'")
        testtype = item.get("testtype", "stdin")
        if testtype == "stdin":
            tests.append(
                TestCase(
                    kind="stdin",
                    stdin=_as_text(item["input"], f"[{i}].input"),
                    expected=_as_text(item["output"], f"[{i}].output"),
                )
            )
        elif testtype == "functional":
            name = item.get("fn_name") or item.get("func_name") or fn_name
            if not name:
                raise ValueError(
                    f"test [{i}] is functional but names no function: give 'fn_name' in the test "
                    "or wrap the list as {'tests': [...], 'fn_name': ...}"
                )
            try:
                args = [json.loads(line) for line in str(item["input"]).split("\n") if line.strip()]
                expected = json.loads(item["output"]) if isinstance(item["output"], str) else item["output"]
            except json.JSONDecodeError as exc:
                raise ValueError(f"test [{i}]: functional input/output must be JSON lines ({exc})") from None
            tests.append(TestCase(kind="call", fn_name=name, args=tuple(args), expected=expected))
        else:
            raise ValueError(f"test [{i}]: testtype {testtype!r} is not 'stdin' or 'functional'")
    return tests


def parse_tests(ground_truth: str | dict[str, Any] | list[Any]) -> TestSpec:
    """Read a code row's ``reward_model.ground_truth`` (a JSON string or the decoded object).

    Accepted: APPS/TACO ``{"inputs": [...], "outputs": [...], "fn_name"?: str}``;
    LiveCodeBench ``[{"input", "output", "testtype": "stdin"|"functional"}, ...]``
    (functional tests name their function in ``fn_name``/``func_name``, or the list is
    wrapped as ``{"tests": [...], "fn_name": ...}``); HumanEval
    ``{"test": "<defines check(candidate)>", "entry_point": "<name>"}``.
    Raises ValueError saying what is wrong.
    """
    raw = ground_truth
    if isinstance(raw, (bytes, str)):
        try:
            raw = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"code ground truth is not valid JSON: {exc}") from None
    key = hashlib.sha256(json.dumps(raw, sort_keys=True, default=str).encode()).hexdigest()[:16]
    if isinstance(raw, list):
        tests, fmt = _parse_lcb(raw, None), "livecodebench"
    elif isinstance(raw, dict) and "inputs" in raw and "outputs" in raw:
        tests, fmt = _parse_apps(raw), "apps"
    elif isinstance(raw, dict) and "test" in raw and "entry_point" in raw:
        if not isinstance(raw["test"], str) or "def check" not in raw["test"]:
            raise ValueError("HumanEval 'test' must be Python code defining check(candidate)")
        if not isinstance(raw["entry_point"], str) or not raw["entry_point"].isidentifier():
            raise ValueError(f"HumanEval 'entry_point' must be an identifier, got {raw['entry_point']!r}")
        tests = [TestCase(kind="check", test_code=raw["test"], entry_point=raw["entry_point"])]
        fmt = "humaneval"
    elif isinstance(raw, dict) and isinstance(raw.get("tests"), list):
        tests, fmt = _parse_lcb(raw["tests"], raw.get("fn_name") or raw.get("func_name")), "livecodebench"
    else:
        shape = sorted(raw) if isinstance(raw, dict) else type(raw).__name__
        raise ValueError(
            f"code ground truth not understood (got {shape}); expected {{'inputs', 'outputs'[, 'fn_name']}}, "
            "a list of {'input', 'output', 'testtype'}, or {'test', 'entry_point'}"
        )
    if not tests:
        raise ValueError("code ground truth has no tests")
    return TestSpec(tests=tuple(tests), source_format=fmt, key=key)


def select_tests(spec: TestSpec, cfg: CodeRewardConfig) -> list[TestCase]:
    """At most ``max_tests`` tests: a seeded sample per problem (same for every response), or the shortest."""
    tests = list(spec.tests)
    if cfg.max_tests is None or len(tests) <= cfg.max_tests:
        return tests
    if cfg.test_selection == "shortest":
        return sorted(tests, key=TestCase.size)[: cfg.max_tests]
    rng = random.Random(f"{cfg.seed}:{spec.key}")
    keep = sorted(rng.sample(range(len(tests)), cfg.max_tests))
    return [tests[i] for i in keep]


# ---------------------------------------------------------------------------------------------
# Comparison
# ---------------------------------------------------------------------------------------------


def _record(run: TestRun) -> dict[str, Any] | None:
    """The one JSON object on the result channel, or None (nothing, junk, several records,
    or an integer longer than json reads back)."""
    try:
        record = json.loads(run.result)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def judge(test: TestCase, run: TestRun, tol: float) -> tuple[bool, str]:
    """Did ``run`` pass ``test``? Returns (passed, reason) with reason one of
    ok, wrong, runtime_error, timeout, output_limit, sandbox_restart, server_error.

    stdin: exit status 0 and stdout matches. call: exit status 0 and the one record the
    child wrote holds a value that matches (decoded here, so plain JSON data; the
    expected value never entered the sandbox). check: the judge's record alone, which no
    solution can write; what the solution's process did after answering does not matter.
    """
    if run.status in ("timeout", "output_limit", "sandbox_restart", "server_error"):
        return False, run.status
    if test.kind == "check":
        record = _record(run)
        if record is not None and record.get("ok") is True:
            return True, "ok"
        if run.signal == 24:  # SIGXCPU: the solution ran out of CPU time while the check ran
            return False, "timeout"
        return (
            (False, "wrong")
            if record is not None and record.get("by") == "check"
            else (False, "runtime_error")
        )
    if run.signal is not None:
        # SIGXCPU (the CPU rlimit) is a timeout; any other signal is a crash.
        return False, "timeout" if run.signal == 24 else "runtime_error"
    if run.exit_code != 0:
        return False, "runtime_error"
    if test.kind == "stdin":
        return (True, "ok") if tokens_match(run.stdout, test.expected, tol) else (False, "wrong")
    record = _record(run)
    if record is None or "value" not in record:
        return False, "wrong"
    ok = values_match(record["value"], test.expected, tol)
    if not ok and isinstance(test.expected, list) and len(test.expected) == 1:
        ok = values_match(record["value"], test.expected[0], tol)  # APPS wraps call outputs in a list
    return (True, "ok") if ok else (False, "wrong")


def _failure_line(test: TestCase, run: TestRun) -> str:
    """One line saying why a test failed: the judge's error, else the last line of stderr."""
    record = _record(run) if test.kind == "check" else None
    if record is not None and record.get("error"):
        return _last_line(str(record["error"]))
    return _last_line(run.stderr) or f"exit {run.exit_code} signal {run.signal}"


# ---------------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------------


def _score(passed: int, total: int, cfg: CodeRewardConfig) -> float:
    p = passed / total if total else 0.0
    if cfg.mode == "hard":
        p = 1.0 if total and passed == total else 0.0
    return 2.0 * p - 1.0 if cfg.soft_mapping == "signed" else p


def _last_line(text: str) -> str:
    lines = [ln for ln in text.strip().splitlines() if ln.strip()]
    return lines[-1][:200] if lines else ""


def code_reward(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Score one response: extract the program, run the selected tests, map the pass rate.

    Runs in a reward worker process; the sandbox server of that process is started on
    first use and reused. Tests that could not finish within ``cfg.item_timeout_s`` (many
    tests timing out) are not started: they count as failed and the result is flagged. Raises SandboxUnavailable only when no sandbox can run on this
    machine at all (a setup error); everything about the response itself is a result.
    """
    t0 = time.monotonic()
    ccfg = cfg.code
    low = _score(0, 1, ccfg)

    def result(
        passed: int, total: int, flags: list[str], code: str | None, detail: str | None, infra: bool = False
    ) -> RewardResult:
        return RewardResult(
            score=_score(passed, total, ccfg) if total else low,
            correct=bool(total) and passed == total,
            passed=passed,
            total=total,
            flags=tuple(dict.fromkeys(flags)),
            answer=code,
            seconds=time.monotonic() - t0,
            detail=detail,
            infra=infra,
        )

    try:
        spec = parse_tests(ground_truth)
    except ValueError as exc:
        return result(0, 0, ["error"], None, f"bad ground truth: {exc}", infra=True)
    code = extract_code(response)
    if code is None:
        if THINK_END not in response:
            return result(0, 0, ["format", "no_answer"], None, "no </think>: no final answer to run")
        return result(0, 0, ["no_answer"], None, "no ```python block after </think>")
    tests = select_tests(spec, ccfg)
    box = get_sandbox(cfg.sandbox)
    passed, flags, counts, first_error, infra = 0, [], {}, None, False
    # Stay inside the pool's hard bound per item: past it the pool kills this worker (and its
    # sandbox). Tests that would start too late to finish in time are counted failed, flagged.
    budget = cfg.item_timeout_s - cfg.sandbox.test_timeout_s - 1.0
    for i, test in enumerate(tests):
        if i and time.monotonic() - t0 > budget:
            counts["not_run"] = len(tests) - i
            flags.append("timeout")
            break
        try:
            run = box.run(code, test.payload())
        except SandboxError as exc:
            return result(passed, len(tests), [*flags, "error"], code, f"test {i}: {exc}", infra=True)
        ok, reason = judge(test, run, ccfg.float_tol)
        passed += ok
        counts[reason] = counts.get(reason, 0) + 1
        if reason in ("timeout", "sandbox_restart"):
            flags.append(reason)
        elif reason == "server_error":
            flags.append("error")
        # the harness failed, not the program (its own timeouts and crashes are verdicts); but where
        # tests share the server's uid (unprivileged mode) a program can kill its own server, so a
        # restart there is the program's doing: a failed test, never masked out of training
        blameless = reason != "sandbox_restart" or getattr(box, "privileged", True)
        infra = infra or (reason in INFRA_REASONS and blameless)
        if first_error is None and (
            reason == "runtime_error" or (reason == "wrong" and test.kind == "check")
        ):
            first_error = f"test {i}: {_failure_line(test, run)}"
        if ccfg.mode == "hard" and not ok:
            break  # all or nothing: the verdict is known
    summary = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    detail = f"{passed}/{len(tests)} passed ({summary})" + (f"; {first_error}" if first_error else "")
    return result(passed, len(tests), flags, code, detail, infra)
