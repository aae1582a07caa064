"""The sizing formulas against hand-computed values, and their reading of recipes."""

from __future__ import annotations

import json

import pytest

from klear.config import load_recipe
from klear.plan.memory import (
    GIB,
    EngineSetup,
    LearnerSetup,
    engine_memory,
    kv_bytes_per_token,
    layer_activation_bytes,
    learner_memory,
    logits_bytes,
    utilization_for,
)
from klear.plan.planner import Cluster, plan
from klear.plan.shapes import ARCHS, ModelShape, PlanError, load_shape

Q8B = ARCHS["qwen3-8b"]


def test_qwen3_8b_parameter_count_by_hand():
    embed = 151936 * 4096
    attn = 4096 * 4096 * 2 + 2 * 4096 * 1024 + 2 * 128  # q, o, k, v, q/k head norms
    mlp = 3 * 4096 * 12288
    layer = attn + mlp + 2 * 4096
    assert Q8B.layer_params() == layer == 192_946_432
    assert Q8B.params() == 2 * embed + 36 * layer + 4096 == 8_190_735_360  # untied head


def test_kv_cache_bytes_per_token_by_hand():
    assert kv_bytes_per_token(Q8B, "bfloat16") == 2 * 36 * 8 * 128 * 2 == 147_456
    assert kv_bytes_per_token(Q8B, "bfloat16", tp=2) == 73_728
    # tp beyond the kv heads: vLLM replicates them, one head per GPU
    assert kv_bytes_per_token(Q8B, "bfloat16", tp=16) == 2 * 36 * 1 * 128 * 2


def test_layer_activations_by_hand():
    s = ModelShape("t", hidden=8, layers=1, q_heads=2, kv_heads=1, head_dim=4, intermediate=16, vocab=10,
                   tied=True, max_position=0)  # fmt: skip
    fp32 = 2 * 8 + 2 * 8 + 2 * 8 + 2 * 4  # norm inputs + normalised values
    compute = 2 * 8 + 3 * 8 + 8 + 8 + 4 * 16
    assert layer_activation_bytes(s, 1, 2) == 4 * fp32 + 2 * compute == 464
    assert layer_activation_bytes(s, 100, 2) == 100 * 464


def test_logits_chunked_do_not_grow_with_length():
    one = logits_bytes(Q8B, 1024, 1024)
    assert one == 2 * 4 * 1024 * 151936
    assert logits_bytes(Q8B, 32768, 1024) == one
    assert logits_bytes(Q8B, 512, 1024) == one // 2
    assert logits_bytes(Q8B, 32768, 0) == 32 * logits_bytes(Q8B, 1024, 0)


def _setup(**kw):
    base = dict(ranks=128, sharded=True, weight_dtype="float32", compute_dtype="bfloat16", tokens=36864,
                logit_tokens=32768, chunk_tokens=1024, checkpointing=True)  # fmt: skip
    return LearnerSetup(**{**base, **kw})


def test_learner_state_sharded_vs_replicated():
    sharded = learner_memory(Q8B, _setup())
    assert sharded["weights"] == -(-Q8B.params() // 128) * 4
    assert sharded["optimizer"] == 2 * sharded["weights"] == 2 * sharded["gradients"]
    full = learner_memory(Q8B, _setup(sharded=False))
    assert full["weights"] == Q8B.params() * 4
    # fp32 master + grads + AdamW = 16 bytes per parameter: ~122 GiB, no single 80 GB GPU holds it
    assert full["weights"] + full["gradients"] + full["optimizer"] == 16 * Q8B.params()
    # a replica under autocast caches a bf16 copy of every weight
    assert full["gathered_weights"] == 2 * Q8B.params()
    bf16 = learner_memory(Q8B, _setup(weight_dtype="bfloat16"))
    assert bf16["weights"] == sharded["weights"] // 2


def test_checkpointing_and_chunking_shrink_activations():
    on = learner_memory(Q8B, _setup())
    assert on["activations"] == on["activations_ckpt"] < on["activations_no_ckpt"] / 10
    off = learner_memory(Q8B, _setup(checkpointing=False))
    assert off["activations"] == off["activations_no_ckpt"] == on["activations_no_ckpt"]
    unchunked = learner_memory(Q8B, _setup(chunk_tokens=0))
    assert unchunked["logits"] == 6 * 4 * 32768 * 151936  # ~110 GiB, the 3.6 MB per token
    assert unchunked["total"] > 100 * GIB > on["total"]


def test_engine_kv_cache_and_suggested_utilization():
    e = EngineSetup(tp=2, dtype="bfloat16", gpu_bytes=80 * GIB, utilization=0.5, max_model_len=36864,
                    max_num_seqs=256)  # fmt: skip
    m = engine_memory(Q8B, e)
    assert m["weights"] == Q8B.params() * 2 / 2
    assert m["kv_cache"] == 40 * GIB - m["weights"] - 2 * GIB
    assert m["kv_tokens"] == m["kv_cache"] // 73_728
    assert m["fits_one_seq"] is True and m["fits_all_seqs"] is False
    u = utilization_for(Q8B, e, 4)
    at_u = engine_memory(Q8B, EngineSetup(**{**e.__dict__, "utilization": u}))
    assert at_u["full_length_seqs"] == pytest.approx(4, abs=1e-3)
    tiny = engine_memory(Q8B, EngineSetup(**{**e.__dict__, "utilization": 0.1}))
    assert tiny["kv_tokens"] == 0 and not tiny["fits_one_seq"]


def test_8b_rl_recipes_fit_8x80gb_nodes_as_written():
    for name in ("math", "code"):
        cfg = load_recipe(f"recipes/klear-8b-{name}-rl.yaml")
        p = plan(cfg, Cluster(gpus_per_node=8, gpu_memory_gb=80), arch="qwen3-8b")
        assert p["fits"], p["problems"]
        assert p["gpus"]["total"] == 256 and p["cluster"]["nodes"] == 32
        lr = p["learner"]
        # a 32K response + 4K prompt is its own micro-batch: activations sized at 36,864 tokens
        assert lr["tokens"] == 4096 + 32768 and lr["sharded"] and lr["ranks"] == 128
        assert lr["memory"]["total"] < 40 * GIB
        assert p["rollout"]["weight_sync"]["bytes_per_engine"] == Q8B.params() * 2
        json.dumps(p)  # JSON-ready


def test_rl_does_not_fit_without_checkpointing_or_on_too_few_nodes():
    cfg = load_recipe("recipes/klear-8b-math-rl.yaml", ["model.gradient_checkpointing=false"])
    p = plan(cfg, Cluster(), arch="qwen3-8b")
    assert not p["fits"] and "gradient_checkpointing" in p["problems"][0]
    cfg = load_recipe("recipes/klear-8b-math-rl.yaml")
    p = plan(cfg, Cluster(nodes=4), arch="qwen3-8b")
    assert not p["fits"] and "needs 256 GPUs" in p["problems"][0]
    cfg = load_recipe("recipes/klear-8b-math-rl.yaml", ["trainer.logits_chunk_tokens=0"])
    p = plan(cfg, Cluster(), arch="qwen3-8b")
    assert not p["fits"] and "logits_chunk_tokens" in p["problems"][0]
    # one node: FSDP over 4 learner GPUs fits, DDP replicas (16 bytes/param each) do not
    one_node = ["dist.learner_ranks=4", "dist.rollout_workers=2"]
    p = plan(load_recipe("recipes/klear-8b-math-rl.yaml", one_node), Cluster(nodes=1), arch="qwen3-8b")
    assert p["fits"] and p["gpus"]["total"] == 8, p["problems"]
    ddp = [*one_node, "dist.learner_strategy=ddp"]
    p = plan(load_recipe("recipes/klear-8b-math-rl.yaml", ddp), Cluster(nodes=1), arch="qwen3-8b")
    assert not p["fits"] and "learner_strategy: fsdp" in p["problems"][0]


def test_colocated_engine_takes_its_share_of_the_learner_gpu():
    over = ["dist.backend=none", "rollout.vllm.gpu_memory_utilization=0.6"]
    p = plan(load_recipe("recipes/klear-8b-math-rl.yaml", over), Cluster(gpu_memory_gb=80), arch="qwen3-1.7b")
    assert p["learner"]["colocated_with_engine"] and p["gpus"]["total"] == 2  # tensor parallel 2
    assert p["learner"]["budget"] == int(80 * GIB * 0.4) - 2 * GIB
    assert p["rollout"]["suggested_utilization"] is None  # sharing the GPU: no advice to take more
    # sleep mode: the learner trains on the whole GPU, but its resident state must leave the
    # waking engine its share
    sleep = [*over, "rollout.vllm.enable_sleep_mode=true"]
    p = plan(
        load_recipe("recipes/klear-8b-math-rl.yaml", sleep), Cluster(gpu_memory_gb=80), arch="qwen3-1.7b"
    )
    assert p["learner"]["budget"] == 80 * GIB - 4 * GIB and p["fits"], p["problems"]
    resident = 16 * ARCHS["qwen3-1.7b"].params()  # fp32 weights + gradients + AdamW, ~27 GiB
    assert p["learner"]["resident_during_generation"] == resident
    over8b = [*sleep, "rollout.vllm.gpu_memory_utilization=0.9"]
    p = plan(
        load_recipe("recipes/klear-8b-math-rl.yaml", over8b), Cluster(gpu_memory_gb=80), arch="qwen3-1.7b"
    )
    assert not p["fits"] and "engine wakes" in p["problems"][0]


def test_sft_8b_recipe_sharding_follows_its_dist_section():
    cfg = load_recipe("recipes/klear-8b-sft.yaml")
    p = plan(cfg, Cluster(nodes=1), arch="qwen3-8b")
    if getattr(cfg, "dist", None) is None:  # single-device SFT trainer: 16 bytes/param on one GPU
        assert not p["fits"] and p["learner"]["ranks"] == 1
    else:
        assert p["learner"]["ranks"] == 8 and p["learner"]["sharded"] == (cfg.dist.learner_strategy == "fsdp")
        assert p["fits"] == p["learner"]["sharded"], p["problems"]


def test_shape_from_hf_config_and_clear_errors(tmp_path):
    (tmp_path / "config.json").write_text(
        json.dumps({"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16,
                    "num_key_value_heads": 8, "head_dim": 128, "intermediate_size": 3072,
                    "vocab_size": 151936, "tie_word_embeddings": True, "max_position_embeddings": 40960})
    )  # fmt: skip
    shape, src = load_shape(str(tmp_path), False, None)
    assert shape == ModelShape(**{**ARCHS["qwen3-0.6b"].__dict__, "name": tmp_path.name})
    assert src.endswith("config.json")
    with pytest.raises(PlanError, match=r"model\.path.*config\.json.*--arch"):
        load_shape(str(tmp_path / "missing"), False, None)
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 0}))
    with pytest.raises(PlanError, match="hidden_size = 0"):
        load_shape(str(tmp_path), False, None)
    with pytest.raises(PlanError, match="unknown; built in"):
        load_shape(None, True, "gpt-5")
