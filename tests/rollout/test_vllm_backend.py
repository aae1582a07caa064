"""The vLLM rollout backend's adapter, tested against a fake ``vllm`` module (tests/rollout/fake_vllm.py).

Honest scope: vLLM is not installed here (it needs a CUDA GPU). These tests check *our*
adapter -- request construction, sampling-parameter mapping, seeds, prompt-major
ordering, log-prob extraction, truncation, the weight-update RPC, YaRN overrides, sleep
mode and the RL trainer's wiring -- against a fake that implements vLLM's documented
surface and generates for real with the tiny HF model. They do not show that real vLLM
behaves as documented; ``scripts/gpu_check_vllm.sh`` checks that on a GPU.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from klear.config import ModelConfig, RLConfig, RolloutConfig, build_config
from klear.models.tiny import build_tiny_model
from klear.models.yarn import apply_yarn
from klear.rollout import SamplingParams, backend_class, backend_options
from klear.rollout.hf import HFRolloutBackend, process_logits
from klear.tasks import task_rows
from tests.rollout import fake_vllm

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return build_tiny_model(tmp_path_factory.mktemp("tiny"), seed=0)


@pytest.fixture
def fake(monkeypatch):
    """Install the fake ``vllm`` module for one test (removed afterwards)."""
    mod = fake_vllm.module()
    monkeypatch.setitem(sys.modules, "vllm", mod)
    return mod


@pytest.fixture(scope="module")
def prompts():
    return [r["prompt"] for r in task_rows("addition", "train", 4, seed=0)]


@pytest.fixture(scope="module")
def varied_dir(model_dir, tmp_path_factory):
    """The tiny architecture with larger random weights, saved: greedy outputs vary from token to token."""
    from transformers import AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.3 + (1.0 if p.ndim == 1 else 0.0))
    out = tmp_path_factory.mktemp("varied")
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out)
    return out


def vllm_backend(path, **kwargs):
    from klear.rollout.vllm import VLLMRolloutBackend

    return VLLMRolloutBackend(str(path), seed=kwargs.pop("seed", 0), **kwargs)


# ----------------------------------------------------------------------------- import and registry


def test_importing_klear_never_imports_vllm():
    code = (
        "import sys, klear, klear.config, klear.rollout, klear.rollout.vllm, klear.train.rl\n"
        "from klear.rollout import backend_class\n"
        "cls = backend_class('vllm')\n"
        "assert cls.__name__ == 'VLLMRolloutBackend', cls\n"
        "assert 'vllm' not in sys.modules, 'vllm was imported'\n"
    )
    env_path = str(ROOT / "src")
    res = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"},
        timeout=120,
    )
    assert res.returncode == 0, res.stderr


def test_missing_vllm_says_how_to_install(monkeypatch, model_dir):
    monkeypatch.setitem(sys.modules, "vllm", None)  # makes `import vllm` raise ImportError
    with pytest.raises(ImportError) as err:
        backend_class("vllm")(str(model_dir), seed=0)
    assert "pip install klear[vllm]" in str(err.value)
    assert "CUDA" in str(err.value)


# ----------------------------------------------------------------------------- pure mapping functions


def test_sampling_params_mapping():
    from klear.rollout.vllm import vllm_sampling_kwargs

    stop = [2, 7]
    greedy = vllm_sampling_kwargs(
        SamplingParams(temperature=0.0, top_p=0.5, top_k=3, max_new_tokens=9), stop, 11
    )
    assert greedy == {
        "n": 1,
        "temperature": 0.0,
        "top_p": 1.0,
        "top_k": -1,
        "max_tokens": 9,
        "seed": None,  # greedy draws nothing
        "logprobs": 0,  # the sampled token's log-prob only
        "stop_token_ids": [2, 7],
        "detokenize": False,
    }
    sampled = vllm_sampling_kwargs(SamplingParams(n=5, temperature=0.7, top_p=0.9, top_k=20), stop, 11)
    assert (sampled["n"], sampled["temperature"], sampled["top_p"], sampled["top_k"], sampled["seed"]) == (
        1,
        0.7,
        0.9,
        20,
        11,
    )
    for off in (0, -1, -5):
        assert vllm_sampling_kwargs(SamplingParams(top_k=off), stop, 1)["top_k"] == -1
    fake_vllm.SamplingParams(**sampled)  # the names are vLLM's


def test_request_seeds_are_keyed_like_the_hf_backends_rows():
    from klear.rollout import row_seed
    from klear.rollout.vllm import request_seeds

    a = request_seeds(3, [10, 11, 12], 2)
    assert a == request_seeds(3, [10, 11, 12], 2)
    assert len(set(a)) == 6 and all(0 <= s < 2**31 for s in a)
    assert a[3] == row_seed(3, 11, 1) & 0x7FFFFFFF  # prompt-major: prompt 1, sample 1
    assert request_seeds(4, [10, 11, 12], 2) != a
    # split-invariant: a prompt's seeds do not depend on the other prompts of the call
    assert request_seeds(3, [10], 2) + request_seeds(3, [11, 12], 2) == a


def test_sampled_logprobs_picks_the_sampled_token():
    from klear.rollout.vllm import sampled_logprobs

    Lp, Comp = fake_vllm.Logprob, fake_vllm.CompletionOutput
    # the sampled token is not the most likely one and is listed second
    steps = [{4: Lp(-0.1, 1), 9: Lp(-2.5, 2)}, {3: Lp(-0.7, 1)}]
    assert sampled_logprobs(Comp(0, "", [9, 3], None, steps, "stop")) == [-2.5, -0.7]
    with pytest.raises(RuntimeError, match="lack the sampled token 5"):
        sampled_logprobs(Comp(0, "", [9, 5], None, steps, "stop"))
    with pytest.raises(RuntimeError, match="no logprobs"):
        sampled_logprobs(Comp(0, "", [9, 3], None, None, "stop"))
    with pytest.raises(RuntimeError, match="2 logprob entries for 3 tokens"):
        sampled_logprobs(Comp(0, "", [9, 3, 1], None, steps, "length"))


def test_weight_names_and_buckets():
    from klear.rollout.vllm import hf_weight_name, weight_buckets

    assert (
        hf_weight_name("_orig_mod.model.layers.0.mlp.up_proj.weight") == "model.layers.0.mlp.up_proj.weight"
    )
    assert hf_weight_name("module.model._fsdp_wrapped_module.norm.weight") == "model.norm.weight"
    assert hf_weight_name("lm_head.weight") == "lm_head.weight"
    state = {"a": torch.ones(4, 4), "b": torch.ones(8), "steps": torch.tensor([3])}
    one_each = list(weight_buckets(state, torch.bfloat16, bucket_bytes=1))
    assert [[n for n, _ in b] for b in one_each] == [["a"], ["b"], ["steps"]]
    assert one_each[0][0][1].dtype == torch.bfloat16 and one_each[2][0][1].dtype == torch.int64
    # 16 bf16 values = 32 bytes close the first bucket; the rest share the second
    two = list(weight_buckets(state, torch.bfloat16, bucket_bytes=32))
    assert [[n for n, _ in b] for b in two] == [["a"], ["b", "steps"]]
    assert all(t.device.type == "cpu" and t.is_contiguous() for b in two for _, t in b)


def test_options_from_config():
    rollout = RolloutConfig(backend="vllm", tensor_parallel_size=2, vllm={"gpu_memory_utilization": 0.4})
    model = ModelConfig(tiny=True, yarn_factor=2.5, yarn_original_max_position=32768)
    opts = backend_options(rollout, model)
    assert opts["tensor_parallel_size"] == 2 and opts["gpu_memory_utilization"] == 0.4
    assert opts["dtype"] == "bfloat16"  # model.dtype auto
    assert opts["yarn"] == (2.5, 32768)
    assert opts["enable_prefix_caching"] is True and opts["per_request_seeds"] is True
    assert backend_options(RolloutConfig(), model) == {}  # the HF backend takes none
    assert backend_options(rollout, ModelConfig(tiny=True, dtype="float32"))["dtype"] == "float32"


# ----------------------------------------------------------------------------- the backend on the fake


def test_engine_arguments(fake, model_dir):
    backend = vllm_backend(
        model_dir, seed=5, tensor_parallel_size=2, max_batch_size=64, gpu_memory_utilization=0.3
    )
    (llm,) = fake.LLM.instances
    assert llm.model_path == str(model_dir)
    assert llm.kwargs["logprobs_mode"] == "processed_logprobs"
    assert llm.kwargs["tensor_parallel_size"] == 2 and llm.kwargs["max_num_seqs"] == 64
    assert llm.kwargs["gpu_memory_utilization"] == 0.3 and llm.kwargs["seed"] == 5
    assert llm.kwargs["enable_prefix_caching"] is True and "hf_overrides" not in llm.kwargs
    from klear.rollout.vllm import KlearWorkerExtension

    assert isinstance(llm.workers[0], KlearWorkerExtension)  # resolved from the dotted qualname
    assert backend.stop_ids == [2]  # <|im_end|>: the tiny tokenizer's EOS
    with pytest.raises(ValueError, match="CUDA"):
        vllm_backend(model_dir, device="cpu")
    with pytest.raises(TypeError, match="unexpected"):  # engine_kwargs go to vLLM unchanged
        vllm_backend(model_dir, engine_kwargs={"no_such_engine_arg": 1})


def test_prompt_major_groups_truncation_and_requests(fake, model_dir, prompts):
    backend = vllm_backend(model_dir)
    sampling = SamplingParams(n=3, temperature=1.0, max_new_tokens=6)
    out = backend.generate(prompts[:3], sampling, groups=["a", "b", "c"])
    assert len(out) == 9
    assert [r.group for r in out] == ["a"] * 3 + ["b"] * 3 + ["c"] * 3
    assert [r.sample for r in out] == [0, 1, 2] * 3
    hf = HFRolloutBackend.from_pretrained(model_dir)
    for k, r in enumerate(out):
        assert r.prompt_ids == hf.encode(prompts[k // 3])  # same encoding as the HF backend
        assert len(r.logprobs) == len(r.response_ids) <= 6
        assert all(lp <= 0 and math.isfinite(lp) for lp in r.logprobs)
        ends_on_stop = r.response_ids[-1] in backend.stop_ids
        assert r.truncated == (not ends_on_stop) == (r.meta["finish_reason"] == "length")
        assert r.text == backend.tokenizer.decode(r.response_ids, skip_special_tokens=True)
        assert r.meta["weights_version"] == 0
    assert any(r.truncated for r in out)  # an untrained model rarely stops within 6 tokens
    # one n=1 request per sample, prompt-major, each with its own seed
    (llm,) = fake.LLM.instances
    sent = llm.requests
    assert [ids for ids, _ in sent] == [r.prompt_ids for r in out]
    assert all(sp.n == 1 and sp.logprobs == 0 and sp.max_tokens == 6 for _, sp in sent)
    assert len({sp.seed for _, sp in sent}) == 9
    with pytest.raises(ValueError, match="2 groups for 3 prompts"):
        backend.generate(prompts[:3], sampling, groups=[0, 1])


def test_prompt_forms_give_the_same_ids(fake, model_dir, prompts):
    backend = vllm_backend(model_dir)
    ids = backend.encode(prompts[0])
    text = backend.tokenizer.decode(ids)
    g = SamplingParams(temperature=0.0, max_new_tokens=4)
    a, b, c = (backend.generate([p], g)[0] for p in (prompts[0], ids, text))
    assert a.prompt_ids == b.prompt_ids == c.prompt_ids == ids
    assert a.response_ids == b.response_ids == c.response_ids


def test_greedy_equals_the_hf_backend(fake, varied_dir, prompts):
    backend = vllm_backend(varied_dir)
    hf = HFRolloutBackend.from_pretrained(varied_dir)
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    ours, ref = backend.generate(prompts, greedy), hf.generate(prompts, greedy)
    assert [r.response_ids for r in ours] == [r.response_ids for r in ref]
    assert len({tuple(r.response_ids) for r in ours}) > 1  # the outputs are not all the same
    for a, b in zip(ours, ref, strict=True):
        torch.testing.assert_close(torch.tensor(a.logprobs), torch.tensor(b.logprobs), atol=1e-5, rtol=0)
        assert a.truncated == b.truncated
    assert all(sp.seed is None and sp.temperature == 0.0 for _, sp in fake.LLM.instances[0].requests)
    # every unseeded call advances the counter, as in the HF backend
    assert backend.get_rng_state()["calls"] == hf.get_rng_state()["calls"] == 1


@pytest.mark.parametrize(("temperature", "top_k", "top_p"), [(1.0, -1, 1.0), (0.7, 5, 0.9)])
def test_logprobs_are_the_sampling_distributions(fake, varied_dir, prompts, temperature, top_k, top_p):
    """Each reported log-prob is the sampled token's under the processed distribution at its position."""
    backend = vllm_backend(varied_dir)
    sampling = SamplingParams(n=2, temperature=temperature, top_k=top_k, top_p=top_p, max_new_tokens=8)
    out = backend.generate(prompts[:2], sampling)
    model = fake.LLM.instances[0].vllm_model.hf
    for r in out:
        seq = torch.tensor([r.prompt_ids + r.response_ids])
        with torch.no_grad():
            logits = model(seq).logits[0, len(r.prompt_ids) - 1 : -1]
        logp = process_logits(logits, temperature, top_k, top_p)
        want = logp.gather(-1, torch.tensor(r.response_ids)[:, None]).squeeze(-1)
        torch.testing.assert_close(torch.tensor(r.logprobs), want, atol=1e-4, rtol=0)


@pytest.mark.slow
def test_seeds_make_runs_reproducible_and_resumable(fake, varied_dir, prompts):
    prompts = prompts[:2]
    sampling = SamplingParams(n=2, temperature=1.0, max_new_tokens=6)
    a = vllm_backend(varied_dir, seed=7)
    a1, state_after_1, a2 = a.generate(prompts, sampling), a.get_rng_state(), a.generate(prompts, sampling)
    assert state_after_1 == {"seed": 7, "calls": 1}
    assert [r.response_ids for r in a1] != [r.response_ids for r in a2]  # the counter moved on
    b = vllm_backend(varied_dir, seed=7)
    assert [r.response_ids for r in b.generate(prompts, sampling)] == [r.response_ids for r in a1]
    c = vllm_backend(varied_dir, seed=123)
    c.set_rng_state(state_after_1)  # a resumed run
    assert [r.response_ids for r in c.generate(prompts, sampling)] == [r.response_ids for r in a2]
    # a fixed seed repeats itself and leaves the counter alone
    fixed = sampling.replace(seed=99)
    calls = c.get_rng_state()["calls"]
    assert [r.response_ids for r in c.generate(prompts, fixed)] == [
        r.response_ids for r in c.generate(prompts, fixed)
    ]
    assert c.get_rng_state()["calls"] == calls
    with pytest.raises(ValueError, match="not a rollout RNG state"):
        c.set_rng_state(torch.Generator().get_state())  # an older klear's HF sampler state


def test_unseeded_mode_sends_no_seeds(fake, model_dir, prompts):
    backend = vllm_backend(model_dir, per_request_seeds=False)
    backend.generate(prompts[:2], SamplingParams(n=2, max_new_tokens=3))
    assert all(sp.seed is None for _, sp in fake.LLM.instances[0].requests)


def test_update_weights_loads_by_hf_name_and_bumps_the_version(fake, model_dir, varied_dir, prompts):
    policy = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    from klear.rollout.vllm import VLLMRolloutBackend

    tokenizer = HFRolloutBackend.from_pretrained(model_dir).tokenizer
    backend = VLLMRolloutBackend(policy, tokenizer, seed=0, dtype="float32", weight_bucket_mb=1)
    (llm,) = fake.LLM.instances
    assert llm.model_path == str(model_dir)  # the module's name_or_path
    assert backend.weights_version == 1  # its current weights were pushed on construction
    names = [n for call in llm.vllm_model.loaded for n in call]
    assert names == list(policy.state_dict())  # every tensor, by its HF name, in order
    assert [c for c in llm.calls if c[0] != "generate"][-1] == ("reset_prefix_cache", None)
    assert {c[1] for c in llm.calls if c[0] == "collective_rpc"} == {"klear_load_weights"}

    # new weights (as a compiled module's state dict would name them) change what is sampled
    greedy = SamplingParams(temperature=0.0, max_new_tokens=10)
    before = [r.response_ids for r in backend.generate(prompts, greedy)]
    new = AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32)
    backend.update_weights({"_orig_mod." + k: v for k, v in new.state_dict().items()})
    assert backend.weights_version == 2
    after = backend.generate(prompts, greedy)
    want = HFRolloutBackend(new.eval(), tokenizer).generate(prompts, greedy)
    assert [r.response_ids for r in after] == [r.response_ids for r in want] != before
    assert all(r.meta["weights_version"] == 2 for r in after)
    for (name, p), q in zip(llm.vllm_model.hf.named_parameters(), new.parameters(), strict=True):
        assert torch.equal(p, q), name
    with pytest.raises(ValueError, match="no tensors"):
        backend.update_weights({})


def test_bf16_engine_gets_bf16_tensors(fake, model_dir):
    backend = vllm_backend(model_dir, dtype="bfloat16", weight_bucket_mb=1)
    sent = []
    orig = fake.LLM.collective_rpc

    def spy(self, method, timeout=None, args=(), kwargs=None):
        sent.extend(args[0])
        return orig(self, method, timeout, args, kwargs)

    fake.LLM.collective_rpc = spy
    backend.update_weights(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    assert sent and all(isinstance(data, bytes) for _, _, _, data in sent)
    assert {dtype for _, dtype, _, _ in sent} == {"bfloat16"}


def test_weights_survive_packing():
    from klear.rollout.vllm import pack_weights, unpack_weights

    g = torch.Generator().manual_seed(0)
    tensors = [
        ("w", torch.randn(3, 5, generator=g).to(torch.bfloat16)),
        ("b", torch.randn(7, generator=g)),
        ("t", torch.randn(4, 6, generator=g).t()),  # not contiguous
        ("i", torch.tensor([3, -2], dtype=torch.int64)),
        ("s", torch.tensor(2.5)),
        ("e", torch.empty(0, 4)),
    ]
    packed = pack_weights(tensors)
    assert all(isinstance(d, bytes) and isinstance(n, str) for n, _, _, d in packed)
    back = unpack_weights(fake_vllm._msgpack_round_trip(packed))
    assert [n for n, _ in back] == [n for n, _ in tensors]
    for (_, a), (_, b) in zip(tensors, back, strict=True):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    with pytest.raises(TypeError, match="untyped RPC"):
        fake_vllm._msgpack_round_trip([("w", torch.ones(2))])  # why tensors are packed


def test_yarn_reaches_the_engine_as_hf_overrides(fake, model_dir):
    backend = vllm_backend(model_dir, yarn=(2.0, 512))
    (llm,) = fake.LLM.instances
    want = apply_yarn(AutoConfig.from_pretrained(model_dir), 2.0, 512)
    overrides = llm.kwargs["hf_overrides"]
    assert overrides == {"rope_parameters": want.rope_parameters, "max_position_embeddings": 1024}
    base_theta = AutoConfig.from_pretrained(model_dir).rope_parameters["rope_theta"]
    assert overrides["rope_parameters"]["rope_type"] == "yarn"
    assert overrides["rope_parameters"]["factor"] == 2.0
    assert overrides["rope_parameters"]["rope_theta"] == base_theta  # the model's base is kept
    assert llm.hf_config.max_position_embeddings == 1024
    backend.generate([[5, 6, 7]], SamplingParams(temperature=0.0, max_new_tokens=3))  # the fake model runs
    with pytest.raises(ValueError, match="conflicts with the YaRN setting"):
        vllm_backend(model_dir, yarn=(2.0, 512), hf_overrides={"max_position_embeddings": 4096})


def test_sleep_mode_wakes_weights_for_updates_and_kv_for_generation(fake, model_dir, prompts):
    backend = vllm_backend(model_dir, enable_sleep_mode=True)
    (llm,) = fake.LLM.instances
    assert llm.kwargs["enable_sleep_mode"] is True
    g = SamplingParams(temperature=0.0, max_new_tokens=4)
    first = backend.generate(prompts[:2], g)
    assert llm.calls[-1] == ("sleep", 1) and llm.asleep == {"weights", "kv_cache"}
    backend.update_weights(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    assert ("wake_up", ["weights"]) in llm.calls and llm.asleep == {"kv_cache"}
    again = backend.generate(prompts[:2], g)
    assert ("wake_up", ["kv_cache"]) in llm.calls and llm.calls[-1] == ("sleep", 1)
    assert [r.response_ids for r in again] == [r.response_ids for r in first]


def test_level_2_sleep_requires_an_update_before_generating(fake, model_dir, prompts):
    backend = vllm_backend(model_dir, enable_sleep_mode=True, sleep_level=2)
    g = SamplingParams(temperature=0.0, max_new_tokens=4)
    first = backend.generate(prompts[:2], g)
    with pytest.raises(RuntimeError, match="update_weights before generate"):
        backend.generate(prompts[:2], g)
    backend.update_weights(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32))
    assert [r.response_ids for r in backend.generate(prompts[:2], g)] == [r.response_ids for r in first]


def test_close_is_idempotent(fake, model_dir):
    backend = vllm_backend(model_dir)
    backend.close()
    backend.close()
    assert backend.llm is None


# ----------------------------------------------------------------------------- the RL trainer's wiring


@pytest.mark.slow
def test_rl_trainer_runs_and_resumes_on_the_vllm_backend(fake, tmp_path):
    """train_rl builds the backend from the config, pushes weights after each step and after a resume."""
    from klear.train.metrics import read_metrics
    from klear.train.rl import train_rl
    from tests.train.test_rl import rl_config, weights

    vllm_cfg = {"backend": "vllm", "tensor_parallel_size": 1, "vllm": {"dtype": "float32"}}
    train_rl(build_config(RLConfig, rl_config(tmp_path / "a", rollout=vllm_cfg)))
    assert len(fake.LLM.instances) == 1
    llm = fake.LLM.instances[0]
    assert llm.kwargs["dtype"] == "float32" and llm.kwargs["logprobs_mode"] == "processed_logprobs"
    # construction + one update per optimizer step (2 steps)
    assert len([c for c in llm.calls if c == ("reset_prefix_cache", None)]) == 3
    uninterrupted = read_metrics(tmp_path / "a" / "metrics.jsonl")

    b = rl_config(tmp_path / "b", rollout=vllm_cfg)
    train_rl(build_config(RLConfig, {**b, "trainer": {**b["trainer"], "total_steps": 1}}))
    train_rl(build_config(RLConfig, b))  # resumes from step 1 with a fresh engine
    resumed = read_metrics(tmp_path / "b" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [1, 2]
    for key in ("reward/mean", "response/length_mean", "batch/gen_batches"):
        assert resumed[1][key] == uninterrupted[1][key], key
    a_w = weights(tmp_path / "a" / "checkpoints" / "step_000002" / "model")
    b_w = weights(tmp_path / "b" / "checkpoints" / "step_000002" / "model")
    for k in a_w:
        torch.testing.assert_close(a_w[k], b_w[k], rtol=1e-4, atol=1e-5)


def test_eval_runner_builds_the_vllm_backend_with_yarn(fake, model_dir):
    from klear.eval.backend import YarnSetting, load_backend

    backend = load_backend("vllm", model_dir, seed=4, yarn=YarnSetting(2.0, 512))
    (llm,) = fake.LLM.instances
    assert llm.kwargs["seed"] == 4 and backend.get_rng_state()["seed"] == 4
    rope = llm.kwargs["hf_overrides"]["rope_parameters"]
    assert (
        rope["rope_type"] == "yarn"
        and rope["factor"] == 2.0
        and rope["original_max_position_embeddings"] == 512
    )
    assert rope["rope_theta"] == AutoConfig.from_pretrained(model_dir).rope_parameters["rope_theta"]


@pytest.mark.slow
def test_a_ray_rollout_worker_body_runs_the_vllm_backend_from_the_directory(fake, varied_dir, prompts):
    """klear.dist's rollout actor (its plain body, no Ray here): the engine loads the model
    directory itself, slices of a call sample what the whole call samples (keyed request seeds),
    and a weights version other than the worker's is refused."""
    from klear.config import RLConfig, build_config
    from klear.dist.workers import RolloutWorker, VersionMismatch

    cfg = build_config(
        RLConfig, {"model": {"path": str(varied_dir), "dtype": "float32"}, "rollout": {"backend": "vllm"}}
    )
    worker = RolloutWorker(cfg, str(varied_dir), 1)
    assert fake.LLM.instances[-1].model_path == str(varied_dir)  # no HF copy handed over
    params = SamplingParams(n=2, max_new_tokens=6, seed=3)
    groups = [10, 11, 12, 13]
    whole = worker.generate(prompts, params, groups, 0)
    halves = worker.generate(prompts[:1], params, groups[:1], 0) + worker.generate(
        prompts[1:], params, groups[1:], 0
    )
    assert [r.response_ids for r in halves] == [r.response_ids for r in whole]
    assert [r.group for r in whole] == [g for g in groups for _ in range(2)]
    with pytest.raises(VersionMismatch, match="asked for policy version 1"):
        worker.generate(prompts, params, groups, 1)
    state = AutoModelForCausalLM.from_pretrained(varied_dir, dtype=torch.float32).state_dict()
    assert worker.load_weights(state, 1) == 1
    assert len(worker.generate(prompts, params, groups, 1)) == 2 * len(prompts)
