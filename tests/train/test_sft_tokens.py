"""The SFT token store: rank 0 tokenises once into flat files every rank memory-maps; a resumed run
reads no rows; a key decides when a store can be reused; rank 0's data failure is every rank's."""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch.multiprocessing as mp

from klear.config import DataConfig, SFTConfig, build_config
from klear.models.tiny import build_tokenizer
from klear.rollout.hf import stop_token_ids
from klear.tasks import task_rows
from klear.train import sft_tokens
from klear.train.sft_data import build_examples, iter_examples


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _rows() -> list[dict]:
    return [
        *task_rows("addition", "train", 6),
        {"prompt": "x" * 300, "response": "y"},  # cut before the answer: dropped
        {"prompt": "1+1", "response": "2" * 200},  # truncated, kept
    ]


def test_store_holds_exactly_the_in_memory_examples(tok, tmp_path):
    end = stop_token_ids(tok)
    want, want_stats = build_examples(tok, _rows(), 160, end)
    stats: dict[str, int] = {}
    sft_tokens.build_store(tmp_path / "s", "k", iter_examples(tok, _rows(), 160, end, stats), stats, {"d": 1})
    store = sft_tokens.TokenStore(tmp_path / "s")
    assert len(store) == len(want) == 7
    assert store.stats == want_stats == {"truncated_examples": 2, "dropped_examples": 1}
    for got, ex in zip(store, want, strict=True):
        assert got.input_ids.tolist() == ex.input_ids and got.loss_mask.tolist() == ex.loss_mask
        assert isinstance(got.input_ids, np.memmap)  # a view of the file, not a copy
    assert store.lengths.tolist() == [len(e) for e in want]
    assert store.targets.tolist() == [sum(e.loss_mask[1:]) for e in want]
    assert (tmp_path / "s" / "ids.bin").stat().st_size == 4 * sum(len(e) for e in want)


def test_the_key_follows_everything_that_decides_the_tokens(tok, tmp_path):
    f = tmp_path / "train.jsonl"
    f.write_text(json.dumps({"prompt": "1+1", "response": "2"}) + "\n")
    data = DataConfig(train_files=[str(f)])
    end = stop_token_ids(tok)
    key = sft_tokens.store_key(data, tok, 64, end)
    assert sft_tokens.store_key(DataConfig(train_files=[str(f)]), build_tokenizer(), 64, end) == key
    assert sft_tokens.store_key(data, tok, 65, end) != key
    assert sft_tokens.store_key(data, tok, 64, [*end, 7]) != key
    other = build_tokenizer()
    other.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    assert sft_tokens.store_key(data, other, 64, end) != key
    task = DataConfig(task="addition", train_size=8)
    assert sft_tokens.store_key(task, tok, 64, end) != sft_tokens.store_key(
        DataConfig(task="addition", train_size=9), tok, 64, end
    )

    root = tmp_path / "tokens"
    stats: dict[str, int] = {}
    rows = [{"prompt": "1+1", "response": "2"}]
    fp = sft_tokens.data_fingerprint(data)
    sft_tokens.build_store(root, key, iter_examples(tok, rows, 64, end, stats), stats, fp)
    assert sft_tokens.current(root, key) and sft_tokens.covers(root, data)
    assert not sft_tokens.current(root, "another key")
    f.write_text(json.dumps({"prompt": "1+1", "response": "22"}) + "\n")  # the file changed
    assert not sft_tokens.covers(root, data)
    assert sft_tokens.store_key(data, tok, 64, end) != key
    (root / "meta.json").unlink()  # a build that never finished is never used
    assert not sft_tokens.current(root, key) and not sft_tokens.covers(root, data)


def _cfg(out: Path, train_file: Path | None = None, steps: int = 1) -> SFTConfig:
    data = {"train_files": [str(train_file)]} if train_file else {"task": "addition", "train_size": 16}
    return build_config(
        SFTConfig,
        {
            "run": {"out_dir": str(out), "seed": 0},
            "model": {"tiny": True, "dtype": "float32"},
            "data": {**data, "val_size": 0},
            "optim": {"lr": 1e-3},
            "trainer": {
                "max_steps": steps,
                "max_length": 160,
                "batch_tokens": 600,
                "micro_batch_tokens": 300,
                "save_every": 1,
                "num_threads": 1,
            },
            "logging": {"progress": False},
        },
    )


@pytest.mark.slow
def test_a_resumed_run_reads_no_rows_and_tokenises_nothing(tmp_path, monkeypatch):
    from klear.train import sft

    first = sft.run_sft(_cfg(tmp_path / "run", steps=1))
    assert (tmp_path / "run" / "tokens" / "meta.json").is_file()
    examples = json.loads((tmp_path / "run" / "tokens" / "meta.json").read_text())["examples"]
    assert examples == 16 and first.steps == 1

    def refuse(*a, **k):
        raise AssertionError("a resumed run read or tokenised the training rows")

    real_load = sft.load_rows
    monkeypatch.setattr(
        sft, "load_rows", lambda d, split: refuse() if split == "train" else real_load(d, split)
    )
    monkeypatch.setattr(sft_tokens, "build_store", refuse)
    again = sft.run_sft(_cfg(tmp_path / "run", steps=2))  # resumes from step 1, trains step 2
    assert again.steps == 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, out: str, bad: str, port: int, report: str) -> None:
    os.environ.update(
        {"RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1"}
    )
    os.environ["MASTER_PORT"] = str(port)
    from klear.train.sft import run_sft

    try:
        run_sft(_cfg(Path(out), Path(bad)))
    except Exception as exc:  # what each rank raised, for the test to read
        Path(report, f"rank{rank}").write_text(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_rank_0s_bad_file_is_every_ranks_error_and_nothing_is_written(tmp_path):
    bad = tmp_path / "train.jsonl"
    bad.write_text('{"prompt": "1+1", "response": "2"}\n{not json\n')
    report = tmp_path / "report"
    report.mkdir()
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [
        ctx.Process(target=_rank_main, args=(r, str(tmp_path / "out"), str(bad), port, str(report)))
        for r in range(2)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0, "a rank hung or died instead of raising"
    for r in range(2):  # rank 1 never read the file, yet raises rank 0's error, naming file and line
        msg = (report / f"rank{r}").read_text()
        assert msg.startswith("DataError") and "train.jsonl" in msg and "line 2" in msg
    assert not (tmp_path / "out").exists()
