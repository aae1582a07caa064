"""Recipes parse; bad configs fail at load with messages naming key, value and what is allowed."""

from pathlib import Path

import pytest
import yaml

from klear.config import (
    ConfigError,
    LossConfig,
    RLConfig,
    apply_overrides,
    load_config,
    load_recipe,
    read_yaml,
    save_config,
)

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "recipes" / "demo.yaml")
RECIPES = sorted((ROOT / "recipes").glob("*.yaml"))


def test_there_are_recipes():
    names = {p.name for p in RECIPES}
    assert {"demo.yaml", "klear-8b-math-rl.yaml", "klear-8b-code-rl.yaml"} <= names


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda p: p.name)
def test_every_shipped_recipe_parses(recipe):
    cfg = load_recipe(recipe)
    assert cfg.kind == yaml.safe_load(recipe.read_text()).get("kind", "rl")


def test_paper_settings_in_8b_recipes():
    math = load_recipe(ROOT / "recipes/klear-8b-math-rl.yaml")
    code = load_recipe(ROOT / "recipes/klear-8b-code-rl.yaml")
    assert (math.optim.lr, code.optim.lr) == (1e-6, 5e-7)
    assert (math.trainer.ppo_mini_batch_size, code.trainer.ppo_mini_batch_size) == (16, 32)
    for cfg in (math, code):
        assert (cfg.loss.type, cfg.loss.eps_low, cfg.loss.eps_high, cfg.loss.sft_alpha) == (
            "gppo",
            0.2,
            0.28,
            0.1,
        )
        assert (cfg.trainer.train_batch_size, cfg.rollout.n, cfg.rollout.max_new_tokens) == (128, 8, 32768)
        assert cfg.rollout.temperature == 1.0 and cfg.dynamic_sampling.enable


def test_defaults_match_the_paper():
    cfg = LossConfig()
    assert (cfg.type, cfg.eps_low, cfg.eps_high, cfg.clip_ratio_c) == ("gppo", 0.2, 0.28, 10.0)
    assert (cfg.beta_low, cfg.beta_high, cfg.only_high, cfg.agg) == (1.0, 1.0, False, "token-mean")


def test_dotted_overrides():
    cfg = load_config(RLConfig, DEMO, ["loss.type=cispo", "loss.eps_high=0.3", "loss.clip_ratio_c=null"])
    assert (cfg.loss.type, cfg.loss.eps_high, cfg.loss.clip_ratio_c) == ("cispo", 0.3, None)
    cfg = load_config(RLConfig, None, ["data.train_files=[a.jsonl, b.jsonl]", "run.name=x y"])
    assert cfg.data.train_files == ["a.jsonl", "b.jsonl"] and cfg.run.name == "x y"


def _error(overrides, recipe=DEMO) -> str:
    with pytest.raises(ConfigError) as exc:
        load_config(RLConfig, recipe, overrides)
    return str(exc.value)


def test_unknown_key_names_key_and_suggests():
    msg = _error(["loss.tpye=cispo"])
    assert "loss.tpye: unknown key (did you mean 'type'?)" in msg
    assert "allowed here: type, eps_low, eps_high" in msg
    assert DEMO in msg


def test_unknown_section():
    assert "lossy: unknown key (did you mean 'loss'?)" in _error(["lossy.type=ppo"])


def test_wrong_type_names_key_and_value():
    msg = _error(["loss.eps_high=abc"])
    assert 'loss.eps_high = "abc"' in msg and "valid number" in msg


def test_unknown_loss_lists_registry():
    msg = _error(["loss.type=grpo"])
    assert 'loss.type = "grpo"' in msg and "allowed: cispo, gppo, gspo, ppo" in msg


def test_out_of_range():
    assert "loss.eps_low = 1.5" in _error(["loss.eps_low=1.5"])


@pytest.mark.parametrize(
    ("overrides", "needle"),
    [
        (["loss.type=ppo", "loss.beta_low=0.5"], "only allowed with loss.type=gppo"),
        (
            ["loss.type=cispo", "loss.only_high=true"],
            "loss.only_high = true: only allowed with loss.type=gppo",
        ),
        (["loss.clip_ratio_c=0.9"], "loss.clip_ratio_c = 0.9: must be > 1.0"),
        (["loss.type=gspo"], "set loss.agg=seq-mean-token-mean"),
        (["trainer.train_batch_size=10", "trainer.ppo_mini_batch_size=4"], "must be a multiple of"),
        (["model.tiny=false"], "set model.path"),
        (["loss.agg=mean"], "'token-mean', 'seq-mean-token-mean'"),
    ],
)
def test_invalid_combinations(overrides, needle):
    assert needle in _error(overrides)


def test_override_syntax_errors():
    with pytest.raises(ConfigError, match=r"expected key\.path=value"):
        apply_overrides({}, ["loss.type"])
    with pytest.raises(ConfigError, match="'type' is a value"):
        apply_overrides({"loss": {"type": "ppo"}}, ["loss.type.x=1"])
    with pytest.raises(ConfigError, match="empty key segment"):
        apply_overrides({}, ["loss..type=1"])


def test_recipe_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_recipe(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_recipe(lst)
    kind = tmp_path / "kind.yaml"
    kind.write_text("kind: dpo\n")
    with pytest.raises(ConfigError, match="kind = 'dpo'"):
        load_recipe(kind)


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(RLConfig, DEMO, ["loss.type=cispo"])
    path = save_config(cfg, tmp_path / "run")
    assert path.name == "config.yaml" and not list((tmp_path / "run").glob(".config.yaml.*"))
    again = load_config(RLConfig, path)
    assert again == cfg


def test_dotted_path_must_import_at_load():
    assert "cannot import it" in _error(["loss.type=nowhere.module:fn"])
    cfg = load_config(RLConfig, DEMO, ["loss.type=tests.algo.custom_loss:constant_loss"])
    assert cfg.loss.type == "tests.algo.custom_loss:constant_loss"


def test_a_recipe_that_is_not_utf8_is_a_config_error(tmp_path):
    recipe = tmp_path / "latin1.yaml"
    recipe.write_bytes(b"kind: rl\nrun:\n  name: caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(recipe)


def test_async_rollouts_must_be_a_count_of_versions():
    assert load_config(RLConfig, DEMO, ["trainer.async_rollouts=1"]).trainer.async_rollouts == 1
    assert load_config(RLConfig, DEMO).trainer.async_rollouts == 0  # synchronous unless asked
    assert "trainer.async_rollouts" in _error(["trainer.async_rollouts=-1"])
    assert "trainer.async_rollouts" in _error(["trainer.async_rollouts=one"])
