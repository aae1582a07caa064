"""Weight sync by collective (``klear.dist.weight_sync``): the bucket plan by hand, and a gloo group of
one source and two receiver processes ending bit-identical, at the right version, over several syncs."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from klear.config import ConfigError, RLConfig, build_config
from klear.dist.weight_sync import Piece, WeightSync, WeightSyncError, digest, free_port, plan_buckets

F32, BF16 = torch.float32, torch.bfloat16


def test_buckets_split_tensors_and_never_mix_dtypes():
    layout = [("a", (2, 3), F32), ("b", (5,), F32), ("c", (4,), BF16), ("d", (1,), F32)]
    # 16-byte buckets: 4 float32 or 8 bfloat16 elements
    buckets = plan_buckets(layout, 16)
    assert [(b.dtype, b.numel) for b in buckets] == [(F32, 4), (F32, 4), (F32, 3), (BF16, 4), (F32, 1)]
    assert buckets[0].pieces == (Piece(0, 0, 4, 0),)
    assert buckets[1].pieces == (Piece(0, 4, 6, 0), Piece(1, 0, 2, 2))  # a's tail, then b's head
    assert buckets[2].pieces == (Piece(1, 2, 5, 0),)
    assert buckets[3].pieces == (Piece(2, 0, 4, 0),)  # a new dtype opens a new bucket
    assert buckets[4].pieces == (Piece(3, 0, 1, 0),)
    # one bucket larger than everything: one per dtype run
    assert [b.numel for b in plan_buckets(layout, 2**20)] == [11, 4, 1]
    with pytest.raises(WeightSyncError, match="cannot hold one"):
        plan_buckets(layout, 3)


def _model(model_dir: str, seed: int) -> torch.nn.Module:
    from klear.config import ModelConfig
    from klear.models.loading import load_model

    torch.set_num_threads(1)
    model, _ = load_model(model_dir, ModelConfig(path=model_dir, dtype="float32"), torch.device("cpu"))
    model.model.norm.to(BF16)  # mixed dtypes, as with any partly cast model
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():  # each member starts from different weights
            p.add_(torch.randn(p.shape, generator=g).to(p.dtype))
    return model


SCHEDULE = [(1, 1024), (2, 2**26), (3, 100_000), (4, 1024)]  # (version, bucket bytes)


def _receiver(model_dir: str, port: int, rank: int, out) -> None:
    try:
        model = _model(model_dir, seed=100 + rank)
        sync = WeightSync("127.0.0.1", port, rank, 3, timeout_s=60)
        for version, bucket in SCHEDULE:
            sync.bucket_bytes = bucket
            sync.receive(model, version)
            out.put((rank, sync.version, digest(model)))
        try:  # this member expects version 9; the source sends 6: everyone refuses, nobody hangs
            sync.receive(model, 9 if rank == 1 else 6)
        except WeightSyncError as err:
            out.put((rank, "refused", str(err)))
        sync.close()
    except BaseException as err:  # reported to the test instead of a silent exit
        out.put((rank, "crashed", repr(err)))


@pytest.mark.timeout(180)
def test_two_receivers_end_bit_identical_at_each_version(tmp_path):
    from klear.models.tiny import build_tiny_model

    model_dir = str(build_tiny_model(tmp_path / "tiny", seed=0))
    port = free_port()
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(model_dir, port, r, out), daemon=True) for r in (1, 2)]
    for p in procs:
        p.start()
    try:
        model = _model(model_dir, seed=7)
        biggest = max(p.numel() * p.element_size() for p in model.parameters())
        assert (
            SCHEDULE[0][1]
            < biggest
            < SCHEDULE[1][1]
            > sum(p.numel() * p.element_size() for p in model.parameters())
        )
        sync = WeightSync("127.0.0.1", port, 0, 3, timeout_s=60)
        want = {}
        g = torch.Generator().manual_seed(1)
        for version, bucket in SCHEDULE:
            with torch.no_grad():  # the learner moved on: new weights every sync
                for p in model.parameters():
                    p.add_((0.01 * torch.randn(p.shape, generator=g)).to(p.dtype))
            sync.bucket_bytes = bucket
            sent = sync.send(model, version)
            assert sent == sum(p.numel() * p.element_size() for p in model.parameters())
            want[version] = digest(model)
        with pytest.raises(WeightSyncError, match="another member"):
            sync.send(model, 6)
        sync.close()
        got: dict[tuple[int, int], str] = {}
        refused = {}
        for _ in range(2 * len(SCHEDULE) + 2):
            rank, version, info = out.get(timeout=60)
            assert version != "crashed", info
            if version == "refused":
                refused[rank] = info
            else:
                got[(rank, version)] = info
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    for version, _ in SCHEDULE:
        assert got[(1, version)] == got[(2, version)] == want[version], version
    assert len(set(want.values())) == len(SCHEDULE)  # every sync carried new weights
    assert "version 6, member 1 expects 9" in refused[1]
    assert "another member" in refused[2]


def test_bad_weight_sync_settings_are_refused_at_load(tmp_path):
    base = {"run": {"out_dir": str(tmp_path)}}
    for bad in (0, -1, 1e-5, 1e6, float("inf"), float("nan"), "big"):
        with pytest.raises(ConfigError, match="weight_sync_bucket_mb"):
            build_config(RLConfig, {**base, "dist": {"weight_sync_bucket_mb": bad}})
    with pytest.raises(ConfigError, match="weight_sync"):
        build_config(RLConfig, {**base, "dist": {"weight_sync": "carrier-pigeon"}})
    with pytest.raises(ConfigError, match="object_store"):  # a vLLM engine is not a group member yet
        build_config(
            RLConfig,
            {
                **base,
                "rollout": {"backend": "vllm"},
                "dist": {"backend": "ray", "rollout_gpus": 1, "weight_sync": "collective"},
            },
        )
    cfg = build_config(RLConfig, {**base, "dist": {"weight_sync_bucket_mb": 0.5}})
    assert cfg.dist.weight_sync == "collective" and cfg.dist.weight_sync_bucket_bytes == 2**19


def test_a_group_needs_a_receiver():
    with pytest.raises(WeightSyncError, match="receiver"):
        WeightSync("127.0.0.1", free_port(), 0, 1)
