"""SFT data selection as the paper found it works: few high-quality sources, correctness by difficulty,
no duplicate prompts.

1. **Sources** (the paper's SFT data study): training on the top one or two highest-quality sources beats
   mixing many. Each source gets a quality score -- from a file, or measured by a command the user
   names (for example: fine-tune on a sample of the source and print the benchmark score) -- and
   only the top ``top_k`` sources are kept (ties broken by name, so the choice is deterministic).
2. **Correctness by difficulty** (:func:`correctness_verdict`): for an easy problem (pass rate
   ``difficulty`` >= ``easy_pass_rate``) a response known to be wrong teaches a mistake the data
   could easily avoid, so it is dropped; for a hard problem (pass rate below the threshold) a wrong
   or unverified response still shows useful long reasoning, so it is kept. A row with no known
   difficulty counts as easy unless ``unknown_is_hard``.
3. **Duplicates** (:func:`MinHasher`): prompts are normalised (NFKC, case-folded, whitespace
   collapsed); exact duplicates share a digest, near duplicates share MinHash bands over
   character shingles and have an estimated Jaccard similarity >= ``near_threshold``. Rows are
   visited best source first (then input order), so a duplicate keeps its copy from the better
   source. At most ``per_prompt`` rows (responses) are kept per prompt.

The per-row work (parsing, normalising, signatures, the correctness verdict) runs in resumable
shards; measured source scores are cached in the work directory too, since measuring one can mean
a training run. Each dropped row carries ``selection.reason``; the report lists, per source, its
score, rank and what happened to its rows.
"""

from __future__ import annotations

import math
import re
import shlex
import subprocess
import unicodedata
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from klear.data.schema import DataError, SFTRow
from klear.data.shards import digest

NO_SOURCE = "<none>"
_SPACE = re.compile(r"\s+")


def normalise_text(text: str) -> str:
    """What two prompts must share to be the same prompt: NFKC, case-folded, whitespace collapsed."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def shingles(text: str, n: int) -> list[str]:
    """Character n-grams of ``text`` (the whole text when shorter than n)."""
    if len(text) <= n:
        return [text]
    return sorted({text[i : i + n] for i in range(len(text) - n + 1)})


class MinHasher:
    """MinHash signatures over character shingles, with LSH banding for candidate pairs.

    Hashes: each shingle -> its CRC-32 (fast, and stable across runs and machines), then
    ``num_perm`` multiply-shift hashes ``(a*x + b) mod 2**64 >> 32`` with (a, b) drawn from
    ``random.Random(seed)``. The fraction of equal signature slots estimates the Jaccard
    similarity of the shingle sets (standard error about sqrt(J(1-J)/num_perm)).
    """

    def __init__(self, num_perm: int = 128, bands: int = 32, shingle: int = 5, seed: int = 0) -> None:
        if num_perm % bands:
            raise ValueError(f"num_perm {num_perm} must be a multiple of bands {bands}")
        import random

        import numpy as np  # here, not at module level: `klear --help` imports this module

        rng = random.Random(f"minhash:{seed}")
        self.num_perm, self.bands, self.rows = num_perm, bands, num_perm // bands
        self.shingle = shingle
        self.a = np.array([rng.getrandbits(64) | 1 for _ in range(num_perm)], dtype=np.uint64)
        self.b = np.array([rng.getrandbits(64) for _ in range(num_perm)], dtype=np.uint64)

    def signature(self, text: str) -> list[int]:
        import zlib

        import numpy as np

        hashed = np.array([zlib.crc32(s.encode()) for s in shingles(text, self.shingle)], dtype=np.uint64)
        with np.errstate(over="ignore"):
            values = (self.a[:, None] * hashed[None, :] + self.b[:, None]) >> np.uint64(32)
        return values.min(axis=1).astype(np.int64).tolist()

    @staticmethod
    def compact(sig: Sequence[int]) -> Any:
        """A signature as a uint32 array (every value is < 2**32): ~4x smaller than a list of ints,
        which is what lets selection hold one signature per row of a large SFT set in memory."""
        import numpy as np

        return np.asarray(sig, dtype=np.uint32)

    def band_keys(self, sig: Any) -> list[tuple[int, bytes]]:
        """LSH buckets: rows sharing any band (``rows`` consecutive values) are candidate pairs."""
        sig = self.compact(sig)
        return [(b, sig[b * self.rows : (b + 1) * self.rows].tobytes()) for b in range(self.bands)]

    @staticmethod
    def similarity(a: Any, b: Any) -> float:
        """Estimated Jaccard similarity: the fraction of equal signature values."""
        import numpy as np

        return float(np.mean(np.asarray(a) == np.asarray(b)))


def correctness_verdict(
    difficulty: float | None, correct: bool | None, easy_pass_rate: float, unknown_is_hard: bool = False
) -> str | None:
    """None to keep the response; ``incorrect_easy`` to drop a wrong answer to an easy problem."""
    if correct is not False:
        return None  # right, or not verified: nothing says it is wrong
    hard = unknown_is_hard if difficulty is None else difficulty < easy_pass_rate
    return None if hard else "incorrect_easy"


def row_features(
    row: SFTRow, hasher: MinHasher, easy_pass_rate: float, unknown_is_hard: bool
) -> dict[str, Any]:
    """What selection needs to know about one row, computed once per row (in shards)."""
    text = normalise_text(row.prompt_text())
    return {
        "source": row.source if row.source is not None else NO_SOURCE,
        "exact": digest(text)[:32],
        "sig": hasher.signature(text),
        "verdict": correctness_verdict(row.difficulty, row.correct, easy_pass_rate, unknown_is_hard),
        "hard": row.difficulty is not None and row.difficulty < easy_pass_rate,
        "correct": row.correct,
    }


# ---------------------------------------------------------------------------------------------
# Source quality
# ---------------------------------------------------------------------------------------------


def read_quality_file(path: str | Path) -> dict[str, float]:
    """``{source: score}`` from a JSON/YAML mapping, or lines ``source<TAB or comma>score``."""
    import json

    import yaml

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: quality file not found")
    text = path.read_text(encoding="utf-8")
    data: Any
    if path.suffix.lower() in (".json", ".yaml", ".yml"):
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else yaml.safe_load(text)
        except (json.JSONDecodeError, yaml.YAMLError) as exc:
            raise DataError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from None
        if not isinstance(data, dict):
            raise DataError(f"{path}: expected a mapping source -> score, got {type(data).__name__}")
        items = [(f"key {k!r}", k, v) for k, v in data.items()]
    else:
        items = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip() or line.lstrip().startswith("#"):
                continue
            parts = (
                re.split(r"[\t,]", line.rstrip(), maxsplit=1)
                if ("\t" in line or "," in line)
                else line.rsplit(None, 1)
            )
            if len(parts) != 2:
                raise DataError(f"{path}: line {n}: expected 'source<TAB>score'")
            items.append((f"line {n}", parts[0].strip(), parts[1].strip()))
    out = {}
    for where, source, score in items:
        try:
            value = float(score)
        except (TypeError, ValueError):
            raise DataError(f"{path}: {where}: field 'score': {score!r} is not a number") from None
        if not math.isfinite(value):
            raise DataError(f"{path}: {where}: field 'score': {score!r} is not finite")
        out[str(source)] = value
    return out


def measure_quality(command: str, source: str, rows_file: Path, timeout_s: float | None) -> float:
    """Run the user's command for one source; its last non-empty stdout line is the score.

    ``{file}`` in the command is replaced by a jsonl file of the source's rows and ``{source}`` by
    the source's name (each as one argument; no shell is involved).
    """
    argv = [a.replace("{file}", str(rows_file)).replace("{source}", source) for a in shlex.split(command)]
    if not argv:
        raise DataError("--quality-command is empty")
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except FileNotFoundError:
        raise DataError(f"--quality-command: {argv[0]!r} not found") from None
    except subprocess.TimeoutExpired:
        raise DataError(f"--quality-command for source {source!r}: no result within {timeout_s} s") from None
    lines = [ln.strip() for ln in done.stdout.splitlines() if ln.strip()]
    tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
    if done.returncode != 0:
        raise DataError(
            f"--quality-command for source {source!r} exited with {done.returncode}: {tail or '(no stderr)'}"
        )
    try:
        value = float(lines[-1])
    except (IndexError, ValueError):
        last = lines[-1][:100] if lines else "(nothing)"
        raise DataError(
            f"--quality-command for source {source!r}: last line of stdout must be a number, got {last!r}"
        ) from None
    if not math.isfinite(value):
        raise DataError(f"--quality-command for source {source!r}: printed {value}")
    return value


def rank_sources(quality: dict[str, float], sources: Iterable[str], top_k: int) -> list[str]:
    """The ``top_k`` best sources present in the data (highest score first, ties by name)."""
    present = sorted(set(sources))
    missing = [s for s in present if s not in quality]
    if missing:
        raise DataError(
            f"no quality score for source(s) {', '.join(map(repr, missing))}; "
            f"scored: {', '.join(map(repr, sorted(quality))) or 'none'}"
        )
    ordered = sorted(present, key=lambda s: (-quality[s], s))
    return ordered[:top_k]


# ---------------------------------------------------------------------------------------------
# Selection
# ---------------------------------------------------------------------------------------------


@dataclass
class Selection:
    """Per-row decisions (None: kept) and per-source counts for the report."""

    reasons: list[str | None]
    duplicate_of: dict[int, tuple[int, float]]  # row -> (the row it duplicates, estimated Jaccard)
    ranked: list[str]
    selected: list[str]
    per_source: dict[str, dict[str, int]] = field(default_factory=dict)


def select(
    features: Sequence[dict[str, Any]],
    quality: dict[str, float],
    top_k: int,
    hasher: MinHasher,
    near_threshold: float = 0.8,
    per_prompt: int = 1,
    near: bool = True,
) -> Selection:
    """Decide every row (features in input order): source, correctness, exact then near duplicates."""
    sources = [f["source"] for f in features]
    selected = rank_sources(quality, sources, top_k)
    ranked = sorted(set(sources), key=lambda s: (-quality[s], s))
    rank_of = {s: i for i, s in enumerate(ranked)}
    reasons: list[str | None] = [None] * len(features)
    for i, f in enumerate(features):
        if f["source"] not in selected:
            reasons[i] = "source_not_selected"
        elif f["verdict"] is not None:
            reasons[i] = f["verdict"]
    # visit survivors best source first, then in input order; the first of a prompt is its representative
    order = sorted((i for i, r in enumerate(reasons) if r is None), key=lambda i: (rank_of[sources[i]], i))
    import numpy as np

    sigs = np.stack([hasher.compact(f["sig"]) for f in features]) if near and features else None
    seen_exact: dict[str, int] = {}  # digest -> representative row
    kept_per: dict[int, int] = {}  # representative -> rows kept
    duplicate_of: dict[int, tuple[int, float]] = {}
    buckets: dict[tuple[int, bytes], list[int]] = {}
    for i in order:
        f = features[i]
        rep = seen_exact.get(f["exact"])
        kind, similarity = "duplicate_exact", 1.0
        if rep is None and near:
            candidates = sorted({j for key in hasher.band_keys(sigs[i]) for j in buckets.get(key, ())})
            if candidates:  # all candidates at once: popular buckets must not cost a Python loop each
                sims = (sigs[candidates] == sigs[i]).mean(axis=1)
                hits = np.flatnonzero(sims >= near_threshold)
                if len(hits):
                    rep, kind, similarity = candidates[hits[0]], "duplicate_near", float(sims[hits[0]])
        if rep is None:
            seen_exact[f["exact"]] = i
            kept_per[i] = 1
            if near:
                for key in hasher.band_keys(sigs[i]):
                    buckets.setdefault(key, []).append(i)
            continue
        if kept_per[rep] < per_prompt:
            kept_per[rep] += 1
        else:
            reasons[i] = kind
            duplicate_of[i] = (rep, similarity)
    per_source: dict[str, dict[str, int]] = {}
    for i, f in enumerate(features):
        counts = per_source.setdefault(
            f["source"], {"rows": 0, "kept": 0, "kept_unverified_or_wrong_hard": 0}
        )
        counts["rows"] += 1
        if reasons[i] is None:
            counts["kept"] += 1
            if f["hard"] and f["correct"] is not True:
                counts["kept_unverified_or_wrong_hard"] += 1
        else:
            counts[reasons[i]] = counts.get(reasons[i], 0) + 1  # type: ignore[index]
    return Selection(
        reasons=reasons, duplicate_of=duplicate_of, ranked=ranked, selected=selected, per_source=per_source
    )
