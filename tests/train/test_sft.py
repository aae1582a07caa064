"""SFT: assistant-only loss mask, packed forward equals separate forwards, a few steps learn, checkpoints load."""

from __future__ import annotations

import itertools
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from klear.config import OptimConfig, SFTConfig, build_config, load_config
from klear.models.tiny import build_tiny_model, build_tokenizer
from klear.rollout.hf import stop_token_ids
from klear.tasks import task_rows
from klear.train.common import lr_factor, pack_rows, token_logprobs
from klear.train.sft import (
    Example,
    build_examples,
    chat_of_row,
    packed_batch,
    plan_steps,
    run_sft,
    tokenize_chat,
)


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def test_loss_mask_covers_assistant_tokens_only(tok):
    msgs = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "1+2"},
        {"role": "assistant", "content": "<think>\nx\n</think>\n\\boxed{3}"},
        {"role": "user", "content": "again"},
        {"role": "assistant", "content": "ok"},
    ]
    ex = tokenize_chat(tok, msgs, stop_token_ids(tok))
    full = tok.apply_chat_template(msgs, tokenize=False)
    assert tok.decode(ex.input_ids) == full
    trained = "".join(tok.decode([t]) if m else "\0" for t, m in zip(ex.input_ids, ex.loss_mask, strict=True))
    pieces = [p for p in trained.split("\0") if p]
    assert pieces == ["<think>\nx\n</think>\n\\boxed{3}<|im_end|>", "ok<|im_end|>"]
    # the context before the first assistant turn tokenises exactly like a rollout prompt
    prompt = tok.apply_chat_template(msgs[:2], tokenize=False, add_generation_prompt=True)
    prompt_ids = tok.encode(prompt, add_special_tokens=False)
    assert ex.input_ids[: len(prompt_ids)] == prompt_ids
    assert ex.loss_mask[: len(prompt_ids)] == [0] * len(prompt_ids)
    assert ex.loss_mask[len(prompt_ids)] == 1


def test_chat_of_row_accepts_three_shapes():
    rl_row = task_rows("addition", "train", 1)[0]
    assert chat_of_row(rl_row, "r")[-1]["content"] == rl_row["extra_info"]["solution"]
    assert chat_of_row({"prompt": "p", "response": "r"}, "r")[1] == {"role": "assistant", "content": "r"}
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]
    assert chat_of_row({"messages": msgs}, "r") == msgs
    with pytest.raises(ValueError, match="row 7"):
        chat_of_row({"question": "q"}, "row 7")


def test_examples_are_truncated_and_empty_ones_dropped(tok):
    rows = [
        {"prompt": "1+1", "response": "2"},
        {"prompt": "x" * 100, "response": "y"},  # the answer is cut off by max_length
    ]
    examples, stats = build_examples(tok, rows, 40, stop_token_ids(tok))
    assert len(examples) == 1 and stats == {"truncated_examples": 1, "dropped_examples": 1}


def test_packed_rows_equal_separate_forwards(tmp_path):
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m", seed=1))
    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(5, 100, (n,), generator=g).tolist() for n in (7, 12, 5, 9, 3)]
    packed = pack_rows(seqs, row_length=16, pad_id=0)
    assert packed.input_ids.shape[0] < len(seqs)  # several sequences share a row
    with torch.no_grad():
        together = packed.gather(token_logprobs(model, packed.input_ids, packed.position_ids))
        for seq, got in zip(seqs, together, strict=True):
            ids = torch.tensor([seq])
            alone = token_logprobs(model, ids, torch.arange(len(seq))[None])[0]
            # the last position predicts across the boundary: never used
            assert torch.allclose(got[:-1], alone[:-1], atol=1e-5)


def test_packed_batch_targets_shift_the_mask_by_one():
    exs = [Example([1, 2, 3, 4], [0, 0, 1, 1]), Example([5, 6, 7], [0, 1, 1])]
    packed, target = packed_batch(exs, row_length=8, pad_id=0)
    got = [t.tolist() for t in packed.gather(target)]
    assert got == [[0, 1, 1, 0], [1, 1, 0]]
    assert target.sum() == 4


def test_plan_steps_packs_by_tokens_and_reshuffles_epochs():
    lengths = [10] * 10
    steps = plan_steps(lengths, 2.0, 30, seed=0)
    assert all(len(s) == 3 for s in steps[:-1]) and sum(map(len, steps)) == 20
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]
    assert sum(map(len, plan_steps(lengths, 0.5, 30, seed=0))) == 5
    assert plan_steps(lengths, 2.0, 30, seed=0) == steps


def test_warmup_then_cosine_to_the_floor():
    cfg = OptimConfig(lr=8e-5, schedule="cosine", min_lr_ratio=0.5, warmup_steps=4)
    f = [lr_factor(s, 24, cfg) for s in range(24)]
    assert f[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f[4] == pytest.approx(1.0) and f[-1] == pytest.approx(0.5)
    assert all(a >= b for a, b in itertools.pairwise(f[4:]))
    assert lr_factor(10, 24, OptimConfig(lr=1.0, schedule="constant")) == 1.0


def _tiny_cfg(tmp_path, **trainer):
    return build_config(
        SFTConfig,
        {
            "run": {"out_dir": str(tmp_path / "run"), "seed": 0},
            "model": {"tiny": True, "dtype": "float32"},
            "data": {"task": "addition", "train_size": 64, "val_size": 4},
            "optim": {"lr": 3e-3, "schedule": "cosine", "warmup_steps": 2, "weight_decay": 0.0},
            "trainer": {
                "epochs": 10,
                "max_length": 192,
                "batch_tokens": 512,
                "micro_batch_tokens": 256,
                "log_every": 1,
                "eval_max_new_tokens": 8,
                "num_threads": 2,
                **trainer,
            },
            "logging": {"progress": False},
        },
    )


def test_a_few_steps_learn_and_the_checkpoint_loads_back(tmp_path):
    cfg = _tiny_cfg(tmp_path, max_steps=12, save_every=6)
    result = run_sft(cfg)
    out = tmp_path / "run"
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in lines if "loss" in r and r.get("event") is None]
    assert [r["step"] for r in steps] == list(range(1, 13))
    losses = [r["loss"] for r in steps]
    assert all(torch.isfinite(torch.tensor(x)) for x in losses)
    assert losses[-1] < 0.7 * losses[0]
    assert {"lr", "grad_norm", "tokens_per_s", "loss_tokens"} <= set(steps[0])
    assert result.steps == 12 and "val/accuracy" in result.metrics
    # parameters changed; the final directory is a plain HF model + tokenizer
    init = AutoModelForCausalLM.from_pretrained(out / "init")
    final = AutoModelForCausalLM.from_pretrained(result.model_dir)
    assert AutoTokenizer.from_pretrained(result.model_dir).eos_token == "<|im_end|>"
    changed = [not torch.equal(a, b) for a, b in zip(init.parameters(), final.parameters(), strict=True)]
    assert all(changed)
    assert (out / "checkpoints" / "step_000006" / "trainer_state.pt").is_file()
    mid = AutoModelForCausalLM.from_pretrained(out / "checkpoints" / "step_000006" / "model")
    assert not torch.equal(mid.lm_head.weight, final.lm_head.weight)
    saved = load_config(SFTConfig, out / "config.yaml")
    assert saved == cfg
    assert json.loads((out / "summary.json").read_text())["steps"] == 12


def test_loss_is_the_nll_of_the_assistant_reply_alone(tmp_path):
    """The masked packed loss equals the NLL of (reply + <|im_end|>) given the rollout prompt,
    computed independently: prompt tokens and the template's trailing newline add nothing."""
    model = AutoModelForCausalLM.from_pretrained(build_tiny_model(tmp_path / "m", seed=0))
    tok = build_tokenizer()
    rows = task_rows("addition", "train", 2)
    examples = [tokenize_chat(tok, chat_of_row(r, "r"), stop_token_ids(tok)) for r in rows]
    packed, target = packed_batch(examples, 256, tok.pad_token_id)
    with torch.no_grad():
        masked = float(-(token_logprobs(model, packed.input_ids, packed.position_ids) * target).sum())
        expected = 0.0
        for r in rows:
            prompt = tok.encode(
                tok.apply_chat_template(r["prompt"], tokenize=False, add_generation_prompt=True),
                add_special_tokens=False,
            )
            reply = [*tok.encode(r["extra_info"]["solution"], add_special_tokens=False), tok.eos_token_id]
            logp = model(torch.tensor([prompt + reply])).logits[0].log_softmax(-1)
            idx = torch.arange(len(prompt) - 1, len(prompt) + len(reply) - 1)
            expected -= float(logp[idx, torch.tensor(reply)].sum())
    assert masked == pytest.approx(expected, rel=1e-5)
    assert target.sum() == sum(sum(e.loss_mask) for e in examples)


def test_recipes_parse():
    for name in ("recipes/demo-sft.yaml", "recipes/klear-8b-sft.yaml"):
        cfg = load_config(SFTConfig, name)
        assert cfg.kind == "sft"
    paper = load_config(SFTConfig, "recipes/klear-8b-sft.yaml")
    assert paper.optim.lr == 8e-5 and paper.optim.lr * paper.optim.min_lr_ratio == pytest.approx(4e-5)
    assert paper.trainer.epochs == 4 and paper.trainer.max_length == 32768


@pytest.mark.slow
def test_klear_sft_command_runs_a_recipe(tmp_path, capsys):
    from klear.cli import main

    rc = main(
        [
            "sft",
            "recipes/demo-sft.yaml",
            f"run.out_dir={tmp_path / 'cli'}",
            "data.train_size=32",
            "data.val_size=2",
            "trainer.max_steps=2",
            "trainer.eval_max_new_tokens=4",
            "logging.progress=false",
        ]
    )
    assert rc == 0
    assert "sft: 2 steps" in capsys.readouterr().out
    assert (tmp_path / "cli" / "final" / "config.json").is_file()
    assert main(["sft", "recipes/demo-sft.yaml", "trainer.max_length=0"]) == 2  # config error, not a crash
    assert main(["sft", "recipes/demo-sft.yaml", "data.task=null", f"run.out_dir={tmp_path / 'x'}"]) == 2
