"""Supervised fine-tuning on chat data (paper Sec. 2.1: long-CoT SFT before RL).

One loop, top to bottom (``run_sft``): chats are rendered with the model's own chat
template and tokenised piece by piece, so the prompt tokens are exactly what the rollout
backend feeds the model later; the loss is the NLL of assistant tokens only (through
the end-of-turn token), averaged over every assistant token of the optimizer step;
examples are packed into padding-free rows; warmup + cosine LR; global grad-norm clipping;
bfloat16 autocast on GPUs that have it. The model directory can be any local HF causal
LM (Qwen3-8B-Base in the paper's recipe) or the built-in tiny model.

Launched by torchrun, the same loop runs on every rank (FSDP2 or DDP, ``dist.learner_strategy``):
each rank takes a share of every step's micro-batches and the ranks' gradients add up to the
one-device gradient (docs/distributed.md).

Outputs under ``run.out_dir`` (rank 0 writes): ``config.yaml`` (resolved), ``tokens/`` (the
tokenised training set every rank memory-maps, :mod:`klear.train.sft_tokens`), ``metrics.jsonl``,
``checkpoints/step_N/`` (every ``trainer.save_every`` steps: model, optimizer, schedule, RNG;
a run started again resumes from the latest), ``final/`` (plain HF directory: the RL stage's
``model.path``) and ``summary.json``.
"""

from __future__ import annotations

import json
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from klear.config import ConfigError, SFTConfig, save_config
from klear.models.loading import (
    autocast,
    load_model,
    pick_device,
    precision,
    quiet_transformers,
    resolve_model_dir,
)
from klear.train import sft_tokens
from klear.train.checkpoint import latest_checkpoint, set_rng_state
from klear.train.common import make_optimizer, make_scheduler, token_logprobs
from klear.train.learner import allreduce_grads, clip_grads, fsdp_shard, idle_pass
from klear.train.metrics import MetricsLogger, plot_curves, read_metrics
from klear.train.parallel import (
    barrier,
    join_ranks,
    leave_ranks,
    on_lead,
    restore_full_checkpoint,
    save_full_checkpoint,
    save_full_model,
)
from klear.train.sft_data import (  # noqa: F401  (Example, chat_of_row, tokenize_chat: re-exported)
    Example,
    build_examples,
    chat_of_row,
    iter_examples,
    load_rows,
    micro_batches,
    packed_batch,
    plan_steps,
    rank_share,
    tokenize_chat,
)

log = logging.getLogger("klear.sft")

SFT_CURVES = ["loss", "val/accuracy", "lr", "grad_norm", "tokens_per_s"]


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    """What a finished SFT run leaves: ``model_dir`` is the final plain HF directory (written by rank 0)."""

    out_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)
    lead: bool = True  # rank 0 (or the only process): the one that wrote the outputs


def check_rank_settings(cfg: SFTConfig, world: int, has_val: bool) -> None:
    """Refuse what ``world`` ranks cannot do: periodic evaluation needs the whole model on rank 0,
    which FSDP shards (replicas have it; the final model is always evaluated, from ``final/``)."""
    if world > 1 and cfg.dist.learner_strategy == "fsdp" and cfg.trainer.eval_every and has_val:
        raise ConfigError(
            f"trainer.eval_every = {cfg.trainer.eval_every} with dist.learner_strategy=fsdp over {world} ranks: "
            "a sharded model cannot generate on rank 0 alone; set trainer.eval_every=0 (the final model is "
            "still evaluated), use dist.learner_strategy=ddp, or evaluate checkpoints with klear eval run"
        )


def run_sft(cfg: SFTConfig, *, resume: bool = True) -> SFTResult:
    """Train with ``cfg`` and return where the model went and the final metrics.

    Launched by torchrun (RANK/WORLD_SIZE in the environment), every rank runs this same loop:
    each takes a strided share of every step's micro-batches, the NLL is divided by the whole
    step's target count, and the gradients are summed over the ranks (FSDP2's reduce-scatter,
    or one all-reduce for ``dist.learner_strategy=ddp``), so the update equals one device's on
    the same global batch. Only rank 0 writes. ``resume``: continue from the latest checkpoint
    under ``run.out_dir`` (saved on any number of ranks).
    """
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend, stop_token_ids
    from klear.tasks.evaluate import exact_match_accuracy

    t_start = time.perf_counter()
    tc = cfg.trainer
    # 1. Ranks (torchrun's environment; none: one process), seeds, threads, output directory.
    ranks = join_ranks(cfg.dist.timeout_s)
    sharded = ranks.world > 1 and cfg.dist.learner_strategy == "fsdp"
    torch.manual_seed(cfg.run.seed)
    quiet_transformers()
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    out = Path(cfg.run.out_dir)
    try:
        # held-out rows: every rank reads them, so a refusal is every rank's (none waits in a collective)
        val_rows = [r for r in load_rows(cfg.data, "test") if "reward_model" in r]
        # training rows: rank 0 alone reads them (a bad file fails here, on every rank, before OUT or a
        # model exists), unless a token store of these data is already there (a resumed run)
        tokens_dir = out / "tokens"
        train_rows = on_lead(
            ranks, lambda: None if sft_tokens.covers(tokens_dir, cfg.data) else load_rows(cfg.data, "train")
        )
        check_rank_settings(cfg, ranks.world, bool(val_rows))
        if ranks.lead:
            out.mkdir(parents=True, exist_ok=True)
            save_config(cfg, out)

        # 2. Model and tokenizer (the tiny model is built from the seed when no path is given, by rank 0).
        device = pick_device()
        model_dir = resolve_model_dir(cfg.model, out, cfg.run.seed) if ranks.lead else None
        barrier(ranks)
        model_dir = model_dir or (Path(cfg.model.path) if cfg.model.path else out / "init")
        model, tokenizer = load_model(model_dir, cfg.model, device)
        _, amp_dtype = precision(cfg.model, device)
        if sharded:  # FSDP2's mixed-precision policy gathers the parameters in the compute dtype
            fsdp_shard(model, ranks.world, device, amp_dtype)
        step_autocast = None if sharded else amp_dtype  # one device, or replicas: autocast
        end_ids = stop_token_ids(tokenizer, model)
        pad_id = tokenizer.pad_token_id

        # 3. Data: chats -> token ids with assistant masks, tokenised once by rank 0 into a store that
        #    every rank memory-maps (klear.train.sft_tokens); kept for a resumed run.
        key = sft_tokens.store_key(cfg.data, tokenizer, tc.max_length, end_ids)

        def tokenise() -> None:
            if sft_tokens.current(tokens_dir, key):
                return
            rows = train_rows if train_rows is not None else load_rows(cfg.data, "train")
            stats: dict[str, int] = {}
            with _progress(cfg.logging.progress) as bar:
                task = bar.add_task("tokenising", total=len(rows), status="")
                sft_tokens.build_store(
                    tokens_dir,
                    key,
                    iter_examples(tokenizer, _advancing(rows, bar, task), tc.max_length, end_ids, stats),
                    stats,
                    sft_tokens.data_fingerprint(cfg.data),
                )

        on_lead(ranks, tokenise)
        train_rows = None  # the store holds what training needs
        examples = sft_tokens.TokenStore(tokens_dir)
        data_stats = examples.stats
        if not len(examples):
            raise ValueError("no training examples: every row was empty or had no assistant tokens")
        val_rows = val_rows if ranks.lead else []  # rank 0 evaluates

        # 4. Plan: every optimizer step's examples, packed by token count (the same on every rank).
        steps = plan_steps(examples.lengths.tolist(), tc.epochs, tc.batch_tokens, cfg.run.seed)
        total_steps = min(len(steps), tc.max_steps or len(steps))
        steps = steps[:total_steps]
        if ranks.lead and ranks.world > 1 and tc.batch_tokens < ranks.world * tc.micro_batch_tokens:
            log.warning(
                "trainer.batch_tokens = %d is less than %d ranks x trainer.micro_batch_tokens = %d: "
                "some ranks will idle in every step",
                tc.batch_tokens,
                ranks.world,
                tc.micro_batch_tokens,
            )

        # 5. Optimizer and schedule; resume from the latest checkpoint (any rank count, either strategy).
        optimizer = make_optimizer(model, cfg.optim)
        schedule = make_scheduler(optimizer, cfg.optim, total_steps)
        ckpt_root = out / "checkpoints"
        ckpt = latest_checkpoint(ckpt_root) if resume else None
        start_step, examples_seen = 0, 0
        if ckpt is not None:
            state = restore_full_checkpoint(ckpt, model, optimizer, schedule, sharded=sharded)
            set_rng_state(state["rng"])
            start_step, examples_seen = int(state["step"]), int(state["extra"]["examples_seen"])
            log.info("resumed from %s (step %d)", ckpt, start_step)

        def evaluate(eval_model: torch.nn.Module) -> dict[str, float]:
            if not val_rows:
                return {}
            backend = HFRolloutBackend(
                eval_model, tokenizer, seed=cfg.run.seed, max_batch_size=tc.eval_batch_size
            )
            res = exact_match_accuracy(
                backend, val_rows, SamplingParams(temperature=0.0, max_new_tokens=tc.eval_max_new_tokens)
            )
            return {f"val/{k}": v for k, v in res.items()}

        metrics_file = (
            MetricsLogger(
                out, cfg.logging, cfg.model_dump(mode="json"), resume_step=start_step if ckpt else None
            )
            if ranks.lead
            else None
        )
        if metrics_file is not None and start_step == 0:
            metrics_file.log(
                0,
                {
                    "event": "start",
                    "examples": len(examples),
                    "total_steps": total_steps,
                    "ranks": ranks.world,
                    **data_stats,
                },
            )
        last: dict[str, float] = {}
        model.train()
        with _progress(cfg.logging.progress and ranks.lead) as bar:
            task = bar.add_task("sft", total=total_steps, completed=start_step, status="")
            for step in range(start_step, total_steps):
                indices = steps[step]
                t0 = time.perf_counter()
                # 6. Forward/backward over this rank's share of the packed micro-batches; the loss is the
                #    mean NLL over every assistant token of the step (all ranks), so each micro-batch's sum
                #    is divided by the step total, and summing the ranks' gradients gives the whole step's.
                n_targets = int(examples.targets[indices].sum())
                mine, passes = rank_share(
                    list(micro_batches(examples, indices, tc.micro_batch_tokens)), ranks.rank, ranks.world
                )
                sums = torch.zeros(2, dtype=torch.float64)  # NLL, tokens
                for batch in mine:
                    packed, target = packed_batch(batch, tc.max_length, pad_id)
                    packed, target = packed.to(device), target.to(device)
                    with autocast(device, step_autocast):
                        logp = token_logprobs(
                            model,
                            packed.input_ids,
                            packed.position_ids,
                            chunk_tokens=tc.logits_chunk_tokens,
                            mask=target,
                        )
                    nll = -(logp * target).sum()
                    (nll / n_targets).backward()
                    sums += torch.tensor(
                        [float(nll.detach()), sum(len(ex) for ex in batch)], dtype=torch.float64
                    )
                if sharded:
                    for _ in range(passes - len(mine)):
                        idle_pass(model, pad_id, backward=True)

                # 7. Sum the gradients over the ranks (replicas; FSDP2 already reduce-scattered them),
                #    clip, update, advance the schedule.
                if ranks.world > 1:
                    import torch.distributed as dist

                    if not sharded:
                        allreduce_grads(model)
                    dist.all_reduce(sums)
                grad_norm = clip_grads(model, cfg.optim.grad_clip)
                lr = optimizer.param_groups[0]["lr"]
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                schedule.step()

                # 8. Metrics, progress, periodic evaluation and checkpoints (rank 0 writes).
                examples_seen += len(indices)
                dt = time.perf_counter() - t0
                loss_sum, step_tokens = float(sums[0]), int(sums[1])
                last = {
                    "step": step + 1,
                    "epoch": examples_seen / len(examples),
                    "loss": loss_sum / n_targets,
                    "lr": lr,
                    "grad_norm": grad_norm,
                    "tokens": step_tokens,
                    "loss_tokens": n_targets,
                    "tokens_per_s": step_tokens / dt,
                    "seconds": time.perf_counter() - t_start,
                }
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(f"SFT loss is {last['loss']} at step {step + 1}")
                is_last = step + 1 == total_steps
                if tc.eval_every and (step + 1) % tc.eval_every == 0 and not is_last and val_rows:
                    last.update(evaluate(model))
                    model.train()
                if metrics_file is not None and (
                    (step + 1) % tc.log_every == 0 or is_last or "val/accuracy" in last
                ):
                    metrics_file.log(step + 1, last)
                if tc.save_every and (step + 1) % tc.save_every == 0 and not is_last:
                    extra = {"examples_seen": examples_seen}
                    save_full_checkpoint(
                        ckpt_root,
                        step + 1,
                        model,
                        tokenizer,
                        optimizer,
                        schedule,
                        extra,
                        rank=ranks.rank,
                        sharded=sharded,
                    )
                bar.update(task, advance=1, status=f"loss {last['loss']:.3f} lr {lr:.2e}")

        # 9. Final model (gathered from the shards), held-out evaluation on rank 0, summary.
        final_dir = out / "final"
        save_full_model(model, tokenizer, final_dir, ranks.rank, sharded)
        # Every collective is done: the ranks leave the group together (one rank tearing its end
        # down while another still holds the group aborted a gloo rank under load), and rank 0's
        # evaluation below needs no collective.
        barrier(ranks)
        leave_ranks(ranks)
        if not ranks.lead:
            return SFTResult(out, final_dir, total_steps, time.perf_counter() - t_start, last, lead=False)
        if sharded:  # rank 0 evaluates an unsharded copy of the final model; the shards go first
            del model, optimizer, schedule
            eval_model = load_model(final_dir, cfg.model, device)[0] if val_rows else None
        else:
            eval_model = model
        last.update(evaluate(eval_model) if eval_model is not None else {})
        last["seconds"] = time.perf_counter() - t_start
        assert metrics_file is not None
        metrics_file.log(total_steps, {"event": "end", **last})
        metrics_file.close()
        plot_curves(
            read_metrics(metrics_file.path), SFT_CURVES, out / "curves.png", title=f"{cfg.run.name}: SFT"
        )
        summary = {
            "model_dir": str(final_dir),
            "steps": total_steps,
            "ranks": ranks.world,
            **last,
            **data_stats,
        }
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        return SFTResult(out, final_dir, total_steps, last["seconds"], last)
    finally:
        leave_ranks(ranks)


def _advancing(items, bar, task):
    """``items`` as they are, advancing ``task`` of ``bar`` by one for each."""
    for item in items:
        yield item
        bar.update(task, advance=1)


def _progress(enabled: bool):
    """A bar on a terminal; a line every ~10 s in a log (klear.progress)."""
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn

    from klear.progress import progress

    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
    )
    return progress(enabled, *columns)
