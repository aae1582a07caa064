"""``klear demo``: the whole Klear-Reasoner pipeline on a laptop CPU, on the built-in tiny task.

1. SFT of a freshly built tiny Qwen3 on worked solutions (``recipes/demo-sft.yaml``);
2. RL with GPPO from that checkpoint (``recipes/demo.yaml``), scored through the real
   math reward path, with held-out greedy accuracy measured before and after;
3. a table, ``OUT/summary.json``, ``OUT/metrics.jsonl`` and ``OUT/curves.png``.

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


def sft_config(s: DemoSettings, out: Path) -> SFTConfig:
    return load_config(
        SFTConfig,
        recipes_dir() / "demo-sft.yaml",
        [f"run.out_dir={out}", f"run.seed={s.seed}", *s.sft_overrides],
    )


def rl_config(s: DemoSettings, out: Path, extra: list[str] | tuple[str, ...] = ()) -> RLConfig:
    return load_config(
        RLConfig,
        recipes_dir() / "demo.yaml",
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
        "seconds": {"sft": t_sft, "rl": t_rl, "total": time.perf_counter() - t0},
        "peak_rss_mib": _peak_rss_mib(),
        "final_model": str(rl.final_model),
        "config": {"sft": sft_cfg.model_dump(mode="json"), "rl": rl_cfg.model_dump(mode="json")},
    }
    write_atomic(s.out / "summary.json", json.dumps(summary, indent=2))
    _print_table(summary)
    return summary


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
    t.add_column("stage")
    t.add_column("accuracy", justify="right")
    t.add_column("seconds", justify="right")
    t.add_row(
        "after SFT (start of RL)", f"{100 * summary['sft_accuracy']:.1f}%", f"{summary['seconds']['sft']:.0f}"
    )
    t.add_row("after RL (GPPO)", f"{100 * summary['rl_accuracy']:.1f}%", f"{summary['seconds']['rl']:.0f}")
    t.add_row("gain", f"{summary['gain_points']:+.1f} points", f"{summary['seconds']['total']:.0f}")
    Console().print(t)
