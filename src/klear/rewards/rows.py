"""Reading and writing the JSON lines of ``klear reward score`` so that no content can stop the batch.

Whatever a row holds -- lone surrogates (``"\\ud800"`` is valid JSON), NUL and other control
characters, invalid UTF-8 bytes, 10 MB strings, nesting deeper than Python's JSON reader or writer
can follow -- it is read, scored or flagged, and written:

- **invalid UTF-8** in a line is replaced by U+FFFD (:func:`decode_line` says so; the CLI warns and
  notes it in the row's reward ``detail``); raw control characters inside strings are accepted;
- **too deep to decode**: the line's top-level members are split without recursion
  (:func:`top_level_members`); members that still cannot be decoded are kept as :class:`Deep` raw
  text. A row whose ``reward_model`` is such a member is not scored: its reward is flagged ``error``;
- **lone surrogates** cannot be encoded as UTF-8: such a line is written with ``\\uXXXX`` escapes
  (:func:`dump_row`), which a JSON reader turns back into the same string;
- **too deep to encode**: the row is written as its original members, spliced as text, plus the reward.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

_DECODER = json.JSONDecoder(strict=False)  # strict=False: raw control characters (NUL, tabs) in strings
_WS = re.compile(r"[ \t\r\n]*")
# the tokens that change nesting: strings (skipped whole, so brackets inside them do not count) and brackets
_NESTING = re.compile(r'"(?:[^"\\]|\\.)*"|[\[\]{}]', re.DOTALL)


class LineError(ValueError):
    """A line that is not one JSON object (the message says why)."""


@dataclass(frozen=True)
class Deep:
    """A JSON value nested too deeply to decode, kept as its raw text so it can be written back."""

    raw: str


def decode_line(data: bytes) -> tuple[str, bool]:
    """(text, repaired): the line as UTF-8, invalid bytes replaced by U+FFFD when ``repaired``."""
    try:
        return data.decode("utf-8"), False
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), True


def _skip_value(text: str, pos: int) -> int:
    """End of the JSON array/object starting at ``pos`` (a bracket), found without recursion."""
    depth = 0
    for m in _NESTING.finditer(text, pos):
        token = m.group()
        if token in "[{":
            depth += 1
        elif token in "]}":
            depth -= 1
            if depth == 0:
                return m.end()
    raise LineError("not valid JSON (unbalanced brackets)")


def top_level_members(text: str) -> list[tuple[str, str]]:
    """(key, raw value text) of each member of the JSON object ``text``, at any nesting depth.

    Scalars and shallow values are checked by the JSON decoder; a value too deep for it is
    delimited by bracket matching (strings skipped) and returned unchecked.
    """
    pos = _WS.match(text, 0).end()
    if not text.startswith("{", pos):
        raise LineError("expected a JSON object")
    pos = _WS.match(text, pos + 1).end()
    members: list[tuple[str, str]] = []
    if text.startswith("}", pos):
        return members
    while True:
        try:
            key, pos = _DECODER.raw_decode(text, pos)
        except json.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        if not isinstance(key, str):
            raise LineError("not valid JSON (object key is not a string)")
        pos = _WS.match(text, pos).end()
        if not text.startswith(":", pos):
            raise LineError(f"not valid JSON (expected ':' at column {pos + 1})")
        start = _WS.match(text, pos + 1).end()
        try:
            _, end = _DECODER.raw_decode(text, start)
        except RecursionError:
            if not text.startswith(("[", "{"), start):
                raise LineError("not valid JSON") from None
            end = _skip_value(text, start)
        except json.JSONDecodeError as exc:
            raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
        members.append((key, text[start:end]))
        pos = _WS.match(text, end).end()
        if text.startswith("}", pos):
            if text[pos + 1 :].strip():
                raise LineError(f"not valid JSON (extra data at column {pos + 2})")
            return members
        if not text.startswith(",", pos):
            raise LineError(f"not valid JSON (expected ',' or '}}' at column {pos + 1})")
        pos = _WS.match(text, pos + 1).end()


def parse_row(text: str) -> Any:
    """One line as a JSON value; an object too deep to decode whole has :class:`Deep` members.

    Raises :class:`LineError` for anything that is not valid JSON.
    """
    try:
        return _DECODER.decode(text)
    except json.JSONDecodeError as exc:
        raise LineError(f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    except RecursionError:
        pass
    row: dict[str, Any] = {}
    for key, raw in top_level_members(text):
        try:
            row[key] = _DECODER.decode(raw)
        except RecursionError:
            row[key] = Deep(raw)
    return row


def has_deep(value: Any) -> bool:
    """Whether the row's reward_model (the part scoring needs) could not be decoded."""
    return isinstance(value, dict) and isinstance(value.get("reward_model"), Deep)


def _dumps(value: Any) -> str:
    try:
        text = json.dumps(value, ensure_ascii=False)
        text.encode("utf-8")  # lone surrogates cannot be written as UTF-8 ...
        return text
    except UnicodeEncodeError:
        return json.dumps(value, ensure_ascii=True)  # ... but as \\uXXXX escapes they round-trip


def dump_row(row: dict[str, Any], extra: dict[str, Any], original: str | None = None) -> str:
    """One output line: ``row`` plus ``extra`` (its reward or rewards), always valid UTF-8 JSON.

    ``original`` (the input line) is used when the row is too deep to encode: its members are then
    written back as their raw text.
    """
    out = {k: v for k, v in row.items() if k not in extra}
    if not any(isinstance(v, Deep) for v in out.values()):
        try:
            return _dumps({**out, **extra}) + "\n"
        except RecursionError:
            if original is None:
                raise
    if original is not None:
        raws = {k: raw for k, raw in top_level_members(original) if k not in extra}
    else:
        raws = {k: v.raw if isinstance(v, Deep) else None for k, v in out.items()}
    parts = [
        _dumps(k) + ": " + (raw if raw is not None else _dumps(out[k]))
        for k, raw in raws.items()
        if raw is not None or k in out
    ]
    parts += [_dumps(k) + ": " + _dumps(v) for k, v in extra.items()]
    return "{" + ", ".join(parts) + "}\n"
