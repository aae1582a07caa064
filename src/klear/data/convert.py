"""Convert the shapes data comes in to our rows, with an explicit field mapping.

Shapes (``FieldMap.shape``):

- ``qa``: ``{"question": ..., "answer": ...}`` -> an RL math row (the answer becomes the ground
  truth) or, with ``to="sft"``, a two-turn SFT row (the answer is the response).
- ``messages``: ``{"messages": [{"role", "content"}, ...]}`` (ShareGPT ``{"from", "value"}`` turns
  are read too) -> an SFT row, or an RL row whose prompt is every turn before the last assistant
  turn and whose ground truth comes from the answer field.
- ``code``: a problem statement plus tests, as TACO/APPS (``input_output`` =
  ``{"inputs", "outputs", "fn_name"?}``, often a JSON string), LiveCodeBench
  (``public_test_cases`` / ``private_test_cases`` lists of ``{"input", "output", "testtype"}``,
  the function name in ``metadata.func_name``), HumanEval (``test`` + ``entry_point``) or any of
  these under a key of your choice -> an RL code row whose ground truth is the test specification
  as JSON text, checked with the code reward's own parser so what converts is what will run.

Each key can be named; when it is not, the first present of the usual names is used (listed in
``DEFAULT_KEYS``). Every output row is validated through :mod:`klear.data.schema`, so a converted
file always loads back. Errors say which field of which input line is wrong and which keys the
line did have.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

from klear.data.schema import DataError, parse_row

Shape = Literal["qa", "messages", "code"]

#: The usual names of each field, tried in order when the mapping names none.
DEFAULT_KEYS: dict[str, tuple[str, ...]] = {
    "question": ("question", "problem", "prompt", "question_content", "instruction", "query"),
    "answer": ("answer", "final_answer", "ground_truth", "solution", "response", "output"),
    "response": ("response", "output", "completion", "solution", "answer"),
    "messages": ("messages", "conversations", "conversation"),
    "tests": ("input_output", "tests", "test_cases", "ground_truth"),
    "fn_name": ("fn_name", "func_name"),
    "source": ("data_source", "source"),
}
_SHAREGPT_ROLES = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "assistant": "assistant",
    "model": "assistant",
    "bot": "assistant",
    "system": "system",
    "tool": "tool",
}


@dataclass(frozen=True)
class FieldMap:
    """Which input keys hold what, and the constant fields of the output rows."""

    shape: Shape = "qa"
    to: Literal["rl", "sft"] | None = None  # None: sft for messages, rl otherwise
    question_key: str | None = None
    answer_key: str | None = None
    messages_key: str | None = None
    tests_key: str | None = None
    fn_name_key: str | None = None
    source_key: str | None = None
    data_source: str | None = None  # overrides the source key
    ability: str | None = None  # default: math (qa, messages) or code
    prompt_template: str = "{question}"
    system_prompt: str | None = None
    keep_keys: tuple[str, ...] = field(default_factory=tuple)  # copied into extra_info (RL) / the row (SFT)

    @property
    def target(self) -> Literal["rl", "sft"]:
        if self.to is not None:
            return self.to
        return "sft" if self.shape == "messages" else "rl"


class FieldError(ValueError):
    """A problem with one field of one record; the caller adds file and line."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"field {field!r}: {message}")
        self.field = field


def _pick(record: dict[str, Any], key: str | None, role: str, required: bool = True) -> tuple[str, Any]:
    """(key, value) of the field playing ``role``: the mapped key, else the first usual name present."""
    if key is not None:
        if key not in record:
            if not required:
                return key, None
            raise FieldError(key, f"missing (the line has: {', '.join(sorted(record)) or 'nothing'})")
        return key, record[key]
    for name in DEFAULT_KEYS[role]:
        if name in record and record[name] is not None:
            return name, record[name]
    if not required:
        return DEFAULT_KEYS[role][0], None
    raise FieldError(
        DEFAULT_KEYS[role][0],
        f"no {role} field: tried {', '.join(DEFAULT_KEYS[role])}; the line has "
        f"{', '.join(sorted(record)) or 'nothing'} (name it with --{role.replace('_', '-')}-key)",
    )


def _text(value: Any, key: str) -> str:
    if isinstance(value, bool) or value is None or isinstance(value, dict | list):
        raise FieldError(key, f"expected text or a number, got {type(value).__name__}")
    text = str(value)
    if not text.strip():
        raise FieldError(key, "empty")
    return text


def _messages(value: Any, key: str) -> list[dict[str, str]]:
    """Chat turns from OpenAI-style ``{role, content}`` or ShareGPT ``{from, value}`` items."""
    if not isinstance(value, list) or not value:
        raise FieldError(key, f"expected a non-empty list of turns, got {type(value).__name__}")
    out = []
    for i, turn in enumerate(value):
        if not isinstance(turn, dict):
            raise FieldError(f"{key}.{i}", f"expected an object, got {type(turn).__name__}")
        role = turn.get("role", turn.get("from"))
        content = turn.get("content", turn.get("value"))
        mapped = _SHAREGPT_ROLES.get(str(role).lower()) if role is not None else None
        if mapped is None:
            raise FieldError(f"{key}.{i}.role", f"unknown role {role!r}")
        if not isinstance(content, str):
            raise FieldError(f"{key}.{i}.content", f"expected text, got {type(content).__name__}")
        out.append({"role": mapped, "content": content})
    return out


def _json_field(value: Any, key: str) -> Any:
    if isinstance(value, str | bytes):
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise FieldError(key, f"not valid JSON ({exc.msg} at column {exc.colno})") from None
    return value


def _fn_name(record: dict[str, Any], fm: FieldMap) -> str | None:
    """The function name of call-based tests: the mapped key, ``fn_name``/``func_name``, or
    LiveCodeBench's ``metadata.func_name``."""
    key, name = _pick(record, fm.fn_name_key, "fn_name", required=False)
    if name is None and "metadata" in record:
        meta = record["metadata"]
        if isinstance(meta, str):
            try:
                meta = json.loads(meta)
            except json.JSONDecodeError:
                meta = None
        if isinstance(meta, dict):
            name = meta.get("func_name") or meta.get("fn_name")
    if name is not None and not (isinstance(name, str) and name.isidentifier()):
        raise FieldError(key, f"expected a Python identifier, got {name!r}")
    return name or None


def code_ground_truth(record: dict[str, Any], fm: FieldMap) -> tuple[str, int]:
    """The test specification of a code problem as JSON text, and its number of tests."""
    from klear.rewards.code import parse_tests

    fn_name = _fn_name(record, fm)
    lcb = [k for k in ("public_test_cases", "private_test_cases") if k in record]
    if fm.tests_key is None and not any(k in record for k in DEFAULT_KEYS["tests"]) and lcb:
        key, spec = "+".join(lcb), []
        for k in lcb:
            part = _json_field(record[k], k)
            if not isinstance(part, list):
                raise FieldError(k, f"expected a list of tests, got {type(part).__name__}")
            spec.extend(part)
    elif fm.tests_key is None and "test" in record and "entry_point" in record:
        key, spec = "test", {"test": record["test"], "entry_point": record["entry_point"]}
    else:
        key, raw = _pick(record, fm.tests_key, "tests")
        spec = _json_field(raw, key)
    if isinstance(spec, dict) and "inputs" in spec and fn_name and not spec.get("fn_name"):
        spec = {**spec, "fn_name": fn_name}
    if (
        isinstance(spec, list)
        and fn_name
        and any(isinstance(t, dict) and t.get("testtype") == "functional" for t in spec)
    ):
        spec = {"tests": spec, "fn_name": fn_name}
    try:
        n = len(parse_tests(spec).tests)
    except ValueError as exc:
        raise FieldError(key, str(exc)) from None
    return json.dumps(spec, ensure_ascii=False), n


def _prompt(question: str, fm: FieldMap) -> list[dict[str, str]]:
    try:
        content = fm.prompt_template.format(question=question)
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"--prompt-template {fm.prompt_template!r}: {exc!r}; use {{question}}") from None
    turns = [{"role": "system", "content": fm.system_prompt}] if fm.system_prompt else []
    return [*turns, {"role": "user", "content": content}]


def convert_record(record: Any, fm: FieldMap, index: int, default_source: str) -> dict[str, Any]:
    """One input record as a row dict of ``fm.target``'s schema; FieldError names the bad field.

    ``index`` (0-based position in the input) goes to ``extra_info.index`` as in verl's files;
    ``default_source`` is the data source when neither the mapping nor the record gives one.
    """
    if not isinstance(record, dict):
        raise FieldError("<row>", f"expected an object, got {type(record).__name__}")
    _, source = _pick(record, fm.source_key, "source", required=False)
    source = fm.data_source or (str(source) if source not in (None, "") else default_source)
    kept = {}
    for k in fm.keep_keys:
        if k not in record:
            raise FieldError(k, "missing (named by --keep)")
        kept[k] = record[k]

    if fm.shape == "messages":
        key, value = _pick(record, fm.messages_key, "messages")
        turns = _messages(value, key)
        if fm.target == "sft":
            out = {"messages": turns, "source": source, **kept}
            for opt in ("difficulty", "correct"):
                if record.get(opt) is not None:
                    out[opt] = record[opt]
            return out
        last = max((i for i, t in enumerate(turns) if t["role"] == "assistant"), default=len(turns))
        prompt = turns[:last]
        if not prompt:
            raise FieldError(key, "no turns before the assistant's: nothing to prompt with")
        akey, answer = _pick(record, fm.answer_key, "answer")
        return {
            "data_source": source,
            "ability": fm.ability or "math",
            "prompt": prompt,
            "reward_model": {"style": "rule", "ground_truth": _text(answer, akey)},
            "extra_info": {"index": index, **kept},
        }

    qkey, question = _pick(record, fm.question_key, "question")
    prompt = _prompt(_text(question, qkey), fm)
    if fm.shape == "code":
        if fm.target == "sft":
            raise DataError("--shape code converts to RL rows only (--to rl)")
        truth, n_tests = code_ground_truth(record, fm)
        return {
            "data_source": source,
            "ability": fm.ability or "code",
            "prompt": prompt,
            "reward_model": {"style": "rule", "ground_truth": truth},
            "extra_info": {"index": index, "num_tests": n_tests, **kept},
        }
    if fm.target == "sft":
        rkey, response = _pick(record, fm.answer_key, "response")
        out = {
            "messages": [*prompt, {"role": "assistant", "content": _text(response, rkey)}],
            "source": source,
        }
        return {**out, **kept}
    akey, answer = _pick(record, fm.answer_key, "answer")
    return {
        "data_source": source,
        "ability": fm.ability or "math",
        "prompt": prompt,
        "reward_model": {"style": "rule", "ground_truth": _text(answer, akey)},
        "extra_info": {"index": index, **kept},
    }


def convert_shard(
    items: list[tuple[str, int, Any]], fm: FieldMap, default_source: str
) -> list[tuple[str, dict[str, Any]]]:
    """Convert (location, index, record) items; each becomes ``("rows", row)`` or
    ``("rejected", {"where", "error", "record"})`` so one bad line never hides the others."""
    out: list[tuple[str, dict[str, Any]]] = []
    for where, index, record in items:
        try:
            row = convert_record(record, fm, index, default_source)
            parse_row(row, fm.target, where)  # what we write must load back
        except FieldError as exc:
            out.append(("rejected", {"where": where, "error": f"{where}: {exc}", "record": record}))
            continue
        except DataError as exc:
            out.append(("rejected", {"where": where, "error": str(exc), "record": record}))
            continue
        out.append(("rows", row))
    return out
