"""Resuming an OUT only under the same experiment: changed keys listed, safe keys allowed."""

from __future__ import annotations

from pathlib import Path

import pytest

from klear.cli import main
from klear.config import ConfigError, RLConfig, load_config, save_config
from klear.train.rundir import check_resume, config_changes

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "recipes" / "demo.yaml"


def test_config_changes_ignores_safe_keys_and_lists_the_rest():
    saved = {
        "loss": {"type": "gppo", "eps_low": 0.2},
        "trainer": {"total_steps": 10},
        "logging": {"wandb": False},
    }
    current = {
        "loss": {"type": "cispo", "eps_low": 0.2},
        "trainer": {"total_steps": 50},
        "logging": {"wandb": True},
    }
    assert config_changes(saved, current) == {"loss.type": ("gppo", "cispo")}
    assert config_changes(saved, {**saved, "optim": {"lr": 1e-6}}) == {"optim.lr": ("<unset>", 1e-6)}


def _fake_run(out: Path, overrides: list[str]) -> None:
    cfg = load_config(RLConfig, DEMO, [f"run.out_dir={out}", *overrides])
    save_config(cfg, out)
    step = out / "checkpoints" / "step_3"
    step.mkdir(parents=True)
    (step / "trainer_state.pt").write_bytes(b"")
    (out / "checkpoints" / "latest").write_text("step_3")


def test_resume_under_a_changed_loss_is_refused_naming_keys_and_ways_out(tmp_path, capsys):
    out = tmp_path / "run"
    _fake_run(out, ["loss.type=gppo"])
    saved = (out / "config.yaml").read_text()
    assert main(["rl", str(DEMO), f"run.out_dir={out}", "loss.type=cispo", "optim.lr=1e-4"]) == 2
    err = capsys.readouterr().err
    assert "loss.type: 'gppo' -> 'cispo'" in err and "optim.lr" in err
    assert "--resume-anyway" in err and "--no-resume" in err and "new run.out_dir" in err
    assert (out / "config.yaml").read_text() == saved  # nothing rewritten


def test_same_or_safely_changed_config_resumes(tmp_path):
    out = tmp_path / "run"
    _fake_run(out, ["trainer.total_steps=10"])
    cfg = load_config(
        RLConfig, DEMO, [f"run.out_dir={out}", "trainer.total_steps=40", "logging.progress=false"]
    )
    check_resume(out, cfg.model_dump(mode="json"))  # no error
    cfg = load_config(RLConfig, DEMO, [f"run.out_dir={out}", "optim.lr=3e-5"])
    with pytest.raises(ConfigError, match=r"optim\.lr"):
        check_resume(out, cfg.model_dump(mode="json"))
