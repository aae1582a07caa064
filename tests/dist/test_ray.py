"""klear.dist on a local Ray cluster: same metrics as one process, faults handled, checkpoints portable."""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from klear.config import RLConfig, build_config
from klear.tasks import task_rows
from klear.train.metrics import read_metrics
from klear.train.rl import train_rl
from tests.train.test_rl import comparable, rl_config

ray = pytest.importorskip("ray", reason="klear[ray] is not installed")

pytestmark = pytest.mark.slow

DIST = {"backend": "ray", "rollout_workers": 2, "reward_workers": 2, "learner_ranks": 2}
# metrics that count or are computed from the sampled tokens and rewards alone: equal exactly
EXACT = ("reward/mean", "reward/accuracy", "response/length_mean", "batch/kept_groups", "batch/gen_batches")


@pytest.fixture(scope="module")
def cluster():
    root = str(Path(__file__).resolve().parents[2])
    ray.init(
        num_cpus=8,
        include_dashboard=False,
        object_store_memory=256 * 2**20,
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([root, os.path.join(root, "src")])}},
    )
    yield
    ray.shutdown()


def _assert_same(got: dict, want: dict) -> None:
    got, want = comparable(got), comparable(want)
    assert got.keys() == want.keys()
    for key in EXACT:
        assert got[key] == want[key], key
    # 2 ranks sum their shards' gradients in another order than one rank: rounding only
    assert got == pytest.approx(want, rel=1e-4, abs=1e-5)


def test_two_of_everything_gives_the_single_process_metrics_and_resumes_on_one_rank(cluster, tmp_path):
    single = train_rl(build_config(RLConfig, rl_config(tmp_path / "one", trainer={"total_steps": 3})))
    dist_cfg = rl_config(tmp_path / "ray", dist=DIST)
    dist = train_rl(build_config(RLConfig, dist_cfg))
    assert [h["step"] for h in dist.history] == [1, 2]
    for got, want in zip(dist.history, single.history[:2], strict=True):
        _assert_same(got, want)
    # the 2-rank checkpoint of step 2, resumed by one process, gives the single run's step 3
    resumed_cfg = {
        **dist_cfg,
        "dist": {"backend": "none"},
        "trainer": {**dist_cfg["trainer"], "total_steps": 3},
    }
    train_rl(build_config(RLConfig, resumed_cfg))
    rows = read_metrics(tmp_path / "ray" / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3]
    _assert_same(rows[2], single.history[2])


def _slow_config(tmp_path: Path, **dist) -> RLConfig:
    slow = {"num_workers": 1, "custom": {"klear/addition": "tests.train.fixture_rewards:slow_parity"}}
    return build_config(RLConfig, rl_config(tmp_path, reward=slow, dist={**DIST, **dist}))


def _kill_later(pid: int, delay: float) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(delay), os.kill(pid, signal.SIGKILL)))
    thread.start()
    return thread


def test_a_reward_worker_killed_mid_step_is_replaced_and_every_reward_arrives(cluster, tmp_path):
    from klear.dist.groups import RewardGroup
    from klear.rewards.pool import RewardPool

    cfg = _slow_config(tmp_path)
    rows = task_rows("addition", "train", 40, 0)
    responses = [f"<think>x</think>{'7' * (i % 5)}" for i in range(len(rows))]
    with RewardPool(cfg.reward) as pool:
        want = [r.score for r in pool.score(rows, responses)]
    group = RewardGroup(cfg)
    try:
        victim = group.pids()[0]
        killer = _kill_later(victim, 0.5)  # 20 items x 50 ms each: well inside the call
        got = group.score(rows, responses)
        killer.join()
        assert [r.score for r in got] == want
        assert all(not r.flags for r in got)
        assert group.actors.restarts == 1
        assert victim not in group.pids()
    finally:
        group.close()


def test_a_rollout_worker_killed_between_calls_is_replaced_with_current_weights(cluster, tmp_path):
    from klear.dist.groups import RolloutGroup
    from klear.models.tiny import build_tiny_model
    from klear.rollout import SamplingParams

    cfg = _slow_config(tmp_path)
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    prompts = [r["prompt"] for r in task_rows("addition", "train", 6, 0)]
    params = SamplingParams(n=2, max_new_tokens=8, seed=5)
    group = RolloutGroup(cfg, model_dir)
    try:
        before = group.generate(prompts, params)
        # new weights (version 1), then one worker dies: its replacement must sample with version 1
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(model_dir)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05 * torch.randn_like(p))
        group.update_weights(model)
        after = group.generate(prompts, params)
        os.kill(group.pids()[1], signal.SIGKILL)
        again = group.generate(prompts, params)
        assert group.actors.restarts == 1
        assert [r.response_ids for r in again] == [r.response_ids for r in after]
        assert [r.response_ids for r in after] != [r.response_ids for r in before]
    finally:
        group.close()


def test_a_lost_learner_rank_fails_the_step_cleanly(cluster, tmp_path):
    from klear.dist.groups import LearnerGroup, LearnerLost
    from klear.models.tiny import build_tiny_model
    from tests.train.test_rl import _hand_samples

    cfg = _slow_config(tmp_path)
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    group = LearnerGroup(cfg, model_dir)
    try:
        from transformers import AutoTokenizer

        kept = _hand_samples(AutoTokenizer.from_pretrained(model_dir), truncated=False)
        group.old_logprobs([s for g in kept for s in g])
        assert group.update(kept)["actor/updates"] == 1.0
        pids = group.pids()
        os.kill(pids[1], signal.SIGKILL)
        t0 = time.monotonic()
        with pytest.raises(LearnerLost, match=r"learner rank 1 died.*resume from the last checkpoint"):
            group.update(kept)
        assert time.monotonic() - t0 < 60  # not the collective's timeout
        with pytest.raises(LearnerLost):  # the group stays failed
            group.lr()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and _alive(pids[0]):
            time.sleep(0.2)
        assert not _alive(pids[0])  # the surviving rank was stopped, not left in a collective
    finally:
        group.close()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("strategy", ["fsdp", "ddp"])
def test_two_learner_ranks_take_the_one_rank_optimizer_step(cluster, tmp_path, strategy):
    """After two updates (AdamW on FSDP shards, or on replicas) the weights equal one rank's."""
    from transformers import AutoTokenizer

    from klear.dist.groups import LearnerGroup
    from klear.models.tiny import build_tiny_model
    from klear.train.learner import LocalLearner
    from tests.train.test_rl import _hand_samples

    cfg = build_config(
        RLConfig,
        rl_config(tmp_path, trainer={"ppo_mini_batch_size": 1}, dist={**DIST, "learner_strategy": strategy}),
    )
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    kept = _hand_samples(AutoTokenizer.from_pretrained(model_dir), truncated=False)
    one = LocalLearner(cfg, model_dir)
    initial = {k: v.clone() for k, v in one.full_state().items()}
    one.old_logprobs([s for g in kept for s in g])
    want_metrics = one.update(kept)
    group = LearnerGroup(cfg, model_dir)
    try:
        group.old_logprobs([s for g in kept for s in g])
        got_metrics = group.update(kept)
        got = ray.get(group.weights())
    finally:
        group.close()
    want = one.full_state()
    assert got.keys() == want.keys()
    moved = 0
    for k in want:
        # gradients agree to ~1e-7; Adam's m / sqrt(v) magnifies that where a gradient is ~0 (seen:
        # 1.9e-6 on 1 of 65536 weights), while a wrong sum or step moves nearly every weight by ~lr = 1e-3
        torch.testing.assert_close(got[k], want[k], atol=1e-5, rtol=1e-4, msg=lambda m, k=k: f"{k}: {m}")
        moved += int(not torch.equal(want[k], initial[k]))
    assert moved > 5
    assert got_metrics["actor/updates"] == want_metrics["actor/updates"] == 2.0
    assert got_metrics == pytest.approx(want_metrics, rel=1e-5, abs=1e-6)


def test_collective_weight_sync_is_bit_identical_and_survives_a_replaced_actor(cluster, tmp_path):
    """FSDP learner (2 ranks) -> 2 rollout actors by broadcast in 10 KiB buckets (smaller than most
    tensors): every actor ends with rank 0's full weights bit for bit, at the group's version."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from klear.dist.groups import LearnerGroup, RolloutGroup
    from klear.dist.weight_sync import digest
    from klear.models.tiny import build_tiny_model
    from klear.rollout import SamplingParams
    from tests.train.test_rl import _hand_samples

    cfg = _slow_config(tmp_path, weight_sync_bucket_mb=10 / 1024)
    model_dir = build_tiny_model(tmp_path / "tiny", seed=0)
    local = AutoModelForCausalLM.from_pretrained(model_dir)

    def learner_digest(learner: LearnerGroup) -> str:
        local.load_state_dict(ray.get(learner.state_ref()), strict=False)
        return digest(local)

    learner, sampler = LearnerGroup(cfg, model_dir), RolloutGroup(cfg, model_dir)
    try:
        sampler.attach_weight_sync(learner)
        start = learner_digest(learner)
        assert sampler.digests() == [start, start]
        kept = _hand_samples(AutoTokenizer.from_pretrained(model_dir), truncated=False)
        learner.old_logprobs([s for g in kept for s in g])
        learner.update(kept)
        sampler.update_weights(learner.weights())
        want = learner_digest(learner)
        assert want != start and sampler.version == 1
        assert sampler.digests() == [want, want]
        prompts = [r["prompt"] for r in task_rows("addition", "train", 4, 0)]
        sampler.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=5))  # version 1 everywhere
        # a handle taken before another update is refused, not silently sent newer weights
        old = learner.weights()
        learner.update(kept)
        with pytest.raises(RuntimeError, match="current weights only"):
            sampler.update_weights(old)
        # an actor dies between calls: its replacement gets version 1 through the object store,
        # and the next sync re-forms the group with it
        os.kill(sampler.pids()[1], signal.SIGKILL)
        sampler.generate(prompts, SamplingParams(n=2, max_new_tokens=4, seed=5))
        assert sampler.actors.restarts == 1
        assert sampler.digests() == [want, want]  # a survivor's copy: version 1, not the learner's newer
        sampler.update_weights(learner.weights())
        want = learner_digest(learner)
        assert sampler.version == 2 and sampler.digests() == [want, want]
    finally:
        sampler.close()
        learner.close()


def test_async_rollouts_on_ray_give_the_single_process_async_run(cluster, tmp_path):
    # the producer thread drives the rollout and reward actors while the learner rank trains; the schedule
    # and the keyed sampling are the same as with the sampler process, so the runs are the same
    trainer = {"total_steps": 3, "save_every": 0, "async_rollouts": 1}
    single = train_rl(build_config(RLConfig, rl_config(tmp_path / "one", trainer=trainer)))
    # a collective sync sends only the learner's current weights: async loads older ones from the object store
    dist = {"backend": "ray", "rollout_workers": 2, "reward_workers": 1, "learner_ranks": 1}
    dist["weight_sync"] = "object_store"
    on_ray = train_rl(build_config(RLConfig, rl_config(tmp_path / "ray", trainer=trainer, dist=dist)))
    assert [h["async/staleness"] for h in on_ray.history] == [0.0, 1.0, 1.0]
    for got, want in zip(on_ray.history, single.history, strict=True):
        _assert_same(got, want)
