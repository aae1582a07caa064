"""Generation backends behind one interface: prompts in, :class:`klear.types.Rollout` records out.

The RL trainer only ever talks to a :class:`RolloutBackend`:

    backend.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=96))
    backend.update_weights(policy)   # after each optimizer step
    backend.close()

``prompts`` are token-id lists, already-templated strings, or chat messages (the
backend applies the tokenizer's chat template with ``add_generation_prompt``). The
result is prompt-major: ``out[i * n + j]`` is sample ``j`` of prompt ``i``, with
``group`` = ``groups[i]`` (default ``i``) and ``sample`` = ``j``.

Log-probs: ``Rollout.logprobs[t]`` is the log-probability of the sampled token under the
distribution it was actually drawn from -- the model's logits divided by the
temperature, restricted by top-k then top-p, renormalised. With temperature 1 and no
filtering that is the policy's own log-prob (what GPPO's importance ratio needs). With
greedy decoding (temperature 0) the sampling distribution is a point mass, so the
backend reports the raw policy log-prob (temperature 1, unfiltered) instead. The RL
trainer recomputes the old log-probs with its own forward pass anyway (that pass and
the sampler's can differ numerically: other kernels, bf16, vLLM); these are for
diagnostics such as the sampler/trainer mismatch. The vLLM backend gets the same
definition by building its engine with ``logprobs_mode="processed_logprobs"`` (vLLM's
default, ``raw_logprobs``, would report the unscaled, unfiltered distribution).

Backends are registered in ``BACKENDS`` by the ``rollout.backend`` config name. The HF
backend is the reference (CPU and small GPU runs); the vLLM backend
(:mod:`klear.rollout.vllm`, GPU only, ``pip install klear[vllm]``) plugs in with the same
methods. Importing this package never imports vLLM: a backend's module is imported when
the backend is asked for.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, Union

from klear.types import Rollout

if TYPE_CHECKING:
    from klear.config import ModelConfig, RolloutConfig

#: One prompt: token ids, a string already in the model's prompt format, or chat messages.
PromptInput = Union[Sequence[int], str, Sequence[Mapping[str, str]]]  # noqa: UP007 (runtime alias, py3.10)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample: ``n`` responses per prompt, stopping at a stop token or ``max_new_tokens``.

    temperature 0 means greedy. top_k <= 0 and top_p = 1 disable those filters.
    seed: the call's seed. Each sampled row's randomness is keyed by (call seed, group,
    sample index), so a fixed seed makes the call reproducible on its own, independent of
    batching or of how prompts are split over workers; None takes the backend's next call
    seed (from its construction seed and a call counter), which makes a whole run
    reproducible from its seed.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    max_new_tokens: int = 1024
    seed: int | None = None

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"SamplingParams.n = {self.n}: must be >= 1")
        if self.temperature < 0:
            raise ValueError(f"SamplingParams.temperature = {self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"SamplingParams.top_p = {self.top_p}: must be in (0, 1]")
        if self.max_new_tokens < 1:
            raise ValueError(f"SamplingParams.max_new_tokens = {self.max_new_tokens}: must be >= 1")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def replace(self, **changes: Any) -> SamplingParams:
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_config(cls, cfg: RolloutConfig, **changes: Any) -> SamplingParams:
        """The sampling settings of a ``rollout:`` config section, with optional changes."""
        base = cls(
            n=cfg.n,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            max_new_tokens=cfg.max_new_tokens,
        )
        return base.replace(**changes)


class RolloutBackend(Protocol):
    """What the RL trainer and the evaluator need from a generation engine."""

    tokenizer: Any

    def generate(
        self,
        prompts: Sequence[PromptInput],
        sampling: SamplingParams,
        groups: Sequence[int | str] | None = None,
    ) -> list[Rollout]:
        """``sampling.n`` rollouts per prompt, prompt-major (see the module docstring)."""
        ...

    def update_weights(self, weights: Any) -> None:
        """Load new policy weights: a ``torch.nn.Module`` or a state dict (same names as the model)."""
        ...

    def close(self) -> None:
        """Release the engine (GPU memory, worker processes)."""
        ...


def row_seed(call_seed: int, group: int | str, sample: int) -> int:
    """A 63-bit seed for one sampled row, from the call's seed, the row's group and sample index."""
    key = f"{call_seed}:{group!r}:{sample}".encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


def call_seed(seed: int, calls: int) -> int:
    """The seed of a backend's ``calls``-th unseeded generate call."""
    return row_seed(seed, "call", calls)


class CallSeeds:
    """A sampler's whole RNG state: its construction seed and a counter of unseeded calls.

    Every backend (and ``klear.dist``'s rollout group) draws call seeds through one of these,
    so their states mean the same thing and a checkpoint's ``sampler_rng`` resumes any of them.
    """

    def __init__(self, seed: int) -> None:
        self.seed, self.calls = int(seed), 0

    def next(self, fixed: int | None = None) -> int:
        """The seed of the next call: ``fixed`` (``SamplingParams.seed``; the counter stays) or a fresh one."""
        if fixed is not None:
            return fixed
        self.calls += 1
        return call_seed(self.seed, self.calls)

    def state(self) -> dict[str, int]:
        return {"seed": self.seed, "calls": self.calls}

    def load(self, state: Mapping[str, int]) -> None:
        if not isinstance(state, Mapping) or set(state) != {"seed", "calls"}:
            raise ValueError(
                f"not a rollout RNG state: {type(state).__name__} (a checkpoint written by an older klear, "
                "whose HF sampler kept a torch generator, cannot resume keyed sampling)"
            )
        self.seed, self.calls = int(state["seed"]), int(state["calls"])


def group_keys(prompts: Sequence[Any], groups: Sequence[int | str] | None) -> list[int | str]:
    """The group id of each prompt: ``groups`` (one per prompt) or, by default, the prompt's index."""
    if groups is None:
        return list(range(len(prompts)))
    if len(groups) != len(prompts):
        raise ValueError(f"{len(groups)} groups for {len(prompts)} prompts")
    return list(groups)


#: ``rollout.backend`` name -> "module:class" of the implementation (imported on use).
BACKENDS: dict[str, str] = {
    "hf": "klear.rollout.hf:HFRolloutBackend",
    "vllm": "klear.rollout.vllm:VLLMRolloutBackend",
}


def backend_class(name: str) -> type:
    """The backend class registered as ``name`` (or a dotted ``pkg.module:Class`` path)."""
    import importlib

    target = BACKENDS.get(name, name if ":" in name else None)
    if target is None:
        raise ValueError(
            f"rollout backend {name!r} is not available in this build; available: {', '.join(sorted(BACKENDS))}"
        )
    module, _, attr = target.partition(":")
    return getattr(importlib.import_module(module), attr)


def backend_options(rollout: RolloutConfig, model: ModelConfig) -> dict[str, Any]:
    """Keyword arguments, beyond ``(model, tokenizer, seed=...)``, that ``rollout.backend`` takes from the config.

    The HF backend takes none; the vLLM backend takes its engine settings (``rollout.vllm``,
    tensor parallel size, YaRN from ``model``).
    """
    if rollout.backend == "vllm":
        from klear.rollout.vllm import options_from_config  # does not import vllm itself

        return options_from_config(rollout, model)
    return {}


__all__ = [
    "BACKENDS",
    "CallSeeds",
    "PromptInput",
    "RolloutBackend",
    "SamplingParams",
    "backend_class",
    "backend_options",
    "call_seed",
    "group_keys",
    "row_seed",
]
