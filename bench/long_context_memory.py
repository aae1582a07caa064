"""Peak memory and speed of response log-probs + entropy + backward at long context, on CPU.

A tiny Qwen3 (hidden 64, 2 layers) with Qwen3's real vocabulary (151,936 tokens): the
model itself is ~10M parameters, so the memory is what the log-prob computation holds.
Each measurement runs in a fresh subprocess and reports its peak RSS (``ru_maxrss``):
one sequence of a 16-token prompt and an N-token response, ``response_logprobs`` with
entropy, then backward of the summed log-probs.

- ``chunked`` (``trainer.logits_chunk_tokens``, ``klear.models.logprobs``) at the long
  length, with and without activation checkpointing, and its ratio to the computation's
  floor: the process's RSS with the model, its gradients and a warm allocator (measured
  after a 16-token step) plus one chunk of float32 logits and the response's hidden states;
- ``full`` (chunk 0: ``[B, L, V]`` logits, the former path) and ``chunked`` at a short
  length, timed alternately, and their time-per-token ratio.

    python bench/long_context_memory.py [--tokens 32768 --time-tokens 2048 --chunk 1024]

Prints one JSON object (last line). Target: chunked peak <= 3 GB at 32,768 tokens; time per
token chunked / full <= 1.3 at 2,048.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

VOCAB = 151_936
HIDDEN = 64
PROMPT = 16


def build_model(max_len: int, checkpointing: bool):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=4 * HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=max_len,
        tie_word_embeddings=True,
    )
    model = Qwen3ForCausalLM(cfg)
    if checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model.train()


def step(model, tokens: int, chunk: int) -> float:
    """One log-probs + entropy + backward of a PROMPT + ``tokens`` sequence; returns seconds."""
    import torch

    from klear.train.batch import SeqBatch, response_logprobs

    g = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, VOCAB, (1, PROMPT + tokens), generator=g)
    batch = SeqBatch(ids, torch.ones_like(ids), torch.tensor([PROMPT]), torch.tensor([tokens]))
    start = time.perf_counter()
    logp, entropy = response_logprobs(model, batch, with_entropy=True, chunk_tokens=chunk)
    (logp.sum() / tokens).backward()
    assert entropy is not None and bool(torch.isfinite(entropy).all())
    return time.perf_counter() - start


def rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # Linux: KiB


def child(tokens: int, chunk: int, checkpointing: bool, rounds: int) -> dict:
    """Runs in the subprocess: warm up on 16 tokens, then measure."""
    import torch

    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    model = build_model(PROMPT + tokens + 8, checkpointing)
    step(model, 16, chunk or 16)  # gradients allocated, allocator warm
    idle = rss_gb()
    times = [step(model, tokens, chunk) for _ in range(rounds)]
    return {"peak_rss_gb": rss_gb(), "idle_rss_gb": idle, "seconds": times}


def measure(tokens: int, chunk: int, checkpointing: bool = False, rounds: int = 1) -> dict:
    """``child`` in a fresh interpreter, so the peak RSS is this computation's alone."""
    here = str(Path(__file__).resolve().parent)
    call = f"b.child({tokens}, {chunk}, {checkpointing!r}, {rounds})"
    code = f"import json, sys; sys.path.insert(0, {here!r}); import long_context_memory as b; print(json.dumps({call}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"measurement ({tokens} tokens, chunk {chunk}) failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor_gb(idle_gb: float, tokens: int, chunk: int) -> float:
    """Model, gradients and runtime (``idle``) + one chunk of float32 logits + the hidden states."""
    return idle_gb + (min(chunk, tokens) * VOCAB * 4 + 2 * tokens * HIDDEN * 4) / 1024**3


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tokens", type=int, default=32768, help="response length for the memory figure")
    p.add_argument("--time-tokens", type=int, default=2048, help="response length for the time ratio")
    p.add_argument("--chunk", type=int, default=1024, help="trainer.logits_chunk_tokens")
    p.add_argument("--rounds", type=int, default=3, help="alternating timed rounds at --time-tokens")
    p.add_argument("--no-checkpointing-run", action="store_true", help="skip the checkpointed long run")
    args = p.parse_args(argv)

    res: dict = {"vocab": VOCAB, "hidden": HIDDEN, "chunk": args.chunk, "tokens": args.tokens}
    long = measure(args.tokens, args.chunk)
    res["chunked_peak_rss_gb"] = round(long["peak_rss_gb"], 3)
    res["chunked_seconds"] = round(long["seconds"][0], 2)
    res["floor_gb"] = round(floor_gb(long["idle_rss_gb"], args.tokens, args.chunk), 3)
    res["peak_over_floor"] = round(long["peak_rss_gb"] / res["floor_gb"], 2)
    if not args.no_checkpointing_run:
        ckpt = measure(args.tokens, args.chunk, checkpointing=True)
        res["chunked_checkpointed_peak_rss_gb"] = round(ckpt["peak_rss_gb"], 3)
    # time per token at a length the full-logits path can still hold, alternating the two
    full_t: list[float] = []
    chunk_t: list[float] = []
    for r in range(args.rounds):
        pair = [(0, full_t), (args.chunk, chunk_t)]
        for chunk, acc in pair if r % 2 == 0 else pair[::-1]:
            m = measure(args.time_tokens, chunk)
            acc.append(m["seconds"][0] / args.time_tokens)
            if chunk == 0:
                res["full_peak_rss_gb_at_time_tokens"] = round(m["peak_rss_gb"], 3)
            else:
                res["chunked_peak_rss_gb_at_time_tokens"] = round(m["peak_rss_gb"], 3)
    res["time_tokens"] = args.time_tokens
    res["ms_per_token"] = {
        "full": round(1e3 * statistics.median(full_t), 4),
        "chunked": round(1e3 * statistics.median(chunk_t), 4),
    }
    res["time_ratio_chunked_over_full"] = round(statistics.median(chunk_t) / statistics.median(full_t), 3)
    print(
        f"{args.tokens} tokens: chunked peak {res['chunked_peak_rss_gb']:.2f} GB "
        f"({res['peak_over_floor']:.2f}x the floor {res['floor_gb']:.2f} GB); "
        f"time per token at {args.time_tokens}: chunked/full {res['time_ratio_chunked_over_full']:.2f}x"
    )
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
