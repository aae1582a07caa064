"""Everything about the model itself: the built-in tiny Qwen3 and its tokenizer (:mod:`.tiny`),
YaRN rope scaling (:mod:`.yarn`), loading, saving and the precision policy (:mod:`.loading`),
and chunked LM-head log-probs (:mod:`.logprobs`)."""
