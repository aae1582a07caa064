#!/usr/bin/env bash
# GPU check of klear's vLLM rollout backend (klear.rollout.vllm). NOT RUN YET: written on a
# machine without a GPU. Needs a CUDA GPU with vllm installed (`pip install klear[vllm]`
# after a CUDA build of torch). Writes fp32.json / bf16.json / verdict.txt to $OUT (or
# /tmp/klear-vllm-check) and exits non-zero when a check fails.
#
#   bash scripts/gpu_check_vllm.sh              # tiny built-in model, ~5 minutes with start-up
#   MODEL=/models/Qwen3-0.6B bash scripts/gpu_check_vllm.sh   # speed also on a real small model
set -euo pipefail
cd "$(dirname "$0")/.."
DEST="${OUT:-/tmp/klear-vllm-check}"
mkdir -p "$DEST"
export PYTHONPATH="$PWD/src:$PWD${PYTHONPATH:+:$PYTHONPATH}"

echo "== environment"
python - <<'PY'
import sys
import torch
try:
    import vllm
except ImportError as err:
    sys.exit(f"vllm is not installed ({err}): pip install klear[vllm]")
if not torch.cuda.is_available():
    sys.exit("no CUDA GPU visible")
print(f"torch {torch.__version__}  vllm {vllm.__version__}  GPU {torch.cuda.get_device_name(0)}")
PY

echo "== 1. adapter tests (fake vllm; real vllm installed alongside must not change them)"
python -m pytest -q -p no:cacheprovider tests/rollout/test_vllm_backend.py -m "not slow"

echo "== 2. float32 engine: log-prob agreement with the HF backend, weight update (tiny model)"
python bench/vllm_rollout.py --dtype float32 --prompts 32 --n 4 --max-new-tokens 64 --rounds 1 \
    --logprob-prompts 16 --enforce-eager --gpu-memory-utilization 0.3 --json "$DEST/fp32.json"

echo "== 3. bfloat16 engine: tokens/s against vLLM alone${MODEL:+ on $MODEL}"
python bench/vllm_rollout.py --dtype bfloat16 --prompts 256 --n 8 --max-new-tokens 256 --rounds 3 \
    --gpu-memory-utilization 0.5 ${MODEL:+--model "$MODEL"} --json "$DEST/bf16.json"

echo "== verdict"
python - "$DEST" <<'PY' | tee "$DEST/verdict.txt"
import json, sys
from pathlib import Path

dest = Path(sys.argv[1])
fp32 = json.loads((dest / "fp32.json").read_text())
bf16 = json.loads((dest / "bf16.json").read_text())
checks = [
    # same weights in float32: differences are kernel rounding only
    ("fp32 log-prob mean |diff| < 1e-3", fp32["logprob_mean_abs_diff"] < 1e-3, fp32["logprob_mean_abs_diff"]),
    ("fp32 log-prob max |diff| < 2e-2", fp32["logprob_max_abs_diff"] < 2e-2, fp32["logprob_max_abs_diff"]),
    ("fp32 greedy equal to HF >= 0.9", fp32["greedy_equal_frac"] >= 0.9, fp32["greedy_equal_frac"]),
    ("update changed every worker's params", all(c > 0.9 for c in fp32["params_changed_frac_per_worker"]),
     fp32["params_changed_frac_per_worker"]),
    ("fp32 greedy equal to HF after update >= 0.9", fp32["greedy_equal_frac_after_update"] >= 0.9,
     fp32["greedy_equal_frac_after_update"]),
    # bf16 engine against the fp32 HF model: rounding of bf16 weights and activations
    ("bf16 log-prob mean |diff| < 5e-2", bf16["logprob_mean_abs_diff"] < 5e-2, bf16["logprob_mean_abs_diff"]),
    # the adapter's own cost: seeds, logprobs=0, decoding, records
    ("ours / vLLM alone tokens/s >= 0.8", bf16["ours_over_vllm"] >= 0.8, bf16["ours_over_vllm"]),
]
failed = 0
for name, ok, value in checks:
    failed += not ok
    print(f"{'PASS' if ok else 'FAIL'}  {name}  ({value})")
print(f"tokens/s: ours {bf16['ours_tokens_per_s']:.0f}, vLLM alone {bf16['vllm_tokens_per_s']:.0f} "
      f"({bf16['model']}, {bf16['gpu']}, vLLM {bf16['vllm_version']})")
sys.exit(1 if failed else 0)
PY
