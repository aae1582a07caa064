"""Data-parallel learner without Ray: 2 gloo ranks give the one-rank gradient of the whole mini-batch."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from klear.config import RLConfig, build_config
from klear.models.tiny import build_tiny_model
from klear.models.loading import load_model, pick_device
from klear.train.common import make_optimizer
from klear.train.learner import (
    Sample,
    allreduce_grads,
    fsdp_shard,
    merge_stats,
    old_logprobs,
    pad_id,
    shard,
    update_policy,
)
from klear.types import RewardResult, Rollout


def _config(tmp: Path, agg: str) -> RLConfig:
    agg, _, packed = agg.partition("+")  # "token-mean+packed": trainer.pack_sequences
    return build_config(
        RLConfig,
        {
            "run": {"out_dir": str(tmp)},
            "model": {"tiny": True, "dtype": "float32"},
            "rollout": {"n": 3, "max_new_tokens": 16},
            # all groups in one mini-batch; tiny micro-batches so each rank runs several
            "trainer": {"ppo_mini_batch_size": 8, "micro_batch_tokens": 40, "pack_sequences": bool(packed)},
            "loss": {"type": "gppo", "sft_alpha": 0.1, "agg": agg},
            "optim": {"lr": 1e-3, "grad_clip": None},
        },
    )


def _kept(tokenizer) -> list[list[Sample]]:
    """Three groups of three rollouts of different lengths, rewards and advantages."""
    kept = []
    for g, question in enumerate(["12+34", "5+7", "100+230"]):
        prompt = tokenizer.encode(f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n")
        group = []
        for j, text in enumerate(
            ["<think>4+2=6 so 46</think>46", "<think>9", "<think>1+1=2, carry 1, so"][:3]
        ):
            ids = tokenizer.encode(text)[: 5 + 3 * j + g]
            ro = Rollout(prompt, ids, [], text, False, group=g, sample=j)
            res = RewardResult(score=float(j == 0), correct=j == 0)
            group.append(Sample({}, ro, res, res.score, advantage=[1.2, -0.4, -0.8][j] * (1 + g)))
        kept.append(group)
    return kept


def _grads(
    model_dir: str, agg: str, rank: int, world: int, port: int | None, strategy: str = "ddp"
) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    cfg = _config(Path(model_dir), agg)
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    kept = _kept(tokenizer)
    samples = [s for g in kept for s in g]
    # the old policy: log-probs shifted so that some ratios fall outside the clip range
    for i, (s, lp) in enumerate(
        zip(samples, old_logprobs(model, [s.rollout for s in samples], pad_id(tokenizer), cfg), strict=True)
    ):
        s.old_logp = lp + (0.5 if i % 2 else -0.5)
    captured: dict[str, torch.Tensor] = {}
    sharded = strategy == "fsdp" and world > 1

    def capture(m: torch.nn.Module) -> None:
        if world > 1 and not sharded:
            allreduce_grads(m)
        for k, p in m.named_parameters():  # FSDP: gather the reduce-scattered shards (collective)
            captured[k] = (p.grad.full_tensor() if sharded else p.grad).clone()

    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        if sharded:
            fsdp_shard(model, world, torch.device("cpu"))
        stats = update_policy(
            model,
            make_optimizer(model, cfg.optim),
            kept,
            pad_id(tokenizer),
            cfg,
            rank=rank,
            world=world,
            allreduce=capture,
            lockstep=sharded,
        )
    finally:
        if world > 1:
            dist.destroy_process_group()
    captured["__stats__"] = stats  # type: ignore[assignment]
    return captured


def _rank_main(rank: int, model_dir: str, agg: str, port: int, out: str, strategy: str) -> None:
    torch.set_num_threads(1)
    torch.save(_grads(model_dir, agg, rank, 2, port, strategy), f"{out}/rank{rank}.pt")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


def test_shards_cover_every_index_once():
    for n in range(7):
        for world in (1, 2, 3):
            parts = [shard(n, r, world) for r in range(world)]
            assert sorted(i for p in parts for i in p) == list(range(n))


@pytest.mark.slow
@pytest.mark.parametrize(
    ("strategy", "agg"),
    [
        ("ddp", "token-mean"),
        ("fsdp", "token-mean"),
        ("fsdp", "seq-mean-token-mean"),
        ("fsdp", "token-mean+packed"),
    ],
)
def test_two_gloo_ranks_give_the_one_rank_gradient(model_dir, tmp_path, strategy, agg):
    """Replicas (one all-reduce) and FSDP2 shards (reduce-scatter, lockstep passes) alike."""
    one = _grads(model_dir, agg, 0, 1, None)
    args = (model_dir, agg, _free_port(), str(tmp_path), strategy)
    mp.start_processes(_rank_main, args=args, nprocs=2, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    nonzero = 0
    for name, g in one.items():
        if name == "__stats__":
            continue
        for r in ranks:
            torch.testing.assert_close(r[name], g, atol=1e-6, rtol=1e-5, msg=lambda m, n=name: f"{n}: {m}")
        nonzero += int(g.abs().sum() > 0)
    assert nonzero > 5  # the comparison is not between zero tensors
    # the ranks' merged metrics equal the one rank's (loss is a global sum, means are token-weighted)
    merged = merge_stats([r["__stats__"] for r in ranks])
    single = merge_stats([one["__stats__"]])
    assert merged.keys() == single.keys()
    assert merged == pytest.approx(single, rel=1e-5, abs=1e-6)
    assert single["actor/clip_frac_high"] + single["actor/clip_frac_low"] > 0  # clipped tokens took part


def _mixed_precision_step(rank: int, world: int, port: int, model_dir: str, out: str) -> None:
    """One update at the 8B recipes' settings: float32 master weights, bfloat16 compute (FSDP2
    param_dtype over ranks, autocast on one device), activation checkpointing, lr 1e-6, decay 0.1."""
    torch.set_num_threads(1)
    cfg = build_config(
        RLConfig,
        {
            "run": {"out_dir": out},
            "model": {
                "tiny": True,
                "dtype": "float32",
                "compute_dtype": "bfloat16",
                "gradient_checkpointing": True,  # as in the recipes: composes with FSDP2 units
            },
            "rollout": {"n": 3, "max_new_tokens": 16},
            "trainer": {"ppo_mini_batch_size": 8, "micro_batch_tokens": 40},
            "loss": {"type": "gppo", "sft_alpha": 0.1},
            "optim": {"lr": 1e-6, "weight_decay": 0.1, "grad_clip": 1.0},
        },
    )
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    before = {k: v.clone() for k, v in model.state_dict().items()}
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
        fsdp_shard(model, world, torch.device("cpu"), torch.bfloat16)
    optimizer = make_optimizer(model, cfg.optim)  # before any forward, as LocalLearner does
    kept = _kept(tokenizer)
    samples = [s for g in kept for s in g]
    mine = old_logprobs(model, [s.rollout for s in samples], pad_id(tokenizer), cfg)
    for i, (s, lp) in enumerate(zip(samples, mine, strict=True)):
        s.old_logp = lp + (0.3 if i % 2 else -0.3)
    update_policy(model, optimizer, kept, pad_id(tokenizer), cfg, rank=rank, world=world, lockstep=world > 1)
    grads = {k: (p.grad.full_tensor() if world > 1 else p.grad).float() for k, p in model.named_parameters()}
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        after = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        dist.destroy_process_group()
    else:
        after = model.state_dict()
    if rank == 0:
        assert all(v.dtype == torch.float32 for v in after.values())
        changed = sum(int((before[k] != after[k]).sum()) for k in after)
        torch.save({"changed": changed / sum(v.numel() for v in after.values()), "grads": grads}, out)


@pytest.mark.slow
def test_fsdp_mixed_precision_learns_at_lr_1e6_like_one_device(model_dir, tmp_path):
    """bf16 compute with float32 shards and float32 gradient reduction: every weight moves at
    lr 1e-6, and the gradient is the one-device autocast gradient up to bf16 rounding."""
    _mixed_precision_step(0, 1, 0, model_dir, str(tmp_path / "one.pt"))
    args = (2, _free_port(), model_dir, str(tmp_path / "two.pt"))
    mp.start_processes(_mixed_precision_step, args=args, nprocs=2, start_method="spawn")
    one, two = (torch.load(tmp_path / f, weights_only=False) for f in ("one.pt", "two.pt"))
    assert one["changed"] >= 0.99 and two["changed"] >= 0.99
    for name, g in one["grads"].items():
        scale = float(g.abs().max())
        assert scale > 0, name
        # bf16 carries 8 significant bits: sums taken in another order differ at the percent level
        torch.testing.assert_close(two["grads"][name], g, rtol=0, atol=0.05 * scale)
