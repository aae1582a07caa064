"""Seconds per weight sync: collective broadcast in buckets (``dist.weight_sync: collective``) against
the Ray object store (``object_store``: what the Ray path did before), same receivers, one run.

A random Qwen3 of about ``--params`` parameters (built from a config, float32, CPU: the
learner's master weights, which is what the HF rollout actors hold) is the source in this
process; ``--receivers`` Ray actors each hold their own copy of the model. Per sync:

- object store: the source's state dict to CPU, ``ray.put``, and every actor ``ray.get``-s it
  and ``load_state_dict``-s it (``klear.dist.groups.RolloutGroup.update_weights``);
- collective: ``klear.dist.weight_sync.WeightSync.send`` on a gloo group of the source and the
  actors, buckets of ``--bucket-mb``, each actor copying into its parameters in place
  (``receive``); timed until every actor has finished.

The source's weights change before every sync, and every receiver's weights are checked
bit-identical to the source's after the last one of each kind. Syncs alternate collective /
object store / object store / collective ... (``--rounds`` pairs, after one untimed sync of
each) so that drift in machine load hits both; medians and the ratio are reported.

    python bench/weight_sync.py [--params 100e6 --receivers 2 --rounds 3 --bucket-mb 64]

Prints a table, then one JSON line (key ``ratio``: object-store seconds / collective seconds).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", type=float, default=100e6, help="approximate parameter count")
    p.add_argument("--receivers", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3, help="timed (collective, object store) pairs")
    p.add_argument("--bucket-mb", type=float, default=64.0, help="dist.weight_sync_bucket_mb")
    p.add_argument("--threads", type=int, default=1, help="torch threads per process")
    return p.parse_args(argv)


def qwen3_config(params: float) -> dict[str, Any]:
    """A Qwen3 shape of about ``params`` parameters: hidden 768, MLP 2048, vocabulary 32,000 (tied),
    as many 6.3M-parameter layers as fit (at least 1); small targets shrink the width instead."""
    if params >= 40e6:
        hidden, inter, vocab, heads, kv = 768, 2048, 32000, 12, 4
    else:
        hidden, inter, vocab, heads, kv = 64, 128, 1000, 4, 2
    head_dim = hidden // heads
    layer = hidden * head_dim * (2 * heads + 2 * kv) + 3 * hidden * inter + 2 * hidden + 2 * head_dim
    layers = max(1, round((params - vocab * hidden) / layer))
    return {
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "head_dim": head_dim,
        "max_position_embeddings": 512,
        "tie_word_embeddings": True,
    }


def build(shape: dict[str, Any], seed: int) -> Any:
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(seed)
    return Qwen3ForCausalLM(Qwen3Config(**shape)).float().eval()


class Receiver:
    """A rollout actor's part of a sync: its own model, loaded either way."""

    def __init__(self, shape: dict[str, Any], seed: int, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.model = build(shape, seed)
        self.sync: Any = None

    def join(self, address: str, port: int, rank: int, world: int, bucket_bytes: int) -> None:
        from klear.dist.weight_sync import WeightSync

        self.sync = WeightSync(address, port, rank, world, bucket_bytes=bucket_bytes, timeout_s=600)

    def receive(self, version: int) -> int:
        return self.sync.receive(self.model, version)

    def load(self, state: Any) -> None:
        self.model.load_state_dict(state, strict=True)

    def digest(self) -> str:
        from klear.dist.weight_sync import digest

        return digest(self.model)

    def close(self) -> None:
        if self.sync is not None:
            self.sync.close()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    import ray
    import torch

    from klear.dist.weight_sync import WeightSync, digest, free_port

    args = parse(argv)
    if args.receivers < 1:
        raise SystemExit("--receivers must be >= 1")
    torch.set_num_threads(args.threads)
    shape = qwen3_config(args.params)
    source = build(shape, seed=0)
    n_params = sum(p.numel() for p in source.parameters())
    nbytes = sum(p.numel() * p.element_size() for p in source.parameters())
    src = str(Path(__file__).resolve().parents[1] / "src")
    ray.init(
        num_cpus=args.receivers + 1,
        include_dashboard=False,
        object_store_memory=max(512 * 2**20, 8 * nbytes),  # room for every copy: no spilling
        runtime_env={"env_vars": {"PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}},
        log_to_driver=False,
    )
    try:
        actor = ray.remote(Receiver).options(num_cpus=1)
        receivers = [actor.remote(shape, 100 + i, args.threads) for i in range(args.receivers)]
        bucket_bytes = int(args.bucket_mb * 2**20)
        port = free_port()
        joins = [
            r.join.remote("127.0.0.1", port, i + 1, args.receivers + 1, bucket_bytes)
            for i, r in enumerate(receivers)
        ]
        sync = WeightSync("127.0.0.1", port, 0, args.receivers + 1, bucket_bytes=bucket_bytes, timeout_s=600)
        ray.get(joins)
        version = 0
        g = torch.Generator().manual_seed(1)

        def step() -> None:  # the learner's update: new weights before every sync
            with torch.no_grad():
                for p in source.parameters():
                    p.add_(1e-3 * torch.randn(p.shape, generator=g))

        def collective() -> float:
            nonlocal version
            version += 1
            t0 = time.perf_counter()
            refs = [r.receive.remote(version) for r in receivers]
            sync.send(source, version)
            ray.get(refs)
            return time.perf_counter() - t0

        def object_store() -> float:
            t0 = time.perf_counter()
            state = {k: v.detach().cpu() for k, v in source.state_dict().items()}
            ref = ray.put(state)
            ray.get([r.load.remote(ref) for r in receivers])
            del ref, state
            return time.perf_counter() - t0

        kinds = {"collective": collective, "object_store": object_store}
        times: dict[str, list[float]] = {k: [] for k in kinds}
        checked: dict[str, bool] = {}
        for kind in kinds:  # warm-up
            step()
            kinds[kind]()
        order: list[str] = []
        for r in range(args.rounds):
            order += ["collective", "object_store"] if r % 2 == 0 else ["object_store", "collective"]
        for kind in order:
            step()
            times[kind].append(kinds[kind]())
            want = digest(source)
            checked[kind] = all(d == want for d in ray.get([r.digest.remote() for r in receivers]))
        ray.get([r.close.remote() for r in receivers])
        sync.close()
    finally:
        ray.shutdown()
    med = {k: statistics.median(v) for k, v in times.items()}
    pairs = list(zip(times["collective"], times["object_store"], strict=True))
    result = {
        "seconds_per_sync": med,
        "ratio": med["object_store"] / med["collective"],
        "ratio_per_round": [o / c for c, o in pairs],
        "seconds": times,
        "bit_identical": checked,
        "params": n_params,
        "bytes": nbytes,
        "receivers": args.receivers,
        "bucket_mb": args.bucket_mb,
        "rounds": args.rounds,
        "threads": args.threads,
        "load_avg": os.getloadavg()[0],
    }
    print(f"{n_params / 1e6:.1f}M parameters, {nbytes / 2**20:.0f} MiB float32, {args.receivers} receivers")
    for k in kinds:
        gbs = nbytes * args.receivers / med[k] / 1e9
        print(f"{k:13} {med[k]:8.3f} s per sync  ({gbs:.2f} GB/s delivered)  bit-identical: {checked[k]}")
    print(
        f"ratio object store / collective: {result['ratio']:.2f}x (per round: "
        f"{', '.join(f'{r:.2f}' for r in result['ratio_per_round'])}); load average {result['load_avg']:.1f}"
    )
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    main()
