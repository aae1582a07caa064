"""One ablation's runs: configs, shared SFT checkpoints, paired seeds, matched budgets, an estimate.

For seed k, :func:`run_seed` trains the SFT stages the variants need (one per distinct SFT
setting, reused from ``sft_cache`` when already there; a lock makes two workers needing the same
stage train it once), then each variant in registry order (a variant that matches another's budget
runs after it). :mod:`klear.ablate.schedule` runs the seeds of one or several ablations on worker
processes and :mod:`klear.ablate.report` writes the statistics. Each run's own outputs
(config.yaml, metrics.jsonl, curves.png) stay under ``OUT/runs/``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from klear.ablate.registry import Ablation, AblationError, Variant
from klear.config import RLConfig, SFTConfig, load_config

#: Seconds per unit of work on 2 idle cores with ``--jobs 2`` (1 torch thread per job), measured on the
#: demo recipes (see estimate()). ``klear ablate all`` at the defaults (5 seeds, one queue), 2026-12-03
#: 16:39-17:15, took 36.5 min against 36.0 estimated with these figures (tests/ablate holds the
#: estimate to that run: each ablation's seconds per seed within 25%, the whole within 10%).
COST = {
    "sft_token": 5.36e-5,  # one SFT training token (forward + backward) ...
    "sft_token_per_length": 1.19e-7,  # ... plus this per position of trainer.max_length (attention, padding)
    "gen_token": 8.0e-5,  # one generated token of one sequence, batched sampling
    "update_token": 7.0e-5,  # one response token through the RL update (per PPO epoch)
    "run_overhead": 4.0,  # model load, reward pool start, checkpoint, plot
    # one hidden test of a code task in the sandbox (fork server, 2 reward workers per job, the other
    # job's on the same 2 cores), fitted to the reward ablation's RL runs at 8 tests (69 s mean). At 16
    # tests the same runs took 111-188 s, more than twice as long: per test 5.4e-3 fitted there
    "code_test": 2.4e-3,
}
#: Distinct responses per group on the built-in code task, as a fraction of n: the reward pool runs
#: a repeated response once (klear.rewards.pool_inline); 4.75 of 8 measured on its SFT model at 0.6.
CODE_DISTINCT = 0.6


#: Every RL run of an ablation runs to its last step: a run that collapses (no group with signal
#: for trainer.max_idle_steps steps) is a result to report, not an error that ends the ablation.
RL_DEFAULTS = ("trainer.max_idle_steps=0",)


@dataclass
class RunResult:
    """One variant on one seed: the accuracy curve and what the report needs."""

    variant: str
    seed: int
    final: float
    start: float | None  # accuracy of the checkpoint the stage started from (None: SFT from scratch)
    curve: list[tuple[float, float]]  # (step, accuracy); x in RL steps for rl-vs-sft's sft-continue
    seconds: float
    out_dir: str
    clip_high: float | None = None  # mean over RL steps of actor/clip_frac_high
    clip_low: float | None = None
    generated_samples: int | None = None  # responses sampled during RL (validation excluded)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def gain(self) -> float | None:
        return None if self.start is None else self.final - self.start


@dataclass
class Settings:
    """What ``klear ablate`` was asked: the seed count, output directory and extra overrides."""

    out: Path
    seeds: int
    base_seed: int = 0
    sft_overrides: tuple[str, ...] = ()
    rl_overrides: tuple[str, ...] = ()
    sft_cache: Path | None = None  # shared SFT checkpoints (``klear ablate all`` shares one across ablations)
    jobs: int = 1  # seeds run in this many worker processes at once (each run uses one torch thread)
    say: Callable[[str], None] = print


def recipe(name: str) -> Path:
    """A shipped recipe by file name (``recipes/``), or a path as given when absolute."""
    from klear.demo import recipes_dir

    return Path(name) if Path(name).is_absolute() else recipes_dir() / name


# ---------------------------------------------------------------------------------------------
# Configs
# ---------------------------------------------------------------------------------------------


def sft_overrides(ab: Ablation, v: Variant, s: Settings) -> list[str]:
    """The SFT stage's overrides for variant ``v`` (before data files, output dir and seed)."""
    return [*ab.sft, *v.sft, *s.sft_overrides] if v.stage != "sft-continue" else [*ab.sft, *s.sft_overrides]


def sft_key(ab: Ablation, v: Variant, s: Settings) -> str:
    """Variants with the same SFT stage share its checkpoint: a digest of what defines that stage."""
    what = {
        "recipe": ab.sft_recipe,  # the code task's SFT stage and the demo's have the same overrides (none)
        "overrides": sft_overrides(ab, v, s),
        "data": v.sft_data,
        "evaluated": v.stage == "sft",
        "ablation": ab.name if v.sft_data else None,
    }
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:12]


def sft_config(
    ab: Ablation, v: Variant, s: Settings, out: Path, seed: int, data: Sequence[str] = ()
) -> SFTConfig:
    return load_config(
        SFTConfig,
        recipe(ab.sft_recipe),
        [*sft_overrides(ab, v, s), *data, f"run.out_dir={out}", f"run.seed={seed}", "logging.progress=false"],
    )


def rl_config(
    ab: Ablation, v: Variant, s: Settings, out: Path, seed: int, extra: Sequence[str] = ()
) -> RLConfig:
    return load_config(
        RLConfig,
        recipe(ab.rl_recipe),
        [
            *RL_DEFAULTS,
            *ab.rl,
            *v.rl,
            *s.rl_overrides,
            *extra,
            f"run.out_dir={out}",
            f"run.seed={seed}",
            "logging.progress=false",
        ],
    )


def continue_config(
    ab: Ablation, v: Variant, s: Settings, out: Path, seed: int, start: Path, steps: int, val_size: int
) -> SFTConfig:
    """SFT continued from ``start`` for ``steps`` steps, evaluated on the RL stage's held-out set."""
    extra = [
        f"model.path={start}",
        f"trainer.max_steps={steps}",
        f"data.val_size={val_size}",
        f"trainer.eval_every={max(1, steps // 3)}",
    ]
    return load_config(
        SFTConfig,
        recipe(ab.sft_recipe),
        [
            *ab.sft,
            *v.sft,
            *s.sft_overrides,
            *extra,
            f"run.out_dir={out}",
            f"run.seed={seed}",
            "logging.progress=false",
        ],
    )


def validate(ab: Ablation, s: Settings) -> None:
    """Build every config the ablation will use (placeholders for paths known only later)."""
    if s.seeds < 2:
        raise AblationError(f"--seeds {s.seeds}: paired intervals need at least 2 seeds")
    tmp = s.out / "validate"
    for v in ab.variants:
        data = _data_overrides(tmp / "train.jsonl", tmp / "val.jsonl") if v.sft_data else ()
        sft_config(ab, v, s, tmp, s.base_seed, data)
        if v.sft_data is not None:
            from klear.ablate.sft_data import SFT_DATA

            if v.sft_data not in SFT_DATA:
                raise AblationError(
                    f"variant {v.name!r}: unknown sft_data {v.sft_data!r}; known: {sorted(SFT_DATA)}"
                )
        if v.stage == "rl":
            rl_config(ab, v, s, tmp, s.base_seed, _match_placeholder(v))
        elif v.stage == "sft-continue":
            continue_config(ab, v, s, tmp, s.base_seed, tmp, 1, 1)


#: Generation batches per step with dynamic sampling on (measured means: demo 1.6, filter 2.7,
#: reward soft 1.75 / hard 2.3; a collapsing loss run reaches max_num_gen_batches).
DS_GEN_BATCHES = 2.0


def _match_placeholder(v: Variant) -> list[str]:
    """For the estimate: a variant matched to another's samples trains on what that one generated
    per step (16 prompts x the expected generation batches), in 2 mini-batches."""
    prompts = 2 * round(16 * DS_GEN_BATCHES / 2)
    return (
        [f"trainer.train_batch_size={prompts}", f"trainer.ppo_mini_batch_size={prompts // 2}"]
        if v.match
        else []
    )


def _data_overrides(train: Path, val: Path | None) -> list[str]:
    return [
        "data.task=null",
        f"data.train_files=[{train}]",
        f"data.val_files=[{val}]" if val else "data.val_files=[]",
    ]


# ---------------------------------------------------------------------------------------------
# Estimate
# ---------------------------------------------------------------------------------------------


def estimate(ab: Ablation, s: Settings, seen_sft: set[str] | None = None) -> dict[str, float]:
    """Seconds per kind of run and in all, from the configs and ``COST`` (2 idle cores).

    SFT: trained tokens (steps x batch_tokens) plus held-out generation. RL per step: sampled
    tokens (prompts x n x max_new_tokens, with the expected extra generation batches of dynamic
    sampling), update tokens x ppo_epochs, and the validations. Shared SFT stages count once (and
    not at all when their key is in ``seen_sft``: another ablation of ``klear ablate all`` trains them).
    """
    tmp = s.out / "validate"
    per: dict[str, float] = {}
    sft_keys: dict[str, float] = {}
    for v in ab.variants:
        sft_cfg = sft_config(ab, v, s, tmp, s.base_seed)
        key = sft_key(ab, v, s)
        sft_keys[key] = _sft_seconds(sft_cfg) if v.stage != "sft" and key not in (seen_sft or ()) else 0.0
        if v.stage == "sft":
            per[v.name] = _sft_seconds(sft_cfg)
        elif v.stage == "rl":
            per[v.name] = _rl_seconds(rl_config(ab, v, s, tmp, s.base_seed, _match_placeholder(v)))
        else:  # the same wall-clock as the RL run it matches, plus its evaluations
            per[v.name] = per[v.match[0]] if v.match else 0.0  # type: ignore[index]
    if seen_sft is not None:
        seen_sft.update(sft_keys)
    per_seed = sum(per.values()) + sum(sft_keys.values())
    rounds = math.ceil(s.seeds / max(1, min(s.jobs, 2)))  # 2 cores: a 3rd job only shares them
    return {
        **{f"variant:{k}": x for k, x in per.items()},
        "sft": sum(sft_keys.values()),
        "per_seed": per_seed,
        "total": per_seed * rounds,
    }


def _sft_seconds(cfg: SFTConfig) -> float:
    t = cfg.trainer
    steps = t.max_steps or 300
    evals = (steps // t.eval_every if t.eval_every else 0) + (
        1 if cfg.data.val_size or cfg.data.val_files else 0
    )
    val = cfg.data.val_size or 128
    return (
        COST["run_overhead"]
        + steps * t.batch_tokens * (COST["sft_token"] + t.max_length * COST["sft_token_per_length"])
        + evals * val * t.eval_max_new_tokens * COST["gen_token"] / 4
    )


def _rl_seconds(cfg: RLConfig) -> float:
    t, r = cfg.trainer, cfg.rollout
    tokens = r.max_new_tokens * 0.8  # responses stop at EOS a little before the cap
    gen_batches = DS_GEN_BATCHES if cfg.dynamic_sampling.enable else 1.0
    prompts = (t.gen_batch_size or t.train_batch_size) * gen_batches
    step = (
        prompts * r.n * tokens * COST["gen_token"]
        + t.train_batch_size * r.n * tokens * t.ppo_epochs * COST["update_token"]
        + prompts * r.n * _code_tests(cfg) * CODE_DISTINCT * COST["code_test"]
    )
    vals = (t.total_steps // cfg.validation.every + 1) if cfg.validation.every else 0
    # greedy answers to distinct problems: every one is run (validation.n > 1 samples once more)
    per_val = cfg.data.val_size * cfg.validation.n
    val = vals * per_val * (tokens * COST["gen_token"] / 4 + _code_tests(cfg) * COST["code_test"])
    return COST["run_overhead"] + t.total_steps * step + val


def _code_tests(cfg: RLConfig) -> int:
    """Sandbox tests run per response: ``reward.code.max_tests`` on a built-in code task, else 0."""
    from klear.tasks import TASKS

    task = TASKS.get(cfg.data.task or "")
    if getattr(task, "ability", "math") != "code":
        return 0
    return cfg.reward.code.max_tests or 16


# ---------------------------------------------------------------------------------------------
# Running
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def quiet_short_batches() -> Iterator[None]:
    """Without the RL trainer's per-step "only m/n groups with signal" warnings (a collapsing run prints
    one per step, from every worker at once); each run's line reports the mean kept per step instead."""
    from klear.train.rollouts import short_batch_log

    level = short_batch_log.level
    short_batch_log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        short_batch_log.setLevel(level)


def run_seed(ab: Ablation, s: Settings, seed: int, report: Callable[[RunResult], None]) -> list[RunResult]:
    """Every variant of ``ab`` on one seed, in registry order (a matched variant after its reference)."""
    cache = s.sft_cache or (s.out / "sft")
    by_name: dict[str, RunResult] = {}
    with quiet_short_batches():
        for v in ab.variants:
            by_name[v.name] = _run_variant(ab, v, s, seed, cache, by_name)
            report(by_name[v.name])
    return list(by_name.values())


def _run_variant(
    ab: Ablation, v: Variant, s: Settings, seed: int, cache: Path, done: dict[str, RunResult]
) -> RunResult:
    from klear.train.rl import train_rl

    run_dir = s.out / "runs" / _slug(v.name) / f"seed{seed}"
    if v.stage == "sft":
        sft = _sft_stage(ab, v, s, seed, cache, evaluate=True)
        curve = _sft_curve(sft["dir"])
        return RunResult(v.name, seed, curve[-1][1], None, curve, sft["seconds"], str(sft["dir"]))
    sft = _sft_stage(ab, v, s, seed, cache, evaluate=False)
    if v.stage == "sft-continue":
        return _continue_sft(ab, v, s, seed, sft, done[v.match[0]], run_dir)  # type: ignore[index]
    extra: list[str] = []
    if v.match is not None:
        extra = _match_samples(ab, v, s, done[v.match[0]])
    cfg = rl_config(ab, v, s, run_dir, seed, extra)
    init = sft["dir"] / "final"
    finished = finished_rl_run(cfg, run_dir, init)
    if finished is not None:  # an earlier, interrupted `klear ablate` with the same settings ran it
        return rl_result(v.name, seed, finished, sum(h.get("time/step", 0.0) for h in finished), run_dir, cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / INIT_MARKER).write_text(f"{init.resolve()}\n")
    t = time.perf_counter()
    res = train_rl(cfg, init_model=init, resume=False)
    secs = time.perf_counter() - t
    return rl_result(v.name, seed, res.history, secs, run_dir, cfg)


#: file in an RL run's directory naming the SFT checkpoint it started from
INIT_MARKER = "init_model.txt"


def finished_rl_run(cfg: RLConfig, run_dir: Path, init: Path) -> list[dict[str, Any]] | None:
    """The metrics of a completed RL run in ``run_dir`` whose saved config is ``cfg`` and which started
    from the checkpoint ``init``, else None.

    An ablation stopped part-way (Ctrl-C, a deadline) and started again with the same ``--out``
    reuses its finished runs, as it reuses its SFT checkpoints; any difference in the resolved
    config (another regime, more steps) or in the starting checkpoint (an SFT stage keyed
    differently) makes the run count as not done.
    """
    import yaml

    metrics, saved, marker = run_dir / "metrics.jsonl", run_dir / "config.yaml", run_dir / INIT_MARKER
    if not (metrics.is_file() and saved.is_file() and marker.is_file()):
        return None
    if marker.read_text().strip() != str(init.resolve()):
        return None
    try:  # through today's config model: a key added since (with its default) is no difference
        before = type(cfg).model_validate(yaml.safe_load(saved.read_text())).model_dump(mode="json")
    except Exception:
        return None
    if before != cfg.model_dump(mode="json"):
        return None
    rows = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    last = cfg.trainer.total_steps
    if not any(r.get("step") == last and "val/greedy_acc" in r for r in rows):
        return None
    return rows


def rl_result(
    name: str, seed: int, history: list[dict[str, Any]], secs: float, out: Path, cfg: RLConfig
) -> RunResult:
    vals = [(float(h["step"]), float(h["val/greedy_acc"])) for h in history if "val/greedy_acc" in h]
    steps = [h for h in history if "actor/clip_frac_high" in h]
    mean = lambda key: sum(h[key] for h in steps) / len(steps) if steps else 0.0  # noqa: E731
    train = [h for h in history if "batch/generated_groups" in h]
    return RunResult(
        name,
        seed,
        final=vals[-1][1],
        start=vals[0][1],
        curve=vals,
        seconds=secs,
        out_dir=str(out),
        clip_high=mean("actor/clip_frac_high"),
        clip_low=mean("actor/clip_frac_low"),
        generated_samples=int(sum(h["batch/generated_groups"] for h in train) * cfg.rollout.n),
        extra={
            "steps": len(train),
            "kept_groups_mean": sum(h["batch/kept_groups"] for h in train) / max(len(train), 1),
            "groups_per_step": cfg.trainer.train_batch_size,
            "rl_seconds_no_val": sum(h.get("time/step", 0.0) - h.get("time/val", 0.0) for h in train),
        },
    )


def _sft_stage(
    ab: Ablation, v: Variant, s: Settings, seed: int, cache: Path, evaluate: bool
) -> dict[str, Any]:
    """The SFT checkpoint of (v's SFT setting, seed): trained now, or found in ``cache``."""
    from klear.train.sft import run_sft

    where = cache / sft_key(ab, v, s) / f"seed{seed}"
    where.parent.mkdir(parents=True, exist_ok=True)
    with _locked(where.parent / f"seed{seed}.lock"):  # another worker may be training this very stage
        summary = where / "summary.json"
        if summary.is_file() and (where / "final" / "config.json").is_file():
            data = json.loads(summary.read_text())
            return {"dir": where, "seconds": data["seconds"], "steps": data["steps"], "reused": True}
        data_ov: list[str] = []
        if v.sft_data is not None:
            from klear.ablate.sft_data import SFT_DATA

            files = where / "data"
            SFT_DATA[v.sft_data](files, seed)
            data_ov = _data_overrides(files / "train.jsonl", files / "val.jsonl" if evaluate else None)
        if not evaluate:  # the RL stage measures where it starts: a shared checkpoint is not evaluated twice
            data_ov.append("data.val_size=0")
        cfg = sft_config(ab, v, s, where, seed, data_ov)
        res = run_sft(cfg, resume=False)
        return {"dir": where, "seconds": res.seconds, "steps": res.steps, "reused": False}


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (created if needed), released on exit or when the process dies."""
    import fcntl

    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _sft_curve(run_dir: Path) -> list[tuple[float, float]]:
    """(step, val/accuracy) of an SFT run's evaluations, from its metrics.jsonl."""
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    pts = {int(r["step"]): float(r["val/accuracy"]) for r in rows if "val/accuracy" in r}
    if not pts:
        raise AblationError(f"{run_dir}: the SFT run recorded no held-out accuracy (data.val_size = 0?)")
    return sorted(pts.items())


def matched_batch(generated_samples: int, n: int, steps: int, updates: int) -> tuple[int, int]:
    """(train_batch_size, ppo_mini_batch_size) generating ``generated_samples / steps`` responses per step
    in ``updates`` equal mini-batches: the prompts per step rounded to the nearest multiple of ``updates``."""
    per_step = generated_samples / n / steps
    mini = max(1, round(per_step / updates))
    return mini * updates, mini


def _match_samples(ab: Ablation, v: Variant, s: Settings, ref: RunResult) -> list[str]:
    """Step batch of ``v`` such that it generates, per step, what ``ref`` generated (same update count)."""
    ref_cfg = rl_config(ab, ab.variant(ref.variant), s, Path(ref.out_dir), ref.seed)
    updates = math.ceil(ref_cfg.trainer.train_batch_size / ref_cfg.trainer.ppo_mini_batch_size)
    batch, mini = matched_batch(ref.generated_samples, ref_cfg.rollout.n, ref.extra["steps"], updates)  # type: ignore[arg-type]
    return [f"trainer.train_batch_size={batch}", f"trainer.ppo_mini_batch_size={mini}"]


def _continue_sft(
    ab: Ablation, v: Variant, s: Settings, seed: int, sft: dict[str, Any], ref: RunResult, run_dir: Path
) -> RunResult:
    """SFT from the shared checkpoint for the wall-clock time ``ref``'s RL took (without validation)."""
    from klear.train.sft import run_sft

    rate = sft["steps"] / sft["seconds"]  # this seed's SFT steps per second
    budget = ref.extra["rl_seconds_no_val"]
    steps = max(1, round(budget * rate))
    ref_cfg = rl_config(ab, ab.variant(ref.variant), s, Path(ref.out_dir), ref.seed)
    cfg = continue_config(ab, v, s, run_dir, seed, sft["dir"] / "final", steps, ref_cfg.data.val_size)
    res = run_sft(cfg, resume=False)
    curve = [(0.0, ref.start or 0.0)] + [
        (step / steps * ref.extra["steps"], acc) for step, acc in _sft_curve(run_dir)
    ]
    return RunResult(
        v.name,
        seed,
        final=curve[-1][1],
        start=ref.start,
        curve=curve,
        seconds=res.seconds,
        out_dir=str(run_dir),
        extra={"sft_steps": steps, "budget_seconds": budget, "sft_steps_per_s": rate},
    )


def _slug(name: str) -> str:
    out = "".join(c if c.isalnum() else "-" for c in name).strip("-")
    while "--" in out:
        out = out.replace("--", "-")
    return out


def result_dict(r: RunResult) -> dict[str, Any]:
    return {**asdict(r), "gain": r.gain}
