"""Math verifications/s: Klear's reward pool vs inline math_verify, on a realistic GRPO-like mix.

The mix imitates one RL step: prompts with 8 sampled responses each; most answers are plain numbers
(right or wrong), some fractions/decimals and LaTeX (sets, intervals, expressions, \\text{}), some
responses with no final answer or cut off mid-thought, and a few pathological answers
(``9^{9^{9}}``, ``1000000!``, deeply nested fractions).

Baseline ("inline"): what a trainer does without a pool -- for each response, the same last-\\boxed{}
extraction, then ``verify(parse(gold), parse(answer))`` with math_verify's default timeouts, on the
main thread (off it, math_verify's timeouts cannot run at all). Ours: a warm ``RewardPool`` with the
default settings (``num_workers`` workers, fast path, (gold, answer) cache, 3 s inner timeout).
Pool start-up is reported separately: a trainer starts the pool once.

  python bench/rewards_math.py            # n=2048: one generation batch (256 prompts x 8)
  python bench/rewards_math.py --n 400    # quicker
"""

from __future__ import annotations

import argparse
import logging
import random
import resource
import time
from typing import Any

PATHOLOGICAL = ["9^{9^{9}}", "1000000!", "\\frac{1}{" * 300 + "2" + "}" * 300]

# (gold, equivalent forms, wrong forms) for the LaTeX part of the mix
LATEX = [
    ("\\frac{1}{2}", ["\\frac12", "0.5", "1/2", "\\dfrac{1}{2}"], ["\\frac13", "0.6"]),
    ("\\frac{3}{4}", ["0.75", "\\tfrac{3}{4}", "3/4"], ["\\frac{4}{3}", "0.7"]),
    ("\\{1,2\\}", ["\\{2,1\\}", "\\{1, 2\\}"], ["\\{1,3\\}"]),
    ("(0,1]", ["(0, 1]"], ["[0,1]", "(0,1)"]),
    ("x+1", ["1+x"], ["x+2", "x-1"]),
    ("\\sqrt{2}", ["2^{1/2}", "\\sqrt2"], ["\\sqrt{3}", "2"]),
    ("\\text{(A)}", ["A", "\\text{A}"], ["B", "\\text{(C)}"]),
    ("5", ["5\\text{ cm}", "5 \\mathrm{cm}"], ["6\\text{ cm}"]),
    ("2\\pi", ["2 \\pi", "\\pi \\cdot 2"], ["\\pi", "4\\pi"]),
    ("\\frac{\\sqrt{3}}{2}", ["\\frac{1}{2}\\sqrt{3}"], ["\\frac{\\sqrt{2}}{2}"]),
]


def make_mix(n: int, seed: int = 0, group: int = 8) -> list[tuple[dict[str, Any], str, str]]:
    """n (row, response, kind) items in groups of ``group`` samples per prompt; kind labels the part."""
    rng = random.Random(seed)
    items: list[tuple[dict[str, Any], str, str]] = []
    n_patho = max(1, n // 400)
    while len(items) < n - n_patho:
        r = rng.random()
        if r < 0.65:  # plain numbers: most of real math RL data (AIME-style integer answers)
            gold = str(rng.randint(0, 999))
            wrong = [str(rng.randint(0, 999)) for _ in range(3)]
            forms, kind = [gold], "integer"
        elif r < 0.82:
            gold, forms, wrong = rng.choice(LATEX[:2] + LATEX[3:4])
            kind = "fraction/latex"
        else:
            gold, forms, wrong = rng.choice(LATEX)
            kind = "fraction/latex"
        row = {
            "data_source": "bench",
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": gold},
        }
        p_right = rng.random()
        for _ in range(group):
            u = rng.random()
            if u < 0.06:
                response, k = "<think>" + "long reasoning " * 50, "truncated"
            elif u < 0.1:
                response, k = "<think>work</think> I could not finish.", "no_answer"
            else:
                answer = rng.choice(forms) if rng.random() < p_right else rng.choice(wrong)
                response, k = f"<think>reasoning...</think> The answer is $\\boxed{{{answer}}}$.", kind
            items.append((row, response, k))
    items = items[: n - n_patho]
    for i in range(n_patho):
        row = {
            "data_source": "bench",
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": "5"},
        }
        items.insert(
            rng.randrange(len(items) + 1),
            (row, f"<think>.</think> \\boxed{{{PATHOLOGICAL[i % 3]}}}", "pathological"),
        )
    return items


def inline_math_verify(items: list[tuple[dict[str, Any], str, str]]) -> tuple[list[bool], list[float]]:
    """The baseline: extraction + math_verify parse/verify with its default (signal) timeouts, one by one."""
    from math_verify import parse, verify

    from klear.rewards.math import answer_region, last_boxed, normalize_gold

    verdicts, seconds = [], []
    for row, response, _ in items:
        start = time.perf_counter()
        region = answer_region(response)
        answer = last_boxed(region) if region is not None and "</think>" in response else None
        ok = False
        if answer:
            gold = normalize_gold(row["reward_model"]["ground_truth"])
            ok = bool(verify(parse("\\boxed{" + gold + "}"), parse("\\boxed{" + answer + "}")))
        verdicts.append(ok)
        seconds.append(time.perf_counter() - start)
    return verdicts, seconds


def _pool_run(
    items: list[tuple[dict[str, Any], str, str]], cfg: Any
) -> tuple[list[Any], float, float, float]:
    from klear.rewards.pool import RewardPool

    start = time.perf_counter()
    with RewardPool(cfg) as pool:
        pool.wait_ready()
        startup = time.perf_counter() - start
        start = time.perf_counter()
        results = pool.score([it[0] for it in items], [it[1] for it in items])
        elapsed = time.perf_counter() - start
        peak = max(_peak_rss_mib(pid) for pid in pool.worker_pids)
    return results, elapsed, startup, peak


def _peak_rss_mib(pid: int) -> float:
    """VmHWM (peak resident memory) of a process; workers are forkserver children, not ours to wait on."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def bench_math(n: int = 2048, seed: int = 0) -> dict[str, Any]:
    """Run pool vs inline on an n-item mix; returns rates, ratios, disagreements and peak memory."""
    from klear.config import RewardConfig
    from klear.rewards.math import warm_up

    logging.getLogger("math_verify").setLevel(logging.ERROR)  # inline timeouts would warn per item
    items = make_mix(n, seed)
    kinds = [k for _, _, k in items]
    warm_up()  # the baseline also gets math_verify's one-time setup for free

    inline_verdicts, inline_seconds = inline_math_verify(items)
    inline_total = sum(inline_seconds)
    inline_clean = sum(s for s, k in zip(inline_seconds, kinds, strict=True) if k != "pathological")

    cfg = RewardConfig()
    results, pool_total, startup, worker_peak = _pool_run(items, cfg)
    clean = [it for it in items if it[2] != "pathological"]
    _, pool_clean, _, _ = _pool_run(clean, cfg)
    no_shortcuts = cfg.model_copy(
        update={"math": cfg.math.model_copy(update={"fast_path": False, "cache_size": 0})}
    )
    _, pool_plain, _, _ = _pool_run(clean, no_shortcuts)

    disagree = [
        (items[i][2], items[i][0]["reward_model"]["ground_truth"], results[i].answer)
        for i in range(n)
        if results[i].correct != inline_verdicts[i] and kinds[i] != "pathological"
    ]
    peak_self = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "n": n,
        "n_pathological": kinds.count("pathological"),
        "workers": cfg.num_workers,
        "inline_per_s": n / inline_total,
        "pool_per_s": n / pool_total,
        "ratio": inline_total / pool_total,
        "inline_clean_per_s": len(clean) / inline_clean,
        "pool_clean_per_s": len(clean) / pool_clean,
        "ratio_clean": inline_clean / pool_clean,
        "pool_no_fastpath_no_cache_per_s": len(clean) / pool_plain,
        "ratio_no_fastpath_no_cache": inline_clean / pool_plain,
        "pool_startup_s": startup,
        "pool_timeouts": sum("timeout" in r.flags for r in results),
        "disagreements": disagree,
        "peak_rss_mib_parent": peak_self,
        "peak_rss_mib_worker": worker_peak,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    print_math(bench_math(args.n, args.seed))


def print_math(r: dict[str, Any]) -> None:
    print(f"math verifications, n={r['n']} ({r['n_pathological']} pathological), {r['workers']} workers")
    print(f"  inline math_verify      {r['inline_per_s']:9.1f} /s")
    print(f"  klear pool              {r['pool_per_s']:9.1f} /s   ratio {r['ratio']:.1f}x  (target >= 3x)")
    print(
        f"  without pathological:   inline {r['inline_clean_per_s']:.1f} /s, pool {r['pool_clean_per_s']:.1f} /s, "
        f"ratio {r['ratio_clean']:.1f}x"
    )
    print(
        f"  pool, no fast path/cache (clean mix): {r['pool_no_fastpath_no_cache_per_s']:.1f} /s, "
        f"ratio {r['ratio_no_fastpath_no_cache']:.1f}x"
    )
    print(
        f"  pool start-up {r['pool_startup_s']:.2f} s (once per run); pathological flagged timeout: {r['pool_timeouts']}"
    )
    print(f"  verdicts differing from inline math_verify (non-pathological): {len(r['disagreements'])}")
    for d in r["disagreements"][:10]:
        print(f"    {d}")
    print(
        f"  peak RSS: parent {r['peak_rss_mib_parent']:.0f} MiB, largest worker {r['peak_rss_mib_worker']:.0f} MiB"
    )


if __name__ == "__main__":
    main()
