"""Model-side numerics shared by the trainers: precision policy and chunked LM-head log-probs."""
