"""Training checkpoints: written atomically, verified before they are trusted.

    checkpoints/step_N/
      model.safetensors   full (unsharded) model weights, HF parameter names
      optimizer.pt        full optimizer state keyed by parameter name (torch.save, weights only)
      trainer_state.json  step, tokens seen, data position, lr, batch geometry
      rng.pt              torch / numpy / python (/ cuda) RNG states of every rank
      config.yaml         resolved run config;  model_config.json: the ModelConfig
      checksums.json      size + sha256 of every file above, written last

The directory is built under a hidden temporary name and renamed into place (`atomic_dir`), so a
`kill -9` leaves at most a hidden `.step_N.tmp-*` directory, which resume removes. A checkpoint
whose checksums file is missing or does not match is reported and skipped, never loaded.
"""

from __future__ import annotations

import json
import random
import re
import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from krllm.config import atomic_write_text
from krllm.errors import KrllmError
from krllm.runs import atomic_dir, hash_file, write_json

STEP_DIR = re.compile(r"^step_(\d+)$")
FILES = ("model.safetensors", "optimizer.pt", "trainer_state.json", "rng.pt", "config.yaml", "model_config.json")


class CheckpointError(KrllmError):
    """A checkpoint directory is incomplete or does not match its checksums."""


# ---------------------------------------------------------------- RNG states

def rng_state() -> dict:
    """This process's RNG states in a form `torch.load(weights_only=True)` accepts."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                       "has_gauss": has_gauss, "gauss": gauss}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_tuples(state["python"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuples(x):
    """torch.save may turn python's nested RNG tuples into lists; random.setstate needs tuples."""
    return tuple(_tuples(v) for v in x) if isinstance(x, (list, tuple)) else x


# ---------------------------------------------------------------- save

def _unshare(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (tied embeddings): copy the repeats."""
    seen, out = set(), {}
    for k, v in state.items():
        v = v.detach()
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape)) if v.device.type != "meta" else None
        out[k] = v.clone().contiguous() if key in seen else v.contiguous()
        seen.add(key)
    return out


def save_checkpoint(root: Path, step: int, *, model_state: dict, optim_state: dict, trainer_state: dict,
                    rng_states: list[dict], config_text: str, model_config: dict, keep_last: int) -> Path:
    """Write `root/step_{step}` atomically, then prune to the newest `keep_last` checkpoints."""
    from safetensors.torch import save_file

    final = Path(root) / f"step_{step}"
    with atomic_dir(final) as tmp:
        save_file(_unshare(model_state), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        torch.save(optim_state, tmp / "optimizer.pt")
        torch.save({"ranks": rng_states}, tmp / "rng.pt")
        write_json(tmp / "trainer_state.json", {**trainer_state, "step": step})
        atomic_write_text(tmp / "config.yaml", config_text)
        write_json(tmp / "model_config.json", model_config)
        sums = {name: {"bytes": (tmp / name).stat().st_size, "sha256": hash_file(tmp / name)} for name in FILES}
        write_json(tmp / "checksums.json", sums)
    prune(root, keep_last)
    return final


def prune(root: Path, keep_last: int) -> list[Path]:
    """Delete all but the newest `keep_last` step directories; returns what was removed."""
    steps = sorted(list_step_dirs(root), key=lambda p: _step_of(p))
    removed = steps[:-keep_last] if keep_last > 0 else []
    for p in removed:
        shutil.rmtree(p, ignore_errors=True)
    return removed


# ---------------------------------------------------------------- find / verify / load

def _step_of(p: Path) -> int:
    return int(STEP_DIR.match(p.name).group(1))


def list_step_dirs(root: Path) -> list[Path]:
    root = Path(root)
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and STEP_DIR.match(p.name)]


def remove_partial(root: Path) -> list[Path]:
    """Hidden temporary directories left by a killed save (never complete by construction)."""
    root = Path(root)
    junk = [p for p in root.glob(".step_*") if p.is_dir()] if root.is_dir() else []
    for p in junk:
        shutil.rmtree(p, ignore_errors=True)
    return junk


def verify(path: Path) -> None:
    """Raise CheckpointError unless every file is present with the recorded size and sha256."""
    path = Path(path)
    sums_path = path / "checksums.json"
    if not sums_path.is_file():
        raise CheckpointError(f"{path}: incomplete checkpoint (no checksums.json)")
    try:
        sums = json.loads(sums_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path}/checksums.json: unreadable ({e})") from None
    for name in FILES:
        f = path / name
        if name not in sums:
            raise CheckpointError(f"{path}: checksums.json has no entry for {name}")
        if not f.is_file():
            raise CheckpointError(f"{path}: missing {name}")
        if f.stat().st_size != sums[name]["bytes"]:
            raise CheckpointError(f"{f}: size {f.stat().st_size} bytes, expected {sums[name]['bytes']} (truncated?)")
        if hash_file(f) != sums[name]["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match checksums.json (corrupted)")


def find_latest(root: Path, report: Callable[[str], None] = print) -> Path | None:
    """Newest checkpoint that verifies; every broken newer one is reported and skipped."""
    for p in sorted(list_step_dirs(root), key=_step_of, reverse=True):
        try:
            verify(p)
        except CheckpointError as e:
            report(f"skipping checkpoint {p.name}: {e}")
            continue
        return p
    return None


def load_checkpoint(path: Path) -> dict:
    """Verified contents of a checkpoint: model/optim state dicts, trainer state, rng, model config."""
    from safetensors.torch import load_file

    path = Path(path)
    verify(path)
    return {
        "path": path,
        "model": load_file(str(path / "model.safetensors")),
        "optim": torch.load(path / "optimizer.pt", map_location="cpu", weights_only=True),
        "rng": torch.load(path / "rng.pt", map_location="cpu", weights_only=True)["ranks"],
        "state": json.loads((path / "trainer_state.json").read_text(encoding="utf-8")),
        "model_config": json.loads((path / "model_config.json").read_text(encoding="utf-8")),
    }
