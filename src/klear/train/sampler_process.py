"""A rollout backend in a child process: the sampler of ``trainer.async_rollouts`` on one machine.

To generate while the learner updates, the sampler needs a process (a core, a GIL) and a
copy of the policy of its own. :class:`ProcessSampler` starts one child (from the reward pool's forkserver, with
``threads`` torch threads) that builds the ``rollout.backend`` over its own copy of the
model, and forwards ``generate`` and ``update_weights`` to it over a pipe; it has the
methods of a rollout backend, so the loop cannot tell it from one.

The parent keeps the sampler's RNG state (a :class:`~klear.rollout.CallSeeds`, as the Ray
rollout group does) and passes each call's seed, so its rollouts are those of a backend
in this process and a checkpoint's ``sampler_rng`` means the same thing. Weights travel as
a state dict serialised once per update (a few MB for the tiny model; a collective
transport can replace :meth:`ProcessSampler.update_weights` without touching the loop).
"""

from __future__ import annotations

import contextlib
import io
import os
import signal
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from klear.config import RLConfig
from klear.errors import KlearError
from klear.rollout import CallSeeds, SamplingParams
from klear.types import Rollout

#: seconds the child may take to import torch and load the model
START_TIMEOUT_S = 300.0


class SamplerLost(KlearError, RuntimeError):
    """The sampler process died or failed; the run stops (resume from the last checkpoint)."""


def _child(conn: Any, cfg: RLConfig, model_dir: str, threads: int) -> None:
    from klear.models.loading import load_model, pick_device, quiet_transformers
    from klear.rewards.pool_worker import die_with_parent
    from klear.rollout import backend_class, backend_options

    # a session of its own, as the reward workers have: Ctrl-C is the parent's to handle, and where the
    # kernel groups scheduling by session (autogroup) the sampler gets a share of its own, not half the trainer's
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    die_with_parent()
    torch.set_num_threads(threads)
    quiet_transformers()
    try:
        options = backend_options(cfg.rollout, cfg.model)
        cls = backend_class(cfg.rollout.backend)
        if cfg.rollout.backend == "hf":  # the HF backend samples from a module of its own
            model, tokenizer = load_model(Path(model_dir), cfg.model, pick_device())
            model.eval()
            backend = cls(model, tokenizer, seed=cfg.run.seed, **options)
        else:  # an engine (vLLM) loads the directory itself
            backend = cls(model_dir, seed=cfg.run.seed, **options)
    except BaseException as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
        return
    conn.send(("ok", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            break
        if msg[0] == "close":
            break
        try:
            if msg[0] == "generate":
                _, prompts, sampling, groups = msg
                with torch.no_grad():
                    out: Any = backend.generate(prompts, sampling, groups=groups)
            elif msg[0] == "weights":
                backend.update_weights(torch.load(io.BytesIO(msg[1]), weights_only=True))
                out = None
            else:
                raise ValueError(f"unknown request {msg[0]!r}")
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", traceback.format_exc()))
            continue
        conn.send(("ok", out))
    backend.close()


class ProcessSampler:
    """A rollout backend of ``cfg.rollout.backend`` over its own copy of the policy, in a child process."""

    def __init__(self, cfg: RLConfig, model_dir: str | Path, seed: int, threads: int = 1) -> None:
        from klear.rewards.pool import _context

        ctx = _context()  # forkserver (the reward pool's): a clean child that does not re-run __main__
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=_child, args=(child, cfg, str(model_dir), threads), name="klear-sampler", daemon=True
        )
        self._proc.start()
        child.close()
        self.seeds = CallSeeds(seed)
        self.pid: int | None = None  # known once the child has loaded the model (it starts meanwhile)

    def _started(self) -> None:
        if self.pid is not None:
            return
        try:
            if not self._conn.poll(START_TIMEOUT_S):
                raise SamplerLost(f"the sampler process did not start within {START_TIMEOUT_S:.0f} s")
            self.pid = self._reply("starting")
        except BaseException:
            self.close()
            raise

    def _reply(self, what: str) -> Any:
        try:
            status, *rest = self._conn.recv()
        except (EOFError, OSError) as exc:
            self._proc.join(timeout=5)
            raise SamplerLost(
                f"the sampler process (pid {self._proc.pid}) died while {what} "
                f"(exit code {self._proc.exitcode})"
            ) from exc
        if status == "error":
            raise SamplerLost(f"the sampler process failed while {what}: {rest[0]}\n{rest[1]}")
        return rest[0]

    def generate(
        self, prompts: Sequence[Any], sampling: SamplingParams, groups: Sequence[int | str] | None = None
    ) -> list[Rollout]:
        sampling = sampling.replace(seed=self.seeds.next(sampling.seed))  # as a backend here would
        self._started()
        self._conn.send(("generate", list(prompts), sampling, None if groups is None else list(groups)))
        return self._reply("generating")

    def update_weights(self, weights: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Load new policy weights (a module or a state dict with the model's names) into the child's copy."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        self._started()
        self._conn.send(("weights", buf.getvalue()))
        self._reply("loading weights")

    def cpu_seconds(self) -> float | None:
        """CPU seconds the child has used so far (user + system; None before it started or off Linux)."""
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def get_rng_state(self) -> dict[str, int]:
        return self.seeds.state()

    def set_rng_state(self, state: dict[str, int]) -> None:
        self.seeds.load(state)

    def close(self) -> None:
        if self._proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self._conn.send(("close",))
            self._proc.join(timeout=10)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(timeout=5)
        self._conn.close()
