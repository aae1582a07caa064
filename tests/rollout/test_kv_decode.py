"""The lean KV-cache decoder against the transformers forward of the same weights."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

from klear.rollout.kv_decode import KVDecoder, unsupported

COMMON = dict(
    vocab_size=61,
    hidden_size=48,
    intermediate_size=96,
    num_hidden_layers=2,
    num_attention_heads=6,
    num_key_value_heads=2,
    max_position_embeddings=128,
    rms_norm_eps=1e-6,
)


def random_model(config_cls, **extra):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config_cls(**COMMON, **extra), attn_implementation="sdpa")
    with torch.no_grad():  # larger than the init's 0.02 so that every term matters
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return model.eval()


ARCHS = {
    "qwen3": lambda: random_model(Qwen3Config, head_dim=16, tie_word_embeddings=True),
    "qwen2": lambda: random_model(Qwen2Config, tie_word_embeddings=False),  # q/k/v biases
    "llama": lambda: random_model(LlamaConfig, rope_theta=500.0),
}


def left_padded(lengths, width, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, vocab, (len(lengths), width), generator=g)
    valid = torch.zeros(len(lengths), width, dtype=torch.bool)
    for i, n in enumerate(lengths):
        valid[i, width - n :] = True
        ids[i, : width - n] = 0
    positions = (valid.long().cumsum(-1) - 1).clamp(min=0)
    return ids, valid, positions


@pytest.mark.parametrize("arch", sorted(ARCHS))
def test_prefill_and_steps_equal_the_full_forward(arch):
    model = ARCHS[arch]()
    assert unsupported(model) is None
    ids, valid, positions = left_padded([7, 3, 5, 1], 7, 61)
    steps = 6
    dec = KVDecoder(model, batch=4, max_len=7 + steps)
    got = [dec.forward(ids, positions, valid)]
    g = torch.Generator().manual_seed(1)
    new = torch.randint(1, 61, (4, steps), generator=g)
    for s in range(steps - 1):
        got.append(
            dec.forward(new[:, s : s + 1], positions[:, -1:] + 1 + s, torch.ones(4, 1, dtype=torch.bool))
        )
    # reference: one forward over prompt + new tokens, no cache
    full = torch.cat([ids, new[:, : steps - 1]], dim=1)
    mask = torch.cat([valid, torch.ones(4, steps - 1, dtype=torch.bool)], dim=1).long()
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        want = model(input_ids=full, attention_mask=mask, position_ids=pos).logits
    for s, logits in enumerate(got):
        assert torch.allclose(logits, want[:, 6 + s], atol=1e-5, rtol=1e-5), (arch, s)


def test_select_keeps_rows_and_their_cache():
    model = ARCHS["qwen3"]()
    ids, valid, positions = left_padded([4, 2, 3], 4, 61, seed=3)
    dec = KVDecoder(model, batch=3, max_len=8)
    dec.forward(ids, positions, valid)
    dec.select(torch.tensor([2, 0]))
    token = torch.tensor([[5], [9]])
    got = dec.forward(token, positions[[2, 0], -1:] + 1, torch.ones(2, 1, dtype=torch.bool))
    full = torch.cat([ids[[2, 0]], token], dim=1)
    mask = torch.cat([valid[[2, 0]], torch.ones(2, 1, dtype=torch.bool)], dim=1).long()
    with torch.no_grad():
        want = model(
            input_ids=full, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0)
        ).logits
    assert torch.allclose(got, want[:, -1], atol=1e-5, rtol=1e-5)


def test_bfloat16_matches_the_hf_forward_in_its_precision():
    model = ARCHS["qwen3"]().to(torch.bfloat16)
    ids, valid, positions = left_padded([5, 2], 5, 61, seed=4)
    got = KVDecoder(model, batch=2, max_len=5).forward(ids, positions, valid)
    with torch.no_grad():
        want = model(input_ids=ids, attention_mask=valid.long(), position_ids=positions).logits[:, -1]
    assert got.dtype == torch.bfloat16
    # bf16 rounding (8 bits of mantissa) on logits of magnitude ~10: a few units in the last place
    assert (got.float() - want.float()).abs().max() < 0.25


@pytest.mark.parametrize(
    "change, reason",
    [
        (dict(use_sliding_window=True, sliding_window=4, max_window_layers=0), "sliding"),
        (dict(hidden_act="gelu"), "hidden_act"),
        (dict(rope_scaling={"rope_type": "dynamic", "factor": 2.0}), "rope_type"),
    ],
)
def test_what_it_does_not_model_is_refused(change, reason):
    model = random_model(Qwen2Config, **change)
    assert reason in unsupported(model)
    with pytest.raises(ValueError, match="does not support"):
        KVDecoder(model, batch=1, max_len=4)


def test_other_architectures_are_refused():
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=20))
    assert "model_type 'gpt2'" in unsupported(model)


def test_an_adapter_in_place_of_a_linear_is_refused():
    model = ARCHS["qwen3"]()

    class LoRALinear(torch.nn.Linear):  # computes more than its .weight says
        pass

    old = model.model.layers[1].mlp.up_proj
    model.model.layers[1].mlp.up_proj = LoRALinear(old.in_features, old.out_features, bias=False)
    assert "up_proj is a LoRALinear" in unsupported(model)


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_the_backend_samples_the_same_with_the_lean_decoder_and_the_hf_forward(temperature):
    from klear.rollout import SamplingParams
    from klear.rollout.hf import HFRolloutBackend

    model = ARCHS["qwen3"]()

    class Tok:  # token-id prompts only: the backend needs ids for EOS and padding, and decoding
        eos_token_id, pad_token_id, unk_token_id = 1, 0, None

        def convert_tokens_to_ids(self, token):
            return None

        def batch_decode(self, ids, skip_special_tokens=True):
            return [" ".join(map(str, x)) for x in ids]

    prompts = [[5, 6, 7, 8, 9], [3], [11, 12, 13], [40, 41]]  # left padding, and rows that stop early
    sampling = SamplingParams(n=3, temperature=temperature, max_new_tokens=12, seed=7)
    stops = list(range(1, 9))  # an eighth of the vocabulary ends a response: rows leave at different steps
    lean = HFRolloutBackend(model, Tok(), stop_ids=stops, lean=True).generate(prompts, sampling)
    hf = HFRolloutBackend(model, Tok(), stop_ids=stops, lean=False).generate(prompts, sampling)
    assert [r.response_ids for r in lean] == [r.response_ids for r in hf]
    assert len({len(r.response_ids) for r in hf}) > 2  # rows left the batch at different steps
    for a, b in zip(lean, hf, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)


def test_asking_for_lean_decoding_of_an_unsupported_model_is_an_error():
    from klear.rollout.hf import HFRolloutBackend

    model = random_model(Qwen2Config, hidden_act="gelu")
    with pytest.raises(ValueError, match="lean decoding was asked for"):
        HFRolloutBackend(model, type("Tok", (), {"pad_token_id": 0})(), stop_ids=[1], lean=True)
