"""The tiny model and its local tokenizer: round trips, chat template, save/load with the Auto classes."""

from __future__ import annotations

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from klear.models.tiny import build_tiny_model, build_tokenizer
from klear.tasks import TASKS, generate_problems


def test_tokenizer_round_trip_and_single_token_markers():
    tok = build_tokenizer()
    text = "<|im_start|>user\n482+9135<|im_end|>\n<think>\n2+5+0=7\n\n</think>\n\\boxed{9617}"
    ids = tok.encode(text, add_special_tokens=False)
    assert tok.decode(ids) == text
    for marker in ["<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|endoftext|>"]:
        assert len(tok.encode(marker, add_special_tokens=False)) == 1, marker
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    # skipping specials drops chat markers but keeps the reasoning markers the reward needs
    assert tok.decode(ids, skip_special_tokens=True) == (
        "user\n482+9135\n<think>\n2+5+0=7\n\n</think>\n\\boxed{9617}"
    )
    # every character the tasks write is in the vocabulary
    for name in TASKS:
        for p in generate_problems(name, "train", 50):
            assert tok.unk_token_id not in tok.encode(p.question + p.solution, add_special_tokens=False)


def test_chat_template_is_qwen_style():
    tok = build_tokenizer()
    msgs = [{"role": "user", "content": "1+2"}, {"role": "assistant", "content": "<think>\n</think>3"}]
    assert tok.apply_chat_template(msgs[:1], tokenize=False, add_generation_prompt=True) == (
        "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n"
    )
    assert tok.apply_chat_template(msgs, tokenize=False) == (
        "<|im_start|>user\n1+2<|im_end|>\n<|im_start|>assistant\n<think>\n</think>3<|im_end|>\n"
    )


def test_tiny_model_saves_and_loads_with_auto_classes(tmp_path):
    path = build_tiny_model(tmp_path / "m", seed=3)
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert model.config.model_type == "qwen3"
    assert model.config.tie_word_embeddings
    n_params = sum(p.numel() for p in model.parameters())
    assert 300_000 < n_params < 800_000
    assert model.config.vocab_size == len(tok)
    assert tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False) == (
        "<|im_start|>user\nx<|im_end|>\n"
    )
    ids = torch.tensor([tok.encode("12+34", add_special_tokens=False)])
    assert model(ids).logits.shape == (1, 5, len(tok))
    # the same seed gives the same weights; another seed does not
    again = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m2", seed=3))
    other = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m3", seed=4))
    w = model.model.embed_tokens.weight
    assert torch.equal(w, again.model.embed_tokens.weight)
    assert not torch.equal(w, other.model.embed_tokens.weight)
