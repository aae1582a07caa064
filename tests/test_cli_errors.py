"""The CLI's error boundary: ordinary mistakes give one `klear: error:` line naming the file, line,
field or key, exit code 2, no traceback, and nothing written; internal errors exit 1 with a hint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from klear.cli import main

ROOT = Path(__file__).resolve().parent.parent
DEMO_RL = str(ROOT / "recipes" / "demo.yaml")
DEMO_SFT = str(ROOT / "recipes" / "demo-sft.yaml")


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    """A directory of bad inputs: one per way a user gets a file wrong."""
    (tmp_path / "malformed.jsonl").write_text('{"prompt": "1+1?"\n')
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9"}\n')
    (tmp_path / "notrl.jsonl").write_text(json.dumps({"data_source": "d", "prompt": "x"}) + "\n")
    (tmp_path / "afile").write_text("not a directory\n")
    rl = {"data_source": "d", "prompt": "1+1?", "reward_model": {"ground_truth": "2"}}
    (tmp_path / "rl.jsonl").write_text(json.dumps(rl) + "\n")
    (tmp_path / "nomodel").mkdir()
    (tmp_path / "badmodel").mkdir()
    (tmp_path / "badmodel" / "config.json").write_text('{"hidden_size": 8}')
    (tmp_path / "tinymodel").mkdir()
    (tmp_path / "tinymodel" / "config.json").write_text('{"model_type": "qwen3"}')
    return tmp_path


TRAIN = [
    # (argv with {d} for the inputs directory, text the message must contain)
    (
        "rl {rl} data.task=null data.train_files=[{d}/missing.jsonl]",
        "data.train_files: {d}/missing.jsonl: file not found",
    ),
    (
        "rl {rl} data.task=null data.train_files=[{d}/malformed.jsonl]",
        "{d}/malformed.jsonl: line 1: invalid JSON",
    ),
    ("rl {rl} data.task=null data.train_files=[{d}/empty.jsonl]", "{d}/empty.jsonl: no rows"),
    (
        "rl {rl} data.task=null data.train_files=[{d}/latin1.jsonl]",
        "{d}/latin1.jsonl: line 1: not UTF-8 text",
    ),
    (
        "rl {rl} data.task=null data.train_files=[{d}/notrl.jsonl]",
        "{d}/notrl.jsonl: line 1: field 'reward_model'",
    ),
    ("rl {rl} data.task=null data.train_files=[{d}]", "{d}: is a directory"),
    ("rl {rl} model.path={d}/nomodel", "model.path: '{d}/nomodel' has no config.json"),
    ("rl {rl} model.path={d}/badmodel", "no 'model_type'"),
    ("rl {rl} model.path={d}/missing", "model.path: '{d}/missing' not found"),
    (
        "sft {sft} data.task=null data.train_files=[{d}/malformed.jsonl]",
        "{d}/malformed.jsonl: line 1: invalid JSON",
    ),
    ("sft {sft} data.task=null data.train_files=[{d}/missing.jsonl]", "file not found"),
    ("sft {sft} model.path={d}/nomodel", "has no config.json"),
    ("demo --rl loss.type=gpo", "unknown LOSSES entry 'gpo'"),
    ("demo --sft optim.lr=-1", "optim.lr"),
    ("demo --compare --seeds 0", "--seeds 0: paired intervals need at least 2 seeds"),
    ("ablate loss --seeds 1", "--seeds 1: paired intervals need at least 2 seeds"),
    ("ablate nope", "unknown ablation 'nope'"),
    ("ablate loss --rl loss.type=gpo", "unknown LOSSES entry 'gpo'"),
    (
        "eval run --model {d}/nomodel --benchmark aime24 --n 1 --max-new-tokens 4",
        "--model: '{d}/nomodel' has no config.json",
    ),
    (
        "data filter-math {d}/rl.jsonl --kept {d}/k.jsonl --dropped {d}/dd.jsonl --model {d}/nomodel",
        "--model: '{d}/nomodel' has no config.json",
    ),
    (
        "eval run --model {d}/tinymodel --benchmark aime24 --n 1 --max-new-tokens 4 --device cuda",
        "--device cuda: no CUDA GPU is visible",
    ),
    (
        "eval run --model {d}/nomodel --benchmark aime24 --n 1 --max-new-tokens 4 --temperature -1",
        "--temperature -1.0: must be >= 0",
    ),
    (
        "eval run --model {d}/nomodel --benchmark aime24 --n 0 --max-new-tokens 4",
        "n = 0: need at least one sample",
    ),
]


@pytest.mark.parametrize(
    "argv, needle", TRAIN, ids=[t[0].split(" {")[0] + f"-{i}" for i, t in enumerate(TRAIN)]
)
def test_bad_input_is_one_line_rc2_and_nothing_written(inputs, capsys, monkeypatch, argv, needle):
    if "--device cuda" in argv:
        import torch

        if torch.cuda.is_available():
            pytest.skip("a GPU is visible here")
    monkeypatch.chdir(inputs)
    out = inputs / "out"
    fill = {"d": str(inputs), "rl": DEMO_RL, "sft": DEMO_SFT}
    args = argv.format(**fill).split()
    if args[0] in ("rl", "sft"):
        args.append(f"run.out_dir={out}")
    elif args[0] in ("demo", "eval", "ablate"):
        args += ["--out", str(out)]
    before = sorted(p.name for p in inputs.iterdir())
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("klear: error: ") and needle.format(**fill) in err, err
    assert "Traceback" not in err
    assert sorted(p.name for p in inputs.iterdir()) == before  # no OUT, no run.json, no init/


def test_out_dir_that_is_a_file_is_refused(inputs, capsys):
    assert main(["rl", DEMO_RL, f"run.out_dir={inputs / 'afile'}"]) == 2
    assert f"run.out_dir: '{inputs / 'afile'}' is an existing file" in capsys.readouterr().err
    assert main(["sft", DEMO_SFT, f"run.out_dir={inputs / 'afile' / 'sub'}"]) == 2
    assert "is a file, not a directory" in capsys.readouterr().err


def test_internal_error_is_exit_1_with_a_debug_hint(monkeypatch, capsys):
    import klear.cli.config

    def boom(args):
        raise RuntimeError("a bug")

    monkeypatch.setattr(klear.cli.config, "run", boom)
    assert main(["config", DEMO_RL]) == 1
    err = capsys.readouterr().err
    assert "klear: internal error: RuntimeError: a bug" in err and "--debug" in err and "Traceback" not in err
    with pytest.raises(RuntimeError, match="a bug"):
        main(["--debug", "config", DEMO_RL])


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    """A scheduler's SIGTERM: the message, exit 143, and the command's own cleanup (a finally) runs."""
    script = tmp_path / "slow.py"
    marker = tmp_path / "cleaned"
    script.write_text(
        "import time, sys\n"
        "import klear.cli.config as c\n"
        "from klear.cli import main\n"
        "def slow(args):\n"
        "    try:\n"
        "        print('ready', flush=True); time.sleep(60)\n"
        "    finally:\n"
        f"        open({str(marker)!r}, 'w').close()\n"
        "c.run = slow\n"
        f"sys.exit(main(['config', {DEMO_RL!r}]))\n"
    )
    proc = subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert proc.stdout.readline().strip() == "ready"
        t0 = time.monotonic()
        os.kill(proc.pid, signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 143 and "terminated (SIGTERM)" in err and marker.exists()
    assert time.monotonic() - t0 < 5


ROW = {
    "data_source": "x",
    "ability": "math",
    "prompt": [{"role": "user", "content": "1+1?"}],
    "reward_model": {"ground_truth": "2"},
    "response": "<think>a</think>\\boxed{2}",
}


@pytest.mark.parametrize(
    "output, extra, needle",
    [
        ("in.jsonl", [], "named as both input and output; writing would replace the input"),
        ("adir", [], "is a directory"),
        ("old.jsonl", [], "already exists; pass --force"),
    ],
)
def test_reward_score_refuses_unsafe_outputs_before_scoring(tmp_path, capsys, output, extra, needle):
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROW) + "\n")
    (tmp_path / "adir").mkdir()
    (tmp_path / "old.jsonl").write_text("keep me\n")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    assert main(["reward", "score", "--input", str(src), "--output", str(tmp_path / output), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("klear: error: ") and needle in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_reward_score_empty_input_is_an_error_and_force_replaces(tmp_path, capsys):
    (tmp_path / "empty.jsonl").write_text("\n")
    assert (
        main(
            [
                "reward",
                "score",
                "--input",
                str(tmp_path / "empty.jsonl"),
                "--output",
                str(tmp_path / "o.jsonl"),
            ]
        )
        == 2
    )
    assert "no rows to score" in capsys.readouterr().err and not (tmp_path / "o.jsonl").exists()
    src = tmp_path / "in.jsonl"
    src.write_text(json.dumps(ROW) + "\n")
    (tmp_path / "o.jsonl").write_text("old\n")
    args = ["reward", "score", "--input", str(src), "--output", str(tmp_path / "o.jsonl"), "--force"]
    assert main([*args, "reward.num_workers=1"]) == 0
    assert json.loads((tmp_path / "o.jsonl").read_text())["reward"]["correct"] is True


def test_eval_score_does_not_replace_earlier_outputs_without_force(tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "summary.json").write_text("{}\n")
    gens = tmp_path / "g.jsonl"
    gens.write_text('{"index": 0, "response": "x"}\n')
    argv = [
        "eval",
        "score",
        "--benchmark",
        "aime24",
        "--generations",
        str(gens),
        "--out",
        str(out),
        "--limit",
        "1",
    ]
    assert main(argv) == 2
    assert (
        "earlier run; pass --force" in capsys.readouterr().err
        and (out / "summary.json").read_text() == "{}\n"
    )
    assert main([*argv, "--force", "reward.num_workers=1"]) == 0
    assert json.loads((out / "summary.json").read_text())["n_problems"] == 1


def test_eval_inputs_that_are_not_utf8_or_not_parquet_name_the_file(tmp_path, capsys):
    bench = tmp_path / "latin1.jsonl"
    bench.write_bytes(b'{"question": "1+1?", "answer": "2"}\n{"question": "caf\xe9", "answer": "1"}\n')
    gens = tmp_path / "g.jsonl"
    gens.write_text('{"index": 0, "response": "x"}\n')
    argv = ["eval", "score", "--generations", str(gens), "--out", str(tmp_path / "o")]
    assert main([*argv, "--benchmark", str(bench)]) == 2
    assert f"{bench}:2: not UTF-8 text" in capsys.readouterr().err
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(b"PAR1 not parquet PAR1")
    assert main([*argv, "--benchmark", str(bad)]) == 2
    assert "not a readable parquet file" in capsys.readouterr().err
    ok = tmp_path / "ok.jsonl"
    ok.write_text('{"question": "1+1?", "answer": "2"}\n')
    gens.write_bytes(b'{"index": 0, "response": "caf\xe9"}\n')
    assert main([*argv, "--benchmark", str(ok)]) == 2
    err = capsys.readouterr().err
    assert f"{gens}:1: not UTF-8 text" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()
