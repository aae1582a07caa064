"""Rollout backends in child processes: the samplers of ``trainer.async_rollouts`` and ``sampler_processes``.

To generate while the learner updates, a sampler needs a process (a core, a GIL) and a copy
of the policy of its own. :class:`ProcessSampler` starts ``trainer.sampler_processes``
children (from the reward pool's forkserver, with ``threads`` torch threads each); each
builds the ``rollout.backend`` over its own copy of the model. ``generate`` splits a call's
prompts into contiguous parts, one per child, and joins the results in order;
``update_weights`` goes to every child. It has the methods of a rollout backend, so the loop
cannot tell it from one. On a 2-core machine two children sample while the learner waits for
them, and share the cores with it while it updates.

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
from klear.rollout import CallSeeds, SamplingParams, group_keys
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


class _Child:
    """One sampler process and the parent's end of its pipe."""

    def __init__(self, ctx: Any, cfg: RLConfig, model_dir: str, threads: int, index: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(
            target=_child, args=(child, cfg, model_dir, threads), name=f"klear-sampler-{index}", daemon=True
        )
        self.proc.start()
        child.close()
        self.pid: int | None = None  # known once the child has loaded the model (it starts meanwhile)

    def started(self) -> None:
        if self.pid is None:
            if not self.conn.poll(START_TIMEOUT_S):
                raise SamplerLost(f"the sampler process did not start within {START_TIMEOUT_S:.0f} s")
            self.pid = self.reply("starting")

    def reply(self, what: str) -> Any:
        try:
            status, *rest = self.conn.recv()
        except (EOFError, OSError) as exc:
            self.proc.join(timeout=5)
            raise SamplerLost(
                f"the sampler process (pid {self.proc.pid}) died while {what} (exit code {self.proc.exitcode})"
            ) from exc
        if status == "error":
            raise SamplerLost(f"the sampler process failed while {what}: {rest[0]}\n{rest[1]}")
        return rest[0]

    def cpu_seconds(self) -> float | None:
        try:
            fields = Path(f"/proc/{self.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            return None
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def close(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError, ValueError):
                self.conn.send(("close",))
            self.proc.join(timeout=10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(timeout=5)
        self.conn.close()


def split(count: int, parts: int) -> list[tuple[int, int]]:
    """``count`` items in at most ``parts`` contiguous (start, end) ranges of near-equal size, none empty."""
    size, extra = divmod(count, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + size + (i < extra)
        if end > start:
            bounds.append((start, end))
        start = end
    return bounds


class ProcessSampler:
    """A rollout backend of ``cfg.rollout.backend`` over its own copy of the policy, in ``processes`` children.

    With more than one child, each call's prompts are split into contiguous parts, one per
    child, sampled at the same time and joined in order. The rollouts are those of one child
    (and of a backend in this process): the call's seed is chosen here, and every row's
    randomness is keyed by (call seed, group, sample), not by which process drew it.
    """

    def __init__(
        self, cfg: RLConfig, model_dir: str | Path, seed: int, threads: int = 1, processes: int = 1
    ) -> None:
        from klear.rewards.pool import _context

        if processes < 1:
            raise ValueError(f"processes = {processes}: need at least one sampler process")
        ctx = _context()  # forkserver (the reward pool's): a clean child that does not re-run __main__
        self._children: list[_Child] = []
        try:
            for i in range(processes):
                self._children.append(_Child(ctx, cfg, str(model_dir), threads, i))
        except BaseException:
            self.close()
            raise
        self.seeds = CallSeeds(seed)

    @property
    def pid(self) -> int | None:
        """The first child's pid (None until it has loaded the model)."""
        return self._children[0].pid

    @property
    def pids(self) -> list[int | None]:
        return [c.pid for c in self._children]

    def _started(self) -> None:
        try:
            for c in self._children:
                c.started()
        except BaseException:
            self.close()
            raise

    def generate(
        self, prompts: Sequence[Any], sampling: SamplingParams, groups: Sequence[int | str] | None = None
    ) -> list[Rollout]:
        sampling = sampling.replace(seed=self.seeds.next(sampling.seed))  # as a backend here would
        keys = group_keys(prompts, groups)
        self._started()
        parts = split(len(prompts), len(self._children))
        for child, (a, b) in zip(self._children, parts, strict=False):
            child.conn.send(("generate", list(prompts[a:b]), sampling, keys[a:b]))
        out: list[Rollout] = []
        for child, _ in zip(self._children, parts, strict=False):
            out.extend(child.reply("generating"))
        return out

    def update_weights(self, weights: torch.nn.Module | dict[str, torch.Tensor]) -> None:
        """Load new policy weights (a module or a state dict with the model's names) into every child's copy."""
        state = weights.state_dict() if isinstance(weights, torch.nn.Module) else weights
        buf = io.BytesIO()
        torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
        payload = buf.getvalue()
        self._started()
        for child in self._children:
            child.conn.send(("weights", payload))
        for child in self._children:
            child.reply("loading weights")

    def cpu_seconds(self) -> float | None:
        """CPU seconds the children have used so far (user + system; None before they started or off Linux)."""
        seconds = [c.cpu_seconds() for c in self._children]
        return None if any(s is None for s in seconds) else sum(seconds)  # type: ignore[arg-type]

    def get_rng_state(self) -> dict[str, int]:
        return self.seeds.state()

    def set_rng_state(self, state: dict[str, int]) -> None:
        self.seeds.load(state)

    def close(self) -> None:
        for child in self._children:
            child.close()
