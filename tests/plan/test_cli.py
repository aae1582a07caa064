"""``klear plan``: exit status 0 fits / 1 does not fit / 2 bad input, table and JSON output."""

from __future__ import annotations

import json

from klear.cli import main

MATH = "recipes/klear-8b-math-rl.yaml"


def test_fits_prints_the_table(capsys):
    assert main(["plan", MATH, "--arch", "qwen3-8b"]) == 0
    out = capsys.readouterr().out
    for text in ("learner, per GPU", "AdamW state", "ckpt on", "LM-head logits", "KV cache", "weight sync",
                 "verdict: FITS"):  # fmt: skip
        assert text in out, text


def test_does_not_fit_exits_1_and_says_why(capsys):
    assert main(["plan", MATH, "--arch", "qwen3-8b", "--gpu-memory-gb", "16"]) == 1
    out = capsys.readouterr().out
    assert "verdict: DOES NOT FIT" in out and "learner:" in out


def test_json_output(capsys):
    assert main(["plan", MATH, "--arch", "qwen3-8b", "--nodes", "32", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["fits"] is True and p["cluster"]["nodes"] == 32
    assert p["learner"]["memory"]["total"] < p["learner"]["budget"]


def test_input_errors_exit_2_with_one_line(capsys, tmp_path):
    cases = [
        (["plan", str(tmp_path / "nope.yaml"), "--arch", "qwen3-8b"], "not found"),
        (["plan", MATH, "trainer.micro_batch_tokns=5", "--arch", "qwen3-8b"], "micro_batch_tokns"),
        (["plan", MATH], "model.path"),  # /path/to/... has no config.json
        (["plan", MATH, "--arch", "llama-99b"], "--arch"),
        (["plan", MATH, "--arch", "qwen3-8b", "--gpus-per-node", "0"], "--gpus-per-node"),
    ]
    for argv, needle in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err
        assert err.startswith("klear: error:") and needle in err, (argv, err)


def test_shape_from_model_path_and_tiny_model(capsys, tmp_path):
    cfg = {"hidden_size": 1024, "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8,
           "head_dim": 128, "intermediate_size": 3072, "vocab_size": 151936, "tie_word_embeddings": True}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    assert main(["plan", MATH, f"model.path={tmp_path}", "--json"]) == 0
    p = json.loads(capsys.readouterr().out)
    assert p["model"]["source"] == str(tmp_path / "config.json") and p["model"]["layers"] == 28
    assert main(["plan", "recipes/demo.yaml"]) == 0
    assert "model.tiny" in capsys.readouterr().out
