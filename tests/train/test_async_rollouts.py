"""trainer.async_rollouts: the producer's version schedule, stale batches dropped, the sampler process,
and an asynchronous run killed with SIGKILL that resumes to the uninterrupted run's metrics and weights."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import yaml

from klear.config import RLConfig, build_config
from klear.train.metrics import read_metrics
from klear.train.rl import train_rl
from klear.train.rollouts import AsyncRollouts, Batch, StaleRolloutsError
from tests.train.test_rl import ROOT, comparable, rl_config, weights


class FakeSampler:
    """Records the weights it is given; ``weights`` are plain version numbers here."""

    def __init__(self) -> None:
        self.loaded: list[int] = []

    def update_weights(self, weights: int) -> None:
        self.loaded.append(weights)


def _rollouts(k: int, barriers: set[int], total: int, cls=AsyncRollouts, slow: float = 0.0):
    sampler = FakeSampler()
    made: list[tuple[int, int]] = []  # (step asked for, version the sampler held)

    def produce(step: int) -> Batch:
        time.sleep(slow)
        made.append((step, rollouts.held))
        return Batch([], [], 1)

    rollouts = cls(produce, sampler, k, 0, barrier=lambda s: s in barriers, total_steps=total)
    return rollouts, sampler, made


def _run(rollouts, total: int) -> list[tuple[int, dict]]:
    trained = []
    for step in range(1, total + 1):
        batch, info = rollouts.next(step)
        trained.append((batch.version, info))
        rollouts.publish(step, step)  # the weights after `step` updates, named by their version
    rollouts.close()
    return trained


def test_batches_are_sampled_with_the_weights_k_updates_old_and_barriers_drain():
    # K = 1, step 3 validates or checkpoints: batch 1 and 2 with the start weights, 3 with those of step 1,
    # nothing sampled past step 3 until it ends, so batch 4 (and 5) use step 3's weights
    rollouts, sampler, made = _rollouts(1, {3}, 5)
    trained = _run(rollouts, 5)
    assert [v for v, _ in trained] == [0, 0, 1, 3, 3]
    assert [info["async/staleness"] for _, info in trained] == [0, 1, 1, 0, 1]
    assert all(info["async/dropped_batches"] == 0 for _, info in trained)
    assert made == [(1, 0), (2, 0), (3, 1), (4, 3), (5, 3)]
    # at a barrier (step 3, and the last step) the idle sampler loads the new weights at once: validation
    # samples with them
    assert sampler.loaded == [1, 3, 5]


def test_k_2_keeps_two_batches_ahead():
    rollouts, _, made = _rollouts(2, set(), 6)
    trained = _run(rollouts, 6)
    assert [v for v, _ in trained] == [0, 0, 0, 1, 2, 3]
    assert max(info["async/staleness"] for _, info in trained) == 2
    assert [s for s, _ in made] == [1, 2, 3, 4, 5, 6]


class Lagging(AsyncRollouts):
    """A sampler whose new weights do not arrive for its first ``skip`` loads (a lost or late sync)."""

    skip = 2

    def _load(self, need: int) -> None:
        if self.skip > 0 and need > self.held:
            self.skip -= 1
            return
        super()._load(need)


def test_a_batch_more_than_k_versions_old_is_dropped_and_counted():
    # no barrier: without the lag the versions would be 0 0 1 2 3 4; the lagging sampler samples the
    # batches asked for at steps 2 and 3 with version 0, so step 3 would train 2 versions behind
    rollouts, _, made = _rollouts(1, set(), 6, cls=Lagging)
    trained = _run(rollouts, 6)
    dropped = [info["async/dropped_batches"] for _, info in trained]
    assert sum(dropped) >= 1
    for step, (version, info) in enumerate(trained, start=1):
        assert info["async/staleness"] == (step - 1) - version <= 1  # nothing stale was trained on
    assert len(made) == 6 + sum(dropped)  # a dropped batch is replaced by a fresh one


def test_a_sampler_that_never_gets_new_weights_stops_the_run():
    class Stuck(AsyncRollouts):
        def _load(self, need: int) -> None:
            pass

    rollouts, _, _ = _rollouts(1, set(), 10, cls=Stuck)
    with pytest.raises(StaleRolloutsError, match="not receiving new weights"):
        _run(rollouts, 10)


def test_a_producer_error_reaches_the_loop():
    def produce(step: int) -> Batch:
        raise RuntimeError("reward pool gone")

    rollouts = AsyncRollouts(produce, FakeSampler(), 1, 0, barrier=lambda s: False, total_steps=3)
    with pytest.raises(RuntimeError, match="reward pool gone"):
        rollouts.next(1)
    rollouts.close()


def test_the_learner_overlaps_the_producer():
    # each batch takes 0.1 s to make, the "learner" 0.25 s per step: with K = 1 it waits only for the
    # first batch, then finds each next one ready (made while it trained)
    rollouts, _, _ = _rollouts(1, set(), 4, slow=0.1)
    waits = []
    for step in range(1, 5):
        _, info = rollouts.next(step)
        waits.append(info["time/wait"])
        time.sleep(0.25)
        rollouts.publish(step, step)
    rollouts.close()
    assert waits[0] >= 0.09 and max(waits[1:]) < 0.05


# --- the sampler process ---------------------------------------------------------------------


def test_the_sampler_process_samples_what_a_backend_here_samples(tmp_path):
    from klear.models.loading import load_model, pick_device, resolve_model_dir
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend
    from klear.tasks import task_rows
    from klear.train.sampler_process import ProcessSampler, SamplerLost

    cfg = build_config(RLConfig, rl_config(tmp_path, trainer={"async_rollouts": 1}))
    model_dir = resolve_model_dir(cfg.model, tmp_path, 0)
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    here = HFRolloutBackend(model, tokenizer, seed=5)
    there = ProcessSampler(cfg, model_dir, seed=5)
    try:
        prompts = [r["prompt"] for r in task_rows("addition", "train", 3, 0)]
        sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=12)

        def same() -> bool:
            a, b = here.generate(prompts, sampling), there.generate(prompts, sampling)
            assert [r.response_ids for r in a] != [] and here.get_rng_state() == there.get_rng_state()
            return [r.response_ids for r in a] == [r.response_ids for r in b]

        assert same()
        with torch.no_grad():  # new weights reach the child: both sample the changed policy alike
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        assert not same() and not same()  # the child still has the old weights
        there.update_weights(model)
        assert same()
        os.kill(there.pid, signal.SIGKILL)
        with pytest.raises(SamplerLost, match="died while generating"):
            there.generate(prompts, sampling)
    finally:
        there.close()


def test_prompts_are_split_into_contiguous_near_equal_parts():
    from klear.train.sampler_process import split

    assert split(5, 2) == [(0, 3), (3, 5)]
    assert split(6, 3) == [(0, 2), (2, 4), (4, 6)]
    assert split(2, 3) == [(0, 1), (1, 2)]  # no empty part
    assert split(1, 1) == [(0, 1)]


def test_two_sampler_processes_sample_what_one_backend_samples(tmp_path):
    from klear.models.loading import load_model, pick_device, resolve_model_dir
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend
    from klear.tasks import task_rows
    from klear.train.sampler_process import ProcessSampler, SamplerLost

    cfg = build_config(RLConfig, rl_config(tmp_path, trainer={"async_rollouts": 1, "sampler_processes": 2}))
    model_dir = resolve_model_dir(cfg.model, tmp_path, 0)
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    here = HFRolloutBackend(model, tokenizer, seed=5)
    there = ProcessSampler(cfg, model_dir, seed=5, processes=2)
    try:
        prompts = [r["prompt"] for r in task_rows("addition", "train", 3, 0)]  # split 2 + 1
        sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=12)

        def same(groups=None) -> bool:
            a, b = here.generate(prompts, sampling, groups), there.generate(prompts, sampling, groups)
            assert [(r.group, r.sample) for r in a] == [(r.group, r.sample) for r in b]
            if [r.response_ids for r in a] != [r.response_ids for r in b]:
                return False
            # a part has fewer rows than the whole batch: the same log-probs up to the matmul's rounding
            # (1.4e-5 seen on a log-prob of -3.09 after the weights were perturbed)
            for x, y in zip(a, b, strict=True):
                assert x.logprobs == pytest.approx(y.logprobs, rel=1e-5, abs=1e-5)
            return True

        assert same() and same(groups=[7, "x", 9])
        assert len(set(there.pids)) == 2 and there.cpu_seconds() > 0
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p) * 0.5)
        assert not same()  # neither child has the new weights yet
        there.update_weights(model)
        assert same()  # both have them (the prompts of either part would differ otherwise)
        os.kill(there.pids[1], signal.SIGKILL)
        with pytest.raises(SamplerLost, match="died while generating"):
            there.generate(prompts, sampling)
    finally:
        there.close()


def test_sampler_processes_is_for_one_machine():
    from klear.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="sampler_processes"):
        load_config(RLConfig, None, ["trainer.sampler_processes=0"])
    with pytest.raises(ConfigError, match="rollout actors sample"):
        load_config(RLConfig, None, ["trainer.sampler_processes=2", "dist.backend=ray"])


# --- a whole asynchronous run ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_async_run_killed_after_a_checkpoint_resumes_to_the_uninterrupted_run(tmp_path, processes):
    trainer = {"total_steps": 4, "save_every": 2, "async_rollouts": 1, "sampler_processes": processes}
    train_rl(build_config(RLConfig, rl_config(tmp_path / "a", trainer=trainer)))
    uninterrupted = read_metrics(tmp_path / "a" / "metrics.jsonl")
    # the overlap happened: steps 2 and 4 trained on batches sampled one update behind
    assert [r["async/staleness"] for r in uninterrupted] == [0.0, 1.0, 0.0, 1.0]
    assert all(r["async/dropped_batches"] == 0 for r in uninterrupted)

    slow = {"num_workers": 1, "custom": {"klear/addition": "tests.train.fixture_rewards:slow_parity"}}
    cfg_b = rl_config(tmp_path / "b", trainer=trainer, reward=slow)
    recipe = tmp_path / "b.yaml"
    recipe.write_text(yaml.safe_dump(cfg_b))
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "klear", "rl", str(recipe)], env=env, cwd=ROOT)
    latest = tmp_path / "b" / "checkpoints" / "latest"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if latest.is_file() and latest.read_text().strip() == "step_000002":
            break
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # batch 3 is being sampled (or scored) right now
    proc.wait()
    assert latest.read_text().strip() == "step_000002"

    train_rl(build_config(RLConfig, cfg_b))
    resumed = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2, 3, 4]
    for got, want in zip(resumed[2:], uninterrupted[2:], strict=True):
        got, want = comparable(got), comparable(want)
        assert got.keys() == want.keys()
        for key in ("reward/mean", "reward/accuracy", "response/length_mean", "batch/gen_batches"):
            assert got[key] == want[key], key
        assert got == pytest.approx(want, rel=1e-5, abs=1e-7)
    a = weights(tmp_path / "a" / "checkpoints" / "step_000004" / "model")
    b = weights(tmp_path / "b" / "checkpoints" / "step_000004" / "model")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-5)
