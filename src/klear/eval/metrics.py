"""avg@k, unbiased pass@k, maj@k and per-problem accuracy, each with a bootstrap CI over problems.

Input is deliberately small: per problem, the list of per-sample correctness
booleans (from the reward pool's ``RewardResult.correct``) and the list of
extracted answers (``RewardResult.answer``). Nothing here knows about models,
prompts or verifiers, so re-scoring old generations and scoring fresh ones give
the same numbers by construction.

Definitions (n samples per problem, c of them correct, P problems):

- **avg@n** = mean over problems of c/n. The paper's headline metric (avg@64 on
  AIME, avg@8 on LiveCodeBench). It equals pass@1 exactly.
- **pass@k** (k = 1..n) = mean over problems of 1 - C(n-c, k) / C(n, k): the
  probability that at least one of k samples drawn without replacement from the
  n is correct (Chen et al. 2021, "Evaluating Large Language Models Trained on
  Code", eq. 1). Unbiased, unlike 1-(1-c/n)^k.
- **maj@k** = mean over problems of the correctness of the majority-voted answer
  among the first k samples. See :func:`majority_vote` for how answers are
  grouped and how ties count.

Uncertainty: a percentile bootstrap over problems (problems are the sampling
unit that a benchmark draws from the world; samples within a problem are not
independent evidence about other problems). All metrics share the same
resamples, drawn from a seeded generator, so the intervals are reproducible.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: Bootstrap resamples used unless the caller asks otherwise. 2000 keeps the
#: Monte-Carlo error of a 95% percentile bound well under a tenth of a point.
DEFAULT_N_BOOT = 2000


@dataclass(frozen=True)
class ScoredSample:
    """One generation for one problem, after scoring.

    problem_id: the :class:`~klear.eval.benchmarks.Problem` id it answers.
    sample: its index among the problem's n samples (0-based); maj@k and
    pass@k of a prefix use this order.
    correct: the verifier's verdict (math: equivalent to the reference answer;
    code: every selected test passed).
    answer: the extracted answer (math) or program (code); None when nothing
    could be extracted. Only used to group votes for maj@k.
    score: the scalar reward, kept for the samples file; metrics ignore it.
    flags: why a verdict is not clean (timeout, no_answer, ...), kept for audit.
    """

    problem_id: str
    sample: int
    correct: bool
    answer: str | None = None
    score: float | None = None
    flags: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "problem_id": self.problem_id,
            "sample": self.sample,
            "correct": self.correct,
            "answer": self.answer,
            "score": self.score,
            "flags": list(self.flags),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> ScoredSample:
        return cls(
            problem_id=str(row["problem_id"]),
            sample=int(row["sample"]),
            correct=bool(row["correct"]),
            answer=row.get("answer"),
            score=row.get("score"),
            flags=tuple(row.get("flags") or ()),
        )


@dataclass(frozen=True)
class MetricValue:
    """A point estimate with its bootstrap confidence interval (same units: fractions in [0, 1])."""

    value: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, Any]:
        return {"value": self.value, "ci": [self.ci_low, self.ci_high]}

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> MetricValue:
        low, high = row["ci"]
        return cls(value=float(row["value"]), ci_low=float(low), ci_high=float(high))


@dataclass
class BenchmarkSummary:
    """Everything ``summary.json`` holds for one benchmark.

    metrics: ordered ``avg@n``, ``pass@1`` ... ``pass@n``, then ``maj@k`` for
    each requested k; keys spell the actual numbers so that avg@8 and avg@64
    are never confused.
    per_problem: accuracy c/n of each problem, keyed by problem id, in load order.
    """

    benchmark: str
    n_problems: int
    n_samples: int
    metrics: dict[str, MetricValue]
    per_problem: dict[str, float]
    confidence: float = 0.95
    n_boot: int = DEFAULT_N_BOOT
    seed: int = 0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def avg_key(self) -> str:
        return f"avg@{self.n_samples}"

    def pass_at(self, k: int) -> MetricValue:
        return self.metrics[f"pass@{k}"]

    def to_dict(self) -> dict[str, Any]:
        return {
            "benchmark": self.benchmark,
            "n_problems": self.n_problems,
            "n_samples": self.n_samples,
            "metrics": {key: value.to_dict() for key, value in self.metrics.items()},
            "per_problem": dict(self.per_problem),
            "confidence": self.confidence,
            "n_boot": self.n_boot,
            "seed": self.seed,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> BenchmarkSummary:
        return cls(
            benchmark=str(row["benchmark"]),
            n_problems=int(row["n_problems"]),
            n_samples=int(row["n_samples"]),
            metrics={key: MetricValue.from_dict(v) for key, v in row["metrics"].items()},
            per_problem={str(k): float(v) for k, v in row["per_problem"].items()},
            confidence=float(row.get("confidence", 0.95)),
            n_boot=int(row.get("n_boot", DEFAULT_N_BOOT)),
            seed=int(row.get("seed", 0)),
            extra=dict(row.get("extra") or {}),
        )


# ----------------------------------------------------------------------------- pass@k


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k for one problem: 1 - C(n-c, k) / C(n, k).

    Computed with exact integers (``math.comb``) and one correctly rounded
    division, so it is exact to the last bit for any n, where the product form
    or floating binomials lose digits for large n and small c.
    """
    if not 0 <= c <= n:
        raise ValueError(f"need 0 <= c <= n, got c={c}, n={n}")
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= k <= n, got k={k}, n={n}")
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def pass_at_k_table(n: int) -> np.ndarray:
    """``table[c, k-1]`` = pass@k for a problem with c of n correct; shape (n+1, n).

    There are only (n+1) x n distinct values, so metrics for any number of
    problems are one gather from this table.
    """
    if n < 1:
        raise ValueError(f"need n >= 1 samples, got {n}")
    table = np.empty((n + 1, n), dtype=np.float64)
    for c in range(n + 1):
        for k in range(1, n + 1):
            table[c, k - 1] = pass_at_k(n, c, k)
    return table


# ----------------------------------------------------------------------------- maj@k


def normalize_answer(answer: str) -> str:
    """Collapse whitespace so that "1 / 2" and "1/2 " do not split votes; nothing cleverer.

    Equivalence beyond this is the verifier's job, and correct answers are
    already pooled by :func:`majority_vote` through their verdicts.
    """
    return "".join(answer.split())


def majority_vote(correct: Sequence[bool], answers: Sequence[str | None]) -> float:
    """Correctness of the majority-voted answer among these samples, in [0, 1].

    Grouping: every sample the verifier marked correct is equivalent to the
    reference answer, so all correct samples form one vote group, whatever
    their spelling ("1/2" and "\\frac{1}{2}" vote together). Incorrect samples
    are grouped by :func:`normalize_answer` of their extracted answer; two wrong
    answers that are equal but spelled differently therefore split their votes
    (this can only favour the correct group; equivalence between wrong answers
    would need the verifier on every pair). Incorrect samples with no extracted
    answer (None or blank) form one "no answer" group, which can win the vote:
    a model that answers once in eight tries has not answered by majority, and
    letting silence abstain would turn maj@k into pass@k.

    Ties count fractionally: if the largest vote count is shared by m groups
    and the correct group is one of them, the result is 1/m, the expected
    correctness of breaking the tie uniformly at random. This makes maj@k
    independent of sample order and of any tie-breaking convention. Every
    sample votes, so with no correct sample the result is 0.
    """
    if len(correct) != len(answers):
        raise ValueError(f"{len(correct)} verdicts but {len(answers)} answers")
    n_correct = sum(bool(ok) for ok in correct)
    wrong = Counter(
        normalize_answer(ans) if ans is not None and ans.strip() else None
        for ok, ans in zip(correct, answers, strict=True)
        if not ok
    )
    top_wrong = max(wrong.values(), default=0)
    if n_correct == 0:
        return 0.0
    if n_correct > top_wrong:
        return 1.0
    if n_correct < top_wrong:
        return 0.0
    tied_wrong = sum(1 for count in wrong.values() if count == top_wrong)
    return 1.0 / (1 + tied_wrong)


# ----------------------------------------------------------------------------- bootstrap


def bootstrap_ci(
    values: np.ndarray,
    *,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the mean over problems, for each column of ``values``.

    values: shape (P,) or (P, M): one row per problem, one column per metric.
    Returns (low, high), each of shape () or (M,).

    Vectorised through multinomial resample counts: a resample of P problems
    drawn with replacement is a count vector w (B, P) summing to P, and every
    metric's resampled mean is ``w @ values / P``: one (B, P) x (P, M) matrix
    product instead of a (B, P, M) gather. All columns share the resamples.
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    arr = np.asarray(values, dtype=np.float64)
    squeeze = arr.ndim == 1
    if squeeze:
        arr = arr[:, None]
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(f"need values of shape (P,) or (P, M) with P >= 1, got {np.shape(values)}")
    n_problems = arr.shape[0]
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n_problems, np.full(n_problems, 1.0 / n_problems), size=n_boot)
    means = counts.astype(np.float64) @ arr / n_problems  # (B, M)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2.0, 1.0 - alpha / 2.0], axis=0)
    if squeeze:
        return low[0], high[0]
    return low, high


# ----------------------------------------------------------------------------- grouping


def group_samples(
    samples: Iterable[ScoredSample], problem_ids: Sequence[str] | None = None
) -> tuple[list[str], list[list[bool]], list[list[str | None]]]:
    """Per-problem verdict and answer lists, ordered by sample index.

    problem_ids: the benchmark's ids in order. When given, every id must have
    samples and no sample may name another id: a summary silently computed over
    the problems that happened to finish would overstate or understate the
    benchmark. When None, problems appear in first-seen order.
    """
    by_problem: dict[str, dict[int, ScoredSample]] = {}
    for sample in samples:
        slot = by_problem.setdefault(sample.problem_id, {})
        if sample.sample in slot:
            raise ValueError(f"problem {sample.problem_id!r} has sample {sample.sample} twice")
        slot[sample.sample] = sample
    if problem_ids is None:
        ids = list(by_problem)
    else:
        ids = [str(pid) for pid in problem_ids]
        missing = [pid for pid in ids if pid not in by_problem]
        unknown = sorted(set(by_problem) - set(ids))
        if missing:
            raise ValueError(f"{len(missing)} problem(s) have no samples, e.g. {missing[:5]}")
        if unknown:
            raise ValueError(f"samples name {len(unknown)} unknown problem id(s), e.g. {unknown[:5]}")
    correct: list[list[bool]] = []
    answers: list[list[str | None]] = []
    for pid in ids:
        slot = by_problem[pid]
        ordered = [slot[i] for i in sorted(slot)]
        correct.append([s.correct for s in ordered])
        answers.append([s.answer for s in ordered])
    return ids, correct, answers


def correctness_matrix(
    correct: Sequence[Sequence[bool]], problem_ids: Sequence[str] | None = None
) -> np.ndarray:
    """(P, n) boolean matrix; every problem must have the same number n >= 1 of samples.

    A fixed n is what makes avg@n and pass@k well defined and comparable across
    problems; a ragged set usually means an interrupted run, which should be
    resumed rather than summarised.
    """
    if len(correct) == 0:
        raise ValueError("no problems to summarise")
    lengths = [len(row) for row in correct]
    n = lengths[0]
    for i, length in enumerate(lengths):
        if length != n:
            name = problem_ids[i] if problem_ids is not None else f"#{i}"
            first = problem_ids[0] if problem_ids is not None else "#0"
            raise ValueError(
                f"problems have different sample counts: {first!r} has {n}, {name!r} has {length}; "
                "every problem needs the same n (resume the run to finish it)"
            )
    if n == 0:
        raise ValueError("problems have no samples")
    for i, row in enumerate(correct):
        for j, value in enumerate(row):
            if not isinstance(value, (bool, np.bool_)) and value not in (0, 1):
                name = problem_ids[i] if problem_ids is not None else f"#{i}"
                raise ValueError(f"problem {name!r} sample {j}: correctness must be a bool, got {value!r}")
    return np.asarray(correct, dtype=bool).reshape(len(correct), n)


# ----------------------------------------------------------------------------- summary


def per_problem_metrics(
    correct: np.ndarray, answers: Sequence[Sequence[str | None]] | None, maj_ks: Sequence[int]
) -> tuple[list[str], np.ndarray]:
    """Per-problem metric values, shape (P, M), and the M metric keys.

    Columns: ``avg@n`` (= c/n), ``pass@1`` ... ``pass@n``, ``maj@k`` for each k
    in ``maj_ks`` (majority over the first k samples). The benchmark value of
    every metric is the column mean, which is what the bootstrap resamples.
    """
    n_problems, n = correct.shape
    counts = correct.sum(axis=1)
    keys = [f"avg@{n}"] + [f"pass@{k}" for k in range(1, n + 1)]
    columns = [counts / n, pass_at_k_table(n)[counts]]
    if maj_ks:
        if answers is None:
            raise ValueError("maj@k needs the extracted answers")
        if len(answers) != n_problems:
            raise ValueError(f"{n_problems} problems but answers for {len(answers)}")
        maj = np.empty((n_problems, len(maj_ks)), dtype=np.float64)
        for j, k in enumerate(maj_ks):
            if not 1 <= k <= n:
                raise ValueError(f"maj@{k} needs 1 <= k <= n = {n}")
            for i in range(n_problems):
                maj[i, j] = majority_vote(correct[i, :k].tolist(), list(answers[i][:k]))
        keys += [f"maj@{k}" for k in maj_ks]
        columns.append(maj)
    values = np.column_stack([np.asarray(col, dtype=np.float64).reshape(n_problems, -1) for col in columns])
    return keys, values


def summarize(
    benchmark: str,
    correct: Sequence[Sequence[bool]],
    answers: Sequence[Sequence[str | None]] | None = None,
    *,
    problem_ids: Sequence[str] | None = None,
    maj_ks: Sequence[int] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = 0.95,
) -> BenchmarkSummary:
    """Summarise one benchmark from per-problem verdicts (and answers, for maj@k).

    correct[i][j]: whether sample j of problem i is right; every problem has the same n.
    answers[i][j]: the extracted answer of that sample (None if none); when
    omitted, maj@k is not reported. For code, pass None: wrong programs rarely
    coincide textually, so a vote over program text says little.
    maj_ks: which maj@k to report; default (n,) when answers are given.
    """
    matrix = correctness_matrix(correct, problem_ids)
    n_problems, n = matrix.shape
    ids = (
        [str(pid) for pid in problem_ids] if problem_ids is not None else [str(i) for i in range(n_problems)]
    )
    if len(ids) != n_problems:
        raise ValueError(f"{n_problems} problems but {len(ids)} ids")
    if len(set(ids)) != len(ids):
        raise ValueError("problem ids are not unique")
    ks = tuple(maj_ks) if maj_ks is not None else ((n,) if answers is not None else ())
    keys, values = per_problem_metrics(matrix, answers, ks)
    low, high = bootstrap_ci(values, n_boot=n_boot, seed=seed, confidence=confidence)
    point = values.mean(axis=0)
    metrics = {key: MetricValue(float(point[j]), float(low[j]), float(high[j])) for j, key in enumerate(keys)}
    accuracy = matrix.mean(axis=1)
    return BenchmarkSummary(
        benchmark=benchmark,
        n_problems=n_problems,
        n_samples=n,
        metrics=metrics,
        per_problem={pid: float(acc) for pid, acc in zip(ids, accuracy, strict=True)},
        confidence=confidence,
        n_boot=n_boot,
        seed=seed,
    )


def summarize_samples(
    benchmark: str,
    samples: Iterable[ScoredSample],
    *,
    problem_ids: Sequence[str] | None = None,
    maj_ks: Sequence[int] | None = None,
    n_boot: int = DEFAULT_N_BOOT,
    seed: int = 0,
    confidence: float = 0.95,
) -> BenchmarkSummary:
    """:func:`summarize` from a flat stream of :class:`ScoredSample` (what ``samples.jsonl`` holds)."""
    ids, correct, answers = group_samples(samples, problem_ids)
    return summarize(
        benchmark,
        correct,
        answers,
        problem_ids=ids,
        maj_ks=maj_ks,
        n_boot=n_boot,
        seed=seed,
        confidence=confidence,
    )
