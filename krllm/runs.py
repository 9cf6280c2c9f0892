"""Run directories: where each stage writes, atomically, with its resolved config and lineage.

Layout of a run directory (each stage fills in its part):

    runs/<name>/
      config.yaml        resolved config of the stage (defaults filled in)
      lineage.json       what went in: content hashes of data, tokenizer, base model; krllm version
      metrics.jsonl      one JSON object per logged step (see krllm.tracking)
      checkpoints/       step_N/ (pretraining / fine-tuning state)
      hf/                final model as a Hugging Face directory
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import json
import os
import re
import shutil
import time
import uuid
from pathlib import Path
from typing import Iterator

from krllm.config import UMASK, atomic_write_text


@contextlib.contextmanager
def atomic_dir(final: str | Path, overwrite: bool = True) -> Iterator[Path]:
    """Build a directory under a temporary name, then rename it into place.

    Readers see either the previous complete directory or the new complete one, never a
    half-written mix. On error the temporary directory is removed and `final` is untouched; what a
    killed process left behind (`.<name>.tmp-<pid>-*`, `.<name>.old-<pid>-*`) goes on the next build.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(final)
    tmp = final.parent / f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if final.exists() and not overwrite:
        shutil.rmtree(tmp, ignore_errors=True)
        raise FileExistsError(f"{final} already exists")
    replace_dir(tmp, final)


def replace_dir(build: Path, final: Path) -> None:
    """Swap a finished `build` directory into place at `final`, replacing any previous one.

    The old directory is first renamed aside, so at no moment does `final` hold a mix of both. The
    build's files and directories are flushed to disk before the rename and the parent after it, so
    a power cut cannot leave `final` pointing at files the disk never got.
    """
    share_modes(build)
    _fsync_tree(build)
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(build, final)
        _fsync_dir(final.parent)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(build, final)
        _fsync_dir(final.parent)


_TEMPORARY = re.compile(r"\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)-)?[0-9a-f]{8}")


def remove_stale_temporaries(final: Path) -> list[Path]:
    """Delete `.<final name>.tmp-*` / `.old-*` directories beside `final` whose process is gone (or that
    predate the pid in the name) -> what was removed. A live process's build is left alone."""
    removed = []
    for p in final.parent.glob(f".{glob.escape(final.name)}.*-*"):
        m = _TEMPORARY.fullmatch(p.name)
        if not m or m["name"] != final.name or not p.is_dir():
            continue
        if m["pid"] is not None and _alive(int(m["pid"])):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """fsync every file under `root`, then every directory (deepest first)."""
    dirs = [root]
    for p in root.rglob("*"):
        if p.is_symlink():
            continue
        if p.is_dir():
            dirs.append(p)
        else:
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    for d in sorted(dirs, key=lambda d: len(d.parts), reverse=True):
        _fsync_dir(d)


def share_modes(root: Path) -> None:
    """Give everything under `root` the mode a plain open() / mkdir() gives (0666 / 0777 minus the umask;
    execute bits of files kept). safetensors and tempfile.mkstemp create files 0600, which a serving
    account cannot read while the rest of the directory is 0644."""
    for p in (root, *root.rglob("*")):
        if p.is_symlink():
            continue
        mode = p.stat().st_mode & 0o777
        want = (0o777 if p.is_dir() else 0o666 | (mode & 0o111)) & ~UMASK
        if mode != want:
            os.chmod(p, want)


def cache_root() -> Path:
    """Where krllm keeps what it can rebuild (compiled kernels, parsed corpora): $KRLLM_CACHE (or its older
    name $KRLLM_CACHE_DIR), else $XDG_CACHE_HOME/krllm, else ~/.cache/krllm."""
    root = os.environ.get("KRLLM_CACHE") or os.environ.get("KRLLM_CACHE_DIR")
    if root:
        return Path(root).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "krllm"


def hash_file(path: str | Path, algo: str = "sha256", chunk: int = 1 << 20) -> str:
    h = hashlib.new(algo)
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def hash_path(path: str | Path, exclude: tuple[str, ...] = ("checkpoints",)) -> str:
    """Content hash of a file or a directory tree (relative names + file contents).

    Used for lineage: the same tokenizer or data directory hashes the same on any machine.
    Hidden files (temporary build dirs) and `exclude`d top-level names are skipped.
    """
    path = Path(path)
    if path.is_file():
        return hash_file(path)
    h = hashlib.sha256()
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path)
        if any(part.startswith(".") for part in rel.parts) or rel.parts[0] in exclude:
            continue
        if p.is_file():
            h.update(str(rel.as_posix()).encode())
            h.update(hash_file(p).encode())
    return h.hexdigest()


def read_json_object(path: str | Path) -> dict:
    """A JSON file that must hold an object (config.json, adapter_config.json, ...); errors name the file
    and line. A missing file raises FileNotFoundError for the caller to explain."""
    from krllm.errors import KrllmError

    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise KrllmError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from None
    except UnicodeDecodeError as e:
        raise KrllmError(f"{path}: not UTF-8 text ({e.reason})") from None
    if not isinstance(data, dict):
        raise KrllmError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def write_json(path: str | Path, obj) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False) + "\n")


def write_lineage(run_dir: str | Path, inputs: dict[str, str | Path | None], extra: dict | None = None) -> dict:
    """Record what made this run: `inputs` maps a role (data, tokenizer, base_model) to a path."""
    from krllm import __version__

    record = {
        "krllm_version": __version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "inputs": {
            role: {"path": str(p), "sha256": hash_path(p)} if p and Path(p).exists() else {"path": str(p) if p else None}
            for role, p in inputs.items()
        },
    }
    if extra:
        record.update(extra)
    write_json(Path(run_dir) / "lineage.json", record)
    return record
