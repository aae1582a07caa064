"""The trainers, one readable loop each: ``sft.run_sft`` (long-CoT SFT) and the RL loop (GPPO).

``common`` holds what they share -- model loading, precision, AdamW, warmup + cosine,
the packed padding-free forward that yields per-token log-probs, and the metrics file --
so SFT's loss and RL's log-probs come from the same code.
"""
