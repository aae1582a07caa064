"""The klear command line: --help, --version, config errors as exit code 2 with the message."""

import subprocess
import sys
from pathlib import Path

import pytest

from klear import __version__
from klear.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "recipes" / "demo.yaml")


def test_version_and_help_in_a_subprocess():
    out = subprocess.run(
        [sys.executable, "-m", "klear", "--version"], capture_output=True, text=True, check=True
    )
    assert out.stdout.strip() == f"klear {__version__}"
    out = subprocess.run(
        [sys.executable, "-m", "klear", "--help"], capture_output=True, text=True, check=True
    )
    assert "GPPO" in out.stdout and "config" in out.stdout


def test_config_prints_resolved_yaml(capsys):
    assert main(["config", DEMO, "loss.type=cispo"]) == 0
    out = capsys.readouterr().out
    assert "type: cispo" in out and "eps_high: 0.28" in out


def test_config_error_exit_code_and_message(capsys):
    assert main(["config", DEMO, "loss.tpye=cispo"]) == 2
    err = capsys.readouterr().err
    assert "klear: error: invalid config" in err and "did you mean 'type'" in err


def test_overrides_stand_anywhere_in_every_command_that_takes_them(capsys):
    from klear.cli import build_parser, parse

    parser = build_parser()
    args = parse(parser, ["rl", DEMO, "--no-resume", "loss.type=cispo", "optim.lr=1e-4"])
    assert args.overrides == ["loss.type=cispo", "optim.lr=1e-4"] and args.no_resume
    args = parse(
        parser,
        [
            "data",
            "filter-math",
            "in.jsonl",
            "--kept",
            "k.jsonl",
            "reward.num_workers=2",
            "--dropped",
            "d.jsonl",
            "--set",
            "reward.math.negative=0",
            "--generations",
            "g.jsonl",
        ],
    )
    assert args.overrides == ["reward.math.negative=0", "reward.num_workers=2"]
    args = parse(
        parser,
        [
            "eval",
            "score",
            "--benchmark",
            "aime24",
            "--generations",
            "g.jsonl",
            "--out",
            "o",
            "reward.num_workers=1",
            "--seed",
            "3",
        ],
    )
    assert args.overrides == ["reward.num_workers=1"] and args.seed == 3
    with pytest.raises(SystemExit) as exc:  # not an override: argparse's own error, exit 2
        parse(parser, ["rl", DEMO, "--bogus"])
    assert exc.value.code == 2 and "unrecognized arguments: --bogus" in capsys.readouterr().err
