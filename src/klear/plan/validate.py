"""Check the learner formula against measured CPU memory of tiny random Qwen3 models.

One subprocess builds a tiny Qwen3 per vocabulary size and, for each sequence length, runs
what the learner runs on a micro-batch: ``response_logprobs`` (chunked LM head, entropy on)
then backward of the summed log-probs, in float32. The measured figure is the *increment*
of resident memory over the process's state just before the step (the model built, a warm-up
step done, gradients freed): peak RSS (``VmHWM``, reset per case through
``/proc/self/clear_refs``) minus RSS before. The formula's figure for the same thing is the
gradients plus the activations of :func:`klear.plan.memory.learner_memory`. glibc's malloc
runs with a fixed mmap threshold so freed buffers go back to the system instead of hiding
in a heap the baseline already counts.

    python -m klear.plan.validate [--hidden 128 --layers 4 --lengths 256 512 1024 --vocabs 32000 151936]

prints one JSON object per case and exits 1 if any case is off by more than ``--tolerance``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
from dataclasses import dataclass

from klear.plan.memory import LearnerSetup, learner_memory
from klear.plan.shapes import ModelShape

PROMPT_TOKENS = 16


@dataclass(frozen=True)
class Case:
    vocab: int
    tokens: int  # prompt + response
    checkpointing: bool = False
    chunk_tokens: int = 1024  # LM-head tokens per chunk; 0: the full-logits path


def tiny_shape(vocab: int, hidden: int = 128, layers: int = 4) -> ModelShape:
    """The validation model: a Qwen3 with 4 query / 2 kv heads and a 4x MLP, tied embeddings."""
    return ModelShape(
        name=f"tiny-h{hidden}-v{vocab}",
        hidden=hidden,
        layers=layers,
        q_heads=4,
        kv_heads=2,
        head_dim=hidden // 4,
        intermediate=4 * hidden,
        vocab=vocab,
        tied=True,
        max_position=0,
    )


def predicted_increment(shape: ModelShape, case: Case) -> int:
    """The formula's bytes for one step above a warm process: gradients + activations."""
    m = learner_memory(
        shape,
        LearnerSetup(
            ranks=1,
            sharded=False,
            weight_dtype="float32",
            compute_dtype="float32",
            tokens=case.tokens,
            logit_tokens=case.tokens - PROMPT_TOKENS,
            chunk_tokens=case.chunk_tokens,
            checkpointing=case.checkpointing,
        ),
    )
    return m["gradients"] + m["activations"]


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _build(shape: ModelShape, checkpointing: bool, max_len: int):
    import torch
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=shape.vocab,
        hidden_size=shape.hidden,
        intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers,
        num_attention_heads=shape.q_heads,
        num_key_value_heads=shape.kv_heads,
        head_dim=shape.head_dim,
        max_position_embeddings=max_len,
        tie_word_embeddings=shape.tied,
        attn_implementation="sdpa",
    )
    model = Qwen3ForCausalLM(cfg).train()
    if checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return model


def _step(model, vocab: int, tokens: int, chunk_tokens: int) -> None:
    import torch

    from klear.train.batch import SeqBatch, response_logprobs

    g = torch.Generator().manual_seed(tokens)
    ids = torch.randint(0, vocab, (1, tokens), generator=g)
    batch = SeqBatch(
        input_ids=ids,
        attention_mask=torch.ones_like(ids),
        resp_start=torch.tensor([PROMPT_TOKENS]),
        resp_len=torch.tensor([tokens - PROMPT_TOKENS]),
    )
    logp, _ = response_logprobs(model, batch, with_entropy=True, chunk_tokens=chunk_tokens)
    logp.sum().backward()


def _worker(cases: list[Case], hidden: int, layers: int) -> None:
    """Measure each case in this process (grouped by model), one JSON line per case."""
    import torch

    torch.set_num_threads(1)
    built: dict[tuple[int, bool], object] = {}
    for case in cases:
        key = (case.vocab, case.checkpointing)
        if key not in built:
            built.clear()
            gc.collect()
            shape = tiny_shape(case.vocab, hidden, layers)
            model = _build(shape, case.checkpointing, max(c.tokens for c in cases))
            _step(model, case.vocab, 2 * PROMPT_TOKENS, 1024)  # warm-up: kernels, allocator
            built[key] = model
        model = built[key]
        model.zero_grad(set_to_none=True)
        gc.collect()
        before = _status_kib("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        _step(model, case.vocab, case.tokens, case.chunk_tokens)
        peak = _status_kib("VmHWM")
        print(json.dumps({**case.__dict__, "measured": (peak - before) * 1024}), flush=True)


def measure(cases: list[Case], hidden: int = 128, layers: int = 4, timeout_s: float = 600) -> list[dict]:
    """Run the cases in one fresh subprocess; return each case with its measured increment (bytes)."""
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1"}
    spec = json.dumps([c.__dict__ for c in cases])
    code = (
        "import json, sys; from klear.plan.validate import Case, _worker; "
        f"_worker([Case(**c) for c in json.loads(sys.argv[1])], {hidden}, {layers})"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, spec], env=env, capture_output=True, text=True, timeout=timeout_s
    )
    if proc.returncode != 0:
        raise RuntimeError(f"measurement subprocess failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def compare(cases: list[Case], hidden: int = 128, layers: int = 4) -> list[dict]:
    """Measured vs predicted increment per case, with their ratio (predicted / measured)."""
    rows = []
    for r in measure(cases, hidden, layers):
        case = Case(**{k: r[k] for k in Case.__dataclass_fields__})
        pred = predicted_increment(tiny_shape(case.vocab, hidden, layers), case)
        rows.append({**r, "predicted": pred, "ratio": pred / r["measured"]})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--lengths", type=int, nargs="+", default=[256, 512, 1024])
    p.add_argument("--vocabs", type=int, nargs="+", default=[32000, 151936])
    p.add_argument("--checkpointing", action="store_true")
    p.add_argument("--tolerance", type=float, default=0.25)
    a = p.parse_args(argv)
    cases = [Case(v, n, a.checkpointing, a.chunk) for v in a.vocabs for n in a.lengths]
    bad = 0
    for row in compare(cases, a.hidden, a.layers):
        print(json.dumps(row))
        bad += abs(row["ratio"] - 1.0) > a.tolerance
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
