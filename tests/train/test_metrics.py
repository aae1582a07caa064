"""Run metrics: JSONL always, TensorBoard and W&B (offline) when asked, curves as PNG, exact resume of the file."""

import json

import pytest

from klear.config import LoggingConfig
from klear.train.metrics import MetricsLogger, plot_curves, read_metrics


def test_jsonl_and_resume_truncation(tmp_path):
    with MetricsLogger(tmp_path) as log:
        for step in (1, 2, 3):
            log.log(step, {"loss": 1.0 / step, "note": "x"})
    assert [r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")] == [1, 2, 3]
    # resuming from step 2 drops what came after it, then appends
    with MetricsLogger(tmp_path, resume_step=2) as log:
        log.log(3, {"loss": 0.5})
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows] == [1, 2, 3] and rows[-1]["loss"] == 0.5
    # a fresh (non-resumed) run starts a new file
    MetricsLogger(tmp_path).close()
    assert read_metrics(tmp_path / "metrics.jsonl") == []


def test_non_finite_values_stay_valid_json(tmp_path):
    with MetricsLogger(tmp_path) as log:
        log.log(1, {"loss": float("nan")})
    assert json.loads((tmp_path / "metrics.jsonl").read_text())["loss"] == "nan"


def test_tensorboard_event_file(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    with MetricsLogger(tmp_path, LoggingConfig(tensorboard=True)) as log:
        log.log(1, {"reward/mean": 0.25})
        log.log(2, {"reward/mean": 0.75})
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [e.value for e in acc.Scalars("reward/mean")] == [0.25, 0.75]


def test_wandb_offline_run(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    with MetricsLogger(tmp_path, LoggingConfig(wandb=True, wandb_project="klear-test"), {"a": 1}) as log:
        log.log(1, {"reward/mean": 0.5})
    runs = list((tmp_path / "wandb").glob("offline-run-*"))
    assert len(runs) == 1 and list(runs[0].glob("*.wandb"))


def test_curves_png(tmp_path):
    rows = [{"step": s, "loss": 1 / s, "acc": s / 10} for s in range(1, 6)]
    png = plot_curves(rows, ["loss", "acc", "missing"], tmp_path / "c.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_curves_png_draws_a_panel_of_several_keys(tmp_path):
    import matplotlib.pyplot as plt

    rows = [{"step": s, "time/gen": 0.5, "time/update": 0.25 * s} for s in range(1, 4)]
    drawn = []
    real_plot = plt.Axes.plot

    def spy(ax, xs, ys, *args, **kwargs):
        drawn.append((ax.get_title(), kwargs.get("label"), list(ys)))
        return real_plot(ax, xs, ys, *args, **kwargs)

    plt.Axes.plot = spy
    try:
        png = plot_curves(
            rows, ["time/gen", ("perf", ["time/gen", "time/update", "time/absent"])], tmp_path / "c.png"
        )
    finally:
        plt.Axes.plot = real_plot
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # one line in the single-key panel, then one labelled line per present key in the perf panel
    assert [(label, ys) for _, label, ys in drawn] == [
        (None, [0.5, 0.5, 0.5]),
        ("time/gen", [0.5, 0.5, 0.5]),
        ("time/update", [0.25, 0.5, 0.75]),
    ]
