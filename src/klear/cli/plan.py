"""Size a recipe before booking GPUs: per-GPU memory of the learner and the rollout engines.

Prints the learner's weights, gradients and AdamW state under the recipe's sharding, its
activations at the largest forward/backward (with and without activation checkpointing) and
the chunked LM-head logits; each vLLM engine's weights and KV cache for max_model_len x
max_num_seqs; the bytes moved per weight sync and its time (collective vs object store, at
--link-gb-per-s); and whether it all fits.
Exit status: 0 fits, 1 does not fit, 2 bad input. See docs/sizing.md.

Examples:
  klear plan recipes/klear-8b-math-rl.yaml --arch qwen3-8b
  klear plan recipes/klear-8b-sft.yaml --arch qwen3-8b --nodes 1 --gpus-per-node 8 --gpu-memory-gb 80
  klear plan recipes/klear-8b-math-rl.yaml model.path=/models/klear-8b-sft --json
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe (kind rl or sft)")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. trainer.micro_batch_tokens=16384")
    p.add_argument("--gpus-per-node", type=int, default=8, help="GPUs per node (default 8)")
    p.add_argument("--gpu-memory-gb", type=float, default=80.0, help="memory per GPU in GiB (default 80)")
    p.add_argument(
        "--nodes",
        type=int,
        default=None,
        help="nodes available (default: as many as the recipe needs; SFT: 1)",
    )
    p.add_argument(
        "--arch",
        default=None,
        help="built-in model shape (qwen3-8b, qwen3-1.7b, qwen3-0.6b) instead of model.path/config.json",
    )
    p.add_argument(
        "--link-gb-per-s",
        type=float,
        default=None,
        help="bandwidth per link in GB/s for the weight-sync time (default 25: NCCL over one 200 Gb/s "
        "InfiniBand NIC per GPU)",
    )
    p.add_argument("--json", action="store_true", help="print the plan as JSON (bytes)")


def run(args: argparse.Namespace) -> int:
    from klear.config import load_recipe
    from klear.plan.planner import Cluster, plan
    from klear.plan.report import to_json, to_text

    cfg = load_recipe(args.recipe, args.overrides)
    link = {} if args.link_gb_per_s is None else {"link_gb_per_s": args.link_gb_per_s}
    cluster = Cluster(
        gpus_per_node=args.gpus_per_node, gpu_memory_gb=args.gpu_memory_gb, nodes=args.nodes, **link
    )
    result = plan(cfg, cluster, arch=args.arch, recipe=args.recipe)
    print(to_json(result) if args.json else to_text(result), end="" if not args.json else "\n")
    return 0 if result["fits"] else 1
