"""Atomic writes: the old file or the whole new one, never half, and no temp files left behind."""

import pytest

from klear.io import atomic_open, atomic_path, write_atomic


def test_write_and_replace(tmp_path):
    target = tmp_path / "sub" / "out.txt"
    write_atomic(target, "one\n")
    write_atomic(target, ["two\n", "three\n"])
    assert target.read_text() == "two\nthree\n"
    assert [p.name for p in target.parent.iterdir()] == ["out.txt"]


def test_failure_keeps_the_old_file_and_no_temp(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old\n")
    with pytest.raises(RuntimeError), atomic_open(target) as f:
        f.write("half of the new")
        raise RuntimeError("killed mid-write")
    with pytest.raises(RuntimeError), atomic_path(tmp_path / "t.parquet") as tmp:
        tmp.write_bytes(b"partial")
        raise RuntimeError("writer failed")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
