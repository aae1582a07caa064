"""The ablation registry: every shipped entry validates as configs; malformed entries are refused."""

import json

import pytest

from klear.ablate import (
    ABLATIONS,
    Ablation,
    AblationError,
    Claim,
    Variant,
    all_ablations,
    get_ablation,
    register,
)
from klear.ablate.runner import Settings, estimate, rl_config, sft_key, validate
from klear.ablate.sft_data import SFT_DATA, build_correctness, build_sources, slipped_steps


def test_every_shipped_ablation_validates_and_has_five_seeds(tmp_path):
    names = [ab.name for ab in all_ablations()]
    for want in ("loss", "filter", "rl-vs-sft", "sft-sources", "sft-correctness", "reward"):
        assert want in names
    for ab in all_ablations():
        assert ab.seeds >= 5 and ab.claims and ab.claim
        s = Settings(out=tmp_path / ab.name, seeds=ab.seeds)
        validate(ab, s)  # builds every SFT / RL config the ablation will run
        for v in ab.variants:
            assert v.sft_data is None or v.sft_data in SFT_DATA
        assert estimate(ab, s)["total"] > 0


#: `klear ablate all` at the defaults (5 seeds, --jobs 2, one queue), one idle invocation on the
#: 2-core machine, 2026-12-03 16:39-17:15 (docs/ablations.md): 36.5 min in all. Per ablation, the
#: mean seconds of one seed: its runs plus the SFT stages it trained (shared ones count for the first
#: ablation that needs them).
RECORDED_SEED_SECONDS = {
    "loss": 134,
    "filter": 71,
    "rl-vs-sft": 96,
    "sft-sources": 119,
    "sft-correctness": 155,
    "reward": 246,
}
RECORDED_TOTAL_MINUTES = 36.5


def test_estimates_match_the_recorded_run(tmp_path):
    """The printed estimate is the measured cost: resize an ablation, and re-record its time."""
    from klear.ablate.schedule import estimate_all

    items = [(ab, Settings(out=tmp_path / ab.name, seeds=ab.seeds, jobs=2)) for ab in all_ablations()]
    seen: set[str] = set()
    for ab, s in items:
        per_seed = estimate(ab, s, seen)["per_seed"]
        assert per_seed == pytest.approx(RECORDED_SEED_SECONDS[ab.name], rel=0.25), ab.name
    assert estimate_all(items) / 60 == pytest.approx(RECORDED_TOTAL_MINUTES, rel=0.1)
    assert estimate_all(items) / 60 <= 45  # the budget for all six


def test_loss_variants_differ_only_in_the_loss(tmp_path):
    ab = get_ablation("loss")
    s = Settings(out=tmp_path, seeds=5)
    cfgs = {v.name: rl_config(ab, v, s, tmp_path, 0) for v in ab.variants}
    assert {c.loss.type for c in cfgs.values()} == {"ppo", "gppo", "cispo"}
    assert cfgs["ce-gppo (beta_low 0.5)"].loss.beta_low == 0.5 and cfgs["gppo"].loss.beta_low == 1.0
    assert cfgs["ppo (clip-higher)"].loss.eps_high == 0.28
    # a collapsed run (no group with signal) is a result: it runs to its last step instead of raising
    assert all(c.trainer.max_idle_steps == 0 for c in cfgs.values())
    dumps = []
    for c in cfgs.values():  # the regime (epochs, mini-batch, lr, steps) is the same for every variant
        d = c.model_dump(mode="json")
        d.pop("loss")
        dumps.append(json.dumps(d, sort_keys=True))
    assert len(set(dumps)) == 1
    assert cfgs["gppo"].trainer.ppo_epochs > 1
    # one SFT checkpoint per seed shared by all four
    assert len({sft_key(ab, v, s) for v in ab.variants}) == 1


def test_reward_variants_differ_only_in_the_code_reward_mode(tmp_path):
    ab = get_ablation("reward")
    s = Settings(out=tmp_path, seeds=5)
    cfgs = {v.name: rl_config(ab, v, s, tmp_path, 0) for v in ab.variants}
    assert {n: c.reward.code.mode for n, c in cfgs.items()} == {
        "soft (pass rate)": "soft",
        "hard (all tests)": "hard",
    }
    for c in cfgs.values():  # the code task, judged by the code reward on 8 of its 16 tests
        assert c.data.task == "code-fn" and c.reward.code.max_tests == 8
    dumps = []
    for c in cfgs.values():
        d = c.model_dump(mode="json")
        d["reward"]["code"].pop("mode")
        dumps.append(json.dumps(d, sort_keys=True))
    assert len(set(dumps)) == 1
    assert len({sft_key(ab, v, s) for v in ab.variants}) == 1  # one SFT checkpoint per seed, on code-fn
    # ... and not the addition demo's: `klear ablate all` once started the code RL runs from the addition
    # SFT checkpoint (both stages have no overrides; the key left out the recipe), and every run scored 0
    loss = get_ablation("loss")
    assert sft_key(ab, ab.variants[0], s) != sft_key(loss, loss.variants[0], s)
    assert {sft_key(a, a.variants[0], s) for a in map(get_ablation, ("loss", "filter", "rl-vs-sft"))} == {
        sft_key(loss, loss.variants[0], s)
    }  # the three ablations on the demo's SFT stage still share it


def test_unknown_ablation_lists_the_choices():
    with pytest.raises(AblationError, match=r"unknown ablation .nope.*loss"):
        get_ablation("nope")


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"baseline": "c"}, "baseline 'c'"),
        ({"claims": (Claim("x", better="a", worse="zz"),)}, "unknown variant 'zz'"),
        ({"variants": (Variant("a"), Variant("a"))}, "duplicate"),
        ({"seeds": 1}, "seeds = 1"),
        ({"variants": (Variant("a", match=("b", "samples")), Variant("b"))}, "must come before"),
        ({"variants": (Variant("a"), Variant("b", stage="sft-continue"))}, "needs match"),
        ({"variants": (Variant("a"), Variant("b", match=("a", "seconds")))}, "match 'seconds'"),
    ],
)
def test_register_refuses_malformed_entries(kwargs, match):
    entry = {
        "name": "t-bad",
        "claim": "c",
        "baseline": "a",
        "variants": (Variant("a"), Variant("b")),
        "claims": (Claim("b beats a", better="b", worse="a"),),
    }
    entry.update(kwargs)
    with pytest.raises(AblationError, match=match):
        register(Ablation(**entry))
    assert "t-bad" not in ABLATIONS


def test_a_slipped_trace_is_wrong_from_the_slipped_column_on():
    # 482 + 9135: column 1 is 8+3+0=11; slipped +1 -> 12, so the tens digit reads 2 and the answer 9627
    steps, answer = slipped_steps(482, 9135, 1, 1)
    assert steps == [
        "482+9135",
        "48+913|2+5+0=7|7",
        "4+91|8+3+0=12|27",
        "0+9|4+1+1=6|627",
        "0+0|0+9+0=9|9627",
    ]
    assert answer == "9627"
    # a -1 slip on a zero sum turns into +1 (a sum never goes negative)
    assert slipped_steps(10, 10, 0, -1)[0][1] == "1+1|0+0+0=1|1"


def test_sources_are_graded_and_selection_keeps_the_best(tmp_path):
    infos = {k: build_sources(tmp_path / str(k), 0, k) for k in (1, 2, 4)}
    q = infos[4]["quality"]
    assert q["source-a"] == 1.0 and q["source-a"] > q["source-b"] > q["source-c"] > q["source-d"]
    assert (infos[1]["rows"], infos[1]["wrong"]) == (2000, 0)
    assert infos[2]["rows"] == 4000 and 0 < infos[2]["wrong"] < infos[4]["wrong"]
    rows = [json.loads(x) for x in (tmp_path / "2" / "train.jsonl").read_text().splitlines()]
    assert {r["source"] for r in rows} == {"source-a", "source-b"}
    val = [json.loads(x) for x in (tmp_path / "2" / "val.jsonl").read_text().splitlines()]
    assert len(val) == 128 and all("reward_model" in r for r in val)
    assert not {r["messages"][0]["content"] for r in rows} & {r["prompt"][0]["content"] for r in val}


def test_correctness_only_correct_drops_the_wrong_traces(tmp_path):
    only = build_correctness(tmp_path / "a", 0, "hard", True)
    mixed = build_correctness(tmp_path / "b", 0, "hard", False)
    assert only["wrong"] == 0 and mixed["rows"] == 2500
    assert 0.4 < mixed["wrong"] / mixed["rows"] < 0.6  # the hard teacher slips on half
    assert only["rows"] == mixed["rows"] - mixed["wrong"]


def test_a_finished_run_is_reused_only_with_the_same_config(tmp_path):
    import yaml

    from klear.ablate.runner import finished_rl_run

    ab = get_ablation("filter")
    cfg = rl_config(ab, ab.variants[0], Settings(out=tmp_path, seeds=2), tmp_path, 0)
    last = cfg.trainer.total_steps
    (tmp_path / "metrics.jsonl").write_text(
        json.dumps({"step": 0, "val/greedy_acc": 0.25})
        + "\n"
        + json.dumps({"step": last, "val/greedy_acc": 0.5})
        + "\n"
    )
    saved = cfg.model_dump(mode="json")
    del saved["trainer"]["max_idle_steps"]  # a key added after the run was made, at its default
    saved["trainer"]["max_idle_steps"] = 0  # (here: the value the ablation sets)
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    init = tmp_path / "sft" / "final"
    assert finished_rl_run(cfg, tmp_path, init) is None  # no record of where it started: run again
    (tmp_path / "init_model.txt").write_text(f"{(tmp_path / 'other-sft' / 'final').resolve()}\n")
    assert finished_rl_run(cfg, tmp_path, init) is None  # started from another SFT checkpoint
    (tmp_path / "init_model.txt").write_text(f"{init.resolve()}\n")
    assert [r["step"] for r in finished_rl_run(cfg, tmp_path, init)] == [0, last]
    del saved["dynamic_sampling"]["std_eps"]  # missing key: today's default fills it in -> same config
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert finished_rl_run(cfg, tmp_path, init) is not None
    saved["optim"]["lr"] = 1e-3  # another setting: run again
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    assert finished_rl_run(cfg, tmp_path, init) is None
    saved["optim"]["lr"] = cfg.optim.lr
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(saved))
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 0, "val/greedy_acc": 0.25}) + "\n")
    assert finished_rl_run(cfg, tmp_path, init) is None  # interrupted before its last step


def test_the_matched_batch_is_a_whole_number_of_equal_mini_batches():
    from klear.ablate.runner import matched_batch

    # 'on' generated 43 prompts x 8 per step on average over 12 steps, in 2 mini-batches per step:
    # 43 rounds to 44 = 2 x 22 (43 = 2 x 22 - 1 is no valid config: 43 is not a multiple of 22)
    assert matched_batch(43 * 8 * 12, n=8, steps=12, updates=2) == (44, 22)
    assert matched_batch(41 * 8 * 12, n=8, steps=12, updates=2) == (40, 20)  # 20.5 rounds to even 20
    assert matched_batch(16 * 8 * 12, n=8, steps=12, updates=2) == (16, 8)
    assert matched_batch(3, n=8, steps=12, updates=2) == (2, 1)  # never an empty batch
    for generated in range(150, 5000, 37):  # from 1.56 prompts per step
        batch, mini = matched_batch(generated, n=8, steps=12, updates=3)
        assert batch == 3 * mini and abs(batch - generated / 96) <= 1.5 + 1e-9
