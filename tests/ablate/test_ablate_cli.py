"""`klear ablate`: errors and help; a 2-seed smoke run in a tiny setting; `klear demo --compare` is its alias."""

import json

import pytest

from klear.cli import main

SFT = ["trainer.max_steps=3", "data.train_size=40", "trainer.eval_max_new_tokens=16"]
RL = [
    "trainer.total_steps=2",
    "trainer.train_batch_size=2",
    "trainer.ppo_mini_batch_size=1",
    "data.train_size=16",
    "data.val_size=4",
    "rollout.n=2",
    "rollout.max_new_tokens=16",
    "reward.num_workers=1",
    "validation.every=1",
]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["ablate", "nope"], "unknown ablation 'nope'; choose from: loss, "),
        (["ablate", "loss", "--seeds", "0"], "--seeds 0: paired intervals need at least 2 seeds"),
        (["ablate", "loss", "--seeds", "1"], "--seeds 1"),
        (["ablate"], "name an ablation"),
        (["ablate", "loss", "--jobs", "0"], "--jobs 0: must be >= 1"),
        (["demo", "--compare", "--seeds", "0"], "--seeds 0"),
        (["ablate", "loss", "--rl", "trainer.ppo_epochs=0"], "ppo_epochs"),
    ],
)
def test_bad_input_is_one_error_line_rc_2(argv, message, capsys, tmp_path):
    assert main([*argv, "--out", str(tmp_path / "o")] if argv[0] == "ablate" and len(argv) > 1 else argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[0].startswith("klear: error: ") and message in "\n".join(err), err
    if "ppo_epochs" not in message:  # a config error names its fields on the lines below
        assert len(err) == 1, err
    assert not (tmp_path / "o" / "runs").exists()  # nothing ran


def test_help_and_list(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["ablate", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "klear ablate loss" in out and "--seeds" in out and "Examples:" in out
    assert main(["ablate", "--list"]) == 0
    out = capsys.readouterr().out
    for name in ("loss", "filter", "rl-vs-sft", "sft-sources", "sft-correctness", "reward"):
        assert f"{name}: " in out
    assert "min on 2 idle cores" in out


def test_demo_compare_runs_the_loss_ablation(monkeypatch, tmp_path):
    import klear.cli.ablate as cli_ablate

    seen = {}
    monkeypatch.setattr(
        cli_ablate,
        "run_all",
        lambda chosen, root, args: seen.update(names=[a.name for a in chosen], root=root),
    )
    assert main(["demo", "--compare", "--out", str(tmp_path)]) == 0
    assert seen == {"names": ["loss"], "root": tmp_path / "compare"}


@pytest.mark.slow
def test_two_seed_smoke_run_of_filter(tmp_path, capsys):
    out = tmp_path / "filter"
    argv = ["ablate", "filter", "--seeds", "2", "--jobs", "1", "--out", str(out), "--sft", *SFT, "--rl", *RL]
    assert main(argv) == 0
    summary = json.loads((out / "ablation.json").read_text())
    on, off = summary["variants"]["dynamic sampling on"], summary["variants"]["dynamic sampling off"]
    for row in (on, off):
        assert row["final"]["n"] == 2 and row["final"]["low"] <= row["final"]["mean"] <= row["final"]["high"]
        assert "clip_frac_high" in row and "clip_frac_low" in row
    assert off["diff_to_baseline"] is None and on["diff_to_baseline"]["n"] == 2
    # equal generation budget: 'off' was sized from what 'on' generated on the same seed
    runs = {(r["variant"], r["seed"]): r for r in summary["runs"]}
    for seed in (0, 1):
        assert (
            runs[("dynamic sampling off", seed)]["generated_samples"]
            == runs[("dynamic sampling on", seed)]["generated_samples"]
        )
        assert (
            runs[("dynamic sampling on", seed)]["start"] == runs[("dynamic sampling off", seed)]["start"]
        )  # one SFT checkpoint
    assert summary["claims"][0]["verdict"] in ("reproduced", "not distinguishable at this scale", "reversed")
    md = (out / "ablation.md").read_text()
    assert "| dynamic sampling off (baseline) |" in md and "## Verdicts" in md
    assert (out / "ablation.png").is_file()
    assert len(list((out / "sft").glob("*/seed*/final"))) == 2  # one SFT stage per seed, shared
    assert "filtering beats no filtering:" in capsys.readouterr().out
    # started again with the same --out, it reuses the finished runs and SFT checkpoints
    metrics = sorted((out / "runs").glob("*/seed*/metrics.jsonl"))
    stamps = [m.stat().st_mtime_ns for m in metrics]
    assert main(argv) == 0
    assert [m.stat().st_mtime_ns for m in metrics] == stamps
    again = json.loads((out / "ablation.json").read_text())
    assert again["variants"]["dynamic sampling on"]["final"] == on["final"]
    assert again["claims"] == summary["claims"]


@pytest.mark.slow
def test_two_seed_smoke_run_of_rl_vs_sft(tmp_path):
    out = tmp_path / "rvs"
    rl = [*RL, "trainer.total_steps=1"]
    assert main(["ablate", "rl-vs-sft", "--seeds", "2", "--out", str(out), "--sft", *SFT, "--rl", *rl]) == 0
    summary = json.loads((out / "ablation.json").read_text())
    cont = [r for r in summary["runs"] if r["variant"] == "sft continued"]
    rl_runs = {r["seed"]: r for r in summary["runs"] if r["variant"] == "rl (gppo)"}
    for r in cont:
        assert r["extra"]["sft_steps"] >= 1
        assert r["extra"]["budget_seconds"] == pytest.approx(rl_runs[r["seed"]]["extra"]["rl_seconds_no_val"])
        assert r["start"] == rl_runs[r["seed"]]["start"]
        cfg = (out / "runs" / "sft-continued" / f"seed{r['seed']}" / "config.yaml").read_text()
        assert f"max_steps: {r['extra']['sft_steps']}" in cfg and "seed{}".format(r["seed"]) in cfg


def test_sft_stage_lock_makes_a_second_worker_wait(tmp_path):
    import threading
    import time

    from klear.ablate.runner import _locked

    order = []
    lock = tmp_path / "seed0.lock"

    def second():
        with _locked(lock):
            order.append("second")

    with _locked(lock):
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.3)
        order.append("first done")
    t.join(timeout=10)
    assert order == ["first done", "second"]


@pytest.mark.slow
def test_two_ablations_share_one_queue_and_their_sft_stages(tmp_path, capsys):
    import argparse

    from klear.ablate import get_ablation
    from klear.cli.ablate import run_all

    root = tmp_path / "two"
    args = argparse.Namespace(seeds=2, seed=0, sft=SFT, rl=[*RL, "trainer.total_steps=1"], jobs=2)
    summaries = run_all([get_ablation("filter"), get_ablation("rl-vs-sft")], root, args)
    assert [len(s["runs"]) for s in summaries] == [4, 4]
    for name in ("filter", "rl-vs-sft"):
        assert (root / name / "ablation.md").is_file() and (root / name / "ablation.png").is_file()
    # both start RL from the demo SFT stage: trained once per seed, under the shared cache
    assert len(list((root / "sft").glob("*/seed*/final"))) == 2
    starts = {(r["variant"], r["seed"]): r["start"] for s in summaries for r in s["runs"]}
    for seed in (0, 1):
        assert starts[("dynamic sampling on", seed)] == starts[("rl (gppo)", seed)]
    captured = capsys.readouterr()
    assert (
        "filter: filtering beats no filtering:" in captured.out
        and "rl-vs-sft: RL beats more SFT" in captured.out
    )
    assert "2 ablations in one queue: estimated" in captured.err  # the plan comes first
    assert (
        "filter [1/4]" in captured.err and "rl-vs-sft [4/4]" in captured.err
    )  # run lines name their ablation
