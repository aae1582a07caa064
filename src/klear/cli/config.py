"""Validate a recipe (plus key.sub=value overrides) and print the resolved config as YAML.

Examples:
  klear config recipes/demo.yaml
  klear config recipes/klear-8b-math-rl.yaml loss.type=cispo loss.eps_high=0.28
  klear config --kind sft recipes/klear-8b-sft.yaml optim.lr=1e-5
"""

from __future__ import annotations

import argparse


def configure(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.add_argument("recipe", help="YAML recipe")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. loss.type=cispo")
    p.add_argument(
        "--kind",
        choices=["auto", "rl", "sft"],
        default="auto",
        help="which config schema (auto: the recipe's top-level 'kind' key, else rl)",
    )


def run(args: argparse.Namespace) -> int:
    import yaml

    from klear.config import load_recipe

    cfg = load_recipe(args.recipe, args.overrides, kind=None if args.kind == "auto" else args.kind)
    print(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), end="")
    return 0
