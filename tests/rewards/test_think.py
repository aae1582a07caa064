"""Think-tag consistency: a chat template that opens ``<think>`` in the generation prompt is judged
the same way by the RL trainer, evaluation and the data filters (prefix + response)."""

from __future__ import annotations

import pytest

from klear.config import RewardConfig
from klear.rewards.math import math_reward
from klear.rewards.think import generation_prompt, judged_text, think_prefix
from klear.types import Rollout

#: Qwen3-Thinking / DeepSeek-R1 style: the generation prompt opens the reasoning block; with
#: enable_thinking false it closes an empty one (Qwen3's non-thinking mode).
QWEN3_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- else %}{{- '<think>\\n' }}{%- endif %}{%- endif %}"
)
#: An earlier assistant turn with reasoning in it: not the generation prompt's business.
HISTORY_TEMPLATE = "{% for m in messages %}<think>old</think>{{ m['content'] }}{% endfor %}"


def qwen3_tokenizer(template: str = QWEN3_TEMPLATE):
    """The tiny character-level tokenizer (built locally, no hub) with a Qwen3-style template."""
    from klear.models.tiny import build_tokenizer

    tok = build_tokenizer()
    tok.chat_template = template
    return tok


def test_prefix_of_a_template_that_opens_think():
    tok = qwen3_tokenizer()
    assert generation_prompt(tok) == "<|im_start|>assistant\n<think>\n"
    assert think_prefix(tok) == "<think>\n"
    assert think_prefix(QWEN3_TEMPLATE) == "<think>\n"  # the template string itself


def test_prefix_of_templates_that_open_nothing():
    from klear.models.tiny import build_tokenizer

    assert think_prefix(build_tokenizer()) == ""  # Qwen2.5-style: no think block
    assert think_prefix(None) == ""
    assert think_prefix(HISTORY_TEMPLATE) == ""  # tags in earlier turns are not the generation prompt
    no_template = build_tokenizer()
    no_template.chat_template = None
    assert think_prefix(no_template) == ""


def test_prefix_of_a_closed_empty_block():
    closed = QWEN3_TEMPLATE.replace("enable_thinking is defined and enable_thinking is false", "true")
    assert think_prefix(closed) == "<think>\n\n</think>\n\n"


QWEN3_RESPONSE = "2 plus 2 makes 4.\n</think>\nThe answer is \\boxed{4}."


def test_math_reward_judges_the_prefix_plus_the_response():
    cfg = RewardConfig()  # training defaults: missing <think> scores -2
    assert cfg.math.no_think_start_score == -2.0
    bare = math_reward(QWEN3_RESPONSE, "4", cfg)
    assert bare.score == -2.0 and bare.flags == ("format",)  # what happened before: every rollout -2
    judged = math_reward(judged_text(think_prefix(qwen3_tokenizer()), QWEN3_RESPONSE), "4", cfg)
    assert judged.score == 1.0 and judged.correct and judged.answer == "4"
    wrong = math_reward(judged_text("<think>\n", QWEN3_RESPONSE.replace("{4}", "{5}")), "4", cfg)
    assert wrong.score == -1.0 and not wrong.correct  # a signal: right and wrong answers differ
    # a response that never closes the block stays a format failure with the prefix too
    cut = math_reward(judged_text("<think>\n", "2 plus 2 makes"), "4", cfg)
    assert cut.score == cfg.math.no_think_end_score and not cut.correct


class DirectPool:
    """The math reward in-process with the training defaults (the RL trainer's reward config)."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.cfg = RewardConfig()
        self.last_metrics: dict[str, float] = {}

    def score(self, rows, responses, progress=None):
        self.seen.extend(responses)
        return [
            math_reward(r, row["reward_model"]["ground_truth"], RewardConfig())
            for row, r in zip(rows, responses, strict=True)
        ]


class QwenBackend:
    """Answers every problem with the Qwen3-style response (no ``<think>``: the template opened it)."""

    def __init__(self) -> None:
        self.tokenizer = qwen3_tokenizer()

    def generate(self, prompts, sampling, groups=None):
        groups = list(groups) if groups is not None else list(range(len(prompts)))
        return [
            Rollout([1], [2], [-0.1], QWEN3_RESPONSE, False, g, j) for g in groups for j in range(sampling.n)
        ]

    def close(self) -> None:
        pass


def test_eval_judges_like_rl(tmp_path):
    import json

    from klear.eval.benchmarks import Problem
    from klear.eval.runner import GenerationSettings, run_eval

    problems = [Problem(id="p0", index=0, question="2+2?", answer="4", data_source="toy")]
    pool = DirectPool()
    outcome = run_eval(
        problems,
        QwenBackend(),
        pool,
        tmp_path,
        GenerationSettings(n=2, max_new_tokens=8),
        benchmark="toy",
        n_boot=20,
    )
    assert pool.seen == ["<think>\n" + QWEN3_RESPONSE] * 2
    assert outcome.summary.metrics["avg@2"].value == 1.0
    lines = [json.loads(x) for x in (tmp_path / "samples.jsonl").read_text().splitlines()]
    # samples.jsonl keeps the judged text, so re-scoring the file gives the same verdicts
    assert [x["response"] for x in lines] == ["<think>\n" + QWEN3_RESPONSE] * 2


def test_data_filters_judge_like_rl():
    from klear.data.filters import backend_generator

    generate = backend_generator(QwenBackend(), temperature=1.0, top_p=1.0, max_new_tokens=8)
    (texts,) = generate([[{"role": "user", "content": "2+2?"}]], 3, 0)
    assert texts == ["<think>\n" + QWEN3_RESPONSE] * 3
    assert all(math_reward(t, "4", RewardConfig()).correct for t in texts)


def test_trl_reward_function_judges_like_rl():
    pytest.importorskip("trl", minversion="1.16")
    from klear.integrations.trl import klear_reward_func

    pool, tok = DirectPool(), qwen3_tokenizer()
    wrong = QWEN3_RESPONSE.replace("{4}", "{5}")
    gt = {"ground_truth": ["4", "4"], "ability": ["math", "math"]}
    chat = [[{"role": "user", "content": "2+2?"}]] * 2
    # conversational prompts: the tokenizer's template opened <think>; decoded ids or plain contents
    ids = [tok.encode(t, add_special_tokens=False) for t in (QWEN3_RESPONSE, wrong)]
    fn = klear_reward_func(pool=pool, tokenizer=tok)
    assert fn(prompts=chat, completions=[[]] * 2, completion_ids=ids, **gt) == [1.0, -1.0]
    contents = [[{"role": "assistant", "content": t}] for t in (QWEN3_RESPONSE, wrong)]
    assert fn(prompts=chat, completions=contents, **gt) == [1.0, -1.0]
    # a text prompt that ends inside <think> needs no tokenizer
    plain = klear_reward_func(pool=pool)
    texts = ["<|im_start|>assistant\n<think>\n"] * 2
    assert plain(prompts=texts, completions=[QWEN3_RESPONSE, wrong], **gt) == [1.0, -1.0]
    # without any prefix (a template that opens nothing) the format check still applies
    assert plain(prompts=["q", "q"], completions=[QWEN3_RESPONSE, wrong], **gt) == [-2.0, -2.0]
    # reasoning split off by a response parser is put back whole: no second <think>
    parsed = [[{"role": "assistant", "content": "\\boxed{4}", "reasoning_content": "2+2=4"}]] * 2
    assert fn(prompts=chat, completions=parsed, **gt) == [1.0, 1.0]
    assert pool.seen[-1] == "<think>2+2=4</think>\\boxed{4}"
    # an explicit prefix wins (e.g. a template rendered with enable_thinking=False)
    closed = klear_reward_func(pool=pool, tokenizer=tok, think_prefix="")
    assert closed(prompts=chat, completions=contents, **gt) == [-2.0, -2.0]


def test_verl_reward_functions_judge_like_rl(tmp_path, monkeypatch):
    pytest.importorskip("verl")
    from klear.integrations import verl as kv

    pool = DirectPool()
    monkeypatch.setattr(kv, "reward_pool", lambda cfg=None: pool)
    tok = qwen3_tokenizer()
    tok.save_pretrained(tmp_path / "tok")
    wrong = QWEN3_RESPONSE.replace("{4}", "{5}")
    kw = {"ability": "math", "tokenizer": str(tmp_path / "tok")}
    assert kv.compute_score("aime", QWEN3_RESPONSE, "4", {}, **kw)["score"] == 1.0
    assert pool.seen[-1] == "<think>\n" + QWEN3_RESPONSE
    batch = kv.compute_score_batch(["aime"] * 2, [QWEN3_RESPONSE, wrong], ["4", "4"], **kw)
    assert [b["score"] for b in batch] == [1.0, -1.0]
    literal = kv.compute_score("aime", QWEN3_RESPONSE, "4", {}, ability="math", think_prefix="<think>\n")
    assert literal == {"score": 1.0, "acc": 1.0}
    # verl's default (no tokenizer, no prefix): judged as decoded, the format check applies
    assert kv.compute_score("aime", QWEN3_RESPONSE, "4", {}, ability="math")["score"] == -2.0
