"""The plan as a readable table (GiB per GPU) or as JSON."""

from __future__ import annotations

import json
from typing import Any

from klear.plan.memory import GIB


def _g(n: float) -> str:
    return f"{n / GIB:8.2f} GiB"


def _row(label: str, n: float, tail: str = "") -> str:
    return f"  {label:<46}{_g(n)}{tail}"


def to_json(p: dict[str, Any]) -> str:
    return json.dumps(p, indent=2, sort_keys=False)


def to_text(p: dict[str, Any]) -> str:
    m, c, g, lr = p["model"], p["cluster"], p["gpus"], p["learner"]
    lines = [
        f"klear plan: {p['recipe']} (kind {p['kind']})",
        f"model: {m['name']}, {m['params'] / 1e9:.2f}B parameters, vocab {m['vocab']:,}, "
        f"{m['layers']} layers (shape from {m['source']})",
        f"cluster: {c['nodes']} node(s) x {c['gpus_per_node']} GPUs x {c['gpu_memory_gib']:g} GiB"
        + (
            ""
            if c["nodes_given"]
            else " (--nodes not given: " + ("one" if p["kind"] == "sft" else "as many as needed") + ")"
        )
        + f"; the recipe uses {g['total']} GPUs (learner {g['learner']}, rollout {g['rollout']})",
        "",
    ]
    how = (
        f"FSDP2 full shard over {lr['ranks']} ranks"
        if lr["sharded"]
        else f"a full replica on each of {lr['ranks']} rank(s)"
    )
    mem = lr["memory"]
    ck_on, ck_off = mem["activations_ckpt"], mem["activations_no_ckpt"]
    lines += [
        f"learner, per GPU ({how}; {lr['weight_dtype']} master weights, {lr['compute_dtype']} compute)",
        _row("weights", mem["weights"]),
        _row("gradients", mem["gradients"]),
        _row("AdamW state (2 moments)", mem["optimizer"]),
        _row(f"{lr['compute_dtype']} weights in use (gathered/cast)", mem["gathered_weights"]),
        _row(
            f"activations, {lr['tokens']:,} tokens, ckpt {'on' if lr['checkpointing'] else 'off'}",
            mem["activations"],
            f"  (ckpt on {ck_on / GIB:.2f}, off {ck_off / GIB:.2f} GiB)",
        ),
        _row(
            "  of which LM-head logits"
            + (f" ({lr['chunk_tokens']:,}-token chunks)" if lr["chunk_tokens"] else " (unchunked)"),
            mem["logits"],
        ),
        _row(
            "total",
            mem["total"],
            f"  of {lr['budget'] / GIB:.2f} GiB usable: {'fits' if lr['fits'] else 'DOES NOT FIT'}",
        ),
    ]
    ro = p.get("rollout")
    if ro is not None:
        e = ro["memory"]
        lines += [
            "",
            f"rollout engine, per GPU ({ro['engines']} vLLM engine(s), tensor parallel {ro['tp']}, {ro['dtype']}, "
            f"gpu_memory_utilization {ro['utilization']:g} = {e['budget'] / GIB:.1f} GiB)",
            _row("weights", e["weights"]),
            _row("engine overhead (graphs, sampler)", e["overhead"]),
            _row(
                "KV cache",
                e["kv_cache"],
                f"  = {int(e['kv_tokens']):,} tokens at {e['kv_bytes_per_token'] / 1024:.0f} KiB/token",
            ),
            f"  full-length sequences ({ro['max_model_len']:,} tokens) held at once: {e['full_length_seqs']:.1f}"
            f" (max_num_seqs {ro['max_num_seqs']}: {_g(e['kv_needed_full']).strip()} for all)",
        ]
        ws = ro["weight_sync"]
        lines += [
            "",
            f"weight sync per update: {ws['bytes_per_engine'] / GIB:.2f} GiB to each engine ({ws['dtype']}, "
            f"{ws['buckets_per_engine']} buckets), {ws['bytes_per_step'] / GIB:,.1f} GiB to all {ro['engines']}",
            f"  time per sync at {ws['link_gb_per_s']:g} GB/s per link: collective broadcast "
            f"{ws['seconds']['collective']:.2f} s, object store {ws['seconds']['object_store']:.1f} s "
            f"(dist.weight_sync: {ws['mode']})",
        ]
    lines += ["", "verdict: " + ("FITS" if p["fits"] else "DOES NOT FIT")]
    lines += [f"  - {x}" for x in p["problems"]]
    if p["notes"]:
        lines += ["notes:"] + [f"  - {x}" for x in p["notes"]]
    return "\n".join(lines) + "\n"
