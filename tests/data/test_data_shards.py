"""Shards and outputs: a failed run leaves no partial file; a damaged shard is recomputed, not trusted."""

from __future__ import annotations

import pytest

from klear.data.schema import DataError
from klear.data.shards import AtomicOutputs, ShardStats, run_sharded, shard_seed

from .conftest import read_jsonl


def test_outputs_appear_only_on_success(tmp_path):
    kept, dropped, held = tmp_path / "k.jsonl", tmp_path / "d.jsonl", tmp_path / "h.parquet"
    kept.write_text('{"old": 1}\n')
    with pytest.raises(RuntimeError), AtomicOutputs({"kept": kept, "dropped": dropped, "held": held}) as out:
        out.write("kept", {"new": 1})
        out.write("dropped", {"new": 2})
        raise RuntimeError("killed mid-run")
    assert read_jsonl(kept) == [{"old": 1}] and not dropped.exists() and not held.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.jsonl"]  # no temp files left
    with AtomicOutputs({"kept": kept, "dropped": dropped, "none": None}) as out:
        out.write_all([("kept", {"a": 1}), ("dropped", {"b": 2}), ("none", {"c": 3}), ("kept", {"d": 4})])
    assert read_jsonl(kept) == [{"a": 1}, {"d": 4}] and read_jsonl(dropped) == [{"b": 2}]
    assert out.counts == {"kept": 2, "dropped": 1}
    with pytest.raises(DataError, match="unsupported output type"), AtomicOutputs({"x": tmp_path / "x.txt"}):
        pass


def test_damaged_shard_is_recomputed(tmp_path):
    calls: list[int] = []

    def process(chunk, index):
        calls.append(index)
        return [("out", {"v": v, "seed": shard_seed(7, index)}) for v in chunk]

    def run():
        stats = ShardStats()
        out = [
            r
            for s in run_sharded(range(5), process, work_dir=tmp_path, params=1, shard_size=2, stats=stats)
            for r in s
        ]
        return out, stats

    first, stats = run()
    assert calls == [0, 1, 2] and stats.computed == 3 and stats.counts == {"out": 5}
    shard = tmp_path / "shard-00001.jsonl"
    shard.write_text(shard.read_text().splitlines()[0] + "\n")  # header kept, rows lost
    calls.clear()
    again, stats = run()
    assert calls == [1] and again == first and (stats.computed, stats.reused) == (1, 2)
    assert shard_seed(7, 1) == shard_seed(7, 1) != shard_seed(7, 2)
