"""Progress off a terminal: periodic lines with done/total, rate and ETA, and a last line."""

from __future__ import annotations

import io
import os
import subprocess
import sys
from pathlib import Path

from klear.progress import LineProgress

FIXTURES = Path(__file__).parent / "data" / "fixtures"


def test_lines_every_interval_with_rate_eta_and_a_final_line():
    now = [0.0]
    out = io.StringIO()
    with LineProgress(interval=10, stream=out, clock=lambda: now[0]) as bar:
        task = bar.add_task("score", total=100)
        for _ in range(40):  # 40 items over 20 s: lines at t=10 and t=20 only
            now[0] += 0.5
            bar.advance(task)
        now[0] += 30
        bar.advance(task, 60)
    lines = out.getvalue().splitlines()
    assert lines == [
        "score: 20/100 (20%) 2/s ETA 0:40",
        "score: 40/100 (40%) 2/s ETA 0:30",
        "score: 100/100 (100%) 2/s done in 0:50",
    ]


def test_a_quick_task_prints_nothing_and_an_unknown_total_still_reports():
    now = [0.0]
    out = io.StringIO()
    with LineProgress(interval=10, stream=out, clock=lambda: now[0]) as bar:
        quick = bar.add_task("quick", total=3)
        bar.advance(quick, 3)
        task = bar.add_task("gen")
        now[0] = 12.0
        bar.update(task, completed=24, status="loss 0.5")
        now[0] = 16.0
        bar.update(task, completed=32)
    assert out.getvalue().splitlines() == ["gen: 24 2/s loss 0.5", "gen: 32 2/s done in 0:16 loss 0.5"]


def test_a_command_piped_to_a_file_still_reports_progress(tmp_path):
    """stderr is not a terminal here (as under nohup or SLURM): the command prints its progress."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "klear",
            "data",
            "convert",
            str(FIXTURES / "math_qa.jsonl"),
            "--output",
            str(tmp_path / "o.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "KLEAR_PROGRESS_SECONDS": "0"},
    )
    assert "convert: " in proc.stderr and "(100%)" in proc.stderr and "done in" in proc.stderr


def test_a_resumed_task_counts_its_rate_from_where_it_started():
    now = [0.0]
    out = io.StringIO()
    with LineProgress(interval=10, stream=out, clock=lambda: now[0]) as bar:
        task = bar.add_task("sft", total=100, completed=40, status="")
        now[0] = 10.0
        bar.update(task, advance=20, status="loss 1.000")
    assert out.getvalue().splitlines()[0] == "sft: 60/100 (60%) 2/s ETA 0:20 loss 1.000"
