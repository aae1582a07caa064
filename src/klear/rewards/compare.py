"""Output comparison for code tests: exact where the expected answer is an integer, tolerant only for reals.

The sandbox never sees the expected output; these two functions decide, outside it, whether what a
program printed (:func:`tokens_match`, stdin/stdout tests) or returned (:func:`values_match`,
call-based tests) is the expected answer. The rules, with their reasons, are in docs/comparator.md:

- output is split on any whitespace (spaces, tabs, ``\\r``, blank and trailing lines do not count),
  and the token counts must agree;
- a token equal as text matches; text is case-sensitive (``YES`` is not ``yes``);
- where the *expected* token is an integer (``[+-]?\\d+``, any length), the actual token must be an
  integer of the same value: ``-0`` = ``0`` = ``+0``, ``007`` = ``7``, big integers compared digit by
  digit (no ``int()`` size limit); ``3.0``, ``1e9`` and ``1000000000.0`` are not integers and fail;
- only where the expected token is a non-integer number (``0.5``, ``1e9``, ``2.0``) is the actual one
  compared as a number, within ``tol`` relative or absolute; non-finite values (``nan``, ``inf``,
  ``1e999``) are words, equal only as text;
- returned values: bools only equal bools; an expected int is matched exactly (an int, or a float
  of exactly that value, as Python's ``==`` compares them); an expected float within ``tol``; lists,
  tuples and dicts structurally (same length / keys), anything else by type and ``==``; values nested
  deeper than ``MAX_DEPTH`` levels never match (no RecursionError, whatever the program returns).
"""

from __future__ import annotations

import math
import re
from typing import Any

#: Nesting depth past which returned values are not compared (and do not match).
MAX_DEPTH = 200

# float() also accepts '1_000', 'nan', 'inf' and unicode digits: the grammar here does not
# unambiguous (no \d+\.?\d*), so a failing match on a megabyte of digits is linear, not quadratic
_REAL = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?", re.ASCII)
_INT = re.compile(r"[+-]?\d+", re.ASCII)


def _int_key(token: str) -> str:
    """A canonical text for an integer token: sign + digits without leading zeros; zero has no sign."""
    digits = token.lstrip("+-").lstrip("0")
    if not digits:
        return "0"
    return ("-" if token.startswith("-") else "") + digits


def token_match(actual: str, expected: str, tol: float = 1e-6) -> bool:
    """Does one output token match one expected token (the rules in the module docstring)?"""
    if actual == expected:
        return True
    if _INT.fullmatch(expected):
        return _INT.fullmatch(actual) is not None and _int_key(actual) == _int_key(expected)
    if not (_REAL.fullmatch(expected) and _REAL.fullmatch(actual)):
        return False
    a, e = float(actual), float(expected)
    if not (math.isfinite(a) and math.isfinite(e)):
        return False  # overflowed to inf: only equal text (handled above) matches
    return math.isclose(a, e, rel_tol=tol, abs_tol=tol)


def tokens_match(actual: str, expected: str, tol: float = 1e-6) -> bool:
    """Whitespace-normalised token comparison: integers exact, other numbers within ``tol``."""
    got, want = actual.split(), expected.split()
    if len(got) != len(want):
        return False
    return all(token_match(a, e, tol) for a, e in zip(got, want, strict=True))


def values_match(actual: Any, expected: Any, tol: float = 1e-6, depth: int = 0) -> bool:
    """Structural equality of returned values: bools and ints exact, floats within ``tol``."""
    if depth > MAX_DEPTH:
        return False
    if isinstance(actual, bool) or isinstance(expected, bool):
        return type(actual) is type(expected) and actual == expected
    if isinstance(expected, int):
        # exact: an int, or a float of exactly this value (3.0 for 3); 1000000000.0 is not 999999937
        return isinstance(actual, (int, float)) and actual == expected
    if isinstance(expected, float):
        if not isinstance(actual, (int, float)):
            return False
        if not (math.isfinite(expected) and math.isfinite(actual)):
            return actual == expected
        return math.isclose(actual, expected, rel_tol=tol, abs_tol=tol)
    if isinstance(actual, (list, tuple)) and isinstance(expected, (list, tuple)):
        return len(actual) == len(expected) and all(
            values_match(a, e, tol, depth + 1) for a, e in zip(actual, expected, strict=True)
        )
    if isinstance(actual, dict) and isinstance(expected, dict):
        return actual.keys() == expected.keys() and all(
            values_match(actual[k], expected[k], tol, depth + 1) for k in actual
        )
    return type(actual) is type(expected) and actual == expected
