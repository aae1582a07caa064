"""A stand-in ``vllm`` module for testing the vLLM backend's adapter on a CPU without vLLM.

It implements only the documented surface :mod:`klear.rollout.vllm` uses, with the same
names, argument names and result shapes as vLLM (>= 0.10.2):

- ``LLM(model=..., **engine_args)``: unknown engine arguments raise (as ``EngineArgs`` would);
  ``worker_extension_cls`` is resolved by dotted qualname and mixed into the worker class;
  ``hf_overrides`` are applied to the HF config before the model is built.
- ``LLM.generate(prompts, sampling_params, use_tqdm=...)`` with token prompts
  (``{"prompt_token_ids": [...]}``) and one ``SamplingParams`` per prompt, returning
  ``RequestOutput`` objects in prompt order, each with ``CompletionOutput`` (``token_ids``,
  ``logprobs`` as one ``{token_id: Logprob}`` per position, ``finish_reason``).
- ``LLM.collective_rpc(method, args=..., kwargs=...)`` calling the worker's method by name,
  after passing the arguments through what vLLM's untyped msgpack decoding preserves
  (plain types; tuples become lists; a tensor is refused, as it would not arrive as one);
  the worker's ``model_runner.model.load_weights(weights=...)`` loads tensors by HF name
  (and skips ``lm_head.weight`` for tied embeddings, as vLLM's Qwen models do).
- ``LLM.sleep(level)``, ``LLM.wake_up(tags)``, ``LLM.reset_prefix_cache()``.

Generation is real: the tiny HF model decodes the whole batch, each request sampling from
its own ``torch.Generator`` seeded from the request's seed (the engine's seed when it has
none), and the log-probs it reports are those of the processed distribution (temperature,
top-k, top-p via :func:`klear.rollout.hf.process_logits`; the plain log-softmax for greedy),
which is what vLLM's ``logprobs_mode="processed_logprobs"`` documents. Everything runs in float32 on the CPU whatever ``dtype`` says.

What this fake cannot tell us: whether real vLLM behaves as documented (kernels, batching,
its sampler's numerics, its weight loaders, sleep mode on a GPU). It tests our adapter.
"""

from __future__ import annotations

import importlib
import types
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

#: The engine arguments the adapter may pass (a subset of vLLM's EngineArgs).
ENGINE_ARGS = {
    "model",
    "tokenizer",
    "seed",
    "tensor_parallel_size",
    "dtype",
    "gpu_memory_utilization",
    "enable_prefix_caching",
    "enforce_eager",
    "logprobs_mode",
    "worker_extension_cls",
    "hf_overrides",
    "max_model_len",
    "max_num_seqs",
    "enable_sleep_mode",
}
LOGPROBS_MODES = ("raw_logprobs", "raw_logits", "processed_logprobs", "processed_logits")


@dataclass
class SamplingParams:
    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    max_tokens: int | None = 16
    seed: int | None = None
    logprobs: int | None = None
    stop_token_ids: list[int] | None = None
    detokenize: bool = True
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be non-negative")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.top_k < -1:
            raise ValueError("top_k must be -1 (disable), 0 (disable) or at least 1")
        if self.logprobs is not None and self.logprobs < 0:
            raise ValueError("logprobs must be non-negative")


@dataclass
class Logprob:
    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


@dataclass
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    cumulative_logprob: float | None
    logprobs: list[dict[int, Logprob]] | None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


@dataclass
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]
    finished: bool = True


class _ModelRunner:
    def __init__(self, model: _VLLMModel) -> None:
        self.model = model


class _VLLMModel(torch.nn.Module):
    """vLLM's model object, as far as weight loading goes: ``load_weights`` by HF name."""

    def __init__(self, hf_model: torch.nn.Module) -> None:
        super().__init__()
        self.hf = hf_model
        self.loaded: list[list[str]] = []  # names of each load_weights call

    def load_weights(self, weights):
        params = dict(self.hf.named_parameters())
        tied = getattr(self.hf.config, "tie_word_embeddings", False)
        names = []
        with torch.no_grad():
            for name, tensor in weights:
                names.append(name)
                if tied and name == "lm_head.weight":
                    continue
                if name not in params:
                    raise ValueError(f"There is no module or parameter named '{name}' in the model")
                if params[name].shape != tensor.shape:
                    raise ValueError(f"{name}: shape {tuple(tensor.shape)} != {tuple(params[name].shape)}")
                params[name].copy_(tensor)
        self.loaded.append(names)
        return set(names)


class _WorkerBase:
    def __init__(self, model: _VLLMModel) -> None:
        self.model_runner = _ModelRunner(model)


class LLM:
    instances: ClassVar[list[LLM]] = []  # every engine built (reset by the test fixture)

    def __init__(self, model: str, **kwargs: Any) -> None:
        from transformers import AutoConfig, AutoModelForCausalLM

        unknown = set(kwargs) - ENGINE_ARGS
        if unknown:
            raise TypeError(f"EngineArgs got unexpected arguments {sorted(unknown)}")
        mode = kwargs.get("logprobs_mode", "raw_logprobs")
        if mode not in LOGPROBS_MODES:
            raise ValueError(f"logprobs_mode {mode!r}")
        self.model_path = model
        self.kwargs = dict(kwargs)
        self.logprobs_mode = mode
        config = AutoConfig.from_pretrained(model)
        for key, value in (kwargs.get("hf_overrides") or {}).items():
            setattr(config, key, value)
        self.hf_config = config
        hf_model = AutoModelForCausalLM.from_pretrained(model, config=config, dtype=torch.float32).eval()
        self.vllm_model = _VLLMModel(hf_model)
        ext = kwargs.get("worker_extension_cls")
        bases: tuple[type, ...] = (_WorkerBase,)
        if ext:
            module_name, cls_name = ext.rsplit(".", 1)
            bases = (_WorkerBase, getattr(importlib.import_module(module_name), cls_name))
        self.workers = [type("Worker", bases, {})(self.vllm_model) for _ in range(1)]
        self.generator = torch.Generator().manual_seed(int(kwargs.get("seed") or 0))
        self.eos = {int(t) for t in _as_list(getattr(hf_model.generation_config, "eos_token_id", None))}
        self.calls: list[tuple[str, Any]] = []  # ("generate" | "collective_rpc" | "sleep" | ..., detail)
        self.asleep: set[str] = set()
        self.requests: list[tuple[list[int], SamplingParams]] = []
        LLM.instances.append(self)

    # -- generation

    def generate(self, prompts, sampling_params=None, *, use_tqdm: bool = True):
        if self.asleep:
            raise RuntimeError(f"engine is asleep ({sorted(self.asleep)}): call wake_up first")
        if self.logprobs_mode != "processed_logprobs":
            raise NotImplementedError("the fake implements logprobs_mode='processed_logprobs' only")
        if isinstance(prompts, dict):
            prompts = [prompts]
        if sampling_params is None or isinstance(sampling_params, SamplingParams):
            sampling_params = [sampling_params or SamplingParams()] * len(prompts)
        if len(sampling_params) != len(prompts):
            raise ValueError("The lengths of prompts and sampling_params must be the same.")
        if any(sp.n != 1 for sp in sampling_params):
            raise NotImplementedError("the fake samples n=1 requests only")
        self.calls.append(("generate", len(prompts)))
        ids = [list(p["prompt_token_ids"]) for p in prompts]
        self.requests.extend(zip(ids, sampling_params, strict=True))
        stops = [set(sp.stop_token_ids or []) | self.eos for sp in sampling_params]
        tokens, logps = self._sample(ids, sampling_params, stops)
        outputs = []
        for k, sp in enumerate(sampling_params):
            logprobs = None
            if sp.logprobs is not None:
                logprobs = [{t: Logprob(lp)} for t, lp in zip(tokens[k], logps[k], strict=True)]
            finish = "stop" if tokens[k] and tokens[k][-1] in stops[k] else "length"
            completion = CompletionOutput(
                index=0,
                text="",
                token_ids=tokens[k],
                cumulative_logprob=sum(logps[k]) if sp.logprobs is not None else None,
                logprobs=logprobs,
                finish_reason=finish,
                stop_reason=tokens[k][-1] if finish == "stop" else None,
            )
            outputs.append(RequestOutput(str(k), None, ids[k], [completion]))
        return outputs

    @torch.no_grad()
    def _sample(self, prompts, params, stops):
        """Batched decoding without a KV cache (every step recomputes the left-padded sequences);
        each request samples from its own generator, seeded by its seed."""
        from klear.rollout.hf import process_logits

        model = self.vllm_model.hf
        gens = [
            self.generator if sp.seed is None else torch.Generator().manual_seed(sp.seed) for sp in params
        ]
        seqs = [list(p) for p in prompts]
        tokens: list[list[int]] = [[] for _ in prompts]
        logps: list[list[float]] = [[] for _ in prompts]
        done = [False] * len(prompts)
        while True:
            live = [i for i in range(len(seqs)) if not done[i] and len(tokens[i]) < params[i].max_tokens]
            if not live:
                break
            width = max(len(seqs[i]) for i in live)
            input_ids = torch.zeros((len(live), width), dtype=torch.long)
            mask = torch.zeros_like(input_ids)
            for r, i in enumerate(live):
                input_ids[r, width - len(seqs[i]) :] = torch.tensor(seqs[i])
                mask[r, width - len(seqs[i]) :] = 1
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            logits = model(input_ids=input_ids, attention_mask=mask, position_ids=positions).logits[:, -1]
            for r, i in enumerate(live):
                sp = params[i]
                if sp.temperature == 0:
                    logp = logits[r].float().log_softmax(-1)
                    tok = int(logp.argmax())
                else:
                    top_k = sp.top_k if sp.top_k > 0 else -1
                    logp = process_logits(logits[r : r + 1], sp.temperature, top_k, sp.top_p)[0]
                    tok = int(torch.multinomial(logp.exp(), 1, generator=gens[i]))
                seqs[i].append(tok)
                tokens[i].append(tok)
                logps[i].append(float(logp[tok]))
                done[i] = tok in stops[i]
        return tokens, logps

    # -- RL hooks

    def collective_rpc(self, method, timeout=None, args=(), kwargs=None):
        if "weights" in self.asleep:
            raise RuntimeError("collective_rpc while the weights are asleep")
        if not isinstance(method, str):
            raise TypeError("the fake takes worker method names only (callables need insecure serialization)")
        # vLLM's engine process decodes RPC arguments with an untyped msgpack decoder
        args, kwargs = _msgpack_round_trip(list(args)), _msgpack_round_trip(kwargs or {})
        self.calls.append(("collective_rpc", method))
        return [getattr(w, method)(*args, **kwargs) for w in self.workers]

    def reset_prefix_cache(self) -> bool:
        self.calls.append(("reset_prefix_cache", None))
        return True

    def sleep(self, level: int = 1) -> None:
        if not self.kwargs.get("enable_sleep_mode"):
            raise ValueError("Sleep mode is not enabled.")
        self.calls.append(("sleep", level))
        self.asleep = {"weights", "kv_cache"}
        if level == 2:  # weights are discarded
            with torch.no_grad():
                for p in self.vllm_model.hf.parameters():
                    p.fill_(float("nan"))

    def wake_up(self, tags: list[str] | None = None) -> None:
        self.calls.append(("wake_up", None if tags is None else list(tags)))
        self.asleep -= set(tags) if tags is not None else set(self.asleep)


def _msgpack_round_trip(obj: Any) -> Any:
    """What an untyped msgpack decode gives back: tuples become lists; only plain types survive."""
    if obj is None or isinstance(obj, bool | int | float | str | bytes):
        return obj
    if isinstance(obj, list | tuple):
        return [_msgpack_round_trip(x) for x in obj]
    if isinstance(obj, dict):
        return {k: _msgpack_round_trip(v) for k, v in obj.items()}
    raise TypeError(
        f"Object of type {type(obj)} does not survive vLLM's untyped RPC decoding "
        "(a tensor would arrive as a [dtype, shape, data] list)"
    )


def _as_list(value: Any) -> list[Any]:
    if value is None:
        return []
    return [value] if isinstance(value, int) else list(value)


def module() -> types.ModuleType:
    """A fresh ``vllm`` module object holding the fake classes."""
    mod = types.ModuleType("vllm")
    mod.__version__ = "0.0.0+klear.fake"
    mod.LLM = LLM
    mod.SamplingParams = SamplingParams
    mod.RequestOutput = RequestOutput
    mod.CompletionOutput = CompletionOutput
    mod.__dict__["_klear_fake"] = True
    LLM.instances = []
    return mod


__all__ = ["LLM", "CompletionOutput", "Logprob", "RequestOutput", "SamplingParams", "module"]
