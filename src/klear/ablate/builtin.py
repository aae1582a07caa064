"""The shipped ablations, sized so that all of them finish within about 45 minutes on 2 idle cores.

Each entry is the paper's claim with the smallest setting in which it can show: the RL ones start
from the demo's SFT stage (``recipes/demo-sft.yaml``, stopped early on purpose so RL has room;
``reward`` from the code task's, ``recipes/demo-code-sft.yaml``),
the SFT ones train the tiny model from scratch on synthetic traces (:mod:`klear.ablate.sft_data`).
The measured tables and the regime search behind ``LOSS_REGIME`` are in docs/ablations.md.
"""

from __future__ import annotations

from klear.ablate.registry import Ablation, Claim, Variant, register

#: Off-policy updates in which clipping is active (>= 2% of response tokens clipped on average):
#: chosen by measurement, the same for every loss variant (docs/ablations.md, "regime search").
LOSS_REGIME = (
    "rollout.temperature=1.0",  # the paper's rollout temperature (the demo samples at 0.6)
    "trainer.ppo_epochs=4",
    "trainer.ppo_mini_batch_size=2",
    "optim.lr=1e-4",
)

#: The RL ablations' common sizing: fewer steps than the demo's 24, held-out set of 128.
RL_SHORT = ("trainer.total_steps=12", "validation.every=4")
#: The reward ablation on the code task: its responses are ~140 tokens (addition's ~60) and the
#: sandboxed tests were half of a step, so a third of the demo's 24 steps (both rewards gained 2-9
#: points in 8 steps on seeds 0 and 1: recipes/demo-code.yaml), scored on 8 of each problem's 16 hidden
#: tests (a seeded sample per problem, the same for every response and for validation: the
#: reference samples tests too). With all 16 the ablation took 20.8 of `klear ablate all`'s 53.8 min;
#: with 8 its RL runs take about half as long (docs/ablations.md).
CODE_SHORT = ("trainer.total_steps=8", "validation.every=4", "reward.code.max_tests=8")
#: The loss ablation's steps cost 4 PPO epochs each: 6 of them (clipping is highest early on).
LOSS_STEPS = ("trainer.total_steps=6", "validation.every=2")

register(
    Ablation(
        name="loss",
        claim=(
            "GPPO (clipped tokens keep a bounded gradient) beats PPO with clip-higher and CISPO "
            "(AIME24 ~0.81 vs ~0.78 / ~0.80)"
        ),
        baseline="ppo (clip-higher)",
        variants=(
            Variant("ppo (clip-higher)", rl=("loss.type=ppo",)),
            Variant("gppo", rl=("loss.type=gppo",)),
            Variant("ce-gppo (beta_low 0.5)", rl=("loss.type=gppo", "loss.beta_low=0.5")),
            Variant("cispo", rl=("loss.type=cispo",)),
        ),
        claims=(
            Claim("GPPO beats PPO clip-higher", better="gppo", worse="ppo (clip-higher)"),
            Claim("GPPO beats CISPO", better="gppo", worse="cispo"),
        ),
        rl=(*LOSS_STEPS, *LOSS_REGIME),
        notes=(
            "Regime: rollout temperature 1.0 (the paper's), ppo_epochs 4 over mini-batches of 2 prompts "
            "(32 optimizer steps per RL step) at lr 1e-4, so that the ratio leaves the clip range on a few "
            "percent of the tokens; in the demo's on-policy regime almost nothing is clipped and the four "
            "losses compute the same gradient. "
            "The search behind it is in docs/ablations.md."
        ),
    )
)

register(
    Ablation(
        name="filter",
        claim="dropping prompt groups with zero advantage variance (dynamic sampling) helps RL",
        baseline="dynamic sampling off",
        variants=(
            Variant("dynamic sampling on", rl=("dynamic_sampling.enable=true",)),
            Variant(
                "dynamic sampling off",
                rl=("dynamic_sampling.enable=false",),
                match=("dynamic sampling on", "samples"),
            ),
        ),
        claims=(
            Claim("filtering beats no filtering", better="dynamic sampling on", worse="dynamic sampling off"),
        ),
        rl=RL_SHORT,
        notes=(
            "Equal generation budget: per seed, 'off' trains on as many prompts per step as 'on' "
            "generated per step on average (on keeps 16 groups with signal out of all it sampled), "
            "with the same number of optimizer steps per RL step; the table's 'samples generated' shows the match."
        ),
    )
)

register(
    Ablation(
        name="rl-vs-sft",
        claim="RL from the SFT checkpoint gains more than continuing SFT for the same compute",
        baseline="sft continued",
        variants=(
            Variant("rl (gppo)"),
            Variant(
                "sft continued",
                stage="sft-continue",
                match=("rl (gppo)", "seconds"),
                sft=(
                    "optim.lr=1.5e-3",  # where the SFT stage stopped (3e-3 x min_lr_ratio 0.5) ...
                    "optim.schedule=cosine",  # ... annealed on, as a finished SFT run would be
                    "optim.min_lr_ratio=0.1",
                    "optim.warmup_steps=0",
                    "data.train_size=27000",  # mostly problems the SFT stage has not seen
                ),
            ),
        ),
        claims=(Claim("RL beats more SFT at equal wall-clock", better="rl (gppo)", worse="sft continued"),),
        notes=(
            "RL runs the demo's 24 steps; 'sft continued' trains from the same checkpoint for the seconds "
            "that RL run took (validation excluded), at the SFT step rate measured on that seed. The SFT "
            "stage is stopped early on purpose (recipes/demo-sft.yaml): a fully annealed SFT model left RL "
            "+4 to +10 points."
        ),
    )
)

#: The SFT ablations train from scratch on synthetic traces: a fixed step budget (the demo's SFT
#: needs ~275 steps to pass its phase change), held-out accuracy at the end and twice on the way.
SFT_FROM_SCRATCH = (
    "trainer.max_steps=300",
    "trainer.epochs=20",  # small selections repeat; every variant trains exactly max_steps
    "trainer.eval_every=100",
    "trainer.eval_batch_size=128",
)

register(
    Ablation(
        name="sft-sources",
        claim="SFT on the top 1-2 highest-quality sources beats SFT on all sources",
        baseline="all sources",
        variants=(
            Variant("top-1 source", stage="sft", sft_data="sources:top-1"),
            Variant("top-2 sources", stage="sft", sft_data="sources:top-2"),
            Variant("all sources", stage="sft", sft_data="sources:all"),
        ),
        claims=(
            Claim("top-1 beats all sources", better="top-1 source", worse="all sources"),
            Claim("top-2 beats all sources", better="top-2 sources", worse="all sources"),
        ),
        sft=SFT_FROM_SCRATCH,
        metric_label="held-out greedy accuracy after SFT",
        notes=(
            "Four synthetic sources of 2,000 distinct problems each whose traces carry an injected slip "
            "(one wrong column sum) on 0 / 10 / 30 / 60% of the rows; quality = measured fraction of "
            "verified traces; selection by klear.data.sft_select (top-k sources, exact duplicates). "
            "Every variant trains 300 steps, so top-1 repeats its 2,000 rows and 'all' sees 8,000 once."
        ),
    )
)

register(
    Ablation(
        name="sft-correctness",
        claim="filtering incorrect SFT traces helps on easy problems and hurts on hard ones",
        baseline="easy: only correct",
        variants=(
            Variant("easy: only correct", stage="sft", sft_data="correctness:easy:only-correct"),
            Variant("easy: mixed", stage="sft", sft_data="correctness:easy:mixed"),
            Variant("hard: only correct", stage="sft", sft_data="correctness:hard:only-correct"),
            Variant("hard: mixed", stage="sft", sft_data="correctness:hard:mixed"),
        ),
        claims=(
            Claim(
                "easy problems: only-correct beats mixed", better="easy: only correct", worse="easy: mixed"
            ),
            Claim(
                "hard problems: mixed beats only-correct", better="hard: mixed", worse="hard: only correct"
            ),
        ),
        sft=SFT_FROM_SCRATCH,
        metric_label="held-out greedy accuracy after SFT",
        notes=(
            "2,500 problems per difficulty, one teacher trace each: easy = 2+2 digits, the teacher slips on "
            "15%; hard = 3+3 digits, it slips on 50% (hard problems are those a strong model often fails). "
            "'only correct' keeps the traces that verify (fewer rows, repeated more), 'mixed' keeps all; "
            "each is evaluated on held-out problems of its own difficulty, so compare within a difficulty."
        ),
    )
)

register(
    Ablation(
        name="reward",
        claim=(
            "a soft code reward (fraction of tests passed) beats a hard one (all tests or nothing) "
            "(LiveCodeBench 61.0 vs 59.2)"
        ),
        baseline="hard (all tests)",
        variants=(
            Variant("soft (pass rate)", rl=("reward.code.mode=soft",)),
            Variant("hard (all tests)", rl=("reward.code.mode=hard",)),
        ),
        claims=(Claim("soft beats hard", better="soft (pass rate)", worse="hard (all tests)"),),
        rl=CODE_SHORT,
        rl_recipe="demo-code.yaml",
        sft_recipe="demo-code-sft.yaml",
        metric_label="held-out greedy accuracy (all 8 selected hidden tests pass)",
        notes=(
            "The built-in code task (code-fn: a two-piece linear function from 8 shown pairs, 16 hidden "
            "stdin tests, 8 per piece), programs run in the sandbox by the real code reward on 8 of the 16 "
            "(a seeded sample per problem, the same for every response, in training and validation). Both variants "
            "keep the demo recipe's dynamic sampling on the reward (hard: a group of all-failing programs "
            "has no signal and is dropped; soft: it has signal when the programs pass different numbers of "
            "tests), so hard generates more batches per step; the metric is the same for both. The SFT "
            "stage stops mid phase change (300 steps, ~15-30% held-out): from a 250-step model (~3-13%), "
            "whose errors are systematic, RL gained nothing on either reward (recipes/demo-code*.yaml)."
        ),
    )
)
