"""bench/long_context_memory.py at small sizes: chunked log-probs hold a chunk of logits, not the sequence's."""

from __future__ import annotations

import pytest

from tests.bench.scripts import load_script


def load_bench():
    return load_script("long_context_memory")


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_chunked_memory_does_not_grow_with_the_sequence_like_full_logits():
    bench = load_bench()
    chunk = 128
    long = bench.measure(512, chunk)
    full = bench.measure(512, 0)
    logits_chunk_gb = chunk * bench.VOCAB * 4 / 1024**3  # 78 MB of float32 logits
    # full logits: ~3.6 MB per token (logits, a float32 copy, softmax) -> over 1 GB at 512 tokens
    assert full["peak_rss_gb"] - full["idle_rss_gb"] > 1.0
    # chunked: a few chunks' worth of buffers (4 chunks of tokens here), not the sequence's logits
    assert long["peak_rss_gb"] - long["idle_rss_gb"] < 4 * logits_chunk_gb + 0.1
    assert long["peak_rss_gb"] < full["peak_rss_gb"] - 0.8
    # the floor is a lower bound up to what malloc reuses from the warm-up step already counted in
    # "idle": at most that step's chunk of logits and its hidden states (at 512 tokens that can be
    # the whole difference; at 32K tokens the bench prints peak/floor)
    hidden_gb = 2 * 512 * bench.HIDDEN * 4 / 1024**3
    assert (
        bench.floor_gb(long["idle_rss_gb"], 512, chunk) <= long["peak_rss_gb"] + logits_chunk_gb + hidden_gb
    )
