"""The ablations ``klear ablate NAME`` knows: one :class:`Ablation` per entry of ``ABLATIONS``.

An entry is plain data (no code runs until ``klear ablate`` does)::

    register(Ablation(
        name="loss",                                   # the CLI name
        claim="GPPO beats clip-higher PPO and CISPO",  # the paper's claim, one line
        baseline="ppo (clip-higher)",                  # every variant's paired difference is to this one
        variants=(
            Variant("ppo (clip-higher)", rl=("loss.type=ppo",)),
            Variant("gppo", rl=("loss.type=gppo",)),
        ),
        claims=(Claim("GPPO beats clip-higher", better="gppo", worse="ppo (clip-higher)"),),
        rl=("trainer.total_steps=12", ...),            # overrides of the RL recipe for every variant
        sft=(...),                                     # overrides of the SFT recipe for every variant
        rl_recipe="demo.yaml", sft_recipe="demo-sft.yaml",  # shipped recipes (recipes/) the runs start from
        seeds=5,                                       # default seed count (>= 5)
    ))

A :class:`Variant` says how its runs differ from the ablation's common settings:

- ``rl`` / ``sft``: dotted overrides of the RL / SFT recipe (after the ablation's own);
- ``sft_data``: a key of ``SFT_DATA`` (:mod:`klear.ablate.sft_data`): the SFT stage trains on the
  rows that builder writes for the seed instead of the task's worked solutions;
- ``stage``: ``"rl"`` (SFT, then RL from its checkpoint: the result is RL's held-out greedy
  accuracy), ``"sft"`` (the SFT stage alone: its held-out accuracy), or ``"sft-continue"`` (SFT,
  then SFT again from that checkpoint: the RL variant's alternative use of the same compute);
- ``match``: ``(variant, "samples")`` -- an ``rl`` variant whose step batch is sized, per seed, so
  that it generates as many samples as the named variant did (dynamic sampling off vs on);
  ``(variant, "seconds")`` -- an ``sft-continue`` variant that trains for the wall-clock seconds
  the named variant's RL stage took on the same seed, at the seed's measured SFT step rate.

Variants whose SFT stage is the same (same overrides, same data) share one SFT checkpoint per seed
(:mod:`klear.ablate.runner`); seed k of every variant uses ``run.seed = base + k`` in both stages.
A :class:`Claim` is judged from the paired interval of ``better - worse``
(:func:`klear.ablate.stats.verdict`).

Adding an ablation: call :func:`register` in :mod:`klear.ablate.builtin` (or in a module that
``builtin`` imports), give it its own recipes with ``rl_recipe`` / ``sft_recipe`` when it does not
run on the demo task, keep every variant's settings equal except what the claim is about, and size
it so that ``klear ablate --list`` shows its estimate within the 45-minute budget of all of them.
``tests/ablate/test_ablate_registry.py`` then builds every config it will run.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from klear.errors import KlearError

Stage = Literal["rl", "sft", "sft-continue"]


class AblationError(KlearError, ValueError):
    """An unknown ablation, a malformed registry entry or a bad setting of ``klear ablate``."""


@dataclass(frozen=True)
class Variant:
    """One arm of an ablation (see the module docstring for each field)."""

    name: str
    rl: tuple[str, ...] = ()
    sft: tuple[str, ...] = ()
    sft_data: str | None = None
    stage: Stage = "rl"
    match: tuple[str, Literal["samples", "seconds"]] | None = None


@dataclass(frozen=True)
class Claim:
    """One checkable statement: ``better``'s final held-out accuracy exceeds ``worse``'s."""

    text: str
    better: str
    worse: str


@dataclass(frozen=True)
class Ablation:
    """A paper claim, its variants, and the settings sized for a laptop (see the module docstring)."""

    name: str
    claim: str
    baseline: str
    variants: tuple[Variant, ...]
    claims: tuple[Claim, ...]
    rl: tuple[str, ...] = ()
    sft: tuple[str, ...] = ()
    rl_recipe: str = "demo.yaml"  # a file name in the shipped recipes/ directory (or an absolute path)
    sft_recipe: str = "demo-sft.yaml"
    # >= 5 (paired intervals); `klear ablate all` queues seeds across ablations, so 5 cost 5/6 of 6
    seeds: int = 5
    notes: str = ""  # why the sizes are what they are: printed in ablation.md
    metric_label: str = "held-out greedy accuracy"

    def variant(self, name: str) -> Variant:
        for v in self.variants:
            if v.name == name:
                return v
        raise AblationError(f"ablation {self.name!r} has no variant {name!r}")


ABLATIONS: dict[str, Ablation] = {}


def register(ab: Ablation) -> Ablation:
    """Add ``ab`` to ``ABLATIONS`` after checking that its names refer to each other consistently."""
    names = [v.name for v in ab.variants]
    if len(set(names)) != len(names):
        raise AblationError(f"ablation {ab.name!r}: duplicate variant names in {names}")
    if ab.baseline not in names:
        raise AblationError(f"ablation {ab.name!r}: baseline {ab.baseline!r} is not one of {names}")
    if ab.seeds < 2:
        raise AblationError(f"ablation {ab.name!r}: seeds = {ab.seeds}; paired intervals need >= 2")
    for c in ab.claims:
        for side in (c.better, c.worse):
            if side not in names:
                raise AblationError(f"ablation {ab.name!r}: claim {c.text!r} names unknown variant {side!r}")
    for i, v in enumerate(ab.variants):
        if v.match is not None:
            ref, kind = v.match
            if ref not in names[:i]:
                raise AblationError(
                    f"ablation {ab.name!r}: variant {v.name!r} matches {ref!r}, which must come before it"
                )
            want = "rl" if kind == "samples" else "sft-continue"
            if v.stage != want or ab.variant(ref).stage != "rl":
                raise AblationError(
                    f"ablation {ab.name!r}: match {kind!r} needs a {want!r} variant against an 'rl' one"
                )
        elif v.stage == "sft-continue":
            raise AblationError(
                f"ablation {ab.name!r}: sft-continue variant {v.name!r} needs match=(rl, 'seconds')"
            )
    if ab.name in ABLATIONS:
        raise AblationError(f"ablation {ab.name!r} is registered twice")
    ABLATIONS[ab.name] = ab
    return ab


def get_ablation(name: str) -> Ablation:
    """The registered ablation ``name``, or an AblationError listing the choices."""
    _load_builtin()
    if name not in ABLATIONS:
        raise AblationError(f"unknown ablation {name!r}; choose from: {', '.join(ABLATIONS)} (or 'all')")
    return ABLATIONS[name]


def all_ablations() -> list[Ablation]:
    _load_builtin()
    return list(ABLATIONS.values())


def _load_builtin() -> None:
    import klear.ablate.builtin  # noqa: F401  (registers the shipped ablations on import)
