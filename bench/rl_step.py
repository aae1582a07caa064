"""Tokens/s of Klear's RL step against TRL's GRPOTrainer: same tiny model, task and batch, one process.

One RL step of each side is: sample ``--n`` responses for each of ``--prompts`` prompts
(one generation batch), score them, compute old log-probs, then ``--mini-batches``
optimizer steps over the batch. Both start from the same randomly initialised tiny
Qwen3 (``klear.models.tiny``) and draw prompts from the same addition-task rows. Target
from issue 4: ours / TRL >= 1.5x.

What is held equal: model weights and dtype (float32, CPU), tokenizer and chat template,
prompts, batch shape (16 prompts x 8 samples = 128 sequences, 4 optimizer steps of
32 sequences), ``max_new_tokens``, temperature 1.0 / top_p 1.0, no KL and no reference
model (TRL ``beta=0``), clip 0.2 / 0.28 with token-mean aggregation (TRL ``loss_type="dapo"``;
ours GPPO), AdamW lr 1e-4 constant, no weight decay, grad-norm clip 1.0, no vLLM,
no validation, exactly one generation per step (our dynamic sampling off; our
``sft_alpha`` 0, as TRL has no such term). Rewards: ours through the real reward
pool (worker processes, ``klear.rewards.math``); TRL's is an in-process function
with the same scores and verdicts on this task (exact string match of the last
``\\boxed{}`` after ``</think>``, same format penalties) -- cheaper than ours,
so the comparison slightly favours TRL.

Tokens are prompt + response tokens of the step's sequences (as both libraries
count them: TRL's ``num_input_tokens_seen``, our ``perf/tokens_per_s``). Start-up
(model load, trainer construction, worker start) is not timed, and the first step
of every run is a warm-up that is dropped. Runs alternate ours / TRL / TRL / ours
... (``--rounds``) so that drift in machine load hits both; medians are reported,
and the ratio of each round's adjacent pair of runs. Both sides run torch with
``--threads`` intra-op threads (1 by default: on a shared 2-core machine two threads
made step times swing several-fold). The untrained model stops only by chance, so
responses run to about two thirds of ``max_new_tokens`` on average; the mean lengths
of both sides are printed.

    pip install trl   # benchmark-only dependency; install torch==2.13.0 first
    python bench/rl_step.py [--steps 2 --rounds 3 --prompts 16 --n 8 --max-new-tokens 96 --threads 1]

Prints a table, then one JSON line with every figure.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

TASK = "addition"
LR = 1e-4
EPS_LOW, EPS_HIGH = 0.2, 0.28
TRL_INSTALL_HINT = (
    "TRL is a benchmark-only dependency and is not installed: install torch first "
    "(`pip install torch==2.13.0`, never an unpinned torch), then `pip install trl`."
)


def require_trl() -> Any:
    try:
        import trl
    except ImportError as exc:
        raise SystemExit(f"bench/rl_step.py: {TRL_INSTALL_HINT} ({exc})") from exc
    return trl


# --- shared set-up --------------------------------------------------------------------------


def data_section(n_train: int) -> dict[str, Any]:
    """Our ``data`` config: the built-in task, ``n_train`` training problems (task_seed 0 on both sides)."""
    return {"task": TASK, "train_size": n_train, "val_size": 1, "max_prompt_length": 64}


def train_rows(n_train: int) -> list[dict[str, Any]]:
    """The very rows our trainer draws its prompts from (``klear.train.rl_data.rl_rows`` with the same config)."""
    from klear.config import DataConfig
    from klear.train.rl_data import rl_rows

    return rl_rows(DataConfig(**data_section(n_train)), "train")


# --- ours -----------------------------------------------------------------------------------


def ours_config(args: argparse.Namespace, model_dir: Path, out: Path, steps: int) -> dict[str, Any]:
    return {
        "run": {"name": "bench-rl-step", "out_dir": str(out), "seed": args.seed},
        "model": {"path": str(model_dir), "dtype": "float32"},
        "data": data_section(args.train_size),
        "rollout": {"n": args.n, "max_new_tokens": args.max_new_tokens, "temperature": 1.0, "top_p": 1.0},
        "reward": {"num_workers": args.reward_workers},
        "loss": {"type": "gppo", "eps_low": EPS_LOW, "eps_high": EPS_HIGH, "sft_alpha": 0.0},
        "optim": {"lr": LR, "weight_decay": 0.0, "grad_clip": 1.0},
        "dynamic_sampling": {"enable": False},
        "trainer": {
            "total_steps": steps,
            "train_batch_size": args.prompts,
            "ppo_mini_batch_size": args.prompts // args.mini_batches,
            "micro_batch_tokens": 8192,
            "save_every": 0,
        },
        "validation": {"every": 0},
        "logging": {"progress": False},
    }


def run_ours(args: argparse.Namespace, model_dir: Path, out: Path) -> list[dict[str, float]]:
    """One run of ``train_rl`` (1 warm-up + ``args.steps`` steps); per-step figures of the timed steps."""
    from klear.config import RLConfig, build_config
    from klear.train.metrics import read_metrics
    from klear.train.rl import train_rl

    cfg = build_config(RLConfig, ours_config(args, model_dir, out, 1 + args.steps))
    train_rl(cfg, resume=False)
    rows = read_metrics(out / "metrics.jsonl")[1:]  # drop the warm-up step
    steps = []
    for r in rows:
        t = r["time/step"]
        steps.append(
            {
                "seconds": t,
                "tokens": round(r["perf/tokens_per_s"] * t),
                "tokens_per_s": r["perf/tokens_per_s"],
                "completion_len": r["response/length_mean"],
                "gen": r.get("time/gen", 0.0),
                "reward": r.get("time/reward", 0.0),
                "old_logprob": r.get("time/old_logprob", 0.0),
                "update": r.get("time/update", 0.0),
                "updates": r.get("actor/updates", 0.0),
            }
        )
    return steps


# --- TRL ------------------------------------------------------------------------------------


def trl_reward(completions, ground_truth, **_kwargs) -> list[float]:
    """Our math reward's scores (default ``reward.math``) by exact match instead of math_verify.

    Same verdicts as ours on the addition task (integer answers); no worker processes.
    """
    from klear.config import MathRewardConfig
    from klear.rewards.math import THINK_END, THINK_START, answer_region, last_boxed

    m = MathRewardConfig()
    scores = []
    for completion, gold in zip(completions, ground_truth, strict=True):
        text = completion if isinstance(completion, str) else completion[-1]["content"]
        if THINK_START not in text:
            scores.append(m.no_think_start_score)
        elif THINK_END not in text:
            scores.append(m.no_think_end_score)
        else:
            region = answer_region(text)
            answer = last_boxed(region) if region is not None else None
            ok = answer is not None and answer.strip() == str(gold).strip()
            scores.append(m.positive if ok else m.negative)
    return scores


def run_trl(args: argparse.Namespace, model_dir: Path, out: Path) -> list[dict[str, float]]:
    """One ``GRPOTrainer.train()`` of 1 warm-up + ``args.steps`` generation cycles; figures per timed cycle."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer, PrinterCallback, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    rows = train_rows(args.train_size)
    dataset = Dataset.from_list(
        [{"prompt": r["prompt"], "ground_truth": r["reward_model"]["ground_truth"]} for r in rows]
    )
    per_step = args.prompts * args.n // args.mini_batches  # sequences per optimizer step
    config = GRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=per_step,
        gradient_accumulation_steps=1,
        steps_per_generation=args.mini_batches,  # one generation of prompts x n, then 4 optimizer steps
        num_generations=args.n,
        max_completion_length=args.max_new_tokens,
        temperature=1.0,
        top_p=1.0,
        beta=0.0,
        epsilon=EPS_LOW,
        epsilon_high=EPS_HIGH,
        loss_type="dapo",  # token-mean over the mini-batch, like ours
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        max_steps=args.mini_batches * (1 + args.steps),
        use_vllm=False,
        use_cpu=True,
        bf16=False,
        fp16=False,
        model_init_kwargs={"dtype": torch.float32},
        report_to="none",
        save_strategy="no",
        logging_steps=args.mini_batches,
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=args.seed,
    )
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    trainer = GRPOTrainer(
        model=str(model_dir),
        reward_funcs=trl_reward,
        args=config,
        train_dataset=dataset,
        processing_class=tokenizer,
    )

    cycles: list[dict[str, float]] = []
    lengths: list[int] = []
    gen_seconds = [0.0]
    inner_generate = trainer._generate

    def timed_generate(prompts):
        t0 = time.perf_counter()
        result = inner_generate(prompts)
        gen_seconds[0] += time.perf_counter() - t0
        lengths.extend(len(ids) for ids in result[1])  # completion ids, stop token included
        return result

    trainer._generate = timed_generate

    class CycleTimer(TrainerCallback):
        """Wall time and tokens of each generation cycle (``mini_batches`` optimizer steps)."""

        def on_step_begin(self, _args, state, _control, **_kw):
            if state.global_step % args.mini_batches == 0:
                self.t0, self.tokens0 = time.perf_counter(), state.num_input_tokens_seen
                gen_seconds[0] = 0.0
                lengths.clear()

        def on_step_end(self, _args, state, _control, **_kw):
            if state.global_step % args.mini_batches == 0:
                seconds = time.perf_counter() - self.t0
                tokens = state.num_input_tokens_seen - self.tokens0
                cycles.append(
                    {
                        "seconds": seconds,
                        "tokens": float(tokens),
                        "tokens_per_s": tokens / seconds,
                        "completion_len": statistics.fmean(lengths) if lengths else 0.0,
                        "gen": gen_seconds[0],
                    }
                )

    trainer.add_callback(CycleTimer())
    trainer.remove_callback(PrinterCallback)  # the per-step log dicts; the report is ours
    trainer.train()
    return cycles[1:]  # drop the warm-up cycle


# --- the benchmark --------------------------------------------------------------------------


def _median(steps: list[dict[str, float]], key: str) -> float:
    return statistics.median(s[key] for s in steps)


def bench(args: argparse.Namespace) -> dict[str, Any]:
    require_trl()
    import torch

    from klear.models.tiny import build_tiny_model

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="klear-bench-rl-") as tmp:
        work = Path(tmp)
        model_dir = build_tiny_model(work / "tiny", seed=args.seed)
        ours: list[dict[str, float]] = []
        trl_: list[dict[str, float]] = []
        round_ratios = []
        for r in range(args.rounds):
            order = ("ours", "trl") if r % 2 == 0 else ("trl", "ours")
            runs = {}
            for side in order:
                out = work / f"{side}-{r}"
                runs[side] = (
                    run_ours(args, model_dir, out) if side == "ours" else run_trl(args, model_dir, out)
                )
            ours += runs["ours"]
            trl_ += runs["trl"]
            # the two runs of a round are adjacent in time: their ratio is least affected by load drift
            round_ratios.append(_median(runs["ours"], "tokens_per_s") / _median(runs["trl"], "tokens_per_s"))
    tps_ours, tps_trl = _median(ours, "tokens_per_s"), _median(trl_, "tokens_per_s")
    return {
        "bench": "rl_step",
        "task": TASK,
        "prompts": args.prompts,
        "n": args.n,
        "mini_batches": args.mini_batches,
        "max_new_tokens": args.max_new_tokens,
        "timed_steps": {"ours": len(ours), "trl": len(trl_)},
        "tokens_per_s": {"ours": round(tps_ours, 1), "trl": round(tps_trl, 1)},
        "tokens_per_s_per_step": {
            "ours": [round(s["tokens_per_s"], 1) for s in ours],
            "trl": [round(s["tokens_per_s"], 1) for s in trl_],
        },
        "ratio": round(tps_ours / tps_trl, 3),
        "ratio_per_round": [round(x, 3) for x in round_ratios],
        "step_seconds": {
            "ours": round(_median(ours, "seconds"), 3),
            "trl": round(_median(trl_, "seconds"), 3),
        },
        "tokens_per_step": {"ours": _median(ours, "tokens"), "trl": _median(trl_, "tokens")},
        "completion_len_mean": {
            "ours": round(statistics.fmean(s["completion_len"] for s in ours), 2),
            "trl": round(statistics.fmean(s["completion_len"] for s in trl_), 2),
        },
        "phase_seconds": {
            "ours": {k: round(_median(ours, k), 3) for k in ("gen", "reward", "old_logprob", "update")},
            "trl": {"gen": round(_median(trl_, "gen"), 3)},
        },
        "target_ratio": 1.5,
        "trl_reward": "in-process exact match of the last \\boxed{} after </think> (ours: math reward in worker pool)",
        "torch_threads": torch.get_num_threads(),
    }


def format_report(res: dict[str, Any]) -> str:
    tps, sec, ln = res["tokens_per_s"], res["step_seconds"], res["completion_len_mean"]
    ph = res["phase_seconds"]
    lines = [
        f"RL step, {res['prompts']} prompts x {res['n']} samples, {res['mini_batches']} optimizer steps, "
        f"max_new_tokens {res['max_new_tokens']} (median of {res['timed_steps']['ours']} ours / "
        f"{res['timed_steps']['trl']} TRL timed steps)",
        f"  {'':6} {'tokens/s':>10} {'s/step':>8} {'resp len':>9}  phases (s)",
        f"  {'ours':6} {tps['ours']:>10.1f} {sec['ours']:>8.2f} {ln['ours']:>9.1f}  "
        + "  ".join(f"{k} {v:.2f}" for k, v in ph["ours"].items()),
        f"  {'TRL':6} {tps['trl']:>10.1f} {sec['trl']:>8.2f} {ln['trl']:>9.1f}  "
        f"gen {ph['trl']['gen']:.2f}  rest {sec['trl'] - ph['trl']['gen']:.2f}",
        f"  ratio ours/TRL: {res['ratio']:.2f}x (target >= {res['target_ratio']}x); per round: "
        + ", ".join(f"{x:.2f}x" for x in res["ratio_per_round"]),
        "  TRL's reward: in-process exact match (same verdicts; ours goes through the reward worker pool)",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=2, help="timed RL steps per run, after one warm-up step")
    p.add_argument("--rounds", type=int, default=3, help="runs per side, alternating ours/TRL")
    p.add_argument("--prompts", type=int, default=16, help="prompts per step")
    p.add_argument("--n", type=int, default=8, help="samples per prompt")
    p.add_argument("--mini-batches", type=int, default=4, help="optimizer steps per RL step")
    p.add_argument("--max-new-tokens", type=int, default=96, help="response budget (the demo's)")
    p.add_argument("--train-size", type=int, default=512, help="addition problems to draw prompts from")
    p.add_argument("--reward-workers", type=int, default=2, help="our reward pool's worker processes")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, both sides (0: torch's default). 1 by default: on a shared 2-core "
        "machine two threads made step times swing several-fold, and the tiny model's matmuls gain little",
    )
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    if args.prompts % args.mini_batches:
        p.error(f"--prompts {args.prompts} must be a multiple of --mini-batches {args.mini_batches}")
    if args.steps < 1 or args.rounds < 1:
        p.error("--steps and --rounds must be >= 1")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    res = bench(args)
    print(format_report(res))
    print(json.dumps(res))
    sys.stdout.flush()
    return res


if __name__ == "__main__":
    main()
