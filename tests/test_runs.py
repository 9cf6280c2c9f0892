"""Run-directory helpers: atomic directory replacement and content hashing."""

from pathlib import Path

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


def _mode(path):
    return path.stat().st_mode & 0o777


def test_saved_model_files_get_the_mode_of_a_plain_file(tmp_path):
    """safetensors writes 0600; a serving account must be able to read the weights like config.json."""
    from krllm.model.config import model_config_from
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama

    plain = tmp_path / "plain"
    plain.write_text("x")  # the mode the umask gives an ordinary file
    out = save_hf(Llama(model_config_from("tiny", ["num_hidden_layers=1"], vocab_size=300)), tmp_path / "hf")
    for name in ("model.safetensors", "config.json", "generation_config.json"):
        assert oct(_mode(out / name)) == oct(_mode(plain)), name


def test_atomic_dir_gives_private_temporaries_the_plain_modes(tmp_path):
    import os
    import tempfile

    (tmp_path / "plain").write_text("x")
    (tmp_path / "plain_dir").mkdir()
    final = tmp_path / "out"
    with atomic_dir(final) as d:
        fd, name = tempfile.mkstemp(dir=d)  # 0600
        os.close(fd)
        tempfile.mkdtemp(dir=d, prefix="sub")  # 0700
        (d / "run.sh").write_text("#!/bin/sh\n")
        os.chmod(d / "run.sh", 0o700)
    assert _mode(final / os.path.basename(name)) == _mode(tmp_path / "plain")
    assert _mode(next(final.glob("sub*"))) == _mode(tmp_path / "plain_dir") == _mode(final)
    assert _mode(final / "run.sh") == _mode(tmp_path / "plain") | 0o100  # its execute bit kept


def test_a_killed_build_leaves_nothing_the_next_build_keeps(tmp_path):
    """`kill -9` mid-merge leaves `.<name>.tmp-<pid>-*` (and `.old-*` mid-swap): the next build of that name
    removes those of dead processes and of the old pid-less naming, keeps a live process's build and
    other names' temporaries."""
    import os
    import subprocess
    import sys

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    stale = [tmp_path / f".merged.tmp-{dead}-0123abcd", tmp_path / f".merged.old-{dead}-89abcdef",
             tmp_path / ".merged.tmp-deadbeef"]
    kept = [tmp_path / f".merged.tmp-{os.getpid()}-feedf00d", tmp_path / f".hf.tmp-{dead}-0123abcd"]
    for d in stale + kept:
        d.mkdir()
        (d / "model.safetensors").write_bytes(b"half")
    with atomic_dir(tmp_path / "merged") as out:
        (out / "x").write_text("ok")
    assert (tmp_path / "merged" / "x").read_text() == "ok"
    assert not any(d.exists() for d in stale) and all(d.exists() for d in kept)


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="reads fd paths from /proc (Linux)")
def test_the_swap_flushes_files_and_directories(tmp_path, monkeypatch):
    import os

    from krllm import runs

    synced = []
    real = os.fsync
    monkeypatch.setattr(runs.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd)))
    (tmp_path / "merged").mkdir()  # an old version to replace
    with runs.atomic_dir(tmp_path / "merged") as out:
        (out / "sub").mkdir()
        (out / "sub" / "model.safetensors").write_bytes(b"w")
        build = out
    names = [os.path.basename(p) for p in synced]
    assert "model.safetensors" in names and "sub" in names and build.name in names  # before the rename
    assert synced[-1] == str(tmp_path)  # the parent, after it
