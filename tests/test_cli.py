"""The klear command line: --help, --version, config errors as exit code 2 with the message."""

import subprocess
import sys
from pathlib import Path

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
