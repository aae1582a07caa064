"""What `klear data validate` reports about a data file: rows, counts by source and ability (RL) or
source and correctness (SFT), length percentiles (in tokens of a tokenizer when one is given), the
prompts over a length limit, and every bad row's message."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from klear.progress import progress as make_progress


def percentiles(values: list[int]) -> dict[str, float]:
    """p50/p90/p99/max of a list of lengths (nearest-rank, so every value is one that occurs)."""
    if not values:
        return {}
    ordered = sorted(values)

    def rank(q: int) -> float:
        return float(ordered[max(0, math.ceil(len(ordered) * q / 100) - 1)])

    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": float(ordered[-1])}


def summarize_file(
    path: str,
    kind: str,
    tokenizer: Any = None,
    progress: bool = False,
    max_prompt_length: int | None = None,
) -> dict[str, Any]:
    """Rows, counts by source/ability (RL) or source/correct (SFT), lengths, and every bad row's message.

    With ``max_prompt_length`` (and a tokenizer), also the RL prompts longer than that, each as
    ``FILE: line N: prompt is L tokens`` (the length the rollout backend would encode).
    """
    from klear.data.prompts import prompt_ids
    from klear.data.schema import count_records, detect_kind, iter_rows

    kind = detect_kind(path) if kind == "auto" else kind
    errors: list[str] = []
    counts: dict[str, dict[str, int]] = {}
    lengths: dict[str, list[int]] = {}
    unit = "tokens" if tokenizer is not None else "chars"

    def count(field: str, value: Any) -> None:
        bucket = counts.setdefault(field, {})
        bucket[str(value)] = bucket.get(str(value), 0) + 1

    def size(turns: list[dict[str, str]], generation_prompt: bool) -> int:
        if tokenizer is None:
            return sum(len(t["content"]) for t in turns)
        if getattr(tokenizer, "chat_template", None):  # as the rollout backend encodes a prompt
            text = tokenizer.apply_chat_template(
                turns, tokenize=False, add_generation_prompt=generation_prompt
            )
            return len(tokenizer.encode(text, add_special_tokens=False))
        return len(tokenizer.encode("\n".join(t["content"] for t in turns), add_special_tokens=False))

    n = 0
    too_long: list[str] = []
    with make_progress(progress) as bar:
        task = bar.add_task(f"validate {Path(path).name}", total=count_records(path))
        for where, row in iter_rows(path, kind, errors):  # type: ignore[arg-type]
            n += 1
            bar.advance(task)
            d = row.to_dict()
            if kind == "rl":
                count("data_source", d["data_source"])
                count("ability", d["ability"])
                if tokenizer is not None and max_prompt_length is not None:
                    length = len(prompt_ids(tokenizer, d["prompt"]))
                    if length > max_prompt_length:
                        too_long.append(f"{path}: {where}: prompt is {length} tokens")
                lengths.setdefault("prompt", []).append(size(d["prompt"], True))
            else:
                count("source", d.get("source"))
                count("correct", d.get("correct"))
                turns = d["messages"]
                last = max(i for i, t in enumerate(turns) if t["role"] == "assistant")
                lengths.setdefault("prompt", []).append(size(turns[:last], True))
                lengths.setdefault("total", []).append(size(turns, False))
                if d.get("difficulty") is not None:
                    lengths.setdefault("difficulty_x100", []).append(round(100 * d["difficulty"]))
    return {
        "file": str(path),
        "kind": kind,
        "rows": n,
        "invalid": len(errors),
        "errors": errors,
        "counts": counts,
        "unit": unit,
        "lengths": {k: percentiles(v) for k, v in lengths.items()},
        "max_prompt_length": max_prompt_length,
        "too_long": too_long,
    }
