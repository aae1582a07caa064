"""SFT on several ranks (torchrun's environment, gloo on CPU): the same update as one device, resumable on any count."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file

from klear.config import ConfigError, SFTConfig, build_config
from klear.train.parallel import ranks_from_env
from klear.train.sft import check_rank_settings, run_sft
from klear.train.sft_data import rank_share


def _cfg(out: Path, strategy: str = "fsdp", **overrides) -> SFTConfig:
    return build_config(
        SFTConfig,
        {
            "run": {"out_dir": str(out), "seed": 0},
            "model": {"tiny": True, "dtype": "float32"},
            "data": {"task": "addition", "train_size": 24, "val_size": 2},
            "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 1, "weight_decay": 0.1},
            # ~5 micro-batches per step: the ranks get unequal shares (idle passes under FSDP)
            "trainer": {
                "max_steps": 2,
                "max_length": 160,
                "batch_tokens": 900,
                "micro_batch_tokens": 200,
                "save_every": 1,
                "log_every": 1,
                "eval_max_new_tokens": 4,
                "num_threads": 1,
                **overrides,
            },
            "dist": {"learner_strategy": strategy},
            "logging": {"progress": False},
        },
    )


def _rank_main(rank: int, out: str, port: int, strategy: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    run_sft(_cfg(Path(out), strategy))
    # The run is over and the ranks have left the group; skip interpreter teardown, where gloo's
    # background threads have aborted a rank ("terminate called without an active exception")
    # under load after all the work was done and written.
    os._exit(0)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(model_dir / "model.safetensors"))


def _steps(out: Path) -> list[dict]:
    lines = [json.loads(ln) for ln in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in lines if "loss" in r and r.get("event") is None]


def _assert_same(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
) -> None:
    assert a.keys() == b.keys()
    moved = 0
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-5, rtol=0, msg=lambda m, k=k: f"{k}: {m}")
        moved += int(not torch.equal(a[k], init[k]))
    assert moved == len(a)  # every tensor was trained: the comparison is not of untouched weights


def _two_ranks(out: Path, strategy: str) -> None:
    mp.start_processes(_rank_main, args=(str(out), _free_port(), strategy), nprocs=2, start_method="spawn")


def _resume_from_step_1(src: Path, dst: Path) -> None:
    shutil.copytree(src / "checkpoints", dst / "checkpoints")
    assert (dst / "checkpoints" / "latest").read_text().strip() == "step_000001"


@pytest.fixture(scope="module")
def one_device(tmp_path_factory):
    """Two steps in one process (no launch environment): the reference every rank count must equal."""
    env = {k: os.environ.pop(k) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK") if k in os.environ}
    try:
        out = tmp_path_factory.mktemp("one")
        result = run_sft(_cfg(out))
    finally:
        os.environ.update(env)
    return out, _weights(result.model_dir), _weights(out / "init")


@pytest.mark.slow
def test_two_fsdp_ranks_equal_one_device_and_their_checkpoint_resumes_on_one(one_device, tmp_path):
    one_out, one, init = one_device
    _two_ranks(tmp_path / "two", "fsdp")
    _assert_same(_weights(tmp_path / "two" / "final"), one, init)
    # rank 0 logged the global loss, token counts and gradient norm of each step
    for a, b in zip(_steps(tmp_path / "two"), _steps(one_out), strict=True):
        assert a["tokens"] == b["tokens"] and a["loss_tokens"] == b["loss_tokens"]
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5)
        assert a["grad_norm"] == pytest.approx(b["grad_norm"], rel=1e-4)
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["ranks"] == 2 and "val/accuracy" in summary  # rank 0 evaluated the gathered model

    # the 2-rank checkpoint of step 1 (full states) resumes on one device to the same step-2 weights
    _resume_from_step_1(tmp_path / "two", tmp_path / "resumed")
    again = run_sft(_cfg(tmp_path / "resumed"))
    _assert_same(_weights(again.model_dir), one, init)
    assert [r["step"] for r in _steps(tmp_path / "resumed")] == [2]  # step 1 was not run again


@pytest.mark.slow
def test_two_ddp_replicas_equal_one_device_and_resume_as_fsdp_shards(one_device, tmp_path):
    _, one, init = one_device
    _two_ranks(tmp_path / "ddp", "ddp")
    _assert_same(_weights(tmp_path / "ddp" / "final"), one, init)
    # a checkpoint resumed on sharded ranks: rank 0 reads it and broadcasts, each rank keeps its shard
    _resume_from_step_1(tmp_path / "ddp", tmp_path / "fsdp")
    _two_ranks(tmp_path / "fsdp", "fsdp")
    _assert_same(_weights(tmp_path / "fsdp" / "final"), one, init)
    assert [r["step"] for r in _steps(tmp_path / "fsdp")] == [2]


def test_rank_shares_cover_every_micro_batch_once():
    plan = [[object()] for _ in range(5)]
    for world in (1, 2, 3, 7):
        shares = [rank_share(plan, r, world) for r in range(world)]
        got = [id(mb) for share, _ in shares for mb in share]
        assert sorted(got) == sorted(id(mb) for mb in plan)
        assert all(passes == max(len(s) for s, _ in shares) for _, passes in shares)


def test_launch_environment_is_checked():
    assert ranks_from_env({}).world == 1 and ranks_from_env({}).lead
    env = {"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "1"}
    r = ranks_from_env(env)
    assert (r.rank, r.world, r.local_rank, r.lead) == (1, 2, 1, False)
    with pytest.raises(ConfigError, match="RANK=2 WORLD_SIZE=2"):
        ranks_from_env({**env, "RANK": "2"})
    with pytest.raises(ConfigError, match="MASTER_ADDR"):
        ranks_from_env({"RANK": "0", "WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="not numeric"):
        ranks_from_env({"WORLD_SIZE": "two"})


def test_periodic_evaluation_is_refused_only_where_rank_0_lacks_the_whole_model(tmp_path):
    cfg = _cfg(tmp_path, eval_every=1)
    with pytest.raises(
        ConfigError, match=r"trainer\.eval_every = 1 with dist\.learner_strategy=fsdp over 2 ranks"
    ):
        check_rank_settings(cfg, 2, has_val=True)
    check_rank_settings(cfg, 1, has_val=True)  # one device
    check_rank_settings(cfg, 2, has_val=False)  # nothing to evaluate
    check_rank_settings(_cfg(tmp_path, "ddp", eval_every=1), 2, has_val=True)  # replicas
    check_rank_settings(_cfg(tmp_path, eval_every=0), 2, has_val=True)  # final evaluation only


def test_the_8b_recipe_shards_its_ranks():
    from klear.config import load_config

    assert load_config(SFTConfig, "recipes/klear-8b-sft.yaml").dist.learner_strategy == "fsdp"


def test_bad_strategy_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match="learner_strategy"):
        _cfg(tmp_path, strategy="zero3")


def test_klear_sft_resumes_only_under_the_saved_config(tmp_path, capsys):
    from klear.cli import main
    from klear.config import load_config, save_config

    out = tmp_path / "run"
    cfg = load_config(SFTConfig, "recipes/demo-sft.yaml", [f"run.out_dir={out}"])
    save_config(cfg, out)
    ckpt = out / "checkpoints" / "step_000003"
    ckpt.mkdir(parents=True)
    (ckpt / "trainer_state.pt").write_bytes(b"")
    (out / "checkpoints" / "latest").write_text("step_000003\n")
    assert main(["sft", "recipes/demo-sft.yaml", f"run.out_dir={out}", "optim.lr=0.1"]) == 2
    err = capsys.readouterr().err
    assert "optim.lr: 0.003 -> 0.1" in err and "--resume-anyway" in err


def test_weights_are_read_from_one_file_or_from_shards(tmp_path):
    from transformers import AutoModelForCausalLM

    from klear.models.tiny import build_tiny_model
    from klear.train.parallel import read_weights

    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "one", seed=3))
    model.save_pretrained(tmp_path / "shards", max_shard_size="20KB")  # past the limit: an index + shards
    assert (tmp_path / "shards" / "model.safetensors.index.json").is_file()
    assert len(list((tmp_path / "shards").glob("model-*.safetensors"))) > 2
    one, shards = read_weights(tmp_path / "one"), read_weights(tmp_path / "shards")
    assert one.keys() == shards.keys() and len(one) > 10
    for k in one:
        assert torch.equal(one[k], shards[k])


def test_rng_state_of_a_bigger_node_restores_on_fewer_gpus(monkeypatch):
    from klear.train.checkpoint import rng_state, set_rng_state

    state = rng_state()
    state["cuda"] = [torch.tensor([i], dtype=torch.uint8) for i in range(8)]  # saved on 8 GPUs
    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda s, i: calls.append((int(s[0]), i)))
    set_rng_state(state)
    assert calls == [(0, 0), (1, 1)]
