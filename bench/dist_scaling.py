"""What Ray costs and buys on one machine: reward throughput with 1 vs 2 reward actors, and
the RL step time of ``dist.backend=ray`` vs the single process.

1. Rewards: ``--items`` code responses of ``bench/rewards_code.py`` (16 stdin tests each, run
   in the bubblewrap sandbox, ~0.1 s of CPU per response) scored by a
   :class:`klear.dist.groups.RewardGroup` of 1 actor, then of 2 actors, each a pool of one
   process; rounds alternate, warm pools. (Math verdicts take ~1 ms each: too little work per
   item to show anything but Ray's per-call cost.) Printed: responses/s and the 2/1 ratio.
2. RL steps: the same tiny-model config run by ``train_rl`` in one process and with
   ``--rollout-workers`` / ``--reward-workers`` / ``--learner-ranks`` actors; the mean
   ``time/step`` after the first step (warm-up), the difference per step (Ray's overhead:
   object transfer, weight sync, scheduling) and the start-up time of each run.

  python bench/dist_scaling.py                  # ~4 min on 2 cores
  python bench/dist_scaling.py --items 400 --steps 3
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def reward_throughput(items: int, rounds: int) -> dict[str, float]:
    from klear.config import RLConfig, build_config
    from klear.dist.groups import RewardGroup
    from rewards_code import PROGRAM, _problem

    rows = [
        {"data_source": "bench", "ability": "code", "reward_model": {"ground_truth": _problem(k)}}
        for k in range(items)
    ]
    responses = [f"<think>.</think>```python\n{PROGRAM}```"] * items
    rates: dict[int, list[float]] = {1: [], 2: []}
    groups = {}
    for n in (1, 2):
        cfg = build_config(
            RLConfig, {"reward": {"num_workers": 1}, "dist": {"backend": "ray", "reward_workers": n}}
        )
        groups[n] = RewardGroup(cfg)
        groups[n].ready()
        groups[n].score(rows[:2], responses[:2])  # warm: sandboxes up
    try:
        for _ in range(rounds):
            for n in (1, 2):
                t0 = time.perf_counter()
                results = groups[n].score(rows, responses)
                rates[n].append(items / (time.perf_counter() - t0))
                assert all(r.correct for r in results), "a code test failed: the bench measures nothing"
    finally:
        for g in groups.values():
            g.close()
    one, two = statistics.median(rates[1]), statistics.median(rates[2])
    return {"one": one, "two": two, "ratio": two / one}


def step_times(steps: int, rollout: int, reward: int, ranks: int) -> dict[str, dict[str, float]]:
    from klear.config import RLConfig, build_config
    from klear.train.rl import train_rl

    base = {
        "model": {"tiny": True, "dtype": "float32"},
        "data": {"task": "addition", "train_size": 512, "val_size": 4},
        "rollout": {"n": 8, "max_new_tokens": 48, "temperature": 1.0},
        "reward": {"num_workers": 1},
        "optim": {"lr": 1e-4},
        "dynamic_sampling": {"enable": False},
        "trainer": {"total_steps": steps, "train_batch_size": 16, "ppo_mini_batch_size": 8, "save_every": 0},
        "validation": {"every": 0},
        "logging": {"progress": False},
    }
    out: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        runs = {
            "single": {"backend": "none"},
            "ray": {
                "backend": "ray",
                "rollout_workers": rollout,
                "reward_workers": reward,
                "learner_ranks": ranks,
            },
        }
        for name, dist in runs.items():
            cfg = build_config(
                RLConfig, {**base, "run": {"out_dir": f"{tmp}/{name}", "seed": 0}, "dist": dist}
            )
            t0 = time.perf_counter()
            result = train_rl(cfg)
            wall = time.perf_counter() - t0
            per_step = [h["time/step"] for h in result.history if h["step"] >= 2]
            total_steps = sum(h["time/step"] for h in result.history)
            out[name] = {
                "step_s": statistics.mean(per_step),
                "startup_s": wall - total_steps,
                "reward_mean": statistics.mean(h["reward/mean"] for h in result.history),
            }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=64, help="code responses (16 tests each) per reward round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=4, help="RL steps per run (the first is warm-up)")
    ap.add_argument("--rollout-workers", type=int, default=2)
    ap.add_argument("--reward-workers", type=int, default=1)
    ap.add_argument("--learner-ranks", type=int, default=2)
    args = ap.parse_args()

    import ray

    root = Path(__file__).resolve().parents[1]
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([str(root / "src"), str(root / "bench")])}},
    )
    try:
        r = reward_throughput(args.items, args.rounds)
        print(f"cores: {os.cpu_count()}")
        print(
            f"code rewards, {args.items} responses x 16 tests: 1 actor {r['one']:.0f}/s, 2 actors {r['two']:.0f}/s, 2/1 = {r['ratio']:.2f}x"
        )
        s = step_times(args.steps, args.rollout_workers, args.reward_workers, args.learner_ranks)
        one, dist = s["single"], s["ray"]
        print(
            f"RL step (tiny model, 16 prompts x 8, {args.rollout_workers} rollout / {args.reward_workers} reward "
            f"actors, {args.learner_ranks} ranks): single {one['step_s']:.2f} s, ray {dist['step_s']:.2f} s, "
            f"ray/single = {dist['step_s'] / one['step_s']:.2f}x, overhead {dist['step_s'] - one['step_s']:+.2f} s/step"
        )
        print(
            f"start-up: single {one['startup_s']:.1f} s, ray {dist['startup_s']:.1f} s (actors load torch and the model)"
        )
        print(
            f"mean reward over the run: single {one['reward_mean']:.4f}, ray {dist['reward_mean']:.4f} (same samples)"
        )
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
