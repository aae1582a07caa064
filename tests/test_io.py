"""Atomic writes: the old file or the whole new one, never half, and no temp files left behind."""

import os

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


def test_atomic_write_keeps_the_umask_mode_and_a_replaced_files_mode(tmp_path):
    old = os.umask(0o022)
    try:
        fresh = tmp_path / "fresh.txt"
        write_atomic(fresh, "x\n")
        assert fresh.stat().st_mode & 0o777 == 0o644
        with atomic_path(tmp_path / "t.parquet") as tmp:
            tmp.write_text("p")
        assert (tmp_path / "t.parquet").stat().st_mode & 0o777 == 0o644
        os.umask(0o077)
        shared = tmp_path / "shared.txt"
        shared.write_text("old\n")
        shared.chmod(0o664)
        write_atomic(shared, "new\n")
        assert shared.stat().st_mode & 0o777 == 0o664
        write_atomic(tmp_path / "private.txt", "y\n")
        assert (tmp_path / "private.txt").stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_check_outputs_refuses_what_would_destroy_something(tmp_path):
    from klear.errors import OutputError
    from klear.io import check_outputs

    src = tmp_path / "in.jsonl"
    src.write_text("x\n")
    (tmp_path / "d").mkdir()
    for paths, inputs, needle in [
        ([src], [src], "named as both input and output"),
        ([tmp_path / "d"], [], "is a directory"),
        ([tmp_path / "a", tmp_path / "a"], [], "named for two outputs"),
        ([src], [], "already exists; pass --force"),
    ]:
        with pytest.raises(OutputError, match=needle):
            check_outputs(paths, inputs)
    check_outputs([src, None, tmp_path / "new"], [], force=True)  # replacing on purpose is allowed
