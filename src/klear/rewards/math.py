"""Math reward: the last ``\\boxed{}`` answer after ``</think>``, checked with math_verify (paper Sec. 3).

Scoring of one response (``cfg.math`` holds every number):

1. missing ``<think>`` (check on unless ``no_think_start_score`` is null): ``no_think_start_score``,
   flag ``format``; the answer is not examined (the reference returns early too);
2. missing ``</think>`` (check on unless ``no_think_end_score`` is null): ``no_think_end_score``,
   flags ``format`` + ``no_answer`` -- a response cut off mid-thought has no final answer;
3. the answer region is the text after the last ``</think>`` (the whole text when the response has
   neither tag and the end check is off; nothing when ``<think>`` was opened but never closed);
   the answer is the content of the last complete ``\\boxed{...}`` or ``\\fbox{...}`` in it (braces
   nested to any depth; escaped ``\\{``/``\\}`` are text). None found: ``negative``, ``no_answer``;
4. equivalence with the ground truth: ``positive`` or ``negative``. A timeout is ``negative`` with
   flag ``timeout``, an unparseable ground truth ``negative`` with flag ``error`` -- never a silent 0.

Why the timeout is ours and not math_verify's: math_verify's timeout is ``signal.alarm``, which raises
off the main thread and, on it, cancels any alarm the caller had set; and with its default
``raise_on_error=False`` a timeout silently returns "not equal". So math_verify is called with its
timeouts off, under our own ``ITIMER_REAL`` timer (float seconds, previous timer restored), and only
on the main thread of a process -- in training, a reward worker of :mod:`klear.rewards.pool`,
whose hard per-item kill covers what a signal cannot interrupt (long C-level big-integer work).

Ground truths: a number, a string (``$...$`` and a box removed; several boxed answers are read
as math_verify reads them, as a set: :func:`normalize_gold`), or a list of accepted ground truths.

Fast path: plain integers, decimals and simple fractions (``3``, ``-2.5``, ``7/8``, ``\\frac{7}{8}``,
``\\dfrac78``), and exact rational expressions (nested ``\\frac``, ``+ - * /``, any depth:
:func:`klear.rewards.math_screen.rational_value`) are compared as exact rationals without math_verify. It answers only when its verdict
cannot differ from math_verify's: equal values are equal; two integers that differ are different; two
rationals that differ by more than 1e-3 absolute and 1e-9 relative are different (math_verify rounds
floats to 6 places). Everything else goes to math_verify. Verdicts are cached per process by
(gold, answer), timeouts included, so the 8 samples of a prompt that agree cost one verification.
An answer too large to compute (``9^{9^{9}}``, ``1000000!``: :func:`klear.rewards.math_screen.screen`)
gets what math_verify gives it after the whole timeout -- negative, flag ``timeout`` -- at once.
Everything that needs no math_verify (:func:`quick_math_reward`) is decided by the pool's parent
without a round trip to a worker.
"""

from __future__ import annotations

import logging
import re
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from contextlib import contextmanager
from fractions import Fraction
from typing import TYPE_CHECKING, Any

from klear.rewards.math_screen import rational_value, screen
from klear.types import RewardResult

if TYPE_CHECKING:
    from klear.config import RewardConfig

THINK_START = "<think>"
THINK_END = "</think>"
_BOX_START = re.compile(r"\\(?:boxed|fbox)\s*\{")
_BRACE = re.compile(r"\\[{}]|[{}]")


class VerifyTimeout(BaseException):
    """Raised by our timer inside math_verify/sympy.

    A BaseException (not Exception) so that the ``except Exception`` clauses inside math_verify and
    sympy cannot swallow it and turn a timeout into a silent "not equal".
    """


# ---------------------------------------------------------------------------------------------
# Extraction
# ---------------------------------------------------------------------------------------------


def answer_region(response: str) -> str | None:
    """The text the final answer may come from, or None when the response stopped mid-thought.

    After the last ``</think>`` when there is one; the whole text when there is no think tag at all
    (a non-thinking model, or the tag was in the prompt and the model answered directly); None when
    ``<think>`` was opened and never closed, because anything boxed there is a draft, not an answer.
    """
    end = response.rfind(THINK_END)
    if end >= 0:
        return response[end + len(THINK_END) :]
    if THINK_START in response:
        return None
    return response


def _matching_braces(text: str, start: int) -> dict[int, int]:
    """Position of each ``{`` at or after ``start`` -> position of its ``}`` (unclosed ones absent).

    One pass over the brace characters only, rather than one scan per candidate box: a degenerate
    response with thousands of unclosed ``\\boxed{`` must not cost quadratic time. Escaped
    ``\\{``/``\\}`` are text (sets: ``\\{1, 2\\}``), not nesting.
    """
    matches: dict[int, int] = {}
    stack: list[int] = []
    for m in _BRACE.finditer(text, start):
        token = m.group()
        if token == "{":
            stack.append(m.start())
        elif token == "}" and stack:
            matches[stack.pop()] = m.start()
    return matches


def last_boxed(text: str) -> str | None:
    """Content of the last complete ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``.

    ``\\fbox`` is accepted because MATH-style solutions use it for the same purpose. A box that is
    never closed (text cut off inside it) is skipped in favour of the previous complete one. The
    brace-less ``\\boxed 5`` form is not an answer here.
    """
    starts = [m.end() - 1 for m in _BOX_START.finditer(text)]
    if not starts:
        return None
    matches = _matching_braces(text, starts[0])
    for open_at in reversed(starts):
        close_at = matches.get(open_at)
        if close_at is not None:
            return text[open_at + 1 : close_at].strip()
    return None


def all_boxed(text: str) -> list[str]:
    """Contents of every complete top-level ``\\boxed{...}`` / ``\\fbox{...}`` in ``text``, in order
    (a box inside another box is part of the outer one)."""
    starts = [m.end() - 1 for m in _BOX_START.finditer(text)]
    if not starts:
        return []
    matches = _matching_braces(text, starts[0])
    boxes: list[str] = []
    end = -1
    for open_at in starts:
        close_at = matches.get(open_at)
        if open_at > end and close_at is not None:
            boxes.append(text[open_at + 1 : close_at].strip())
            end = close_at
    return boxes


def normalize_gold(ground_truth: Any) -> str:
    """Ground truth as a LaTeX string: numbers via str(), ``$...$`` and a ``\\boxed{}`` removed.

    A ground truth with several different boxed answers (``\\boxed{1} and \\boxed{-2}``, five boxed
    primes) is kept whole: math_verify reads it as it reads the unreduced ground truth (boxes joined by
    ``and``, commas or ``\\quad`` are the set of their answers), so ``-2, 1`` is correct and ``1``
    alone is not. Repeats of one box count once.
    """
    gold = str(ground_truth).strip()
    boxes = list(dict.fromkeys(all_boxed(gold)))
    if len(boxes) == 1:
        gold = boxes[0]
    return gold.strip().strip("$").strip()


# ---------------------------------------------------------------------------------------------
# Equivalence
# ---------------------------------------------------------------------------------------------

_INT = re.compile(r"-?\d{1,40}")
_DEC = re.compile(r"-?\d{1,40}\.\d{1,40}")
_SLASH = re.compile(r"(-?)(\d{1,40})/(\d{1,40})")
_FRAC = re.compile(r"(-?)\\[dt]?frac\{(\d{1,40})\}\{(\d{1,40})\}")
_FRAC_DIGITS = re.compile(r"(-?)\\[dt]?frac(\d)(\d)")


def _rational(text: str) -> tuple[Fraction, bool] | None:
    """(value, is_integer_literal) for the fast-path grammar, None for anything else."""
    if _INT.fullmatch(text):
        return Fraction(int(text)), True
    if _DEC.fullmatch(text):
        return Fraction(text), False
    for pattern in (_SLASH, _FRAC, _FRAC_DIGITS):
        m = pattern.fullmatch(text)
        if m:
            sign, num, den = m.groups()
            if int(den) == 0:
                return None
            value = Fraction(int(num), int(den))
            return (-value if sign else value), False
    return None


#: Longer answers are not tried as rational expressions (the fast path stays microseconds).
_MAX_EXPRESSION_CHARS = 20_000


def _expression(text: str) -> tuple[Fraction, bool] | None:
    """(value, False) for an exact rational expression (nested ``\\frac``, ``+ - * /``), else None."""
    if len(text) > _MAX_EXPRESSION_CHARS:
        return None
    value = rational_value(text)
    return None if value is None else (value, False)


def fast_equal(gold: str, answer: str) -> bool | None:
    """Verdict on plain numbers without math_verify, or None when math_verify must decide.

    Agrees with math_verify wherever it answers (tests/rewards/test_math_reward.py checks a table
    against math_verify itself): equal rationals are equal; different integers are different;
    other rationals only when far apart (math_verify compares floats after rounding).
    """
    g = _rational(gold.strip()) or _expression(gold)
    a = _rational(answer.strip()) or _expression(answer)
    if g is None or a is None:
        return None
    (gv, g_int), (av, a_int) = g, a
    if gv == av:
        return True
    if g_int and a_int:
        return False
    diff = abs(gv - av)
    if diff > Fraction(1, 1000) and diff > Fraction(1, 10**9) * max(abs(gv), abs(av)):
        return False
    return None


class _SilenceDisabledTimeoutWarning(logging.Filter):
    """Drop math_verify's "Timeout is disabled" warning: we disable it on purpose and time it ourselves."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "Timeout is disabled" not in record.getMessage()


for _name in ("math_verify.parser", "math_verify.grader"):
    logging.getLogger(_name).addFilter(_SilenceDisabledTimeoutWarning())


@contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`VerifyTimeout` in this block after ``seconds`` (float) of wall time.

    Uses ITIMER_REAL, so it must run on the main thread; the caller's SIGALRM handler and any timer
    it had running are restored (minus the time spent here) on exit.
    """
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError(
            "math verification needs the main thread of its process (its timeout is a signal timer); "
            "score from threads through klear.rewards.pool.RewardPool, which runs it in worker processes"
        )

    def _on_alarm(signum: int, frame: object) -> None:
        raise VerifyTimeout

    start = time.monotonic()
    old_handler = signal.signal(signal.SIGALRM, _on_alarm)
    old_delay, old_interval = signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        try:
            signal.setitimer(signal.ITIMER_REAL, 0)
        finally:
            signal.signal(signal.SIGALRM, old_handler)
            if old_delay > 0:
                left = max(old_delay - (time.monotonic() - start), 1e-3)
                signal.setitimer(signal.ITIMER_REAL, left, old_interval)


_GOLD_CACHE: OrderedDict[str, list[Any]] = OrderedDict()
_VERDICTS: OrderedDict[tuple[str, str], str] = OrderedDict()


def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any, size: int) -> None:
    if size <= 0:
        return
    cache[key] = value
    cache.move_to_end(key)
    while len(cache) > size:
        cache.popitem(last=False)


def _math_verify_equal(gold: str, answer: str, cache_size: int) -> str:
    """'equal' | 'unequal' | 'bad_gold' | 'bad_answer' from math_verify (call inside :func:`deadline`)."""
    from math_verify import parse, verify

    parsed_gold = _GOLD_CACHE.get(gold)
    if parsed_gold is None:
        try:
            parsed_gold = parse("\\boxed{" + gold + "}", parsing_timeout=None)
        except RecursionError:  # nesting deeper than the parser can follow
            parsed_gold = []
        _remember(_GOLD_CACHE, gold, parsed_gold, min(cache_size, 4096))
    if not parsed_gold:
        return "bad_gold"
    try:
        parsed_answer = parse("\\boxed{" + answer + "}", parsing_timeout=None)
    except RecursionError:
        return "bad_answer"
    if not parsed_answer:
        return "bad_answer"
    try:
        return "equal" if verify(parsed_gold, parsed_answer, timeout_seconds=None) else "unequal"
    except RecursionError:
        return "unequal"  # sympy could not compare them: not shown equal


_WARM = False


def warm_up() -> None:
    """Import math_verify and run its lazy first-use setup (about 1.5 s) outside any timer.

    Without this the first verification in a process would spend most of a short
    ``verify_timeout_s`` importing sympy and building the LaTeX parser, and time out.
    """
    global _WARM
    if _WARM:
        return
    from math_verify import parse, verify

    for gold, answer in (("\\frac{1}{2}", "0.5"), ("\\{1,2\\}", "(0,1]"), ("x+1", "\\sqrt{2}")):
        verify(
            parse("\\boxed{" + gold + "}", parsing_timeout=None),
            parse("\\boxed{" + answer + "}", parsing_timeout=None),
            timeout_seconds=None,
        )
    _WARM = True


def judge(
    gold: str,
    answer: str,
    timeout_s: float,
    cache_size: int = 0,
    fast_path: bool = True,
    allow_verify: bool = True,
) -> str | None:
    """Verdict on ``answer`` against ``gold``: 'equal', 'unequal', 'timeout', 'screened', 'bad_gold' or
    'bad_answer'; None when math_verify is needed and ``allow_verify`` is false.

    Identical strings and the fast path answer first; then the (gold, answer) cache; then the screen
    (:mod:`klear.rewards.math_screen`: an answer too large to compute is 'screened', what math_verify
    would reach only by timing out); then math_verify under a ``timeout_s`` timer. Every math_verify
    verdict, timeouts included, is cached.
    """
    if gold == answer:
        return "equal"
    if fast_path:
        quick = fast_equal(gold, answer)
        if quick is not None:
            return "equal" if quick else "unequal"
    key = (gold, answer)
    cached = _VERDICTS.get(key)
    if cached is not None:
        _VERDICTS.move_to_end(key)
        return cached
    if fast_path and screen(answer) is not None and screen(gold) is None:
        return "screened"
    if not allow_verify:
        return None
    warm_up()
    try:
        with deadline(timeout_s):
            verdict = _math_verify_equal(gold, answer, cache_size)
    except VerifyTimeout:
        verdict = "timeout"
    except RecursionError:
        verdict = "bad_answer"  # nesting deeper than the parser can follow: not a usable answer
    _remember(_VERDICTS, key, verdict, cache_size)
    return verdict


def clear_caches() -> None:
    """Forget cached verdicts and parsed ground truths (tests and benchmarks use this)."""
    _VERDICTS.clear()
    _GOLD_CACHE.clear()


# ---------------------------------------------------------------------------------------------
# The reward
# ---------------------------------------------------------------------------------------------


def math_reward(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult:
    """Score one response against a math ground truth (a string, a number, or a list of accepted answers).

    Runs math_verify, so call it on the main thread of a process: in training that is a reward
    worker of :class:`klear.rewards.pool.RewardPool`, which also bounds the time it may take.
    """
    result = _score(response, ground_truth, cfg, allow_verify=True)
    assert result is not None
    return result


def quick_math_reward(response: str, ground_truth: Any, cfg: RewardConfig) -> RewardResult | None:
    """:func:`math_reward`'s result when it needs no math_verify (format, extraction, fast path,
    screen), else None. Microseconds, any thread, never raises: the pool's parent calls it."""
    try:
        return _score(response, ground_truth, cfg, allow_verify=False)
    except Exception:  # e.g. a ground truth too deep to print: the worker scores (and flags) it
        return None


def _score(response: str, ground_truth: Any, cfg: RewardConfig, allow_verify: bool) -> RewardResult | None:
    m = cfg.math
    start = time.perf_counter()

    def done(
        score: float,
        correct: bool,
        flags: tuple[str, ...],
        answer: str | None,
        detail: str | None,
        infra: bool = False,
    ):
        return RewardResult(
            score=float(score),
            correct=correct,
            flags=flags,
            answer=answer,
            seconds=time.perf_counter() - start,
            detail=detail,
            infra=infra,
        )

    # 1-2. format checks, as in the reference: a penalty replaces the score
    if m.no_think_start_score is not None and THINK_START not in response:
        return done(m.no_think_start_score, False, ("format",), None, "missing <think>")
    if m.no_think_end_score is not None and THINK_END not in response:
        return done(
            m.no_think_end_score,
            False,
            ("format", "no_answer"),
            None,
            "missing </think> (cut off mid-thought?)",
        )
    # 3. extraction
    region = answer_region(response)
    if region is None:
        return done(m.negative, False, ("no_answer",), None, "<think> never closed: no final answer")
    answer = last_boxed(region)
    if not answer:
        return done(m.negative, False, ("no_answer",), answer, "no \\boxed{} answer after </think>")
    # 4. equivalence with any accepted ground truth
    golds = ground_truth if isinstance(ground_truth, (list, tuple)) else [ground_truth]
    verdicts = []
    for gold in golds:
        verdict = judge(
            normalize_gold(gold), answer, m.verify_timeout_s, m.cache_size, m.fast_path, allow_verify
        )
        if verdict == "equal":
            return done(m.positive, True, (), answer, None)
        verdicts.append(verdict)
    if None in verdicts:
        return None  # math_verify must decide
    if "timeout" in verdicts:
        detail = f"math_verify took longer than verify_timeout_s={m.verify_timeout_s}"
        # the verifier's limit, not the answer's fault: pathological answers are screened below first
        return done(m.negative, False, ("timeout",), answer, detail, infra=True)
    if "screened" in verdicts:  # the model's own answer is the problem: a verdict, never masked
        detail = f"not verified: {screen(answer)}; math_verify would not finish within verify_timeout_s"
        return done(m.negative, False, ("timeout",), answer, detail)
    if "bad_gold" in verdicts:
        return done(
            m.negative,
            False,
            ("error",),
            answer,
            f"ground truth {ground_truth!r:.200} could not be parsed",
            infra=True,
        )
    if all(v == "bad_answer" for v in verdicts):
        return done(m.negative, False, ("no_answer",), answer, "the boxed answer could not be parsed")
    return done(m.negative, False, (), answer, None)
