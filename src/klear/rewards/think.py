"""What a reward judges: the reasoning block as the model saw it, then what the model produced.

Thinking models' chat templates (Qwen3, Klear-Reasoner) open ``<think>`` in the
generation prompt, so the sampled text starts inside the reasoning and has only
``</think>``. The math reward's format check (``no_think_start_score``, -2 in the
reference) would score every such response as if ``<think>`` were missing: every
group constant, nothing to learn from. The fix is one rule, used by the RL trainer,
evaluation and the data filters alike, so they judge identically:

    judged text = the think prefix the prompt opened + the response.

:func:`think_prefix` finds that prefix once per tokenizer: the part of the chat
template's output that ``add_generation_prompt=True`` adds, from its ``<think>``
on (``"<think>\\n"`` for Qwen3; ``"<think>\\n\\n</think>\\n\\n"`` for a template
that closes an empty block; ``""`` when the template opens nothing).
"""

from __future__ import annotations

from typing import Any

THINK_START = "<think>"

#: The user turn rendered to find the generation prompt (any text that cannot be mistaken
#: for a tag works).
_PROBE = [{"role": "user", "content": "klear-probe"}]


def generation_prompt(source: Any) -> str:
    """The text a chat template adds for the assistant's turn (``add_generation_prompt``).

    source: a tokenizer with a chat template, or a chat template (a Jinja string). ``""``
    for a tokenizer without a template (its prompts are plain text).
    """
    if isinstance(source, str):
        render = _jinja(source)
    elif getattr(source, "chat_template", None):

        def render(gen: bool) -> str:
            return source.apply_chat_template(_PROBE, tokenize=False, add_generation_prompt=gen)

    else:
        return ""
    with_prompt, without = render(True), render(False)
    if with_prompt.startswith(without):
        return with_prompt[len(without) :]
    # a template that rewrites earlier turns when the generation prompt is on: the tail after the probe
    return with_prompt.rsplit(_PROBE[0]["content"], 1)[-1]


def _jinja(template: str):
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = raise_exception
    compiled = env.from_string(template)

    def render(gen: bool) -> str:
        return compiled.render(messages=_PROBE, add_generation_prompt=gen, bos_token="", eos_token="")

    return render


def prompt_think_prefix(text: str) -> str:
    """The reasoning the end of a prompt opened: ``text`` from its last ``<think>`` on, else ``""``."""
    at = text.rfind(THINK_START)
    return text[at:] if at >= 0 else ""


def think_prefix(source: Any) -> str:
    """The think prefix of a tokenizer's (or a chat template's) generation prompt; ``""`` if none.

    >>> think_prefix("{{ 'x' }}{% if add_generation_prompt %}<|im_start|>assistant\\n<think>\\n{% endif %}")
    '<think>\\n'
    """
    if source is None:
        return ""
    return prompt_think_prefix(generation_prompt(source))


def judged_text(prefix: str, response: str) -> str:
    """The text a reward scores for ``response`` sampled after a prompt whose template opened ``prefix``."""
    return prefix + response


def judged_texts(prefix: str, responses: list[str]) -> list[str]:
    return [judged_text(prefix, r) for r in responses]
