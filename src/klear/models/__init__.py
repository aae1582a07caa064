"""Everything about the model itself: the built-in tiny Qwen3 and its tokenizer (:mod:`.tiny`),
YaRN rope scaling (:mod:`.yarn`), precision policy and chunked LM-head log-probs (:mod:`.logprobs`)."""
