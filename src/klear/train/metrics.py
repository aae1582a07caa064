"""Run metrics: JSONL always, TensorBoard and Weights & Biases when asked, a PNG of the curves at the end."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from klear.config import LoggingConfig


class MetricsLogger:
    """Appends one JSON object per step to ``OUT/metrics.jsonl`` (and mirrors to TB / W&B).

    On resume, lines from steps after the checkpoint are dropped first, so a
    resumed run's file reads exactly like an uninterrupted one.
    """

    def __init__(
        self,
        out_dir: str | Path,
        cfg: LoggingConfig | None = None,
        run_config: Mapping[str, Any] | None = None,
        resume_step: int | None = None,
        filename: str = "metrics.jsonl",
    ):
        self.cfg = cfg or LoggingConfig()
        self.path = Path(out_dir) / filename
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            keep = [
                ln
                for ln in self.path.read_text().splitlines()
                if ln and json.loads(ln).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(ln + "\n" for ln in keep))
        elif resume_step is None:
            self.path.write_text("")
        self._file = self.path.open("a")
        self._tb = None
        self._wandb = None
        if self.cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                raise RuntimeError("logging.tensorboard=true needs `pip install klear[tensorboard]`") from exc
            self._tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        if self.cfg.wandb:
            try:
                import wandb
            except ImportError as exc:  # pragma: no cover - depends on the optional extra
                raise RuntimeError("logging.wandb=true needs `pip install klear[wandb]`") from exc
            # files under OUT/wandb; WANDB_MODE=offline works without a network (sync later)
            self._wandb = wandb.init(
                project=self.cfg.wandb_project, config=dict(run_config or {}), dir=str(self.path.parent)
            )

    def log(self, step: int, metrics: Mapping[str, float]) -> None:
        row = {"step": step, "time": round(time.time(), 3)}
        row.update({k: _plain(v) for k, v in metrics.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("step", "time"):
                    self._tb.add_scalar(k, v, step)
        if self._wandb is not None:
            self._wandb.log(row, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]


def plot_curves(
    rows: Iterable[Mapping[str, Any]],
    keys: list[str | tuple[str, list[str]]],
    out_png: str | Path,
    title: str = "",
) -> Path:
    """One panel per metric key against ``step``; a ``(title, [key, ...])`` entry draws several keys in one
    panel (e.g. seconds per phase of a step). Keys absent from every row are skipped."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(rows)

    def present(key: str) -> bool:
        return any(isinstance(r.get(key), (int, float)) for r in rows)

    panels: list[tuple[str, list[str]]] = []
    for entry in keys:
        name, members = (entry, [entry]) if isinstance(entry, str) else entry
        members = [k for k in members if present(k)]
        if members:
            panels.append((name, members))
    ncol = min(3, max(1, len(panels)))
    nrow = max(1, math.ceil(len(panels) / ncol))
    fig, axes = plt.subplots(nrow, ncol, figsize=(4.2 * ncol, 3.0 * nrow), squeeze=False)
    for ax, (name, members) in zip(axes.flat, panels, strict=False):
        for key in members:
            pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float))]
            label = key if len(members) > 1 else None
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                marker="o" if len(pts) < 30 else None,
                ms=3,
                label=label,
            )
        if len(members) > 1:
            ax.legend(fontsize=7)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png
