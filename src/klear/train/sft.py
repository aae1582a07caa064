"""Supervised fine-tuning on chat data (paper Sec. 2.1: long-CoT SFT before RL).

One loop, top to bottom (``run_sft``): chats are rendered with the model's own chat
template and tokenised piece by piece, so the prompt tokens are exactly what the rollout
backend feeds the model later; the loss is the NLL of assistant tokens only (through
the end-of-turn token), averaged over every assistant token of the optimizer step;
examples are packed into padding-free rows; warmup + cosine LR; global grad-norm clipping;
bfloat16 autocast on GPUs that have it. The model directory can be any local HF causal
LM (Qwen3-8B-Base in the paper's recipe) or the built-in tiny model.

Outputs under ``run.out_dir``: ``config.yaml`` (resolved), ``metrics.jsonl``,
``checkpoints/step_N/`` (every ``trainer.save_every`` steps), ``final/`` (plain HF
directory: the RL stage's ``model.path``) and ``summary.json``.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from klear.config import ConfigError, DataConfig, SFTConfig, save_config
from klear.train.common import (
    PackedBatch,
    autocast,
    load_model,
    make_optimizer,
    make_scheduler,
    pack_rows,
    pick_device,
    precision,
    quiet_transformers,
    resolve_model_dir,
    save_model,
    token_logprobs,
)
from klear.train.metrics import MetricsLogger, plot_curves, read_metrics

# ---------------------------------------------------------------------------------------------
# Data: chats -> token ids + assistant mask
# ---------------------------------------------------------------------------------------------


SFT_CURVES = ["loss", "val/accuracy", "lr", "grad_norm", "tokens_per_s"]


@dataclass(frozen=True)
class Example:
    """One tokenised chat: ``loss_mask[t]`` is 1 where token t is trained on (assistant tokens)."""

    input_ids: list[int]
    loss_mask: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def _render(tokenizer: Any, messages: Sequence[dict[str, str]], generation_prompt: bool) -> str:
    if not messages:
        return ""
    return tokenizer.apply_chat_template(
        list(messages), tokenize=False, add_generation_prompt=generation_prompt
    )


def tokenize_chat(tokenizer: Any, messages: Sequence[dict[str, str]], end_ids: Sequence[int]) -> Example:
    """Token ids of a chat and the mask of its assistant tokens.

    Each assistant turn is the text the template adds between "the chat so far with the
    generation prompt" and "the chat including this turn". Pieces are tokenised
    separately, so the context before each turn tokenises exactly like a rollout prompt.
    Within a turn, tokens after the last end-of-turn token (``end_ids``, e.g. the
    template's newline after ``<|im_end|>``) are context, not targets: generation stops
    at the end-of-turn token.
    """
    ids: list[int] = []
    mask: list[int] = []
    done = ""  # rendered text already tokenised

    def add(text: str, train: bool) -> None:
        toks = tokenizer.encode(text, add_special_tokens=False)
        m = [0] * len(toks)
        if train:
            last_end = max((k for k, t in enumerate(toks) if t in end_ids), default=len(toks) - 1)
            m[: last_end + 1] = [1] * (last_end + 1)
        ids.extend(toks)
        mask.extend(m)

    for i, msg in enumerate(messages):
        if msg["role"] != "assistant":
            continue
        prompt = _render(tokenizer, messages[:i], generation_prompt=True)
        full = _render(tokenizer, messages[: i + 1], generation_prompt=False)
        if not (prompt.startswith(done) and full.startswith(prompt)):
            raise ValueError(
                "the chat template does not render this chat incrementally (an earlier turn changes when "
                f"turn {i} is added); SFT needs each prefix of the chat to render as a prefix of the whole"
            )
        add(prompt[len(done) :], train=False)
        add(full[len(prompt) :], train=True)
        done = full
    rest = _render(tokenizer, messages, generation_prompt=False)[len(done) :]
    if rest:
        add(rest, train=False)
    return Example(ids, mask)


def chat_of_row(row: dict[str, Any], where: str) -> list[dict[str, str]]:
    """The chat to train on from one data row: ``messages``, an RL row with
    ``extra_info.solution``, or plain ``prompt``/``response`` strings."""
    from klear.tasks import sft_messages

    if "messages" in row:
        return list(row["messages"])
    if isinstance(row.get("prompt"), list) and "solution" in (row.get("extra_info") or {}):
        return sft_messages(row)
    if isinstance(row.get("prompt"), str) and isinstance(row.get("response"), str):
        return [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": row["response"]}]
    raise ValueError(
        f"{where}: cannot find a chat; expected 'messages', an RL row with extra_info.solution, "
        f"or 'prompt' and 'response' strings (keys: {sorted(row)})"
    )


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """Rows of a .jsonl, .json (list) or .parquet file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data file {str(path)!r} not found")
    if path.suffix == ".parquet":
        import pyarrow.parquet as pq  # optional: only for parquet data

        return pq.read_table(path).to_pylist()
    if path.suffix == ".json":
        return list(json.loads(path.read_text()))
    with path.open() as f:
        return [json.loads(line) for line in f if line.strip()]


def load_rows(data: DataConfig, split: str) -> list[dict[str, Any]]:
    """Training (``split="train"``) or held-out (``"test"``) rows from the built-in task or files."""
    from klear.tasks import task_rows

    if data.task is not None:
        n = data.train_size if split == "train" else data.val_size
        return task_rows(data.task, split, n, seed=data.task_seed)  # type: ignore[arg-type]
    files = data.train_files if split == "train" else data.val_files
    if split == "train" and not files:
        raise ConfigError("no training data: set data.task (a built-in task) or data.train_files")
    return [row for f in files for row in read_rows(f)]


def build_examples(tokenizer: Any, rows: Sequence[dict[str, Any]], max_length: int, end_ids: Sequence[int]):
    """Tokenise rows; truncate to ``max_length``; drop examples left with nothing to learn."""
    examples, truncated, dropped = [], 0, 0
    for i, row in enumerate(rows):
        ex = tokenize_chat(tokenizer, chat_of_row(row, f"row {i}"), end_ids)
        if len(ex) > max_length:
            truncated += 1
            ex = Example(ex.input_ids[:max_length], ex.loss_mask[:max_length])
        if sum(ex.loss_mask[1:]) == 0:  # the first token is never a target
            dropped += 1
            continue
        examples.append(ex)
    return examples, {"truncated_examples": truncated, "dropped_examples": dropped}


# ---------------------------------------------------------------------------------------------
# Batching: packed optimizer steps and micro-batches
# ---------------------------------------------------------------------------------------------


def plan_steps(lengths: Sequence[int], epochs: float, batch_tokens: int, seed: int) -> list[list[int]]:
    """Example indices of every optimizer step: each epoch reshuffled (seeded), packed greedily
    into steps of at most ``batch_tokens`` tokens; a fractional last epoch takes a prefix."""
    n_total = round(epochs * len(lengths))
    stream: list[int] = []
    for epoch in range(math.ceil(epochs)):
        order = list(range(len(lengths)))
        random.Random(f"sft:{seed}:{epoch}").shuffle(order)
        stream.extend(order)
    steps: list[list[int]] = []
    cur: list[int] = []
    cur_tokens = 0
    for i in stream[:n_total]:
        if cur and cur_tokens + lengths[i] > batch_tokens:
            steps.append(cur)
            cur, cur_tokens = [], 0
        cur.append(i)
        cur_tokens += lengths[i]
    if cur:
        steps.append(cur)
    return steps


def micro_batches(
    examples: Sequence[Example], indices: Sequence[int], micro_tokens: int
) -> Iterator[list[Example]]:
    cur: list[Example] = []
    size = 0
    for i in indices:
        ex = examples[i]
        if cur and size + len(ex) > micro_tokens:
            yield cur
            cur, size = [], 0
        cur.append(ex)
        size += len(ex)
    if cur:
        yield cur


def packed_batch(batch: Sequence[Example], row_length: int, pad_id: int) -> tuple[PackedBatch, torch.Tensor]:
    """Packed rows of a micro-batch and its target mask [R, L]: target[r, t] says whether the
    prediction of the token at t+1 (same example) is trained on."""
    packed = pack_rows([ex.input_ids for ex in batch], row_length, pad_id)
    target = packed.scatter([[*ex.loss_mask[1:], 0] for ex in batch])
    return packed, target


# ---------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------


@dataclass
class SFTResult:
    """What a finished SFT run leaves: ``model_dir`` is the final plain HF directory."""

    out_dir: Path
    model_dir: Path
    steps: int
    seconds: float
    metrics: dict[str, float] = field(default_factory=dict)


def run_sft(cfg: SFTConfig) -> SFTResult:
    """Train with ``cfg`` and return where the model went and the final metrics."""
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend, stop_token_ids
    from klear.tasks.evaluate import exact_match_accuracy

    t_start = time.perf_counter()
    tc = cfg.trainer
    # 1. Seeds, threads, output directory and the resolved config.
    torch.manual_seed(cfg.run.seed)
    quiet_transformers()
    if tc.num_threads is not None:
        torch.set_num_threads(tc.num_threads)
    out = Path(cfg.run.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out)

    # 2. Model and tokenizer (the tiny model is built from the seed when no path is given).
    device = pick_device()
    model_dir = resolve_model_dir(cfg.model, out, cfg.run.seed)
    model, tokenizer = load_model(model_dir, cfg.model, device)
    _, amp_dtype = precision(cfg.model, device)
    end_ids = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id

    # 3. Data: chats -> token ids with assistant masks; held-out rows for evaluation.
    examples, data_stats = build_examples(tokenizer, load_rows(cfg.data, "train"), tc.max_length, end_ids)
    if not examples:
        raise ValueError("no training examples: every row was empty or had no assistant tokens")
    val_rows = [r for r in load_rows(cfg.data, "test") if "reward_model" in r]

    # 4. Plan: every optimizer step's examples, packed by token count.
    steps = plan_steps([len(e) for e in examples], tc.epochs, tc.batch_tokens, cfg.run.seed)
    total_steps = min(len(steps), tc.max_steps or len(steps))
    steps = steps[:total_steps]

    # 5. Optimizer and schedule.
    optimizer = make_optimizer(model, cfg.optim)
    schedule = make_scheduler(optimizer, cfg.optim, total_steps)

    backend = HFRolloutBackend(model, tokenizer, seed=cfg.run.seed, max_batch_size=tc.eval_batch_size)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=tc.eval_max_new_tokens)

    def evaluate() -> dict[str, float]:
        if not val_rows:
            return {}
        res = exact_match_accuracy(backend, val_rows, greedy)
        return {f"val/{k}": v for k, v in res.items()}

    metrics_file = MetricsLogger(out, cfg.logging, cfg.model_dump(mode="json"))
    metrics_file.log(
        0, {"event": "start", "examples": len(examples), "total_steps": total_steps, **data_stats}
    )
    last: dict[str, float] = {}
    examples_seen = 0
    model.train()
    with _progress(cfg.logging.progress) as bar:
        task = bar.add_task("sft", total=total_steps, status="")
        for step, indices in enumerate(steps):
            t0 = time.perf_counter()
            # 6. Forward/backward over packed micro-batches; the loss is the mean NLL over every
            #    assistant token of the step, so each micro-batch's sum is divided by the step total.
            n_targets = sum(sum(examples[i].loss_mask[1:]) for i in indices)
            loss_sum = 0.0
            step_tokens = 0
            for batch in micro_batches(examples, indices, tc.micro_batch_tokens):
                packed, target = packed_batch(batch, tc.max_length, pad_id)
                packed, target = packed.to(device), target.to(device)
                with autocast(device, amp_dtype):
                    logp = token_logprobs(
                        model,
                        packed.input_ids,
                        packed.position_ids,
                        chunk_tokens=tc.logits_chunk_tokens,
                        mask=target,
                    )
                nll = -(logp * target).sum()
                (nll / n_targets).backward()
                loss_sum += float(nll.detach())
                step_tokens += sum(len(ex) for ex in batch)

            # 7. Clip, update, advance the schedule.
            grad_norm = torch.nn.utils.clip_grad_norm_(
                model.parameters(), cfg.optim.grad_clip or float("inf")
            )
            lr = optimizer.param_groups[0]["lr"]
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            schedule.step()

            # 8. Metrics, progress, periodic evaluation and checkpoints.
            examples_seen += len(indices)
            dt = time.perf_counter() - t0
            last = {
                "step": step + 1,
                "epoch": examples_seen / len(examples),
                "loss": loss_sum / n_targets,
                "lr": lr,
                "grad_norm": float(grad_norm),
                "tokens": step_tokens,
                "loss_tokens": n_targets,
                "tokens_per_s": step_tokens / dt,
                "seconds": time.perf_counter() - t_start,
            }
            if not math.isfinite(last["loss"]):
                raise FloatingPointError(f"SFT loss is {last['loss']} at step {step + 1}")
            is_last = step + 1 == total_steps
            if tc.eval_every and (step + 1) % tc.eval_every == 0 and not is_last:
                last.update(evaluate())
                model.train()
            if (step + 1) % tc.log_every == 0 or is_last or "val/accuracy" in last:
                metrics_file.log(step + 1, last)
            if tc.save_every and (step + 1) % tc.save_every == 0 and not is_last:
                save_model(model, tokenizer, out / "checkpoints" / f"step_{step + 1}")
            bar.update(task, advance=1, status=f"loss {last['loss']:.3f} lr {lr:.2e}")

    # 9. Final model, held-out evaluation, summary.
    final_dir = save_model(model, tokenizer, out / "final")
    last.update(evaluate())
    last["seconds"] = time.perf_counter() - t_start
    metrics_file.log(total_steps, {"event": "end", **last})
    metrics_file.close()
    plot_curves(read_metrics(metrics_file.path), SFT_CURVES, out / "curves.png", title=f"{cfg.run.name}: SFT")
    summary = {"model_dir": str(final_dir), "steps": total_steps, **last, **data_stats}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return SFTResult(out, final_dir, total_steps, last["seconds"], last)


def _progress(enabled: bool):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        disable=not enabled,
    )
