"""The benchmark runner: generate n samples per problem, score them with the reward pool, summarise.

Two entry points share every output, so a fresh run and a re-score of old
generations give the same numbers by construction:

- :func:`run_eval`: prompts -> rollout backend -> reward pool -> ``samples.jsonl``,
  one problem at a time, appended as each problem completes. An interrupted run
  resumes: problems whose n samples are all on disk are not generated again; a
  problem cut off half-way, or an incomplete trailing line, is discarded and
  that problem regenerated.
- :func:`score_generations`: an existing generations file (problem ``id`` or
  ``index`` plus ``responses`` or one ``response`` per line) -> reward pool ->
  the same outputs. This is the job of the reference's judge script.

Outputs in the run directory:

- ``samples.jsonl``: one line per sample (problem id, sample index, response,
  extracted answer, correct, score, flags, ...);
- ``summary.json``: :class:`~klear.eval.metrics.BenchmarkSummary` (``avg@n``,
  ``pass@1`` .. ``pass@n``, ``maj@n`` for math, each with its bootstrap CI) plus
  the settings, the model and the time taken; written atomically, last;
- ``report.md``: the markdown table of :func:`klear.eval.report.render_markdown`;
- ``run.json`` (``run`` only): the generation settings, so a resume with other
  settings is refused instead of mixing two runs' samples.

The functions take a backend and a pool the caller owns, so the RL trainer can
validate with the policy it is training (its own :class:`HFRolloutBackend`) and
its own reward pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from klear.errors import KlearError
from klear.eval.benchmarks import Problem
from klear.eval.metrics import DEFAULT_N_BOOT, BenchmarkSummary, ScoredSample, summarize_samples
from klear.eval.report import render_markdown
from klear.io import write_atomic
from klear.rewards.think import judged_texts, think_prefix

if TYPE_CHECKING:
    from klear.config import RewardConfig
    from klear.rewards.pool import RewardPool
    from klear.rollout import RolloutBackend, SamplingParams
    from klear.types import RewardResult, Rollout

SAMPLES_FILE = "samples.jsonl"
SUMMARY_FILE = "summary.json"
REPORT_FILE = "report.md"
RUN_FILE = "run.json"

#: Appended to every math question unless the caller says otherwise. The shared
#: benchmark files hold the bare problem; the math reward reads the last
#: ``\boxed{}``, so the model has to be told to box its answer (this is the
#: instruction DeepSeek-R1 and Qwen use for math evaluation).
DEFAULT_MATH_INSTRUCTION = "Please reason step by step, and put your final answer within \\boxed{}."

#: Reward settings that differ from training for evaluation (each can be overridden):
#: - ``math.no_think_start_score: null``: thinking models' chat templates (Qwen3,
#:   Klear-Reasoner) open ``<think>`` in the prompt, so a response rightly has only
#:   ``</think>``; the answer must still come after ``</think>``. A run of ours judges the
#:   think prefix the template opened + the response (:mod:`klear.rewards.think`, as the RL
#:   trainer does); a generations file from elsewhere comes without its prompt, hence this.
#: - ``code.max_tests: null``: a code answer is correct only if it passes every test
#:   (LiveCodeBench's rule), not a random 16 as in RL.
#: - ``code.mode: hard``: correctness is all-or-nothing anyway, and hard mode stops
#:   at the first failing test.
EVAL_REWARD_DEFAULTS: dict[str, Any] = {
    "math": {"no_think_start_score": None},
    "code": {"max_tests": None, "mode": "hard"},
}

#: At most this many problems of a bad generations file are listed in one error.
MAX_REPORTED_ERRORS = 20


class EvalError(KlearError, ValueError):
    """An evaluation input or run directory that cannot be used; the message says where and why."""


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class GenerationSettings:
    """How samples are drawn. The defaults are the paper's evaluation setting (temperature 0.6, top_p 0.95).

    seed: each problem's samples are drawn with a seed derived from this seed and
    the problem id (:func:`problem_seed`), so a problem's samples do not depend
    on which other problems were generated before it: a resumed run produces
    what the uninterrupted run would have (with ``problems_per_call`` = 1).
    problems_per_call: problems generated in one backend call (their n samples
    each, all in one batch); more is faster on a large accelerator, but then the
    samples depend on which problems shared a call.
    math_instruction: appended (after a blank line) to math questions; "" for none.
    """

    n: int
    max_new_tokens: int
    temperature: float = 0.6
    top_p: float = 0.95
    top_k: int = -1
    seed: int = 0
    problems_per_call: int = 1
    math_instruction: str = DEFAULT_MATH_INSTRUCTION

    def __post_init__(self) -> None:
        if self.n < 1:
            raise EvalError(f"n = {self.n}: need at least one sample per problem")
        if self.problems_per_call < 1:
            raise EvalError(f"problems_per_call = {self.problems_per_call}: must be >= 1")

    def sampling(self, seed: int | None) -> SamplingParams:
        from klear.rollout import SamplingParams

        return SamplingParams(
            n=self.n,
            temperature=self.temperature,
            top_p=self.top_p,
            top_k=self.top_k,
            max_new_tokens=self.max_new_tokens,
            seed=seed,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def problem_seed(seed: int, problem_id: str) -> int:
    """A 63-bit seed for one problem's samples, from the run seed and the problem id (stable across runs)."""
    digest = hashlib.sha256(f"{seed}\0{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def eval_reward_config(overrides: Sequence[str] = ()) -> RewardConfig:
    """The reward settings for evaluation: :data:`EVAL_REWARD_DEFAULTS`, then ``reward.KEY=VALUE`` overrides."""
    from klear.config import ConfigError, RewardConfig, apply_overrides, build_config

    stripped: list[str] = []
    for item in overrides:
        key = item.split("=", 1)[0]
        if not key.startswith("reward."):
            raise ConfigError(
                f"override {item!r}: evaluation takes reward settings only, as reward.KEY=VALUE "
                "(e.g. reward.num_workers=4)"
            )
        stripped.append(item.removeprefix("reward."))
    data = apply_overrides(EVAL_REWARD_DEFAULTS, stripped)
    source = "evaluation defaults" + (" + overrides " + " ".join(overrides) if overrides else "")
    return build_config(RewardConfig, data, source)


# ----------------------------------------------------------------------------- problems -> prompts and rows


def problem_prompt(
    problem: Problem, math_instruction: str = DEFAULT_MATH_INSTRUCTION
) -> list[dict[str, str]]:
    """The chat sent to the model: one user turn (the backend applies the model's chat template)."""
    text = problem.question
    if problem.ability == "math" and math_instruction:
        text = text.rstrip() + "\n\n" + math_instruction
    return [{"role": "user", "content": text}]


def problem_row(problem: Problem) -> dict[str, Any]:
    """The verl-style row the reward pool scores a problem's responses against.

    Math: the reference answer; code: the test spec, which the code reward's
    ``parse_tests`` reads as is (HumanEval ``{test, entry_point}`` or
    LiveCodeBench-style ``{tests: [...], fn_name}``).
    """
    if problem.ability == "code":
        if not problem.tests:
            raise EvalError(f"problem {problem.id!r} is a code problem without tests")
        truth: Any = problem.tests
    else:
        if problem.answer is None:
            raise EvalError(f"problem {problem.id!r} is a math problem without a reference answer")
        truth = problem.answer
    return {
        "data_source": problem.data_source,
        "ability": problem.ability,
        "reward_model": {"style": "rule", "ground_truth": truth},
        "extra_info": {"id": problem.id, "index": problem.index},
    }


def sample_record(
    problem: Problem,
    sample: int,
    response: str,
    result: RewardResult,
    rollout: Rollout | None = None,
) -> dict[str, Any]:
    """One line of ``samples.jsonl``; its ``problem_id``/``sample``/``correct``/``answer`` feed the metrics."""
    record: dict[str, Any] = {
        "problem_id": problem.id,
        "index": problem.index,
        "sample": sample,
        "response": response,
        "answer": result.answer,
        "correct": bool(result.correct),
        "score": result.score,
        "flags": list(result.flags),
        "passed": result.passed,
        "total": result.total,
        "detail": result.detail,
    }
    if rollout is not None:
        record["response_tokens"] = len(rollout.response_ids)
        record["truncated"] = rollout.truncated
    return record


# ----------------------------------------------------------------------------- files


def _append_lines(path: Path, records: Sequence[Mapping[str, Any]]) -> None:
    """Append one problem's records in one write, then fsync: a crash loses at most that problem."""
    text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())


@dataclass
class SamplesOnDisk:
    """What a ``samples.jsonl`` holds, read for a resume.

    complete: records of problems with all n samples, by problem id (sample order).
    dropped: problem ids whose samples were incomplete (they are regenerated).
    torn_tail: the file ended in a line without a newline (an interrupted write), now discarded.
    """

    complete: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)
    torn_tail: bool = False


def read_samples_for_resume(path: Path, problems: Sequence[Problem], n: int) -> SamplesOnDisk:
    """Read a run's samples; keep problems whose n samples are all present.

    An incomplete trailing line is what an interrupted append leaves, so it is
    discarded; an unreadable line before the end is not (the file was damaged
    some other way), and is an error naming the line.
    """
    out = SamplesOnDisk()
    if not path.exists():
        return out
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] != b"":
        out.torn_tail = True
    lines = lines[:-1]  # the last piece is "" (file ends with a newline) or the torn tail
    known = {p.id for p in problems}
    by_problem: dict[str, dict[int, dict[str, Any]]] = {}
    for lineno, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        where = f"{path}:{lineno}"
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise EvalError(
                f"{where}: not a valid sample record ({err}); move the file away to start over"
            ) from None
        if not isinstance(record, dict) or "problem_id" not in record or "sample" not in record:
            raise EvalError(f"{where}: a sample record needs 'problem_id' and 'sample'")
        pid, sample = str(record["problem_id"]), record["sample"]
        if pid not in known:
            # another --limit or benchmark version: kept on disk, ignored here
            continue
        if not isinstance(sample, int) or not 0 <= sample < n:
            raise EvalError(f"{where}: sample index {sample!r} outside 0..{n - 1} for n = {n}")
        slot = by_problem.setdefault(pid, {})
        if sample in slot:
            raise EvalError(f"{where}: problem {pid!r} sample {sample} appears twice")
        slot[sample] = record
    for pid, slot in by_problem.items():
        if len(slot) == n:
            out.complete[pid] = [slot[i] for i in range(n)]
        else:
            out.dropped.append(pid)
    return out


# ----------------------------------------------------------------------------- summary and outputs


@dataclass
class EvalOutcome:
    """What a run or a re-score produced."""

    summary: BenchmarkSummary
    out_dir: Path
    records: list[dict[str, Any]]
    generated: list[str] = field(default_factory=list)  # problem ids generated by this call (run only)
    resumed: list[str] = field(default_factory=list)  # problem ids taken from disk (run only)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def summary_path(self) -> Path:
        return self.out_dir / SUMMARY_FILE

    @property
    def report_path(self) -> Path:
        return self.out_dir / REPORT_FILE


def summarize_records(
    benchmark: str,
    problems: Sequence[Problem],
    records: Sequence[Mapping[str, Any]],
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
) -> BenchmarkSummary:
    """The metrics over ``problems`` from their sample records.

    maj@n is reported for math only: it votes over extracted answers, and wrong
    programs almost never coincide textually, so a vote over code says little.
    A benchmark mixing math and code problems gets no maj@n for the same reason.
    """
    wanted = {p.id for p in problems}
    samples = [ScoredSample.from_dict(r) for r in records if str(r["problem_id"]) in wanted]
    all_math = all(p.ability == "math" for p in problems)
    maj = None if all_math else ()
    try:
        return summarize_samples(
            benchmark, samples, problem_ids=[p.id for p in problems], maj_ks=maj, n_boot=n_boot, seed=seed
        )
    except ValueError as err:
        raise EvalError(f"cannot summarise {benchmark}: {err}") from None


def flag_counts(records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    """How many samples carry each reward flag: a high ``timeout`` or ``error`` count makes a score suspect."""
    counts: dict[str, int] = {}
    for record in records:
        for flag in record.get("flags") or ():
            counts[flag] = counts.get(flag, 0) + 1
    return dict(sorted(counts.items()))


def sample_stats(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Per-sample figures worth seeing next to the metrics: flags, truncation, response length."""
    stats: dict[str, Any] = {"samples": len(records), "flags": flag_counts(records)}
    truncated = [r["truncated"] for r in records if r.get("truncated") is not None]
    if truncated:
        stats["truncated_fraction"] = sum(map(bool, truncated)) / len(truncated)
    lengths = [r["response_tokens"] for r in records if r.get("response_tokens") is not None]
    if lengths:
        stats["mean_response_tokens"] = sum(lengths) / len(lengths)
        stats["max_response_tokens"] = max(lengths)
    return stats


def write_outputs(
    out_dir: Path,
    summary: BenchmarkSummary,
    records: Sequence[Mapping[str, Any]],
    meta: Mapping[str, Any],
) -> None:
    """``summary.json`` (the summary, then ``meta``: config, model, seconds, stats) and ``report.md``, atomically."""
    payload = {**summary.to_dict(), **meta, "stats": sample_stats(records)}
    write_atomic(out_dir / REPORT_FILE, render_markdown([summary], title=f"Evaluation: {summary.benchmark}"))
    write_atomic(out_dir / SUMMARY_FILE, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


# ----------------------------------------------------------------------------- eval run


ProgressFn = Callable[[int, int], None]


def run_identity(
    benchmark: str, settings: GenerationSettings, identity: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """Everything a run's samples depend on: the benchmark, the caller's identity (model ...) and the settings."""
    return {"benchmark": benchmark, **(identity or {}), **settings.to_dict()}


def prepare_run_dir(out_dir: str | os.PathLike[str], identity: Mapping[str, Any], restart: bool) -> None:
    """Refuse to resume a directory that holds samples drawn with other settings; record the settings.

    The CLI calls this before loading the model, so a mismatch costs nothing;
    :func:`run_eval` calls it again (it is idempotent).
    restart: delete the samples already there instead.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    run_path, samples_path = out_dir / RUN_FILE, out_dir / SAMPLES_FILE
    identity = json.loads(
        json.dumps(dict(identity))
    )  # compared with what run.json read back: tuples as lists
    if restart:
        samples_path.unlink(missing_ok=True)
    elif run_path.exists():
        try:
            previous = json.loads(run_path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise EvalError(f"{run_path}: not valid JSON ({err.msg}); use restart to start over") from None
        old = previous.get("identity", {})
        diffs = [
            f"{key}: {old.get(key)!r} then, {identity.get(key)!r} now"
            for key in sorted(set(old) | set(identity))
            if old.get(key) != identity.get(key)
        ]
        if diffs:
            raise EvalError(
                f"{out_dir} holds samples drawn with other settings ({'; '.join(diffs)}); "
                "use another output directory, or restart to discard them"
            )
    elif samples_path.exists() and samples_path.stat().st_size > 0:
        raise EvalError(
            f"{samples_path} exists but {run_path} does not, so its settings are unknown; "
            "use another output directory, or restart to discard it"
        )
    write_atomic(run_path, json.dumps({"identity": dict(identity)}, indent=2) + "\n")


def run_eval(
    problems: Sequence[Problem],
    backend: RolloutBackend,
    pool: RewardPool,
    out_dir: str | os.PathLike[str],
    settings: GenerationSettings,
    *,
    benchmark: str,
    identity: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    restart: bool = False,
    progress: ProgressFn | None = None,
    n_boot: int = DEFAULT_N_BOOT,
) -> EvalOutcome:
    """Generate ``settings.n`` samples for every problem, score them, write samples, summary and report.

    identity: what the samples depend on besides ``settings`` (model, backend,
    benchmark, YaRN ...); a resume must match it and ``settings``, else EvalError.
    meta: extra entries for ``summary.json`` (model, config ...).
    restart: discard samples already in ``out_dir`` instead of resuming.
    progress(done, total): called with problems finished (resumed ones count as done).
    ``summary.json``'s seconds are this call's; samples taken from disk cost none.
    """
    start = time.monotonic()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if not problems:
        raise EvalError(f"{benchmark}: no problems to evaluate")
    rows = {p.id: problem_row(p) for p in problems}  # fails early on a problem without a reference
    prepare_run_dir(out, run_identity(benchmark, settings, identity), restart)

    # 1. Resume: keep problems whose n samples are on disk; rewrite the file if anything was dropped.
    samples_path = out / SAMPLES_FILE
    disk = read_samples_for_resume(samples_path, problems, settings.n)
    if disk.dropped or disk.torn_tail:
        kept = _kept_lines(samples_path, disk)
        write_atomic(samples_path, kept)
    samples_path.touch()
    todo = [p for p in problems if p.id not in disk.complete]
    prefix = think_prefix(getattr(backend, "tokenizer", None))
    done_count = len(problems) - len(todo)
    if progress is not None:
        progress(done_count, len(problems))

    # 2. Generate and score, a call's problems at a time; append each problem's samples as it completes.
    gen_seconds = score_seconds = 0.0
    generated: list[str] = []
    records_by_id: dict[str, list[dict[str, Any]]] = dict(disk.complete)
    step = settings.problems_per_call
    for first in range(0, len(todo), step):
        chunk = todo[first : first + step]
        t0 = time.monotonic()
        rollouts = backend.generate(
            [problem_prompt(p, settings.math_instruction) for p in chunk],
            settings.sampling(problem_seed(settings.seed, chunk[0].id)),
            groups=[p.id for p in chunk],
        )
        t1 = time.monotonic()
        gen_seconds += t1 - t0
        if len(rollouts) != len(chunk) * settings.n:
            raise EvalError(
                f"the backend returned {len(rollouts)} rollouts for {len(chunk)} problems x n = {settings.n}"
            )
        score_rows = [rows[p.id] for p in chunk for _ in range(settings.n)]
        texts = judged_texts(prefix, [r.text for r in rollouts])  # what RL's reward judges too
        results = pool.score(score_rows, texts)
        score_seconds += time.monotonic() - t1
        for i, problem in enumerate(chunk):
            part = range(i * settings.n, (i + 1) * settings.n)
            records = [
                sample_record(problem, j, texts[k], results[k], rollouts[k]) for j, k in enumerate(part)
            ]
            _append_lines(samples_path, records)
            records_by_id[problem.id] = records
            generated.append(problem.id)
            done_count += 1
            if progress is not None:
                progress(done_count, len(problems))

    # 3. Summarise over exactly the requested problems, in benchmark order.
    records = [r for p in problems for r in records_by_id[p.id]]
    summary = summarize_records(benchmark, problems, records, n_boot=n_boot, seed=settings.seed)
    seconds = {
        "generation": gen_seconds,
        "scoring": score_seconds,
        "total": time.monotonic() - start,
    }
    write_outputs(
        out,
        summary,
        records,
        {
            **(meta or {}),
            "settings": settings.to_dict(),
            "seconds": seconds,
            "generated_problems": len(generated),
            "resumed_problems": len(disk.complete),
        },
    )
    return EvalOutcome(
        summary=summary,
        out_dir=out,
        records=records,
        generated=generated,
        resumed=[p.id for p in problems if p.id in disk.complete],
        seconds=seconds,
    )


def _kept_lines(path: Path, disk: SamplesOnDisk) -> str:
    """The file's complete lines, less those of problems whose samples were incomplete."""
    dropped = set(disk.dropped)
    raw = path.read_bytes().split(b"\n")[:-1]
    kept: list[str] = []
    for line in raw:
        if not line.strip():
            continue
        record = json.loads(line)
        if str(record["problem_id"]) not in dropped:
            kept.append(line.decode("utf-8") + "\n")
    return "".join(kept)


# ----------------------------------------------------------------------------- eval score


@dataclass
class Generations:
    """Responses per problem id read from a generations file, with the lines they came from."""

    responses: dict[str, list[str]]
    lines: dict[str, list[int]]
    path: Path


def read_generations(
    path: str | os.PathLike[str],
    problems: Sequence[Problem],
    *,
    skip: Sequence[Problem] = (),
    max_errors: int = MAX_REPORTED_ERRORS,
) -> Generations:
    """Responses per problem from a jsonl file; every problem must end with the same number of samples.

    Each line names its problem by ``id`` (or ``problem_id``, as ``samples.jsonl``
    does) or by 0-based ``index``, and carries ``responses`` (a list of strings)
    or ``response`` (one string); several lines for one problem accumulate in file
    order, or at their ``sample`` index when lines give one (so a ``samples.jsonl``
    scores back in its own order). All problems of the benchmark must be present; lines
    for the problems in ``skip`` (those a ``--limit`` left out) are ignored.
    Every error names the file and the 1-based line; up to ``max_errors`` are
    reported together.
    """
    p = Path(path)
    if not p.is_file():
        raise EvalError(f"{p}: no such generations file")
    by_id = {prob.id: prob for prob in problems}
    by_index = {prob.index: prob for prob in problems}
    skip_id = {prob.id: prob for prob in skip}
    skip_index = {prob.index: prob for prob in skip}
    slots: dict[str, dict[int, str]] = {}
    lines: dict[str, list[int]] = {}
    errors: list[str] = []
    with open(p, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if len(errors) >= max_errors:
                break
            if not line.strip():
                continue
            where = f"{p}:{lineno}"
            try:
                row = json.loads(line)
            except json.JSONDecodeError as err:
                errors.append(f"{where}: invalid JSON ({err.msg} at column {err.colno})")
                continue
            if not isinstance(row, dict):
                errors.append(f"{where}: expected a JSON object, got {type(row).__name__}")
                continue
            problem, why = _generation_problem(row, by_id, by_index)
            if problem is None and _generation_problem(row, skip_id, skip_index)[0] is not None:
                continue  # a problem outside --limit
            if problem is None:
                errors.append(f"{where}: {why}")
                continue
            responses, why = _generation_responses(row)
            if responses is None:
                errors.append(f"{where}: {why}")
                continue
            slot = slots.setdefault(problem.id, {})
            sample = row.get("sample")
            if sample is not None and "response" in row:
                if isinstance(sample, bool) or not isinstance(sample, int) or sample < 0:
                    errors.append(f"{where}: 'sample' should be a non-negative integer, got {sample!r}")
                    continue
                if sample in slot:
                    errors.append(f"{where}: problem {problem.id!r} sample {sample} given twice")
                    continue
                slot[sample] = responses[0]
            else:
                for response in responses:
                    slot[max(slot, default=-1) + 1] = response
            lines.setdefault(problem.id, []).append(lineno)
    _raise_if(errors, p, max_errors)

    missing = [prob.id for prob in problems if prob.id not in slots]
    if missing:
        errors.append(
            f"{p}: {len(missing)} of {len(problems)} problems have no generations, e.g. "
            + ", ".join(repr(m) for m in missing[:5])
            + " (score a subset with --limit, which keeps the first problems)"
        )
    for pid, slot in slots.items():
        if sorted(slot) != list(range(len(slot))):
            gaps = sorted(set(range(max(slot) + 1)) - set(slot))
            errors.append(
                f"{p}: problem {pid!r} (lines {_line_list(lines[pid])}) is missing sample(s) {gaps[:10]}"
            )
    _raise_if(errors, p, max_errors)
    counts: dict[int, list[str]] = {}
    for prob in problems:
        counts.setdefault(len(slots[prob.id]), []).append(prob.id)
    if len(counts) > 1:
        common = max(counts, key=lambda k: len(counts[k]))
        odd = [(pid, k) for k, ids in counts.items() if k != common for pid in ids]
        listing = "; ".join(
            f"{pid!r} has {k} (lines {_line_list(lines[pid])})" for pid, k in odd[:max_errors]
        )
        raise EvalError(
            f"{p}: problems have unequal sample counts: most have {common}, but {listing}"
            + (f"; and {len(odd) - max_errors} more" if len(odd) > max_errors else "")
            + "; avg@k and pass@k need the same number of samples for every problem"
        )
    responses = {pid: [slot[i] for i in range(len(slot))] for pid, slot in slots.items()}
    return Generations(responses=responses, lines=lines, path=p)


def _generation_problem(
    row: Mapping[str, Any], by_id: Mapping[str, Problem], by_index: Mapping[int, Problem]
) -> tuple[Problem | None, str]:
    """The problem a generations line refers to, or (None, why not)."""
    raw_id = row.get("id", row.get("problem_id"))
    raw_index = row.get("index")
    if raw_id is None and raw_index is None:
        return None, "missing field 'id' (or 'problem_id', or 0-based 'index') naming the problem"
    by_id_problem = by_index_problem = None
    if raw_id is not None:
        if isinstance(raw_id, bool) or not isinstance(raw_id, (str, int)):
            return None, f"field 'id' should be a string or an integer, got {raw_id!r}"
        by_id_problem = by_id.get(str(raw_id).strip())
        if by_id_problem is None:
            examples = ", ".join(repr(k) for k in list(by_id)[:3])
            hint = ""
            if str(raw_id).strip().isdigit() and raw_index is None:
                hint = "; to name problems by 0-based row position, use 'index'"
            return (
                None,
                f"unknown problem id {raw_id!r} (the benchmark's ids look like {examples}, ...){hint}",
            )
    if raw_index is not None:
        if isinstance(raw_index, bool) or not isinstance(raw_index, int):
            return None, f"field 'index' should be an integer, got {raw_index!r}"
        by_index_problem = by_index.get(raw_index)
        if by_index_problem is None:
            return (
                None,
                f"problem index {raw_index} out of range (the benchmark has {len(by_index)} problems)",
            )
    if by_id_problem is not None and by_index_problem is not None and by_id_problem is not by_index_problem:
        return None, (
            f"id {raw_id!r} and index {raw_index} name different problems "
            f"(index {raw_index} is {by_index_problem.id!r})"
        )
    problem = by_id_problem or by_index_problem
    assert problem is not None
    return problem, ""


def _generation_responses(row: Mapping[str, Any]) -> tuple[list[str] | None, str]:
    has_one, has_many = "response" in row, "responses" in row
    if has_one == has_many:
        return None, "needs exactly one of 'response' (a string) or 'responses' (a list of strings)"
    if has_one:
        if not isinstance(row["response"], str):
            return None, f"'response' should be a string, got {type(row['response']).__name__}"
        return [row["response"]], ""
    value = row["responses"]
    if not isinstance(value, list) or not all(isinstance(r, str) for r in value):
        return None, "'responses' should be a list of strings"
    if not value:
        return None, "'responses' is empty"
    return list(value), ""


def _line_list(numbers: Sequence[int]) -> str:
    shown = ", ".join(map(str, numbers[:5]))
    return shown + (", ..." if len(numbers) > 5 else "")


def _raise_if(errors: Sequence[str], path: Path, max_errors: int) -> None:
    if errors:
        more = f"\n(stopped reading at {max_errors} errors)" if len(errors) >= max_errors else ""
        raise EvalError(f"{len(errors)} problem(s) in generations file {path}:\n" + "\n".join(errors) + more)


def score_generations(
    problems: Sequence[Problem],
    generations: Generations,
    pool: RewardPool,
    out_dir: str | os.PathLike[str],
    *,
    benchmark: str,
    meta: Mapping[str, Any] | None = None,
    seed: int = 0,
    n_boot: int = DEFAULT_N_BOOT,
    progress: ProgressFn | None = None,
) -> EvalOutcome:
    """Score existing generations against ``problems``; write samples, summary and report (all atomically).

    progress(done, total): called with responses scored.
    """
    start = time.monotonic()
    out = Path(out_dir)
    rows = {p.id: problem_row(p) for p in problems}
    order = [(p, j, response) for p in problems for j, response in enumerate(generations.responses[p.id])]
    results = pool.score([rows[p.id] for p, _, _ in order], [r for _, _, r in order], progress=progress)
    records = [
        sample_record(p, j, response, result) for (p, j, response), result in zip(order, results, strict=True)
    ]
    summary = summarize_records(benchmark, problems, records, n_boot=n_boot, seed=seed)
    write_atomic(out / SAMPLES_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    seconds = {"scoring": time.monotonic() - start, "total": time.monotonic() - start}
    write_outputs(
        out, summary, records, {**(meta or {}), "generations": str(generations.path), "seconds": seconds}
    )
    return EvalOutcome(summary=summary, out_dir=out, records=records, seconds=seconds)


# ----------------------------------------------------------------------------- model loading


@dataclass(frozen=True)
class YarnSetting:
    """YaRN rope scaling asked for on the command line (see :mod:`klear.eval.yarn`)."""

    factor: float
    original_max_position_embeddings: int


def load_backend(
    name: str,
    model_dir: str | os.PathLike[str],
    *,
    seed: int = 0,
    yarn: YarnSetting | None = None,
    dtype: str = "auto",
    device: str | None = None,
    max_batch_size: int | None = None,
) -> Any:
    """A rollout backend for a local model directory, with YaRN applied to the model config when asked.

    ``hf``: the config is loaded, passed through :func:`klear.eval.yarn.apply_yarn`,
    and the model built from it, so the scaling the model runs with is exactly the
    config recorded in ``summary.json``. Other registered backends (vLLM) are
    built with ``cls.from_pretrained(model_dir, seed=..., yarn=(factor, original))``;
    the vLLM backend turns that into ``hf_overrides`` holding the whole rope section
    :func:`klear.eval.yarn.apply_yarn` writes (rope_theta included).
    """
    from klear.rollout import backend_class

    try:
        cls = backend_class(name)
    except (ValueError, ImportError, AttributeError) as err:
        raise EvalError(f"--backend {name}: {err}") from None
    path = Path(model_dir)
    if not path.is_dir():
        raise EvalError(f"model directory {str(path)!r} does not exist")
    if name != "hf":
        kwargs: dict[str, Any] = {"seed": seed}
        if yarn is not None:
            kwargs["yarn"] = (yarn.factor, yarn.original_max_position_embeddings)
        return cls.from_pretrained(str(path), **kwargs)

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    config = AutoConfig.from_pretrained(path)
    if yarn is not None:
        from klear.eval.yarn import apply_yarn

        config = apply_yarn(config, yarn.factor, yarn.original_max_position_embeddings)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype == "auto":
        torch_dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    else:
        torch_dtype = getattr(torch, dtype)
    model = AutoModelForCausalLM.from_pretrained(path, config=config, dtype=torch_dtype)
    model.to(device).eval()
    tokenizer = AutoTokenizer.from_pretrained(path)
    return cls(model, tokenizer, seed=seed, max_batch_size=max_batch_size)


def model_description(backend: Any, model_dir: str | os.PathLike[str], name: str) -> dict[str, Any]:
    """What ``summary.json`` records about the model: path, backend, and the rotary settings it ran with."""
    info: dict[str, Any] = {"path": str(Path(model_dir).resolve()), "backend": name}
    config = getattr(getattr(backend, "model", None), "config", None)
    if config is not None:
        info["max_position_embeddings"] = getattr(config, "max_position_embeddings", None)
        rope = getattr(config, "rope_parameters", None)
        if rope is None:
            rope = getattr(config, "rope_scaling", None)
        info["rope"] = json.loads(json.dumps(rope, default=str)) if rope is not None else None
        info["architecture"] = (getattr(config, "architectures", None) or [None])[0]
    return info
