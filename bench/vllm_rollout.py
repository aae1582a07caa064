"""The vLLM rollout backend on a GPU: its speed against vLLM alone, and its log-probs against the HF backend.

NEEDS a CUDA GPU and vLLM (``pip install klear[vllm]``); it cannot run on a CPU machine
and has NOT been run by the person who wrote it (no GPU was available). Run it with
``scripts/gpu_check_vllm.sh``, or directly:

    python bench/vllm_rollout.py [--model DIR] [--dtype bfloat16|float32] [--prompts 64 --n 8 --max-new-tokens 256]

With no ``--model`` it builds the built-in tiny Qwen3 (``klear.models.tiny``; nothing is
downloaded); pass a local HF directory (e.g. Qwen3-0.6B) for a realistic model.

What it measures, on the same prompts (addition-task chat prompts):

1. Speed (``--rounds`` alternating runs, medians): generated tokens/s of
   ``VLLMRolloutBackend.generate`` (n samples as n seeded requests with ``logprobs=0``,
   decoding and ``Rollout`` records included) against vLLM alone: ``LLM.generate`` on the
   *same engine* with one ``SamplingParams(n=N)`` per prompt and no log-probs, no seeds.
   The ratio is the adapter's whole cost (expansion, per-request seeds, log-probs, decoding).
2. Log-prob agreement: for the backend's sampled responses, the HF model (float32, same
   weights, teacher-forced on the same tokens) computes the log-prob of each token under
   the same processed distribution; mean / max |difference| over tokens. Also greedy:
   the share of prompts whose greedy vLLM response equals the HF backend's.
3. Weight update: the time of ``update_weights`` for the whole model, and that it takes
   effect: after perturbing the HF model's weights and pushing them, greedy vLLM outputs
   are compared with the HF backend's on the perturbed model again, and the workers'
   parameter sums (``KlearWorkerExtension.klear_weight_sums``) must change.

Prints a table, then one JSON line with every figure (also written to ``--json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from klear.rollout import SamplingParams
from klear.rollout.hf import HFRolloutBackend, process_logits


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", help="local HF model directory (default: build the tiny model)")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    p.add_argument("--prompts", type=int, default=64)
    p.add_argument("--n", type=int, default=8)
    p.add_argument("--max-new-tokens", type=int, default=256)
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--gpu-memory-utilization", type=float, default=0.5)
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--enforce-eager", action="store_true", help="no CUDA graphs (faster start-up)")
    p.add_argument("--logprob-prompts", type=int, default=16, help="prompts for the log-prob comparison")
    p.add_argument("--json", help="also write the JSON result here")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def hf_logprobs(model, rollouts, temperature: float, top_k: int, top_p: float) -> list[list[float]]:
    """Teacher-forced log-prob of each response token under the processed distribution (float32)."""
    out = []
    device = next(model.parameters()).device
    for r in rollouts:
        seq = torch.tensor([r.prompt_ids + r.response_ids], device=device)
        with torch.no_grad():
            logits = model(seq).logits[0, len(r.prompt_ids) - 1 : -1].float()
        if temperature == 0:
            logp = logits.log_softmax(-1)
        else:
            logp = process_logits(logits, temperature, top_k, top_p)
        ids = torch.tensor(r.response_ids, device=device)[:, None]
        out.append(logp.gather(-1, ids).squeeze(-1).tolist())
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from klear.rollout.vllm import INSTALL_HINT

    try:
        import vllm
    except ImportError:
        print(f"cannot run: {INSTALL_HINT}", file=sys.stderr)
        return 2
    if not torch.cuda.is_available():
        print("cannot run: no CUDA GPU visible", file=sys.stderr)
        return 2
    from transformers import AutoModelForCausalLM

    from klear.rollout.vllm import VLLMRolloutBackend
    from klear.tasks import task_rows

    tmp = tempfile.TemporaryDirectory(prefix="klear-vllm-bench-")
    if args.model:
        model_dir = Path(args.model)
    else:
        from klear.models.tiny import build_tiny_model

        model_dir = build_tiny_model(Path(tmp.name) / "tiny", seed=args.seed)
    rows = task_rows("addition", "train", args.prompts, seed=args.seed)
    prompts = [r["prompt"] for r in rows]
    result: dict = {
        "model": str(model_dir),
        "vllm_version": getattr(vllm, "__version__", "?"),
        "torch_version": torch.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "dtype": args.dtype,
        "prompts": args.prompts,
        "n": args.n,
        "max_new_tokens": args.max_new_tokens,
        "temperature": args.temperature,
    }

    t0 = time.perf_counter()
    backend = VLLMRolloutBackend(
        str(model_dir),
        seed=args.seed,
        dtype=args.dtype,
        gpu_memory_utilization=args.gpu_memory_utilization,
        tensor_parallel_size=args.tensor_parallel_size,
        enforce_eager=args.enforce_eager,
    )
    result["engine_start_s"] = time.perf_counter() - t0
    sampling = SamplingParams(n=args.n, temperature=args.temperature, max_new_tokens=args.max_new_tokens)

    # 1. Speed: our backend against vLLM alone on the same engine, alternating.
    token_prompts = [{"prompt_token_ids": backend.encode(p)} for p in prompts]
    plain_params = vllm.SamplingParams(
        n=args.n,
        temperature=args.temperature,
        top_p=1.0,
        max_tokens=args.max_new_tokens,
        stop_token_ids=backend.stop_ids,
    )

    def run_ours() -> tuple[float, int]:
        t = time.perf_counter()
        out = backend.generate(prompts, sampling)
        return time.perf_counter() - t, sum(len(r.response_ids) for r in out)

    def run_plain() -> tuple[float, int]:
        t = time.perf_counter()
        out = backend.llm.generate(token_prompts, plain_params, use_tqdm=False)
        return time.perf_counter() - t, sum(len(c.token_ids) for o in out for c in o.outputs)

    run_ours(), run_plain()  # warm-up (CUDA graphs, caches)
    ours, plain = [], []
    for k in range(args.rounds):
        for name in ("ours", "plain") if k % 2 == 0 else ("plain", "ours"):
            secs, tokens = run_ours() if name == "ours" else run_plain()
            (ours if name == "ours" else plain).append(tokens / secs)
    result["ours_tokens_per_s"] = statistics.median(ours)
    result["vllm_tokens_per_s"] = statistics.median(plain)
    result["ours_over_vllm"] = result["ours_tokens_per_s"] / result["vllm_tokens_per_s"]

    # 2. Log-prob agreement with the HF model (float32, same weights) on the backend's samples.
    hf_model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).cuda().eval()
    few = prompts[: args.logprob_prompts]
    sampled = backend.generate(few, sampling.replace(n=2))
    ref = hf_logprobs(hf_model, sampled, args.temperature, -1, 1.0)
    diffs = torch.tensor(
        [abs(a - b) for r, lp in zip(sampled, ref, strict=True) for a, b in zip(r.logprobs, lp, strict=True)]
    )
    result["logprob_tokens"] = int(diffs.numel())
    result["logprob_mean_abs_diff"] = float(diffs.mean())
    result["logprob_max_abs_diff"] = float(diffs.max())
    greedy = SamplingParams(temperature=0.0, max_new_tokens=min(args.max_new_tokens, 64))
    hf_backend = HFRolloutBackend(hf_model, backend.tokenizer, seed=args.seed)
    g_vllm, g_hf = backend.generate(few, greedy), hf_backend.generate(few, greedy)
    result["greedy_equal_frac"] = sum(
        a.response_ids == b.response_ids for a, b in zip(g_vllm, g_hf, strict=True)
    ) / len(few)

    # 3. Weight update: time, and that it takes effect.
    sums_before = backend.llm.collective_rpc("klear_weight_sums")
    torch.manual_seed(args.seed + 1)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.02)  # every parameter moves (norm weights included)
    torch.cuda.synchronize()
    t = time.perf_counter()
    backend.update_weights(hf_model)
    result["update_weights_s"] = time.perf_counter() - t
    result["update_weights_mb"] = (
        sum(p.numel() for p in hf_model.state_dict().values())
        * (torch.finfo(getattr(torch, args.dtype)).bits // 8)
        / 2**20
    )
    sums_after = backend.llm.collective_rpc("klear_weight_sums")
    changed = [
        sum(a[k] != b[k] for k in a) / max(len(a), 1) for a, b in zip(sums_before, sums_after, strict=True)
    ]
    result["params_changed_frac_per_worker"] = changed
    g_vllm, g_hf = backend.generate(few, greedy), hf_backend.generate(few, greedy)
    result["greedy_equal_frac_after_update"] = sum(
        a.response_ids == b.response_ids for a, b in zip(g_vllm, g_hf, strict=True)
    ) / len(few)
    result["weights_version"] = backend.weights_version
    backend.close()
    tmp.cleanup()

    rows_out = [
        ("engine start (s)", f"{result['engine_start_s']:.1f}"),
        ("vLLM alone, tokens/s", f"{result['vllm_tokens_per_s']:.0f}"),
        ("klear vllm backend, tokens/s", f"{result['ours_tokens_per_s']:.0f}"),
        ("ours / vLLM alone", f"{result['ours_over_vllm']:.3f}"),
        ("log-prob |vLLM - HF fp32| mean", f"{result['logprob_mean_abs_diff']:.2e}"),
        ("log-prob |vLLM - HF fp32| max", f"{result['logprob_max_abs_diff']:.2e}"),
        ("greedy responses equal to HF", f"{result['greedy_equal_frac']:.2f}"),
        ("update_weights (s)", f"{result['update_weights_s']:.2f} for {result['update_weights_mb']:.0f} MiB"),
        ("params changed by update", ", ".join(f"{c:.2f}" for c in changed)),
        ("greedy equal to HF after update", f"{result['greedy_equal_frac_after_update']:.2f}"),
    ]
    width = max(len(k) for k, _ in rows_out)
    print(f"model {result['model']}  dtype {args.dtype}  vLLM {result['vllm_version']}  GPU {result['gpu']}")
    print(f"{args.prompts} prompts x n={args.n}, max_new_tokens {args.max_new_tokens}, T={args.temperature}")
    for k, v in rows_out:
        print(f"  {k:<{width}}  {v}")
    line = json.dumps(result)
    print(line)
    if args.json:
        Path(args.json).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
