"""``klear demo``: the whole Klear-Reasoner pipeline on a laptop CPU, on a built-in tiny task.

1. SFT of a freshly built tiny Qwen3 on worked solutions (the task's SFT recipe);
2. RL with GPPO from that checkpoint (the task's RL recipe), scored through the real
   reward path (math: the math verifier; code: programs run in the sandbox), with
   held-out greedy accuracy (and, for code, the mean test pass rate) before and after;
3. a table, ``OUT/summary.json``, ``OUT/metrics.jsonl`` and ``OUT/curves.png``.

``--task`` picks the recipe pair from :data:`DEMO_RECIPES`: ``addition-2to3`` (the default:
``recipes/demo-sft.yaml`` then ``recipes/demo.yaml``) or ``code-fn`` (the code task:
``recipes/demo-code-sft.yaml`` then ``recipes/demo-code.yaml``).

``klear demo --compare`` is ``klear ablate loss`` (:mod:`klear.ablate`): ppo (clip-higher), gppo,
CE-GPPO (beta_low 0.5) and cispo on paired seeds, in a regime where clipping is active.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from klear.config import ConfigError, RLConfig, SFTConfig, load_config
from klear.io import write_atomic
from klear.preflight import check_out_dir

#: The demo's tasks: task -> (SFT recipe, RL recipe) in the recipes directory.
DEMO_RECIPES: dict[str, tuple[str, str]] = {
    "addition-2to3": ("demo-sft.yaml", "demo.yaml"),
    "code-fn": ("demo-code-sft.yaml", "demo-code.yaml"),
}
DEFAULT_TASK = "addition-2to3"


def recipes_dir() -> Path:
    """The shipped recipes: inside the installed package (wheel), else the source checkout's ``recipes/``."""
    packaged = Path(__file__).resolve().parent / "recipes"
    if packaged.is_dir():
        return packaged
    checkout = Path(__file__).resolve().parents[2] / "recipes"
    if checkout.is_dir():
        return checkout
    raise ConfigError("klear's recipes directory is missing from this installation (reinstall klear)")


@dataclass
class DemoSettings:
    out: Path
    seed: int = 0
    sft_overrides: tuple[str, ...] = ()
    rl_overrides: tuple[str, ...] = ()
    task: str = DEFAULT_TASK


def demo_recipes(task: str) -> tuple[Path, Path]:
    """(SFT recipe, RL recipe) of the demo on ``task``; a ConfigError names the choices."""
    if task not in DEMO_RECIPES:
        raise ConfigError(f"--task {task!r}: the demo has recipes for {', '.join(DEMO_RECIPES)}")
    sft, rl = DEMO_RECIPES[task]
    return recipes_dir() / sft, recipes_dir() / rl


def sft_config(s: DemoSettings, out: Path) -> SFTConfig:
    return load_config(
        SFTConfig,
        demo_recipes(s.task)[0],
        [f"run.out_dir={out}", f"run.seed={s.seed}", *s.sft_overrides],
    )


def rl_config(s: DemoSettings, out: Path, extra: list[str] | tuple[str, ...] = ()) -> RLConfig:
    return load_config(
        RLConfig,
        demo_recipes(s.task)[1],
        [f"run.out_dir={out}", f"run.seed={s.seed}", *s.rl_overrides, *extra],
    )


def run_demo(s: DemoSettings) -> dict[str, Any]:
    """SFT, then GPPO RL, then the before/after table; returns (and writes) the summary."""
    from klear.train.rl import train_rl
    from klear.train.sft import run_sft

    t0 = time.perf_counter()
    sft_cfg = sft_config(s, s.out / "sft")
    rl_cfg = rl_config(s, s.out)  # both stages validated before any work
    check_out_dir(s.out, "--out")
    s.out.mkdir(parents=True, exist_ok=True)
    _say(f"[1/2] SFT of the tiny model on '{sft_cfg.data.task}' ({s.out / 'sft'})")
    sft = run_sft(sft_cfg)
    t_sft = time.perf_counter() - t0

    _say(f"[2/2] RL with {rl_cfg.loss.type} from the SFT checkpoint ({s.out})")
    rl = train_rl(rl_cfg, init_model=sft.model_dir, resume=False)
    t_rl = time.perf_counter() - t0 - t_sft

    vals = [h for h in rl.history if "val/greedy_acc" in h]
    start, end = vals[0], vals[-1]
    summary = {
        "task": rl_cfg.data.task,
        "sft_accuracy": start["val/greedy_acc"],
        "rl_accuracy": end["val/greedy_acc"],
        "gain_points": 100 * (end["val/greedy_acc"] - start["val/greedy_acc"]),
        "held_out_prompts": rl_cfg.data.val_size,
        "accuracy_curve": [{"step": h["step"], "greedy_acc": h["val/greedy_acc"]} for h in vals],
        **_pass_rates(start, end),
        "seconds": {"sft": t_sft, "rl": t_rl, "total": time.perf_counter() - t0},
        "peak_rss_mib": _peak_rss_mib(),
        "final_model": str(rl.final_model),
        "config": {"sft": sft_cfg.model_dump(mode="json"), "rl": rl_cfg.model_dump(mode="json")},
    }
    write_atomic(s.out / "summary.json", json.dumps(summary, indent=2))
    _print_table(summary)
    return summary


def _pass_rates(start: dict[str, Any], end: dict[str, Any]) -> dict[str, float]:
    """Code tasks: the held-out mean test pass rate before and after RL (nothing for math)."""
    if "val/greedy_pass_rate" not in start:
        return {}
    return {"sft_pass_rate": start["val/greedy_pass_rate"], "rl_pass_rate": end["val/greedy_pass_rate"]}


def _peak_rss_mib() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _say(msg: str) -> None:
    from rich.console import Console

    Console(stderr=True).print(f"[bold cyan]klear demo[/]: {msg}", highlight=False)


def _print_table(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(
        title=f"held-out greedy accuracy on '{summary['task']}' ({summary['held_out_prompts']} prompts)"
    )
    code = "sft_pass_rate" in summary  # a code task: also the mean fraction of hidden tests passed
    t.add_column("stage")
    t.add_column("accuracy", justify="right")
    if code:
        t.add_column("tests passed", justify="right")
    t.add_column("seconds", justify="right")
    sec = summary["seconds"]
    rows = [
        ("after SFT (start of RL)", summary["sft_accuracy"], summary.get("sft_pass_rate"), sec["sft"]),
        ("after RL (GPPO)", summary["rl_accuracy"], summary.get("rl_pass_rate"), sec["rl"]),
    ]
    for stage, acc, passed, seconds in rows:
        t.add_row(stage, f"{100 * acc:.1f}%", *([f"{100 * passed:.1f}%"] if code else []), f"{seconds:.0f}")
    gain = [f"{100 * (summary['rl_pass_rate'] - summary['sft_pass_rate']):+.1f} points"] if code else []
    t.add_row("gain", f"{summary['gain_points']:+.1f} points", *gain, f"{sec['total']:.0f}")
    Console().print(t)
