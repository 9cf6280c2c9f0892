"""Lineage bookkeeping: fingerprints of what goes into a stage, hashes of what came out, state files.

A stage is skipped when its fingerprint — a hash of its kind, its full config, the content hashes
of the upstream outputs it reads and of any outside file its config names — equals the one recorded
when it last finished, and its outputs still hash to what was recorded. Output hashes are cached
against a cheap stat signature (names, sizes, mtimes) so unchanged multi-GB checkpoints are not
re-read on every run.

State lives beside the stages, never inside them (a stage may replace its own directory atomically):

    runs/<pipeline>/_pipeline/state/<stage>.json   status, fingerprint, attempts, outputs, summary
    runs/<pipeline>/_pipeline/logs/<stage>.log     the stage's stdout + stderr
    runs/<pipeline>/_pipeline/pipeline.yaml        the resolved pipeline config
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from krllm.errors import DataError
from krllm.runs import hash_path, write_json

BOOK_DIR = "_pipeline"


def book_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / BOOK_DIR


def state_path(run_dir: str | Path, stage: str) -> Path:
    return book_dir(run_dir) / "state" / f"{stage}.json"


def log_path(run_dir: str | Path, stage: str) -> Path:
    return book_dir(run_dir) / "logs" / f"{stage}.log"


def read_state(run_dir: str | Path, stage: str) -> dict | None:
    path = state_path(run_dir, stage)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:  # written atomically, so only a hand edit gets here: treat as absent
        return None


def write_state(run_dir: str | Path, stage: str, state: dict) -> None:
    write_json(state_path(run_dir, stage), state)


def read_all_states(run_dir: str | Path) -> dict[str, dict]:
    out = {}
    for p in sorted((book_dir(run_dir) / "state").glob("*.json")):
        s = read_state(run_dir, p.stem)
        if s is not None:
            out[p.stem] = s
    return out


def _files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return [p for p in sorted(path.rglob("*")) if p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(path).parts)
            and p.relative_to(path).parts[0] != "checkpoints"]


def stat_signature(path: str | Path) -> str:
    """Hash of (relative name, size, mtime_ns) of every file hash_path would read: cheap change check."""
    path = Path(path)
    h = hashlib.sha256()
    for p in _files(path):
        st = p.stat()
        h.update(f"{p.relative_to(path) if path.is_dir() else p.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def output_record(path: str | Path) -> dict:
    path = Path(path)
    if not path.exists():
        return {"path": str(path), "exists": False}
    return {"path": str(path), "exists": True, "sha256": hash_path(path), "stat": stat_signature(path)}


def verify_output(record: dict) -> bool:
    """True when the recorded output is still there with the same content."""
    path = Path(record["path"])
    if not record.get("exists"):
        return not path.exists()
    if not path.exists():
        return False
    if stat_signature(path) == record.get("stat"):
        return True
    return hash_path(path) == record.get("sha256")


def external_inputs(config: Any, run_dir: str | Path) -> dict[str, str]:
    """Content hashes of the outside files a config names: any string value that is an existing
    path outside the pipeline's run directory, and `builtin:` corpus specs (their shipped files).

    Upstream stage outputs are inside the run directory and enter the fingerprint as input hashes.
    """
    run_dir = Path(run_dir).resolve()
    found: dict[str, str] = {}

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for v in node.values():
                walk(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                walk(v)
        elif isinstance(node, str) and node and len(node) < 4096 and "\n" not in node:
            if node.startswith("builtin:"):
                from krllm.data.sets.builtin import builtin_inputs

                try:
                    files = builtin_inputs(node)
                except (ValueError, FileNotFoundError, DataError):
                    return  # the stage reports a bad spec or a failed fetch (or leaves an optional source out)
                h = hashlib.sha256()
                for f in files:
                    h.update(hash_path(f).encode())
                found[node] = h.hexdigest()
                return
            try:
                p = Path(node)
                if not p.exists():
                    return
                resolved = p.resolve()
            except (OSError, ValueError):
                return
            if resolved == run_dir or run_dir in resolved.parents or resolved in run_dir.parents:
                return  # our own outputs (hashed as upstream inputs) or a directory that holds them
            if resolved.is_dir() and resolved in (Path.cwd().resolve(), *Path.cwd().resolve().parents):
                return  # "." or a parent of the working dir is a location, not an input
            found[node] = hash_path(resolved)

    walk(config)
    return found


def canonical(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)


def fingerprint(kind: str, config: dict, inputs: dict[str, str], external: dict[str, str]) -> str:
    """sha256 over the kind, the config, upstream output hashes (role -> hash) and outside files."""
    return hashlib.sha256(canonical({"kind": kind, "config": config, "inputs": inputs,
                                     "external": external}).encode()).hexdigest()


def changed_keys(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted keys whose values differ between two config dicts (for 're-run: config changed (x.y)')."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out.extend(changed_keys(old.get(k), new.get(k), f"{prefix}.{k}" if prefix else str(k)))
        return out
    return [] if canonical(old) == canonical(new) else [prefix or "(config)"]
