"""Sampling tokens/s of the HF backend with the lean KV-cache decoder against transformers' forward.

``klear.rollout.kv_decode.KVDecoder`` runs the model's own weights over a preallocated cache;
the other side is the same sampling loop calling ``model(...)`` per token with a transformers
cache (``HFRolloutBackend(lean=False)``). Same model (the demo's tiny Qwen3: ``--model`` an SFT
checkpoint, else one built with random weights), same prompts (addition-2to3), same sampling
(temperature 0.6, ``--max-new-tokens``, one seed), one torch thread, in one process, alternating
(``--rounds``), at two batch sizes: the demo's generation batch (16 prompts x 8 samples) and half
of it (what each of 2 sampler processes gets with ``trainer.sampler_processes=2``). Reports
generated tokens/s per side, the ratio (the median of the rounds' ratios), and how many responses
are identical on both sides (keyed randomness: they should all be, up to a float tie).

    python bench/rollout_decode.py [--model DIR] [--rounds 5] [--max-new-tokens 80]

Prints a table, then one JSON line (``speedup``: the demo batch's ratio, and every figure).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any


def measure(backend: Any, prompts: list, sampling: Any, lean: bool) -> tuple[float, int, list]:
    backend.lean = lean
    t0 = time.perf_counter()
    out = backend.generate(prompts, sampling)
    seconds = time.perf_counter() - t0
    return seconds, sum(len(r.response_ids) for r in out), [r.response_ids for r in out]


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", type=Path, help="an HF model directory (default: the tiny model, random weights)"
    )
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--max-new-tokens", type=int, default=80)
    p.add_argument(
        "--prompts", type=int, nargs="+", default=[16, 8], help="prompts per batch (x --n samples)"
    )
    p.add_argument("--n", type=int, default=8)
    args = p.parse_args(argv)

    import torch

    from klear.models.tiny import build_tiny_model
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend
    from klear.tasks import task_rows

    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="klear-bench-decode-") as tmp:
        model_dir = args.model or build_tiny_model(Path(tmp), seed=0)
        backend = HFRolloutBackend.from_pretrained(model_dir, seed=0)
    rows = task_rows("addition-2to3", "train", max(args.prompts), seed=0)
    result: dict[str, Any] = {"batches": {}}
    for k in args.prompts:
        prompts = [r["prompt"] for r in rows[:k]]
        sampling = SamplingParams(n=args.n, temperature=0.6, max_new_tokens=args.max_new_tokens, seed=1)
        measure(backend, prompts, sampling, True)  # warm-up
        rates: dict[bool, list[float]] = {True: [], False: []}
        ratios, identical = [], None
        for r in range(args.rounds):
            got = {}
            for lean in (True, False) if r % 2 == 0 else (False, True):
                seconds, tokens, ids = measure(backend, prompts, sampling, lean)
                rates[lean].append(tokens / seconds)
                got[lean] = ids
            ratios.append(rates[True][-1] / rates[False][-1])
            identical = sum(a == b for a, b in zip(got[True], got[False], strict=True))
        result["batches"][f"{k}x{args.n}"] = {
            "rows": k * args.n,
            "lean_tokens_per_s": statistics.median(rates[True]),
            "hf_tokens_per_s": statistics.median(rates[False]),
            "speedup": statistics.median(ratios),
            "ratios": ratios,
            "identical_responses": identical,
        }
    first = result["batches"][f"{args.prompts[0]}x{args.n}"]
    result["speedup"] = first["speedup"]
    print(
        "| batch | lean tokens/s | HF forward tokens/s | lean / HF (median of rounds) | identical responses |"
    )
    print("|---|---|---|---|---|")
    for name, b in result["batches"].items():
        print(
            f"| {name} | {b['lean_tokens_per_s']:.0f} | {b['hf_tokens_per_s']:.0f} | {b['speedup']:.2f}x | "
            f"{b['identical_responses']}/{b['rows']} |"
        )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
