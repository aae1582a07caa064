"""The vLLM rollout backend: the HF backend's interface on a vLLM engine (GPU, tensor parallel).

    backend = VLLMRolloutBackend("/path/to/model", seed=42, tensor_parallel_size=2)
    rollouts = backend.generate(prompts, SamplingParams(n=8, temperature=1.0, max_new_tokens=32768))
    backend.update_weights(policy)      # after each optimizer step; bumps ``weights_version``
    backend.close()

In the RL recipe this is ``rollout.backend: vllm`` with the engine settings under
``rollout.vllm`` (see ``docs/vllm.md``). Importing this module does not import vLLM; the
engine is built on construction, and a missing vLLM raises an ImportError that says how
to install it (``pip install klear[vllm]``, CUDA GPU required).

How each part of the interface maps onto vLLM's documented API (vLLM >= 0.10.2):

- Prompts are encoded here (same function as the HF backend, so prompt ids are identical)
  and sent as token prompts (``{"prompt_token_ids": ids}``, vLLM's ``TokensPrompt``).
  Each of the ``n`` samples of a prompt is its own request with ``n=1``, so the output is
  prompt-major by construction and every sample gets its own seed; with prefix caching the
  shared prompt is computed once, which is also what vLLM does when it fans out ``n > 1``.
- Log-probs: requests ask for ``logprobs=0`` (the sampled token's log-prob only) and the
  engine is built with ``logprobs_mode="processed_logprobs"``, i.e. after temperature,
  top-k and top-p -- the definition of :mod:`klear.rollout` (vLLM's default,
  ``raw_logprobs``, is the unscaled model distribution). With temperature 0 vLLM's
  processed log-probs are the plain log-softmax of the logits, again our definition.
- ``truncated`` is ``finish_reason == "length"`` (``max_tokens`` or the model length ran
  out); stop tokens are ``stop_token_ids`` from :func:`klear.rollout.hf.stop_token_ids`,
  and a response includes its stop token (vLLM keeps it in ``token_ids``). The text is
  decoded here from the token ids (``skip_special_tokens``), as the HF backend does, so
  vLLM's detokenizer is switched off (``detokenize=False``).
- Weights: ``update_weights`` sends the state dict, by Hugging Face parameter name, in
  buckets (as plain ``[name, dtype, shape, bytes]`` lists, which vLLM's RPC serialiser
  carries between processes) through ``LLM.collective_rpc`` to :class:`KlearWorkerExtension` (installed in
  every worker with ``worker_extension_cls``), which calls the vLLM model's own
  ``load_weights`` -- the pattern of vLLM's RLHF examples. Each tensor-parallel worker
  receives the full tensors and ``load_weights`` keeps its shard. The prefix cache is reset
  afterwards (its KV entries came from the old weights). Tensors travel through the CPU,
  cast to the engine dtype: simple and correct, not the fastest (NCCL or CUDA IPC would be).
- Reproducibility: request seeds are keyed by ``(call seed, group, sample index)`` as the HF
  backend keys its rows, the call seed coming from ``(seed, call counter)``;
  ``get_rng_state``/``set_rng_state`` save and restore the counter, so a resumed run draws
  the same seeds. vLLM's seeded sampling is deterministic only for the same batch shape,
  kernels and GPU, so this is "the same seeds", not a bitwise promise.
- YaRN: ``yarn=(factor, original_max_positions)`` becomes ``hf_overrides`` holding the rope
  section written by :func:`klear.models.yarn.apply_yarn` (so vLLM and the HF trainer get the
  same rope settings) and the scaled ``max_position_embeddings``.
- Sleep mode (``enable_sleep_mode``): after each ``generate`` the engine sleeps
  (``LLM.sleep``), freeing its GPU memory for the trainer; ``update_weights`` wakes only the
  weights (``wake_up(tags=["weights"])``) and the next ``generate`` wakes the KV cache.

What is tested without a GPU (tests/rollout/test_vllm_backend.py) is this adapter against a
fake ``vllm`` module that implements the surface above; real vLLM has not been run by the
test suite. ``scripts/gpu_check_vllm.sh`` checks it on a GPU.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from klear.rollout import CallSeeds, PromptInput, SamplingParams, group_keys, row_seed
from klear.rollout.hf import encode_prompt, stop_token_ids
from klear.types import Rollout

if TYPE_CHECKING:
    from klear.config import ModelConfig, RolloutConfig

INSTALL_HINT = (
    "the vLLM rollout backend needs the vllm package and a CUDA GPU: install a CUDA build of torch "
    "first, then `pip install klear[vllm]` (vllm >= 0.10.2); on a CPU machine use rollout.backend=hf"
)

#: ``worker_extension_cls`` given to vLLM (a fully qualified dotted name, as vLLM resolves it):
#: the class its workers inherit our RPC methods from.
WORKER_EXTENSION = "klear.rollout.vllm.KlearWorkerExtension"

#: Engine dtypes by name, for casting weights before they are sent.
_DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}

#: Wrapper prefixes that torch.compile / FSDP / activation checkpointing put into parameter names.
_WRAPPER_PARTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.")


def import_vllm() -> Any:
    """The ``vllm`` module, or an ImportError that says how to get it."""
    try:
        import vllm
    except ImportError as err:
        raise ImportError(INSTALL_HINT) from err
    return vllm


class KlearWorkerExtension:
    """Methods every vLLM worker gains (vLLM mixes this class into its worker class).

    ``self`` is the vLLM worker: ``self.model_runner.model`` is that worker's model (its
    tensor-parallel shard). Called by name through ``LLM.collective_rpc``.
    """

    def klear_load_weights(self, packed: list[Any]) -> int:
        """Load full-size tensors (packed by :func:`pack_weights`) by Hugging Face name; vLLM's
        ``load_weights`` fuses and shards them."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        device = next(model.parameters()).device
        weights = [(name, t.to(device)) for name, t in unpack_weights(packed)]
        model.load_weights(weights=weights)
        return len(weights)

    def klear_weight_sums(self) -> dict[str, float]:
        """Sum of every parameter of this worker's shard (for checking that an update arrived)."""
        model = self.model_runner.model  # type: ignore[attr-defined]
        return {name: float(p.detach().float().sum()) for name, p in model.named_parameters()}


def hf_weight_name(name: str) -> str:
    """A trainer parameter name as the checkpoint (and vLLM's ``load_weights``) spells it."""
    for part in _WRAPPER_PARTS:
        name = name.replace(part, "")
    return name[len("module.") :] if name.startswith("module.") else name


def weight_buckets(
    state: Mapping[str, Tensor], dtype: torch.dtype | None, bucket_bytes: int
) -> Iterator[list[tuple[str, Tensor]]]:
    """(name, CPU tensor) lists of about ``bucket_bytes`` each; floating tensors cast to ``dtype``."""
    bucket: list[tuple[str, Tensor]] = []
    size = 0
    for name, tensor in state.items():
        t = tensor.detach()
        if dtype is not None and t.is_floating_point():
            t = t.to(dtype)
        t = t.to("cpu").contiguous()
        bucket.append((hf_weight_name(name), t))
        size += t.numel() * t.element_size()
        if size >= bucket_bytes:
            yield bucket
            bucket, size = [], 0
    if bucket:
        yield bucket


def pack_weights(bucket: Sequence[tuple[str, Tensor]]) -> list[list[Any]]:
    """``[name, dtype, shape, raw bytes]`` per CPU tensor: plain msgpack types.

    vLLM (v1, engine in its own process) sends ``collective_rpc`` arguments through its
    msgpack encoder and decodes them without type information, so a tensor argument would
    arrive as a list, not a tensor; bytes arrive as bytes in every executor mode.
    """
    out = []
    for name, t in bucket:
        data = t.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        out.append([name, str(t.dtype).removeprefix("torch."), list(t.shape), data])
    return out


def unpack_weights(packed: Sequence[Sequence[Any]]) -> list[tuple[str, Tensor]]:
    """The inverse of :func:`pack_weights` (CPU tensors that own their memory)."""
    weights = []
    for name, dtype, shape, data in packed:
        dt = getattr(torch, dtype)
        if not isinstance(dt, torch.dtype):
            raise ValueError(f"{name}: unknown dtype {dtype!r}")
        if len(data) == 0:
            t = torch.empty(tuple(shape), dtype=dt)
        else:
            t = torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dt).reshape(tuple(shape))
        weights.append((str(name), t))
    return weights


def request_seeds(call_seed: int, groups: Sequence[int | str], n: int) -> list[int]:
    """One seed in [0, 2**31) per request, prompt-major: keyed by (call seed, group, sample index)
    exactly as the HF backend keys its rows (``klear.rollout.hf.row_seed``), so a request's
    seed does not depend on the other requests of the call nor on how a call is split over
    rollout workers (``klear.dist``)."""
    return [row_seed(call_seed, g, j) & 0x7FFFFFFF for g in groups for j in range(n)]


def vllm_sampling_kwargs(
    sampling: SamplingParams, stop_ids: Sequence[int], seed: int | None
) -> dict[str, Any]:
    """Arguments of one request's ``vllm.SamplingParams`` (always ``n=1``: samples are separate requests).

    Greedy (temperature 0) sends temperature 0 with the filters off, as vLLM ignores them
    then anyway; top_k <= 0 becomes -1 (disabled).
    """
    greedy = sampling.greedy
    return {
        "n": 1,
        "temperature": 0.0 if greedy else float(sampling.temperature),
        "top_p": 1.0 if greedy else float(sampling.top_p),
        "top_k": -1 if greedy or sampling.top_k <= 0 else int(sampling.top_k),
        "max_tokens": int(sampling.max_new_tokens),
        "seed": None if greedy else seed,
        "logprobs": 0,
        "stop_token_ids": [int(t) for t in stop_ids],
        "detokenize": False,
    }


def sampled_logprobs(completion: Any) -> list[float]:
    """The log-prob of each sampled token from a ``CompletionOutput`` (``logprobs``: one
    ``{token_id: Logprob}`` per position, holding at least the sampled token)."""
    steps = completion.logprobs
    ids = list(completion.token_ids)
    if steps is None:
        raise RuntimeError("vLLM returned no logprobs; the request must set SamplingParams(logprobs=0)")
    if len(steps) != len(ids):
        raise RuntimeError(f"vLLM returned {len(steps)} logprob entries for {len(ids)} tokens")
    out = []
    for pos, (step, token) in enumerate(zip(steps, ids, strict=True)):
        entry = step.get(token) if step is not None else None
        if entry is None:
            raise RuntimeError(f"vLLM logprobs at position {pos} lack the sampled token {token}")
        out.append(float(entry.logprob))
    return out


def yarn_hf_overrides(model_path: str, factor: float, original_max_positions: int) -> dict[str, Any]:
    """``hf_overrides`` that give vLLM the rope section :func:`klear.models.yarn.apply_yarn` writes.

    The whole rope dict is sent (rope_theta included), in whichever form the installed
    transformers uses (``rope_parameters`` in 5.x, ``rope_scaling`` in 4.x), because vLLM
    reads the config through the same transformers.
    """
    from transformers import AutoConfig

    from klear.models.yarn import apply_yarn

    config = apply_yarn(AutoConfig.from_pretrained(model_path), factor, original_max_positions)
    key = "rope_parameters" if getattr(config, "rope_parameters", None) is not None else "rope_scaling"
    return {
        key: copy.deepcopy(getattr(config, key)),
        "max_position_embeddings": config.max_position_embeddings,
    }


def options_from_config(rollout: RolloutConfig, model: ModelConfig) -> dict[str, Any]:
    """Constructor keywords from the ``rollout`` and ``model`` config sections."""
    v = rollout.vllm
    opts: dict[str, Any] = {
        "tensor_parallel_size": rollout.tensor_parallel_size,
        "gpu_memory_utilization": v.gpu_memory_utilization,
        "dtype": v.dtype or model.engine_dtype(),
        "max_model_len": v.max_model_len,
        "enable_prefix_caching": v.enable_prefix_caching,
        "enable_sleep_mode": v.enable_sleep_mode,
        "sleep_level": v.sleep_level,
        "enforce_eager": v.enforce_eager,
        "max_num_seqs": v.max_num_seqs,
        "per_request_seeds": v.per_request_seeds,
        "weight_bucket_mb": v.weight_bucket_mb,
        "engine_kwargs": dict(v.engine_kwargs),
    }
    if model.yarn_factor is not None and model.yarn_original_max_position is not None:
        opts["yarn"] = (model.yarn_factor, model.yarn_original_max_position)
    return opts


class VLLMRolloutBackend:
    """Rollouts from a vLLM engine in this process (its workers may be other processes/GPUs).

    model: a local HF model directory, or the trainer's HF module (its ``name_or_path`` is
    loaded, then -- with ``sync_weights`` -- its current weights are pushed, so the engine
    samples from exactly the module it was given). tokenizer: None loads the directory's.
    Keyword options are vLLM engine settings (``rollout.vllm`` in the config); any other
    ``vllm.LLM`` argument goes in ``engine_kwargs``.
    """

    def __init__(
        self,
        model: str | Path | torch.nn.Module,
        tokenizer: Any | None = None,
        *,
        seed: int = 0,
        stop_ids: Sequence[int] | None = None,
        tensor_parallel_size: int = 1,
        gpu_memory_utilization: float = 0.5,
        dtype: str = "bfloat16",
        max_model_len: int | None = None,
        enable_prefix_caching: bool = True,
        enable_sleep_mode: bool = False,
        sleep_level: int = 1,
        enforce_eager: bool = False,
        max_num_seqs: int | None = None,
        max_batch_size: int | None = None,
        per_request_seeds: bool = True,
        weight_bucket_mb: int = 512,
        yarn: tuple[float, int] | None = None,
        hf_overrides: Mapping[str, Any] | None = None,
        sync_weights: bool = True,
        device: str | None = None,
        engine_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        vllm = import_vllm()
        if device is not None and not str(device).startswith("cuda"):
            raise ValueError(f"device={device!r}: the vLLM backend runs on CUDA GPUs only; use backend hf")
        if dtype not in _DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of {', '.join(_DTYPES)}")
        if sleep_level not in (1, 2):
            raise ValueError(f"sleep_level={sleep_level}: must be 1 or 2")
        module = model if isinstance(model, torch.nn.Module) else None
        path = _model_path(model)
        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(path)
        self.tokenizer = tokenizer
        self.model_path = path
        self.stop_ids = (
            list(stop_ids) if stop_ids is not None else stop_token_ids(tokenizer, module or _GenConfig(path))
        )
        if not self.stop_ids:
            raise ValueError("no stop token: the tokenizer has no EOS; pass stop_ids")
        self.seeds = CallSeeds(seed)  # the whole RNG state (request seeds are keyed from it)
        self.weights_version = 0
        self.per_request_seeds = per_request_seeds
        self.dtype = dtype
        self.bucket_bytes = int(weight_bucket_mb) * 2**20
        self.enable_sleep_mode = enable_sleep_mode
        self.sleep_level = sleep_level
        self._asleep: set[str] = set()  # "weights" / "kv_cache" while the engine sleeps
        self._weights_lost = False  # a level-2 sleep dropped them; update_weights must come first

        overrides = dict(hf_overrides or {})
        if yarn is not None:
            for key, value in yarn_hf_overrides(path, *yarn).items():
                if key in overrides and overrides[key] != value:
                    raise ValueError(f"hf_overrides[{key!r}] conflicts with the YaRN setting {yarn}")
                overrides[key] = value
        args: dict[str, Any] = {
            "model": path,
            "seed": self.seeds.seed,
            "tensor_parallel_size": int(tensor_parallel_size),
            "dtype": dtype,
            "gpu_memory_utilization": float(gpu_memory_utilization),
            "enable_prefix_caching": bool(enable_prefix_caching),
            "enforce_eager": bool(enforce_eager),
            "logprobs_mode": "processed_logprobs",
            "worker_extension_cls": WORKER_EXTENSION,
        }
        if overrides:
            args["hf_overrides"] = overrides
        if max_model_len is not None:
            args["max_model_len"] = int(max_model_len)
        if max_num_seqs is not None or max_batch_size is not None:
            args["max_num_seqs"] = int(max_num_seqs if max_num_seqs is not None else max_batch_size)
        if enable_sleep_mode:
            args["enable_sleep_mode"] = True
        args.update(engine_kwargs or {})
        self.engine_args = args
        self._vllm = vllm
        self.llm = vllm.LLM(**args)
        if module is not None and sync_weights:
            self.update_weights(module)

    @classmethod
    def from_pretrained(cls, path: str | Path, **kwargs: Any) -> VLLMRolloutBackend:
        """A backend for a local HF directory (the tokenizer is loaded from it)."""
        return cls(str(path), **kwargs)

    def encode(self, prompt: PromptInput) -> list[int]:
        return encode_prompt(self.tokenizer, prompt)

    def generate(
        self,
        prompts: Sequence[PromptInput],
        sampling: SamplingParams,
        groups: Sequence[int | str] | None = None,
    ) -> list[Rollout]:
        keys = group_keys(prompts, groups)
        encoded = [self.encode(p) for p in prompts]
        if any(len(ids) == 0 for ids in encoded):
            raise ValueError("empty prompt: every prompt needs at least one token")
        n = sampling.n
        # 1. One request per sample, prompt-major, each with its own seed.
        seeds = self._seeds(sampling, keys)
        params = [
            self._vllm.SamplingParams(**vllm_sampling_kwargs(sampling, self.stop_ids, s)) for s in seeds
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in encoded for _ in range(n)]
        # 2. Generate (waking the engine first when it sleeps between calls).
        self._wake_for_generate()
        try:
            outputs = self.llm.generate(requests, params, use_tqdm=False)
        finally:
            if self.enable_sleep_mode:
                self._sleep()
        if len(outputs) != len(requests):
            raise RuntimeError(f"vLLM returned {len(outputs)} outputs for {len(requests)} requests")
        # 3. Read tokens, log-probs and finish reasons back, checking each output's prompt.
        responses, logprobs, truncated = [], [], []
        for k, out in enumerate(outputs):
            if list(out.prompt_token_ids) != requests[k]["prompt_token_ids"]:
                raise RuntimeError(f"vLLM output {k} is for another prompt: outputs are out of order")
            completion = out.outputs[0]
            if completion.finish_reason not in ("stop", "length"):
                raise RuntimeError(f"vLLM finished request {k} with {completion.finish_reason!r}")
            responses.append(list(completion.token_ids))
            logprobs.append(sampled_logprobs(completion))
            truncated.append(completion.finish_reason == "length")
        texts = self.tokenizer.batch_decode(responses, skip_special_tokens=True)
        rollouts = []
        for k in range(len(requests)):
            i, j = divmod(k, n)
            rollouts.append(
                Rollout(
                    prompt_ids=list(encoded[i]),
                    response_ids=responses[k],
                    logprobs=logprobs[k],
                    text=texts[k],
                    truncated=truncated[k],
                    group=keys[i],
                    sample=j,
                    meta={
                        "finish_reason": "length" if truncated[k] else "stop",
                        "weights_version": self.weights_version,
                    },
                )
            )
        return rollouts

    def update_weights(self, weights: torch.nn.Module | Mapping[str, Tensor]) -> None:
        """Load new policy weights into every worker in place (by HF name) and bump ``weights_version``."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        if not state:
            raise ValueError("update_weights got no tensors")
        if "weights" in self._asleep:
            self.llm.wake_up(tags=["weights"])
            self._asleep.discard("weights")
        for bucket in weight_buckets(state, _DTYPES[self.dtype], self.bucket_bytes):
            self.llm.collective_rpc("klear_load_weights", args=(pack_weights(bucket),))
        # cached prefixes hold keys/values computed with the old weights
        self.llm.reset_prefix_cache()
        self._weights_lost = False
        self.weights_version += 1

    def sleep(self) -> None:
        """Free the engine's GPU memory now (needs ``enable_sleep_mode``); the next call wakes it."""
        if not self.enable_sleep_mode:
            raise RuntimeError("sleep() needs enable_sleep_mode=True at construction")
        self._sleep()

    def get_rng_state(self) -> dict[str, int]:
        """The seed-derivation state (for exact resume): the base seed and the call counter."""
        return self.seeds.state()

    def set_rng_state(self, state: Mapping[str, int]) -> None:
        self.seeds.load(state)

    def close(self) -> None:
        """Shut the engine down and release its GPU memory (safe to call twice)."""
        llm = getattr(self, "llm", None)
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)
        if callable(shutdown):
            shutdown()
        self.llm = None
        del llm
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    # ------------------------------------------------------------------ internals

    def _seeds(self, sampling: SamplingParams, groups: Sequence[int | str]) -> list[int | None]:
        call = self.seeds.next(sampling.seed)  # as the HF backend draws it
        if sampling.greedy or not self.per_request_seeds:
            return [None] * (len(groups) * sampling.n)  # greedy draws nothing; unseeded: vLLM's own generator
        return list(request_seeds(call, groups, sampling.n))

    def _wake_for_generate(self) -> None:
        if self._weights_lost:
            raise RuntimeError(
                "the engine slept at level 2, which drops its weights: call update_weights before generate"
            )
        if self._asleep:
            self.llm.wake_up(tags=sorted(self._asleep))
            self._asleep.clear()

    def _sleep(self) -> None:
        if self._asleep:
            return
        self.llm.sleep(level=self.sleep_level)
        self._asleep = {"weights", "kv_cache"}
        self._weights_lost = self.sleep_level == 2


class _GenConfig:
    """Just enough of a model for :func:`stop_token_ids`: the directory's generation config."""

    def __init__(self, path: str) -> None:
        try:
            from transformers import GenerationConfig

            self.generation_config = GenerationConfig.from_pretrained(path)
        except (OSError, ValueError):
            self.generation_config = None


def _model_path(model: str | Path | torch.nn.Module) -> str:
    if isinstance(model, torch.nn.Module):
        path = getattr(model, "name_or_path", None) or getattr(
            getattr(model, "config", None), "_name_or_path", None
        )
        if not path:
            raise ValueError("the model module has no name_or_path: pass its local HF directory instead")
        model = path
    path = Path(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(
            f"{str(path)!r}: no config.json there; expected a local Hugging Face model directory"
        )
    return str(path)


__all__ = [
    "INSTALL_HINT",
    "WORKER_EXTENSION",
    "KlearWorkerExtension",
    "VLLMRolloutBackend",
    "hf_weight_name",
    "import_vllm",
    "options_from_config",
    "pack_weights",
    "request_seeds",
    "sampled_logprobs",
    "unpack_weights",
    "vllm_sampling_kwargs",
    "weight_buckets",
    "yarn_hf_overrides",
]
