"""The paper's curation filters for RL prompts: sample k responses, score them, keep or drop the prompt.

- **Code** (:func:`decide_code`, the paper's code RL data): a prompt is kept when it has at least
  ``min_tests`` tests (16) and a strong model's k samples pass *all* of them more than
  ``threshold`` (0.5) of the time. Bad test cases turn right programs into negatives; a prompt the
  strong model rarely passes is more likely to have wrong tests than to be hard. A prompt with too
  few tests is dropped before any sampling, since nothing about it could save it.
- **Math** (:func:`decide_math`): a prompt is kept when more than ``majority`` of its k samples are
  right (the paper's "majority"); every prompt is tagged with its pass rate, which
  ``klear data sft-select`` reads as the problem's difficulty.

Responses come from a generations file (:func:`load_generations`) or are sampled through the
rollout interface (:func:`backend_generator`); scoring goes through the same reward pool training
uses. Both are passed in as functions, so the decision logic is tested without a model.

Kept and dropped rows are RL rows with ``extra_info.filter`` holding the statistics (and, when
dropped, the reason), so both load back through the schema and can be re-filtered.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from klear.data.schema import DataError, RLRow, code_tests, iter_records
from klear.data.shards import digest
from klear.types import RewardResult

#: (prompts as chat messages, k, seed) -> k response texts per prompt.
Generator = Callable[[list[list[dict[str, str]]], int, int], list[list[str]]]
#: (row dicts, responses) -> one RewardResult per response (``RewardPool.score``).
Scorer = Callable[[list[dict[str, Any]], list[str]], list[RewardResult]]


def prompt_key(prompt: Any) -> str:
    """The identity of a prompt for matching generations: its (role, content) turns."""
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    turns = [
        [getattr(m, "role", None) or m["role"], getattr(m, "content", None) or m["content"]] for m in prompt
    ]
    return digest(turns)


def load_generations(path: str | Path) -> dict[str, list[str]]:
    """prompt key -> responses, from a jsonl/json/parquet file.

    Each record has ``prompt`` (chat messages or a string) and ``responses`` (a list of strings)
    or ``response`` (one string; several records for one prompt accumulate). RL rows with
    ``responses`` (what ``klear reward score`` reads, or ``--save-generations`` writes) qualify.
    """
    out: dict[str, list[str]] = {}
    path = Path(path)
    for where, record in iter_records(path):
        at = f"{path}: {where}"
        if not isinstance(record, dict):
            raise DataError(f"{at}: expected an object, got {type(record).__name__}")
        prompt = record.get("prompt")
        if not (isinstance(prompt, str) or (isinstance(prompt, list) and prompt)):
            raise DataError(f"{at}: field 'prompt': expected chat messages or a string")
        try:
            key = prompt_key(prompt)
        except (KeyError, TypeError):
            raise DataError(f"{at}: field 'prompt': each turn needs 'role' and 'content'") from None
        if "responses" in record:
            responses = record["responses"]
            if not (isinstance(responses, list) and all(isinstance(r, str) for r in responses)):
                raise DataError(f"{at}: field 'responses': expected a list of strings")
        elif isinstance(record.get("response"), str):
            responses = [record["response"]]
        else:
            raise DataError(f"{at}: field 'responses': missing (or 'response': one string)")
        out.setdefault(key, []).extend(responses)
    return out


def backend_generator(backend: Any, temperature: float, top_p: float, max_new_tokens: int) -> Generator:
    """A :data:`Generator` over a rollout backend (``klear.rollout``): k samples per prompt, seeded
    per call so a shard resampled after an interruption gets the same responses. A response is
    returned as the reward judges it in RL and evaluation: the think prefix the chat template
    opened + the sampled text (:mod:`klear.rewards.think`)."""
    from klear.rewards.think import judged_texts, think_prefix
    from klear.rollout import SamplingParams

    prefix = think_prefix(getattr(backend, "tokenizer", None))

    def generate(prompts: list[list[dict[str, str]]], k: int, seed: int) -> list[list[str]]:
        sampling = SamplingParams(
            n=k, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
        )
        rollouts = backend.generate(prompts, sampling)
        texts = judged_texts(prefix, [r.text for r in rollouts])  # prompt-major: out[i * k + j]
        return [texts[i * k : (i + 1) * k] for i in range(len(prompts))]

    return generate


def pass_stats(results: Sequence[RewardResult]) -> dict[str, Any]:
    """k, solved (responses judged correct), pass_rate = solved / k, and flag counts."""
    k = len(results)
    solved = sum(bool(r.correct) for r in results)
    flags: dict[str, int] = {}
    for r in results:
        for f in r.flags:
            flags[f] = flags.get(f, 0) + 1
    return {"k": k, "solved": solved, "pass_rate": solved / k if k else 0.0, "flags": flags}


def decide_code(num_tests: int, stats: dict[str, Any] | None, threshold: float, min_tests: int) -> str | None:
    """None to keep; else why the prompt is dropped (``too_few_tests`` or ``low_pass_rate``)."""
    if num_tests < min_tests:
        return "too_few_tests"
    assert stats is not None
    if not stats["pass_rate"] > threshold:
        return "low_pass_rate"
    return None


def decide_math(stats: dict[str, Any], majority: float) -> str | None:
    """None to keep (more than ``majority`` of the samples right); else ``not_majority_solved``."""
    return None if stats["pass_rate"] > majority else "not_majority_solved"


def _responses_for(
    rows: list[tuple[str, RLRow]],
    generations: dict[str, list[str]] | None,
    generate: Generator | None,
    k: int | None,
    seed: int,
) -> list[list[str]]:
    """k responses per row: from the generations (first k, when k is set) or sampled now."""
    if generations is not None:
        out = []
        for where, row in rows:
            found = generations.get(prompt_key(row.prompt))
            if not found:
                raise DataError(f"{where}: field 'prompt': no generations for this prompt")
            if k and len(found) < k:
                raise DataError(
                    f"{where}: --k {k} but the generations hold {len(found)} response(s) for this prompt; "
                    f"lower --k or leave it out to use all of them"
                )
            out.append(found[:k] if k else found)
        return out
    if generate is None or not k:
        raise ValueError("give generations, or a generator and k")
    prompts = [[m.model_dump() for m in row.prompt] for _, row in rows]
    return generate(prompts, k, seed) if prompts else []


def filter_shard(
    rows: list[tuple[str, RLRow]],
    *,
    mode: str,
    score: Scorer,
    seed: int,
    generations: dict[str, list[str]] | None = None,
    generate: Generator | None = None,
    k: int | None = None,
    threshold: float = 0.5,
    min_tests: int = 16,
    majority: float = 0.5,
) -> list[tuple[str, dict[str, Any]]]:
    """Decide each (location, row) of one shard; returns ``(kept|dropped|generations, record)``.

    mode ``code``: :func:`decide_code`; mode ``math``: :func:`decide_math`. One scoring call per
    shard (all responses at once, so the pool's workers stay busy).
    """
    if mode not in ("code", "math"):
        raise ValueError(f"mode {mode!r}: expected 'code' or 'math'")
    num_tests: list[int | None] = []
    for where, row in rows:
        if mode == "code":
            if row.ability != "code":
                raise DataError(
                    f"{where}: field 'ability': filter-tests needs code rows, got {row.ability!r}"
                )
            try:
                num_tests.append(code_tests(row.reward_model.ground_truth))
            except ValueError as exc:
                raise DataError(f"{where}: field 'reward_model.ground_truth': {exc}") from None
        else:
            num_tests.append(None)
    # 1. prompts that no sample can save are dropped before sampling
    needs = [i for i, n in enumerate(num_tests) if mode == "math" or (n or 0) >= min_tests]
    responses = _responses_for([rows[i] for i in needs], generations, generate, k, seed)
    # 2. one scoring call for every response of the shard
    flat_rows = [rows[i][1].to_dict() for i, resp in zip(needs, responses, strict=True) for _ in resp]
    flat_resp = [r for resp in responses for r in resp]
    results = score(flat_rows, flat_resp) if flat_resp else []
    stats_of: dict[int, dict[str, Any]] = {}
    results_of: dict[int, tuple[list[str], list[RewardResult]]] = {}
    cursor = 0
    for i, resp in zip(needs, responses, strict=True):
        results_of[i] = (resp, results[cursor : cursor + len(resp)])
        stats_of[i] = pass_stats(results_of[i][1])
        cursor += len(resp)
    # 3. decide, and route
    out: list[tuple[str, dict[str, Any]]] = []
    for i, (_, row) in enumerate(rows):
        stats = stats_of.get(i)
        if mode == "code":
            reason = decide_code(num_tests[i] or 0, stats, threshold, min_tests)
            info: dict[str, Any] = {"num_tests": num_tests[i], "min_tests": min_tests, "threshold": threshold}
        else:
            assert stats is not None
            reason = decide_math(stats, majority)
            info = {"majority": majority}
        if stats is not None:
            info.update(stats)
        if reason is not None:
            info["reason"] = reason
        record = row.to_dict()
        extra = dict(record.get("extra_info") or {})
        extra["filter"] = info
        if stats is not None:
            extra["pass_rate"] = stats["pass_rate"]
            if mode == "math":
                extra["difficulty"] = stats["pass_rate"]  # what sft-select reads (lower: harder)
        record["extra_info"] = extra
        out.append(("kept" if reason is None else "dropped", record))
        if i in results_of:
            resp, res = results_of[i]
            gen = {"prompt": record["prompt"], "responses": resp, "rewards": [r.to_dict() for r in res]}
            out.append(("generations", gen))
    return out


class Summary:
    """Running counts over routed records: decisions, drop reasons, a pass-rate histogram."""

    def __init__(self) -> None:
        self.kept = 0
        self.dropped = 0
        self.reasons: dict[str, int] = {}
        self.histogram = [0] * 11  # prompts by pass rate, rounded to tenths
        self.flags: dict[str, int] = {}

    def add(self, dest: str, record: dict[str, Any]) -> None:
        if dest not in ("kept", "dropped"):
            return
        info = record["extra_info"]["filter"]
        if dest == "kept":
            self.kept += 1
        else:
            self.dropped += 1
            self.reasons[info["reason"]] = self.reasons.get(info["reason"], 0) + 1
        if "pass_rate" in info:
            self.histogram[round(info["pass_rate"] * 10)] += 1
        for flag, n in (info.get("flags") or {}).items():
            self.flags[flag] = self.flags.get(flag, 0) + n

    def to_dict(self) -> dict[str, Any]:
        return {
            "prompts": self.kept + self.dropped,
            "kept": self.kept,
            "dropped": self.dropped,
            "reasons": dict(sorted(self.reasons.items())),
            "pass_rate_histogram_tenths": self.histogram,
            "response_flags": dict(sorted(self.flags.items())),
        }
