#!/usr/bin/env bash
# Idempotent set-up for a fresh machine, into a project virtual environment (.venv), so that it
# works on a stock distribution Python too (PEP 668 refuses `pip install` into the system one).
#
#   scripts/install.sh demo   what `klear demo` needs: bubblewrap, torch (pinned), klear
#   scripts/install.sh test   the above plus the test/bench/ray extras and verl (its plug-in tests)
#
# torch is installed pinned to the local CPU wheel FIRST (an unpinned torch would pull a multi-GB
# CUDA build), and every later install is constrained to it. Each step is skipped when already
# satisfied, so re-running is cheap. pip's output goes to .make/pip.log and is shown only on failure.
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${1:-test}
case "$PROFILE" in demo|test) ;; *) echo "usage: scripts/install.sh [demo|test]" >&2; exit 2 ;; esac
BOOT_PY=${PYTHON:-python3}
VENV=${KLEAR_VENV:-.venv}
PY="$VENV/bin/python"
TORCH_VERSION=${KLEAR_TORCH_VERSION:-2.13.0}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi
mkdir -p .make
LOG=.make/pip.log

quiet() {  # run a command with its output in $LOG; on failure show the end of it and stop
  if ! "$@" >>"$LOG" 2>&1; then
    echo "[install] failed: $*" >&2
    tail -n 40 "$LOG" >&2
    echo "[install] full log: $LOG" >&2
    exit 1
  fi
}

apt_install() {
  quiet $SUDO apt-get update -qq
  quiet env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@"
}

: >"$LOG"
if ! command -v bwrap >/dev/null 2>&1; then
  echo "[install] bubblewrap (the sandbox for code rewards)"
  apt_install bubblewrap
fi

if [ ! -x "$PY" ]; then
  echo "[install] virtual environment $VENV ($($BOOT_PY --version 2>&1))"
  if ! "$BOOT_PY" -m venv "$VENV" >>"$LOG" 2>&1; then
    # Debian/Ubuntu ship venv separately (python3-venv / python3.X-venv)
    rm -rf "$VENV"
    ver=$("$BOOT_PY" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    quiet $SUDO apt-get update -qq
    if ! env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "python$ver-venv" >>"$LOG" 2>&1; then
      quiet env DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-venv
    fi
    quiet "$BOOT_PY" -m venv "$VENV"
  fi
  quiet "$PY" -m pip install -q --upgrade pip
fi

if ! "$PY" -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[install] torch==$TORCH_VERSION (pinned, CPU build)"
  quiet "$PY" -m pip install -q "torch==$TORCH_VERSION"
fi

# every later install is constrained to the pinned torch, so no dependency can swap it for a CUDA build
echo "torch==$TORCH_VERSION" > .make/constraints.txt
if [ "$PROFILE" = demo ]; then extras=""; check="import klear"; else extras="[dev,bench,ray]"; check="import klear, ray, pytest"; fi
stamp=.make/installed-$PROFILE
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/install.sh -nt "$stamp" ] \
   || ! "$PY" -c "$check" 2>/dev/null; then
  echo "[install] klear (editable${extras:+, extras $extras})"
  quiet "$PY" -m pip install -q -c .make/constraints.txt -e ".$extras"
  touch "$stamp"
fi

# verl plug-in tests (tests/integrations/test_verl.py): verl itself WITHOUT its pinned deps (its
# transformers<5.11 and hydra/antlr4 4.9 pins would downgrade this environment), plus what its loss
# and config modules import: tensordict, codetiming, omegaconf (>=2.4 needs no antlr4) and ray (verl's
# DataProto imports it; the ray extra above installs it). Nothing already installed is downgraded.
# pip reports verl's unmet pins as "dependency conflicts" in the log: expected, harmless here.
if [ "$PROFILE" = test ] && ! "$PY" -c "import verl.trainer.ppo.core_algos" 2>/dev/null; then
  echo "[install] verl==0.9.1 (no deps) + tensordict, codetiming, omegaconf (for the plug-in tests)"
  quiet "$PY" -m pip install -q --no-deps "verl==0.9.1"
  quiet "$PY" -m pip install -q -c .make/constraints.txt "tensordict==0.10.0" codetiming "omegaconf>=2.4"
fi
echo "[install] ready: $VENV (activate with: source $VENV/bin/activate)"
