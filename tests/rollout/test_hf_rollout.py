"""The HF rollout backend against transformers' own generate and a recomputed forward pass."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from klear.models.tiny import build_tiny_model
from klear.rollout import SamplingParams, backend_class
from klear.rollout.hf import HFRolloutBackend, process_logits
from klear.tasks import task_rows


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture(scope="module")
def backend(model_dir):
    return HFRolloutBackend.from_pretrained(model_dir, seed=0)


@pytest.fixture(scope="module")
def varied(backend):
    """The same architecture with larger random weights: greedy outputs vary from token to token."""
    model = AutoModelForCausalLM.from_config(backend.model.config)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    return HFRolloutBackend(model.eval(), backend.tokenizer)


@pytest.fixture(scope="module")
def prompts():
    # prompts of different lengths, so left padding is exercised
    return [r["prompt"] for r in task_rows("addition", "train", 6, seed=0)]


def test_shapes_groups_and_truncation(backend, prompts):
    out = backend.generate(prompts[:3], SamplingParams(n=4, max_new_tokens=7), groups=["a", "b", "c"])
    assert len(out) == 12
    assert [r.group for r in out] == ["a"] * 4 + ["b"] * 4 + ["c"] * 4
    assert [r.sample for r in out] == [0, 1, 2, 3] * 3
    for k, r in enumerate(out):
        assert r.prompt_ids == backend.encode(prompts[k // 4])
        assert len(r.logprobs) == len(r.response_ids) <= 7
        assert all(lp <= 0 and math.isfinite(lp) for lp in r.logprobs)
        ends_on_stop = r.response_ids[-1] in backend.stop_ids
        assert r.truncated == (not ends_on_stop) and r.truncated == (len(r.response_ids) == 7)
        assert r.meta["finish_reason"] == ("length" if r.truncated else "stop")
    # an untrained model rarely stops within 7 tokens
    assert any(r.truncated for r in out)
    # token-id and text prompts give the same prompt ids as chat messages
    ids = backend.encode(prompts[0])
    text = backend.tokenizer.decode(ids)
    seeded = SamplingParams(n=2, max_new_tokens=5, seed=1)
    a, b, c = (backend.generate([p], seeded) for p in (prompts[0], ids, text))
    assert [r.response_ids for r in a] == [r.response_ids for r in b] == [r.response_ids for r in c]


def test_stops_at_eos_and_early_rows_leave_the_batch(varied, prompts):
    backend = varied
    greedy = SamplingParams(temperature=0, max_new_tokens=20)
    free = backend.generate(prompts, greedy)
    assert free[0].response_ids[2] not in free[0].response_ids[:2], "test needs a varied response"
    # make the 3rd greedy token of prompt 0 a stop token: prompt 0 stops there, others at their
    # own first occurrence of it; tokens before the stop must equal the unstopped run
    stop = free[0].response_ids[2]
    stopping = HFRolloutBackend(backend.model, backend.tokenizer, stop_ids=[stop])
    out = stopping.generate(prompts, greedy)
    assert out[0].response_ids == free[0].response_ids[:3] and not out[0].truncated
    for f, s in zip(free, out, strict=True):
        cut = f.response_ids.index(stop) + 1 if stop in f.response_ids else len(f.response_ids)
        assert s.response_ids == f.response_ids[:cut]
        assert s.truncated == (stop not in f.response_ids)
        assert s.logprobs == pytest.approx(f.logprobs[:cut], abs=1e-5)


@pytest.mark.parametrize("which", ["tiny", "varied"])
def test_greedy_equals_transformers_generate(backend, varied, prompts, which):
    backend = backend if which == "tiny" else varied
    tok, model = backend.tokenizer, backend.model
    enc = [backend.encode(p) for p in prompts]
    width = max(map(len, enc))
    ids = torch.tensor([[tok.pad_token_id] * (width - len(e)) + e for e in enc])
    mask = (ids != tok.pad_token_id).long()
    ref = model.generate(
        input_ids=ids, attention_mask=mask, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id
    )
    ours = backend.generate(prompts, SamplingParams(temperature=0, max_new_tokens=24))
    for i, r in enumerate(ours):
        expected = ref[i, width:].tolist()
        if tok.eos_token_id in expected:
            expected = expected[: expected.index(tok.eos_token_id) + 1]
        assert r.response_ids == expected


def test_logprobs_match_a_recomputed_forward_pass(backend, prompts):
    out = backend.generate(prompts[:3], SamplingParams(n=2, temperature=1.0, max_new_tokens=12, seed=5))
    for r in out:
        seq = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            logp = backend.model(seq).logits[0].float().log_softmax(-1)
        p = len(r.prompt_ids)
        expected = logp[p - 1 : -1].gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
        assert r.logprobs == pytest.approx(expected.tolist(), abs=1e-4)


def test_sampling_is_deterministic_given_a_seed(backend, prompts):
    params = SamplingParams(n=3, temperature=1.0, max_new_tokens=10)
    model, tok = backend.model, backend.tokenizer
    a = HFRolloutBackend(model, tok, seed=11).generate(prompts, params)
    b = HFRolloutBackend(model, tok, seed=11).generate(prompts, params)
    c = HFRolloutBackend(model, tok, seed=12).generate(prompts, params)
    assert [r.response_ids for r in a] == [r.response_ids for r in b]
    assert [r.logprobs for r in a] == [r.logprobs for r in b]
    assert [r.response_ids for r in a] != [r.response_ids for r in c]
    # a per-call seed reproduces one call regardless of the backend's generator state
    be = HFRolloutBackend(model, tok, seed=0)
    x = be.generate(prompts, params.replace(seed=3))
    be.generate(prompts, params)
    y = be.generate(prompts, params.replace(seed=3))
    assert [r.response_ids for r in x] == [r.response_ids for r in y]
    # the generator state round-trips (exact resume)
    state = be.get_rng_state()
    u = be.generate(prompts, params)
    be.set_rng_state(state)
    assert [r.response_ids for r in be.generate(prompts, params)] == [r.response_ids for r in u]
    # micro-batching does not change greedy results
    greedy = SamplingParams(temperature=0, max_new_tokens=10)
    chunked = HFRolloutBackend(be.model, be.tokenizer, max_batch_size=2)
    assert [r.response_ids for r in chunked.generate(prompts, greedy)] == [
        r.response_ids for r in be.generate(prompts, greedy)
    ]


def test_process_logits_temperature_top_k_top_p():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    p = process_logits(logits, 1.0, -1, 1.0).exp()
    assert p.tolist()[0] == pytest.approx([0.5, 0.3, 0.15, 0.05])
    # top-p 0.7: 0.5 alone is short of 0.7, so 0.3 joins; renormalised
    assert process_logits(logits, 1.0, -1, 0.7).exp().tolist()[0] == pytest.approx([0.625, 0.375, 0, 0])
    assert process_logits(logits, 1.0, -1, 0.8).exp().tolist()[0] == pytest.approx([0.625, 0.375, 0, 0])
    assert process_logits(logits, 1.0, -1, 0.81).exp()[0, 2] > 0
    assert process_logits(logits, 1.0, 1, 1.0).exp().tolist()[0] == pytest.approx([1, 0, 0, 0])
    assert process_logits(logits, 1.0, 3, 1.0).exp().tolist()[0] == pytest.approx(
        [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0]
    )
    # temperature 2 halves the logits: p ~ sqrt(p0)
    t2 = process_logits(logits, 2.0, -1, 1.0).exp()[0]
    s = torch.tensor([0.5, 0.3, 0.15, 0.05]).sqrt()
    assert t2.tolist() == pytest.approx((s / s.sum()).tolist())


def test_update_weights_copies_a_policy_in(model_dir, prompts):
    policy = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    be = HFRolloutBackend.from_pretrained(model_dir)
    shared = HFRolloutBackend(policy, be.tokenizer)
    greedy = SamplingParams(temperature=0, max_new_tokens=12)
    before = be.generate(prompts, greedy)
    be.update_weights(policy.state_dict())
    after = be.generate(prompts, greedy)
    assert [r.response_ids for r in after] == [r.response_ids for r in shared.generate(prompts, greedy)]
    assert [r.response_ids for r in after] != [r.response_ids for r in before]
    shared.update_weights(policy)  # the same module: nothing to copy


def test_sampling_params_validation_and_registry():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="n"):
        SamplingParams(n=0)
    assert SamplingParams(temperature=0).greedy
    assert backend_class("hf") is HFRolloutBackend
    with pytest.raises(ValueError, match="not available"):
        backend_class("nonesuch")


def test_sampled_rows_do_not_depend_on_batching_or_splitting(backend, prompts):
    """Keyed randomness: the same (seed, group, sample) gives the same response in any batch."""
    params = SamplingParams(n=2, temperature=1.0, max_new_tokens=10, seed=7)
    groups = [100 + i for i in range(len(prompts))]
    whole = backend.generate(prompts, params, groups=groups)
    halves = backend.generate(prompts[:3], params, groups=groups[:3]) + backend.generate(
        prompts[3:], params, groups=groups[3:]
    )
    chunked = HFRolloutBackend(backend.model, backend.tokenizer, max_batch_size=3).generate(
        prompts, params, groups=groups
    )
    for other in (halves, chunked):
        assert [r.response_ids for r in other] == [r.response_ids for r in whole]
        for a, b in zip(other, whole, strict=True):
            assert a.logprobs == pytest.approx(b.logprobs, abs=1e-5)
    # another group id is another draw
    moved = backend.generate(prompts, params, groups=[g + 1000 for g in groups])
    assert [r.response_ids for r in moved] != [r.response_ids for r in whole]


def test_inverse_cdf_samples_the_distribution_and_never_a_zero_probability_token():
    from klear.rollout.hf import inverse_cdf

    probs = torch.tensor([[0.0, 0.2, 0.0, 0.5, 0.3, 0.0]])
    # edges: u = 0 picks the first token with mass, u -> 1 the last one with mass
    assert inverse_cdf(probs, torch.tensor([0.0])).item() == 1
    assert inverse_cdf(probs, torch.tensor([1.0 - 1e-7])).item() == 4
    assert inverse_cdf(probs, torch.tensor([0.2])).item() == 3  # cdf[1] = 0.2 is not > 0.2
    u = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    picks = inverse_cdf(probs.expand(len(u), -1), u)
    freq = torch.bincount(picks, minlength=6).float() / len(u)
    assert freq[[0, 2, 5]].sum() == 0
    assert freq.tolist() == pytest.approx(probs[0].tolist(), abs=5e-3)
    # unnormalised rows are normalised
    assert inverse_cdf(torch.tensor([[2.0, 2.0]]), torch.tensor([0.6])).item() == 1
