"""Running ablations: one queue of (ablation, seed) units over ``--jobs`` worker processes.

:func:`run_ablations` validates every config of every run of every ablation first (nothing trains
when one is bad), then hands the units -- ablation by ablation, seed by seed -- to the first free
worker. A unit is one seed of one ablation: its SFT stages, then each variant
(:func:`klear.ablate.runner.run_seed`). An ablation prints its plan and estimate when its first
unit starts, a line per finished run, and its report as soon as its last unit is done, while the
next ablation's units already run: in ``klear ablate all`` no core waits for an ablation's slowest
seed, and a seed count that is not a multiple of ``--jobs`` costs no extra round.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from klear.ablate.registry import Ablation, AblationError
from klear.ablate.runner import RunResult, Settings, estimate, run_seed, validate


def _mmss(secs: float) -> str:
    m, sec = divmod(round(secs), 60)
    return f"{m}:{sec:02d}"


def run_line(res: RunResult) -> str:
    """A finished run in one line: accuracy, gain, clipped fraction, groups kept per step when short, time."""
    gain = "" if res.gain is None else f" ({100 * res.gain:+.1f} over its start)"
    clip = "" if res.clip_high is None else f", clip {100 * (res.clip_high + res.clip_low):.2f}%"
    kept, per_step = res.extra.get("kept_groups_mean"), res.extra.get("groups_per_step")
    short = f", kept {kept:.1f}/{per_step} groups a step" if kept is not None and kept < per_step else ""
    return f"{res.variant}, seed {res.seed}: accuracy {100 * res.final:.1f}%{gain}{clip}{short} in {res.seconds:.0f} s"


@dataclass
class _Track:
    """One ablation's progress through the queue: its plan, its finished runs, its report when complete."""

    ab: Ablation
    s: Settings
    est: dict[str, float]
    units_left: int
    results: list[RunResult] = field(default_factory=list)
    t0: float | None = None
    summary: dict[str, Any] | None = None

    @property
    def n_runs(self) -> int:
        return self.s.seeds * len(self.ab.variants)

    def start(self) -> None:
        if self.t0 is not None:
            return
        self.t0 = time.perf_counter()
        self.s.out.mkdir(parents=True, exist_ok=True)
        self.s.say(
            f"{self.ab.name}: {len(self.ab.variants)} variants x {self.s.seeds} seeds = {self.n_runs} runs "
            f"(+ shared SFT stages); estimated {_mmss(self.est['total'])} on 2 idle cores with --jobs {self.s.jobs}"
        )

    def add(self, res: RunResult, prefix: str) -> None:
        self.results.append(res)
        done = len(self.results)
        eta = (time.perf_counter() - (self.t0 or 0.0)) / done * (self.n_runs - done)
        self.s.say(f"{prefix}[{done}/{self.n_runs}] {run_line(res)}; ETA {_mmss(eta)}")

    def unit_done(self) -> bool:
        """Count a finished unit; True when it was the ablation's last (the report is then written)."""
        from klear.ablate.report import summarise, write_report

        self.units_left -= 1
        if self.units_left:
            return False
        order = [v.name for v in self.ab.variants]
        self.results.sort(key=lambda r: (r.seed, order.index(r.variant)))
        seconds = time.perf_counter() - (self.t0 or 0.0)
        self.summary = summarise(self.ab, self.results, self.s, seconds=seconds, estimate=self.est)
        write_report(self.summary, self.s.out)
        return True


def estimate_all(items: Sequence[tuple[Ablation, Settings]]) -> float:
    """Seconds for ``items`` through one queue on 2 idle cores: every unit's estimated work over the
    cores (a shared SFT stage counted once, for the first ablation that needs it)."""
    seen: set[str] = set()
    work = sum(estimate(ab, s, seen)["per_seed"] * s.seeds for ab, s in items)
    jobs = items[0][1].jobs if items else 1
    return work / max(1, min(jobs, 2))


def run_ablations(
    items: Sequence[tuple[Ablation, Settings]],
    finished: Callable[[Ablation, Settings, dict[str, Any]], None] | None = None,
) -> list[dict[str, Any]]:
    """Ablations through one queue of (ablation, seed) units on ``items[0][1].jobs`` workers; each
    one's report is written (and ``finished`` called) as soon as its last unit is done."""
    from klear.preflight import check_out_dir

    for ab, s in items:  # every config of every run checked before anything trains
        check_out_dir(s.out, "--out")
        validate(ab, s)
    if len(items) > 1:
        items[0][1].say(
            f"{len(items)} ablations in one queue: estimated {estimate_all(items) / 60:.0f} min on 2 idle cores"
        )
    tracks = [_Track(ab, s, estimate(ab, s), units_left=s.seeds) for ab, s in items]
    units = [(i, s.base_seed + k) for i, (_ab, s) in enumerate(items) for k in range(s.seeds)]
    prefix = (lambda t: f"{t.ab.name} ") if len(items) > 1 else (lambda t: "")

    def report(i: int, res: RunResult) -> None:
        tracks[i].add(res, prefix(tracks[i]))

    def unit_done(i: int) -> None:
        t = tracks[i]
        if t.unit_done() and finished is not None:
            finished(t.ab, t.s, t.summary)  # type: ignore[arg-type]

    jobs = items[0][1].jobs if items else 1
    if jobs <= 1:
        for i, seed in units:
            tracks[i].start()
            run_seed(tracks[i].ab, tracks[i].s, seed, lambda r, i=i: report(i, r))
            unit_done(i)
    else:
        _run_parallel(
            [(t.ab, t.s) for t in tracks], units, jobs, lambda i: tracks[i].start(), report, unit_done
        )
    return [t.summary for t in tracks]  # type: ignore[misc]


def _seed_worker(ab: Ablation, s: Settings, seed: int, unit: int, queue: Any) -> None:
    """One unit in a worker process: each finished run goes to ``queue`` at once, then "done" (or "error")."""
    import signal

    signal.signal(signal.SIGTERM, _raise_terminated)  # so train_rl's finally blocks close the reward pool
    try:
        run_seed(ab, s, seed, lambda r: queue.put(("run", unit, asdict(r))))
        queue.put(("done", unit, None))
    except BaseException as exc:
        from klear.errors import KlearError, Terminated

        if isinstance(exc, Terminated | KeyboardInterrupt):  # the parent stops us: no traceback
            raise SystemExit(143 if isinstance(exc, Terminated) else 130) from None
        queue.put(("error", unit, (isinstance(exc, KlearError), f"{type(exc).__name__}: {exc}")))
        raise


def _raise_terminated(signum: int, frame: object) -> None:
    from klear.errors import Terminated

    raise Terminated()


def _run_parallel(
    ablations: list[tuple[Ablation, Settings]],
    units: list[tuple[int, int]],
    jobs: int,
    started: Callable[[int], None],
    report: Callable[[int, RunResult], None],
    unit_done: Callable[[int], None],
) -> None:
    """Units (ablation index, seed) in up to ``jobs`` worker processes at a time, in order (spawned:
    never fork a process that holds torch). An error in one stops the others; so does Ctrl-C or
    SIGTERM of this process."""
    import multiprocessing as mp
    import queue as queue_mod

    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    todo, running = list(enumerate(units)), {}

    def what(u: int) -> str:
        i, seed = units[u]
        return f"{ablations[i][0].name} seed {seed}" if len(ablations) > 1 else f"seed {seed}"

    try:
        while todo or running:
            while todo and len(running) < jobs:
                u, (i, seed) = todo.pop(0)
                started(i)
                ab, s = ablations[i]
                running[u] = ctx.Process(
                    target=_seed_worker,
                    args=(ab, replace(s, say=print), seed, u, q),
                    name=f"ablate-{ab.name}-seed{seed}",
                )
                running[u].start()
            try:
                kind, u, payload = q.get(timeout=2.0)
            except queue_mod.Empty:
                dead = [k for k, p in running.items() if not p.is_alive() and p.exitcode not in (0, None)]
                if dead:
                    code = running[dead[0]].exitcode
                    raise AblationError(f"the worker of {what(dead[0])} died (exit code {code})") from None
                continue
            if kind == "run":
                report(units[u][0], RunResult(**payload))
            elif kind == "done":
                running.pop(u).join()
                unit_done(units[u][0])
            else:
                known, msg = payload
                if known:
                    raise AblationError(f"{what(u)}: {msg}")
                raise RuntimeError(f"{what(u)}: {msg}")
    finally:
        for p in running.values():
            if p.is_alive():
                p.terminate()
        for p in running.values():
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
