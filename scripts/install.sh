#!/usr/bin/env bash
# Idempotent set-up for a fresh machine: bubblewrap (Debian), torch pinned to the local CPU
# wheel FIRST (an unpinned torch would pull a multi-GB CUDA build), then this package with
# its dev extras. Each step is skipped when already satisfied, so re-running is cheap.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
TORCH_VERSION=${KLEAR_TORCH_VERSION:-2.13.0}
SUDO=""
if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then SUDO=sudo; fi

if ! command -v bwrap >/dev/null 2>&1; then
  echo "[install] bubblewrap (sandbox for code rewards)"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq bubblewrap >/dev/null
fi

if ! $PY -c "import torch,sys; sys.exit(0 if torch.__version__.split('+')[0]=='$TORCH_VERSION' else 1)" 2>/dev/null; then
  echo "[install] torch==$TORCH_VERSION (pinned)"
  $PY -m pip install -q "torch==$TORCH_VERSION"
fi

# every later install is constrained to the pinned torch, so no dependency can swap it for a CUDA build
mkdir -p .make
echo "torch==$TORCH_VERSION" > .make/constraints.txt
stamp=.make/installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ scripts/install.sh -nt "$stamp" ] \
   || ! $PY -c "import klear, ray" 2>/dev/null; then
  echo "[install] klear (editable, with dev, bench and ray extras)"
  $PY -m pip install -q -c .make/constraints.txt -e ".[dev,bench,ray]"
  touch "$stamp"
fi

# verl plug-in tests (tests/integrations/test_verl.py): verl itself WITHOUT its pinned deps (its
# transformers<5.11 and hydra/antlr4 4.9 pins would downgrade this environment), plus what its loss
# and config modules import: tensordict, codetiming, omegaconf (>=2.4 needs no antlr4) and ray (verl's
# DataProto imports it; the ray extra above installs it). Nothing already installed is downgraded.
if ! $PY -c "import verl.trainer.ppo.core_algos" 2>/dev/null; then
  echo "[install] verl==0.9.1 (no deps) + tensordict, codetiming, omegaconf, ray"
  $PY -m pip install -q --no-deps "verl==0.9.1"
  $PY -m pip install -q -c .make/constraints.txt "tensordict==0.10.0" codetiming "omegaconf>=2.4"
fi
