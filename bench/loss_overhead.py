"""Forward+backward time of the policy losses on [64, 4096] tokens, as ratios to PPO (one run).

The machine is shared and noisy, so the losses are timed interleaved, round by
round, and the ratio is taken of medians; absolute times are printed for
information only. Target: gppo <= 1.10x ppo.

    python bench/loss_overhead.py [--batch 64 --tokens 4096 --rounds 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from klear.algo.aggregate import Normaliser
from klear.algo.losses import policy_loss
from klear.config import LossConfig

LOSS_TYPES = ("ppo", "gppo", "cispo")


def bench(batch: int, tokens: int, rounds: int, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    logp0 = -torch.rand(batch, tokens, generator=g) * 3
    old = logp0 + torch.randn(batch, tokens, generator=g) * 0.3
    adv = torch.randn(batch, generator=g)
    mask = (torch.rand(batch, tokens, generator=g) > 0.1).float()
    norm = Normaliser.of(mask)
    cfgs = {t: LossConfig(type=t) for t in LOSS_TYPES}
    times: dict[str, list[float]] = {t: [] for t in LOSS_TYPES}
    for r in range(rounds + 3):  # 3 warm-up rounds
        order = LOSS_TYPES if r % 2 == 0 else LOSS_TYPES[::-1]
        for t in order:
            logp = logp0.clone().requires_grad_(True)
            start = time.perf_counter()
            policy_loss(logp, old, adv, mask, cfgs[t], norm=norm).loss.backward()
            elapsed = time.perf_counter() - start
            if r >= 3:
                times[t].append(elapsed)
    med = {t: statistics.median(v) for t, v in times.items()}
    return {
        "shape": [batch, tokens],
        "rounds": rounds,
        "median_ms": {t: round(1e3 * v, 3) for t, v in med.items()},
        "ratio_to_ppo": {t: round(med[t] / med["ppo"], 3) for t in LOSS_TYPES},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=4096)
    p.add_argument("--rounds", type=int, default=30)
    args = p.parse_args()
    res = bench(args.batch, args.tokens, args.rounds)
    print(
        f"policy loss forward+backward on {args.batch}x{args.tokens} tokens, median of {args.rounds} rounds"
    )
    for t in LOSS_TYPES:
        print(f"  {t:6s} {res['median_ms'][t]:9.2f} ms   {res['ratio_to_ppo'][t]:.3f}x ppo")
    verdict = "OK" if res["ratio_to_ppo"]["gppo"] <= 1.10 else "ABOVE TARGET"
    print(f"gppo / ppo = {res['ratio_to_ppo']['gppo']:.3f} (target <= 1.10: {verdict})")
    print(json.dumps(res))


if __name__ == "__main__":
    main()
