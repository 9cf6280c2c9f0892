"""Run-directory helpers: atomic directory replacement and content hashing."""

import pytest

from krllm.runs import atomic_dir, hash_path


def test_atomic_dir_replaces_whole_directory(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        (d / "a.txt").write_text("old")
    with atomic_dir(final) as d:
        (d / "b.txt").write_text("new")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no temp leftovers


def test_atomic_dir_keeps_old_output_on_failure(tmp_path):
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        (d / "a.txt").write_text("good")
    with pytest.raises(RuntimeError):
        with atomic_dir(final) as d:
            (d / "a.txt").write_text("half")
            raise RuntimeError("crash mid-write")
    assert (final / "a.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_hash_path_depends_on_content_and_names(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        (d / "x.txt").write_text("same")
    assert hash_path(a) == hash_path(b)
    (b / "x.txt").write_text("diff")
    assert hash_path(a) != hash_path(b)
    (b / "x.txt").write_text("same")
    (b / ".tmp-ignored").write_text("scratch")
    assert hash_path(a) == hash_path(b)


def test_atomic_write_text_makes_ordinary_readable_files(tmp_path):
    from krllm.config import atomic_write_text

    p = tmp_path / "sub" / "f.txt"
    atomic_write_text(p, "안녕")
    assert p.read_text(encoding="utf-8") == "안녕"
    assert p.stat().st_mode & 0o044 == 0o044  # group/other can read, as with open(..., "w")
