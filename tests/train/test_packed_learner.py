"""Packed learner micro-batches (``trainer.pack_sequences``): the same log-probs, loss and gradients
as the padded path, and the sequences of a packed row never see each other."""

from __future__ import annotations

import itertools

import pytest
import torch

from klear.config import ConfigError, RLConfig, build_config
from klear.models.loading import load_model, pick_device
from klear.models.tiny import build_tiny_model
from klear.train.batch import make_batch, make_packed_batch, micro_batches, response_logprobs
from klear.train.common import make_optimizer
from klear.train.learner import Sample, merge_stats, old_logprobs, pad_id, passes_per_rank, update_policy
from klear.types import RewardResult, Rollout

# responses of very unequal lengths (the case packing is for) and prompts of two lengths
LENGTHS = [(7, 3), (7, 29), (11, 1), (11, 17), (7, 40), (11, 8)]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0))


def _rollouts(seed: int = 0, lengths=LENGTHS) -> list[Rollout]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i, (p, r) in enumerate(lengths):
        ids = torch.randint(5, 90, (p + r,), generator=g).tolist()
        out.append(Rollout(ids[:p], ids[p:], [], "", False, group=i // 2, sample=i % 2))
    return out


def _cfg(tmp: str, pack: bool, model: dict | None = None, **trainer) -> RLConfig:
    return build_config(
        RLConfig,
        {
            "run": {"out_dir": tmp},
            "model": {"tiny": True, "dtype": "float32", **(model or {})},
            "rollout": {"n": 2, "max_new_tokens": 40},
            "loss": {"type": "gppo", "sft_alpha": 0.1},
            "optim": {"lr": 1e-3, "grad_clip": None},
            "trainer": {
                "ppo_mini_batch_size": 3,
                "train_batch_size": 3,
                "pack_sequences": pack,
                "micro_batch_tokens": 64,
                **trainer,
            },
        },
    )


def test_packed_plan_fills_the_rows_of_long_sequences_with_short_ones():
    rollouts = [Rollout([1] * 2, [2] * (n - 2), [], "", False) for n in (10, 50, 12, 30, 11)]
    # longest first; rows as wide as each micro-batch's first sequence; rows x width <= budget:
    # 50 alone (2 x 50 > 45); 30 alone (2 x 30 > 45); 12, 11, 10 in three rows of 12 (36 <= 45)
    assert micro_batches(rollouts, 45, packed=True) == [[1], [3], [2, 4, 0]]
    # 64: 30 then 12 in a second row of 30 (60 <= 64), 11 fills that row (23 <= 30); 10 fits nowhere
    assert micro_batches(rollouts, 64, packed=True) == [[1], [3, 2, 4], [0]]
    # padded: length-sorted, rows x longest: 3 x 12 = 36 fits 45 and 64; 4 x 30 does not
    assert micro_batches(rollouts, 45) == [[0, 4, 2], [3], [1]]
    assert micro_batches(rollouts, 64) == [[0, 4, 2], [3], [1]]
    assert passes_per_rank(rollouts, 2, 45, packed=True) == [1, 2]  # ranks: (10, 12, 11) and (50, 30)


@pytest.mark.parametrize("seed", range(20))
def test_each_packed_micro_batch_is_rebuilt_row_for_row_within_the_budget(seed):
    """The plan's rows are the rows :func:`make_packed_batch` builds, so the budget bounds the
    tensor; almost every token of it is real."""
    rng = torch.Generator().manual_seed(seed)
    n = int(torch.randint(1, 60, (1,), generator=rng))
    lengths = torch.randint(2, 200, (n,), generator=rng).tolist()
    rollouts = [Rollout([1], [2] * (k - 1), [], "", False) for k in lengths]
    budget = int(torch.randint(150, 2000, (1,), generator=rng))
    plan = micro_batches(rollouts, budget, packed=True)
    assert sorted(i for mb in plan for i in mb) == list(range(n))
    for mb in plan:
        batch = make_packed_batch([rollouts[i] for i in mb], 0)
        if len(mb) > 1 or lengths[mb[0]] <= budget:
            assert batch.input_ids.numel() <= budget
        spans = sorted(
            (int(batch.row[k]), int(batch.resp_start[k]) - 1, lengths[i]) for k, i in enumerate(mb)
        )
        for (r1, s1, l1), (r2, s2, _) in itertools.pairwise(spans):
            assert r1 < r2 or s1 + l1 <= s2  # whole sequences, never overlapping


def test_packed_batch_layout_is_whole_sequences_with_restarting_positions():
    rollouts = [
        Rollout([1, 2], [3, 4, 5], [], "", False),
        Rollout([6], [7, 8], [], "", False),
        Rollout([9], [10], [], "", False),
    ]
    # rows as wide as the longest sequence (5): first-fit-decreasing puts the 3 and the 2 together
    mb = make_packed_batch(rollouts, 0)
    assert mb.input_ids.tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert mb.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 0, 1]]
    assert mb.attention_mask is None
    assert mb.row.tolist() == [0, 1, 1]
    assert mb.resp_start.tolist() == [2, 1, 4] and mb.resp_len.tolist() == [3, 2, 1]
    # wider rows: the unfilled tail of a row is padding, a position segment of its own
    wide = make_packed_batch(rollouts, 0, row_tokens=8)
    assert wide.input_ids.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8], [9, 10, 0, 0, 0, 0, 0, 0]]
    assert wide.position_ids.tolist() == [[0, 1, 2, 3, 4, 0, 1, 2], [0, 1, 0, 1, 2, 3, 4, 5]]
    assert wide.row.tolist() == [0, 0, 1] and wide.resp_start.tolist() == [2, 6, 1]


@pytest.mark.parametrize("chunk", [0, 5])
def test_packed_logprobs_entropy_and_gradients_equal_the_padded_path(model_dir, chunk):
    model, _ = load_model(model_dir, _cfg("/tmp", True).model, pick_device())
    rollouts = _rollouts()
    out = []
    for make in (make_batch, make_packed_batch):
        model.zero_grad(set_to_none=True)
        mb = make(rollouts, 0)
        logp, ent = response_logprobs(model, mb, temperature=0.7, with_entropy=True, chunk_tokens=chunk)
        weights = torch.linspace(-1, 1, logp.numel()).view_as(logp) * mb.response_mask
        (logp * weights).sum().backward()
        out.append((logp.detach(), ent, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (lp_pad, ent_pad, g_pad), (lp_pack, ent_pack, g_pack) = out
    assert lp_pad.shape == lp_pack.shape == (len(rollouts), 40)
    assert float(lp_pad.abs().sum()) > 0
    torch.testing.assert_close(lp_pack, lp_pad, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent_pack, ent_pad, rtol=1e-5, atol=1e-5)
    for name, g in g_pad.items():
        assert float(g.abs().max()) > 0, name
        torch.testing.assert_close(g_pack[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))


@pytest.mark.parametrize("row_tokens", [None, 1000])
def test_sequences_of_a_packed_row_do_not_attend_to_each_other(model_dir, row_tokens):
    """Changing every token of one sequence changes nothing in the log-probs of the sequences
    sharing its row, and each equals that sequence's log-probs computed alone."""
    model, _ = load_model(model_dir, _cfg("/tmp", True).model, pick_device())
    rollouts = _rollouts()
    changed = 3
    other = list(rollouts)
    g = torch.Generator().manual_seed(9)
    p, r = LENGTHS[changed]
    ids = torch.randint(5, 90, (p + r,), generator=g).tolist()
    other[changed] = Rollout(ids[:p], ids[p:], [], "", False)
    mb = make_packed_batch(rollouts, 0, row_tokens)
    neighbours = [i for i in range(len(rollouts)) if i != changed and mb.row[i] == mb.row[changed]]
    assert neighbours  # it shares its row
    with torch.no_grad():
        a, _ = response_logprobs(model, mb, chunk_tokens=4)
        b, _ = response_logprobs(model, make_packed_batch(other, 0, row_tokens), chunk_tokens=4)
        alone = [response_logprobs(model, make_batch([ro], 0), chunk_tokens=4)[0][0] for ro in rollouts]
    assert not torch.allclose(a[changed], b[changed])  # the changed sequence itself did change
    for i in range(len(rollouts)):
        if i != changed:
            torch.testing.assert_close(a[i], b[i], rtol=0, atol=0)
        n = len(rollouts[i].response_ids)
        torch.testing.assert_close(a[i, :n], alone[i][:n], rtol=1e-5, atol=1e-5)


def _update(model_dir: str, cfg: RLConfig) -> tuple[list[torch.Tensor], dict, dict]:
    torch.manual_seed(0)
    model, tokenizer = load_model(model_dir, cfg.model, pick_device())
    model.train()
    rollouts = _rollouts()
    pad = pad_id(tokenizer)
    old = old_logprobs(model, rollouts, pad, cfg)
    kept = []
    for g in range(3):
        group = []
        for j in range(2):
            i = 2 * g + j
            res = RewardResult(score=float(j == 0), correct=j == 0)
            s = Sample({}, rollouts[i], res, res.score, advantage=1.0 if j == 0 else -1.0)
            s.old_logp = old[i] + (0.3 if i % 2 else -0.3)  # off-policy: some tokens clip
            group.append(s)
        kept.append(group)
    stats = update_policy(model, make_optimizer(model, cfg.optim), kept, pad, cfg)
    grads = {k: v.grad.clone() for k, v in model.named_parameters()}
    return old, merge_stats([stats]), grads


@pytest.mark.parametrize(
    "settings",
    [
        {"logits_chunk_tokens": 7},  # the full-logits path: test_packed_logprobs_..._padded_path[0]
        {"logits_chunk_tokens": 16, "model": {"gradient_checkpointing": True}},
    ],
    ids=["chunked", "checkpointing"],
)
def test_update_policy_packed_equals_padded(model_dir, tmp_path, settings):
    settings = dict(settings)
    model = settings.pop("model", None)
    runs = [_update(model_dir, _cfg(str(tmp_path), pack, model, **settings)) for pack in (False, True)]
    (old_pad, m_pad, g_pad), (old_pack, m_pack, g_pack) = runs
    for a, b in zip(old_pack, old_pad, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    for k in ("actor/loss", "actor/pg_loss", "actor/sft_loss", "actor/entropy", "actor/clip_frac_high"):
        assert m_pack[k] == pytest.approx(m_pad[k], rel=1e-5, abs=1e-6), k
    assert m_pad["actor/clip_frac_high"] + m_pad["actor/clip_frac_low"] > 0  # clipped tokens present
    for name, g in g_pad.items():
        assert float(g.abs().max()) > 0, name
        torch.testing.assert_close(g_pack[name], g, rtol=1e-5, atol=1e-5 * float(g.abs().max()))


def test_packed_under_bf16_autocast_stays_close_to_padded(model_dir, tmp_path):
    """Mixed precision: not bit-equal (different matmul shapes round differently), but close."""
    model, _ = load_model(model_dir, _cfg("/tmp", True).model, pick_device())
    rollouts = _rollouts()
    out = []
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for make in (make_batch, make_packed_batch):
            out.append(response_logprobs(model, make(rollouts, 0), chunk_tokens=8)[0])
    assert float((out[0] - out[1]).abs().max()) < 0.1
    assert float(out[0].abs().sum()) > 0


def test_pack_sequences_must_be_a_bool(tmp_path):
    with pytest.raises(ConfigError, match="pack_sequences"):
        build_config(
            RLConfig, {"run": {"out_dir": str(tmp_path)}, "trainer": {"pack_sequences": "sometimes"}}
        )
