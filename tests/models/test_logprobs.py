"""Chunked LM-head log-probs: same values and gradients as full logits, for any chunking."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from klear.models.logprobs import chunked_token_logprobs
from klear.train.batch import SeqBatch, response_logprobs


def _reference(hidden, weight, targets, temperature=1.0):
    """log p(target) and entropy from the full [N, V] logits (the plain path)."""
    logits = (hidden @ weight.T).float() / temperature
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(1, targets[:, None]).squeeze(1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy


@pytest.mark.parametrize(("chunk", "temperature"), [(1, 1.0), (7, 0.7), (16, 1.0), (1000, 1.3)])
def test_values_and_gradients_equal_full_logits(chunk, temperature):
    g = torch.Generator().manual_seed(0)
    n, h, v = 23, 8, 50
    hidden = torch.randn(n, h, generator=g, dtype=torch.float64)
    weight = torch.randn(v, h, generator=g, dtype=torch.float64)
    targets = torch.randint(0, v, (n,), generator=g)
    w_logp = torch.randn(n, generator=g, dtype=torch.float64)  # arbitrary upstream gradients
    w_ent = torch.randn(n, generator=g, dtype=torch.float64)

    grads = []
    for fn in ("chunked", "reference"):
        hd = hidden.clone().requires_grad_(True)
        wt = weight.clone().requires_grad_(True)
        if fn == "chunked":
            logp, ent = chunked_token_logprobs(
                hd, wt, targets, chunk, with_entropy=True, temperature=temperature
            )
        else:
            logp, ent = _reference(hd, wt, targets, temperature)
        ((logp * w_logp).sum() + (ent * w_ent).sum()).backward()
        grads.append((logp.detach(), ent.detach(), hd.grad, wt.grad))
    for got, want in zip(grads[0], grads[1], strict=True):
        torch.testing.assert_close(got.double(), want.double(), rtol=1e-5, atol=1e-5)


def test_logprob_gradient_alone_and_hand_checked_values():
    # two tokens, vocabulary of 2, weight = identity: logits are the hidden states themselves
    hidden = torch.tensor([[0.0, 0.0], [2.0, 0.0]], requires_grad=True)
    weight = torch.eye(2, requires_grad=True)
    logp, ent = chunked_token_logprobs(
        hidden, weight, torch.tensor([0, 1]), chunk_tokens=1, with_entropy=True
    )
    p = torch.sigmoid(torch.tensor(2.0))  # p(token 0) in row 1
    torch.testing.assert_close(logp.detach(), torch.tensor([-0.693147, float(torch.log(1 - p))]))
    torch.testing.assert_close(ent.detach()[0], torch.tensor(0.693147))
    logp.sum().backward()  # d log p_t / d z = onehot_t - p
    torch.testing.assert_close(hidden.grad, torch.tensor([[0.5, -0.5], [-float(p), float(p)]]))


def test_bad_chunk_is_refused():
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunked_token_logprobs(torch.zeros(2, 3), torch.zeros(4, 3), torch.zeros(2, dtype=torch.long), 0)


def _model(tied: bool, vocab: int = 97):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=8,
        max_position_embeddings=128,
        tie_word_embeddings=tied,
    )
    model = Qwen3ForCausalLM(cfg).double()
    return model


def _batch(vocab: int) -> SeqBatch:
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, vocab, (3, 12), generator=g)
    att = torch.ones_like(ids)
    att[1, 9:] = 0  # right padding
    att[2, 6:] = 0
    ids[att == 0] = 0
    return SeqBatch(ids, att, resp_start=torch.tensor([4, 2, 5]), resp_len=torch.tensor([8, 7, 1]))


@pytest.mark.parametrize("tied", [True, False])
@pytest.mark.parametrize("chunk", [1, 5, 4096])
def test_response_logprobs_match_the_full_logits_path(tied, chunk):
    model = _model(tied)
    batch = _batch(97)
    results = []
    for c in (chunk, 0):
        model.zero_grad(set_to_none=True)
        logp, ent = response_logprobs(model, batch, temperature=0.8, with_entropy=True, chunk_tokens=c)
        (logp * torch.linspace(-1, 1, logp.numel()).view_as(logp)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters()}
        results.append((logp.detach(), ent, grads))
    (lp_c, ent_c, g_c), (lp_r, ent_r, g_r) = results
    torch.testing.assert_close(lp_c, lp_r, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(ent_c, ent_r, rtol=1e-5, atol=1e-7)
    assert ent_c.requires_grad is False
    assert g_c.keys() == g_r.keys()
    for name in g_r:
        torch.testing.assert_close(
            g_c[name], g_r[name], rtol=1e-5, atol=1e-6, msg=lambda m, n=name: f"{n}: {m}"
        )
    head = "model.embed_tokens.weight" if tied else "lm_head.weight"
    assert g_c[head].abs().sum() > 0


def test_head_never_sees_prompt_positions(monkeypatch):
    import klear.models.logprobs as lp

    model = _model(tied=True)
    batch = _batch(97)
    rows = []
    apply = lp.ChunkedLogprobs.apply
    monkeypatch.setattr(lp.ChunkedLogprobs, "apply", lambda h, *a: rows.append(h.shape[0]) or apply(h, *a))
    full = []
    model.get_output_embeddings().register_forward_hook(lambda m, args, out: full.append(out.shape))
    logp, _ = response_logprobs(model, batch, chunk_tokens=4)
    assert logp.shape == (3, 8)
    assert rows == [8 + 7 + 1]  # only the response-predicting positions reach the vocabulary
    assert full == [(16, 2)]  # the head's output is the per-token (log p, entropy), never [B, L, V]
    assert "forward" not in vars(model.get_output_embeddings())  # the swap is undone


def test_autocast_matches_the_full_logits_path_under_bf16():
    model = _model(tied=True).float()
    batch = _batch(97)
    out = []
    for chunk in (3, 0):
        model.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logp, _ = response_logprobs(model, batch, chunk_tokens=chunk)
        logp.sum().backward()
        out.append((logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    (a, ga), (b, gb) = out
    torch.testing.assert_close(a, b, rtol=0, atol=1e-6)  # the same bf16 matmul, the same fp32 softmax
    for name, g in gb.items():
        assert ga[name].dtype == torch.float32
        # backward: ours accumulates the head gradient in fp32 over chunks, autograd in one bf16 matmul
        torch.testing.assert_close(ga[name], g, rtol=0, atol=0.02 * float(g.abs().max()) + 1e-6)


def test_packed_sft_logprobs_match_the_full_logits_path_where_masked():
    from klear.train.common import pack_rows, token_logprobs

    model = _model(tied=False)
    packed = pack_rows([[5, 6, 7, 8, 9], [10, 11, 12], [13, 14, 15, 16]], row_length=9, pad_id=0)
    target = packed.scatter([[0, 1, 1, 1, 0], [1, 1, 0], [0, 0, 1, 0]])
    results = []
    for chunk in (2, 0):
        model.zero_grad(set_to_none=True)
        logp = token_logprobs(model, packed.input_ids, packed.position_ids, chunk_tokens=chunk, mask=target)
        nll = -(logp * target).sum()
        nll.backward()
        results.append((logp * target, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_c, g_c), (lp_r, g_r) = results
    torch.testing.assert_close(lp_c, lp_r, rtol=1e-5, atol=1e-7)
    assert int((lp_c != 0).sum()) == int(target.sum()) == 6
    for name in g_r:
        torch.testing.assert_close(g_c[name], g_r[name], rtol=1e-5, atol=1e-6)
