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

from klear.eval.benchmarks import Problem
from klear.eval.metrics import DEFAULT_N_BOOT, BenchmarkSummary, ScoredSample, summarize_samples
from klear.eval.report import render_markdown
from klear.eval.rundir import (
    REPORT_FILE,
    SAMPLES_FILE,
    SUMMARY_FILE,
    EvalError,
    append_lines,
    kept_lines,
    prepare_run_dir,
    read_samples_for_resume,
    run_identity,
)
from klear.io import write_atomic
from klear.rewards.think import judged_texts, think_prefix

if TYPE_CHECKING:
    from klear.config import RewardConfig
    from klear.rewards.pool import RewardPool
    from klear.rollout import RolloutBackend, SamplingParams
    from klear.types import RewardResult, Rollout


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
        kept = kept_lines(samples_path, disk)
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
            append_lines(samples_path, records)
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
