"""Hermetic inputs for the pretraining tests: a tiny Korean BPE trained here, and token shards in
the `krllm data prepare` format (manifest + .ds + .ds.index), written directly so each test needs
no datatrove run. `TokenShards` (the real reader) validates them when the loop opens them.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml

from krllm.data.sets.builtin import builtin_documents

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 176,
              "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 128}


def _synthetic_docs(n: int, vocab: int, seed: int = 0) -> list[list[int]]:
    """Documents of Zipf-distributed ids with a repeated motif: learnable, independent of any tokenizer."""
    rng = np.random.default_rng(seed)
    docs = []
    for _ in range(n):
        body = np.minimum(rng.zipf(1.3, size=int(rng.integers(20, 80))) + 3, vocab - 1).tolist()
        docs.append(body[:5] + [7, 8, 9] + body[5:])
    return docs


def make_shards(root: Path, vocab_size: int = 400, synthetic: bool = False) -> Path:
    """Tokenizer + shards of builtin:ko-law paragraphs (every 10th paragraph goes to val).

    synthetic=True: the same tokenizer, but seeded random token documents, so pinned numbers
    (golden losses) do not move when the tokenizer trainer changes.
    """
    from tokenizers import Tokenizer

    from krllm.runs import hash_file
    from krllm.tokenizer.train import train_tokenizer

    texts = [t for _, t in builtin_documents("builtin:ko-law")]
    tok_dir = root / "tok"
    train_tokenizer(tok_dir, texts=texts, vocab_size=vocab_size, progress=False)
    tok = Tokenizer.from_file(str(tok_dir / "tokenizer.json"))
    paragraphs = [p.strip() for t in texts for p in t.split("\n\n") if len(p.strip()) > 20]
    if synthetic:
        paragraphs = _synthetic_docs(700, vocab_size)
    out = root / "shards"
    splits = {}
    for split, docs in (("train", [p for i, p in enumerate(paragraphs) if i % 10]),
                        ("val", paragraphs[::10]), ("test", [])):
        (out / split).mkdir(parents=True)
        ids = [d + [0] for d in docs] if synthetic else [tok.encode(d).ids + [0] for d in docs]
        flat = np.array([t for d in ids for t in d], dtype=np.uint16)
        ends = np.cumsum([len(d) for d in ids]).astype(np.uint64)
        files = []
        if len(flat):
            flat.tofile(out / split / "00000.ds")
            ends.tofile(out / split / "00000.ds.index")
            files = [{"path": f"{split}/00000.ds", "tokens": int(len(flat)), "documents": len(ids)}]
        splits[split] = {"tokens": int(len(flat)), "documents": len(ids), "files": files}
    file = tok_dir / "tokenizer.json"
    manifest = {"format": "krllm.token_shards", "version": 1, "dtype": "uint16",
                "tokenizer": {"path": str(file.resolve()), "sha256": hash_file(file),
                              "vocab_size": max(vocab_size, tok.get_vocab_size(with_added_tokens=True)),
                              "eos_token": "<|endoftext|>", "eos_id": 0},
                "splits": splits, "sources": [{"name": "builtin:ko-law"}]}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    return out


def tiny_config(path: Path, shards: Path, run_dir: Path, name: str = "run", **sections) -> Path:
    """A complete pretrain YAML for a ~60K-parameter model; `sections` update keys per section."""
    cfg = {
        "data": {"shards": str(shards), "seq_len": 32},
        "model": {"preset": "tiny", "overrides": dict(TINY_MODEL)},
        "train": {"batch_size": 4, "max_steps": 3, "lr": 3e-3, "min_lr": 3e-4, "warmup_steps": 2,
                  "dtype": "fp32", "seed": 1234},
        "eval": {"eval_interval": 0, "eval_batches": 2},
        "sample": {"sample_interval": 0, "prompts": ["대한민국은"], "max_new_tokens": 4},
        "checkpoint": {"save_interval": 0, "keep_last": 10},
        "log": {"log_interval": 1, "tensorboard": False, "peak_tflops": 1.0},
        # one thread: same arithmetic in-process and in subprocesses, and no stalls on a busy machine
        "run": {"name": name, "out_dir": str(run_dir), "device": "cpu", "threads": 1},
    }
    for section, values in sections.items():
        cfg[section].update(values)
    path.write_text(yaml.safe_dump(cfg, allow_unicode=True), encoding="utf-8")
    return path


def train_losses(run: Path) -> dict[int, float]:
    """step -> training loss from metrics.jsonl (the last record per step wins)."""
    from krllm.tracking import read_metrics

    return {r["step"]: r["loss"] for r in read_metrics(run) if r["split"] == "train" and "loss" in r}


def krllm_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "krllm", *args]


def subprocess_env(**extra: str) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "KRLLM_DEBUG": "", **extra}
    env.pop("KRLLM_DEBUG")
    return env


def run_krllm(*args: str, env_extra: dict | None = None, timeout: float = 240) -> subprocess.CompletedProcess:
    return subprocess.run(krllm_cmd(*args), cwd=REPO, env=subprocess_env(**(env_extra or {})),
                          capture_output=True, text=True, timeout=timeout)
