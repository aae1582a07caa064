"""Cheap looks at a math answer before math_verify: values too large to compute, and exact rationals.

:func:`screen` recognises answers whose verification cannot finish within ``verify_timeout_s``
because sympy would compute an astronomically large number (a power tower ``9^{9^{9}}``, ``10^{10^7}``,
``1000000!``, a literal of a million digits): math_verify spends the whole timeout on them and the
item ends ``timeout`` with the negative score. The screen returns the reason in microseconds, and
:func:`klear.rewards.math.math_reward` gives the same result (negative score, flag ``timeout``, the
reason in ``detail``) without spending the timeout. The thresholds sit well past what math_verify
finishes in 3 s on a loaded 2-core machine (measured: ``2^{1000000}`` 0.03 s, ``200000!`` 0.6 s,
a 100,000-digit literal 0.4 s, ``10^{3000000}`` 2.3 s; ``1000000!``, ``10^{10000000}``, ``9^{9^{9}}``
and a 1,000,000-digit literal time out), so an answer math_verify could have judged is never screened.

:func:`rational_value` evaluates nested fractions of integers (``\\frac{1}{\\frac{1}{\\frac{1}{2}}}``,
300 levels deep) exactly, without recursion; math_verify's parser may spend the whole timeout on such
nesting, or not, depending on the numbers. The fast path decides them exactly.
"""

from __future__ import annotations

import math
import re
from fractions import Fraction

#: An answer whose value has more decimal digits than this is not computed.
MAX_DIGITS = 5_000_000
#: ``n!`` with n above this is not computed (200000! has about a million digits).
MAX_FACTORIAL = 500_000
#: Longest run of digits in an answer (a literal) that is parsed.
MAX_LITERAL_DIGITS = 500_000

# (?<!\d): a match starts only where a run of digits starts, so the search is linear, not quadratic
_LONG_LITERAL = re.compile(rf"(?<!\d)\d{{{MAX_LITERAL_DIGITS + 1}}}")
_FACTORIAL = re.compile(r"(?<!\d)(\d+)\s*!")
# a chain of integer powers once braces and spaces are gone: 9^9^9, 10^10000000
_POWER_CHAIN = re.compile(r"(?<!\d)\d+(?:\^\d+)+")
_BRACES_SPACE = re.compile(r"[\s{}]+")


def _tower_digits(levels: list[int]) -> float:
    """Decimal digits of the right-associative tower levels[0] ^ levels[1] ^ ... (inf when huge)."""
    for k, base in enumerate(levels):
        if base <= 1:  # 1^x = 1, 0^x = 0 (x > 0): nothing above this level is ever computed
            if k == 0:
                return 1.0
            levels = [*levels[:k], base]
            break
    exponent = float(levels[-1])
    for base in reversed(levels[1:-1]):
        if exponent * math.log10(base) > 18:
            return math.inf
        exponent = float(base) ** exponent
    return exponent * math.log10(levels[0]) if len(levels) > 1 else math.log10(max(levels[0], 1)) + 1


def screen(answer: str) -> str | None:
    """Why ``answer`` cannot be verified in time (a human-readable reason), or None when it can."""
    if _LONG_LITERAL.search(answer):
        return f"a number literal of more than {MAX_LITERAL_DIGITS} digits"
    for m in _FACTORIAL.finditer(answer):
        digits = m.group(1)
        if len(digits) > 7 or int(digits) > MAX_FACTORIAL:
            return f"{digits[:20]}! is astronomically large (more than {MAX_FACTORIAL}!)"
    if "^" in answer:
        compact = _BRACES_SPACE.sub("", answer)
        for m in _POWER_CHAIN.finditer(compact):
            levels = [int(x) if len(x) < 30 else 10**30 for x in m.group().split("^")]
            if _tower_digits(levels) > MAX_DIGITS:
                shown = m.group() if len(m.group()) < 40 else m.group()[:37] + "..."
                return f"{shown} has more than {MAX_DIGITS} digits"
    return None


# ---------------------------------------------------------------------------------------------
# Exact rationals: integers, + - * /, parentheses, \frac / \dfrac / \tfrac, nested to any depth
# ---------------------------------------------------------------------------------------------

_TOKEN = re.compile(r"\s*(\\[dt]?frac|\\left|\\right|\\cdot|\\times|\d{1,40}|[-+*/(){}])")
#: Largest numerator/denominator (in digits) kept while evaluating; past it the answer is left to math_verify.
_MAX_VALUE_DIGITS = 400
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _tokens(text: str) -> list[str] | None:
    """Tokens with ``\\frac{A}{B}`` rewritten as ``((A)/(B))``; None outside the grammar."""
    out: list[str] = []
    stack: list[str] = []  # per open brace: 'num' | 'den' | 'group'
    pos, n = 0, len(text)
    pending_frac = 0  # \frac seen, its numerator brace not yet opened
    while pos < n:
        m = _TOKEN.match(text, pos)
        if m is None:
            if text[pos:].strip():
                return None
            break
        tok, pos = m.group(1), m.end()
        if tok in ("\\left", "\\right"):
            continue
        if tok.endswith("frac"):
            pending_frac += 1
            continue
        if tok == "{":
            if pending_frac:
                pending_frac -= 1
                stack.append("num")
                out += ["(", "("]
            elif out and out[-1] == "\x00den":
                out.pop()
                stack.append("den")
                out += ["/", "("]
            else:
                stack.append("group")
                out.append("(")
            continue
        if pending_frac:
            return None  # \frac12-style digits or anything else: not this grammar
        if tok == "}":
            if not stack:
                return None
            kind = stack.pop()
            if kind == "num":
                out += [")", "\x00den"]  # the denominator brace must follow
            elif kind == "den":
                out += [")", ")"]
            else:
                out.append(")")
            continue
        if out and out[-1] == "\x00den":
            return None
        out.append({"\\cdot": "*", "\\times": "*"}.get(tok, tok))
    if stack or pending_frac or (out and out[-1] == "\x00den"):
        return None
    return out


def _apply(values: list[Fraction], op: str) -> bool:
    if len(values) < 2:
        return False
    b, a = values.pop(), values.pop()
    if op == "/" and b == 0:
        return False
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a / b if b else a}[op]
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_VALUE_DIGITS * 3.33:
        return False
    values.append(value)
    return True


def rational_value(text: str) -> Fraction | None:
    """Exact value of an expression of integers, ``+ - * /``, parentheses and ``\\frac``; else None.

    No recursion (a shunting-yard over the tokens), so nesting depth costs nothing. Unary minus is
    accepted at the start or after ``(``/an operator. Implicit multiplication (``2(3)``), division by
    zero and values past 400 digits are outside the grammar (None: math_verify decides).
    """
    toks = _tokens(text)
    if not toks:
        return None
    values: list[Fraction] = []
    ops: list[str] = []
    expect_operand = True
    for tok in toks:
        if tok.isdigit():
            if not expect_operand:
                return None
            values.append(Fraction(int(tok)))
            expect_operand = False
        elif tok == "(":
            if not expect_operand:
                return None
            ops.append(tok)
        elif tok == ")":
            if expect_operand:
                return None
            while ops and ops[-1] != "(":
                if not _apply(values, ops.pop()):
                    return None
            if not ops:
                return None
            ops.pop()
        elif expect_operand and tok in "+-":
            values.append(Fraction(0))  # unary sign: 0 - x, bound tighter than any binary operator
            ops.append("u" + tok)
        elif expect_operand:
            return None
        else:
            while ops and ops[-1] != "(" and (ops[-1].startswith("u") or _PREC[ops[-1]] >= _PREC[tok]):
                if not _apply(values, ops.pop()[-1]):
                    return None
            ops.append(tok)
            expect_operand = True
    if expect_operand:
        return None
    while ops:
        op = ops.pop()
        if op == "(" or not _apply(values, op[-1]):
            return None
    return values[0] if len(values) == 1 else None
