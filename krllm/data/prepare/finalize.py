"""Last stage of `krllm data prepare`: number the shard files, write manifest.json, publish.

It runs as a one-task datatrove stage, so a Slurm/Ray run ends with the same manifest and the
same atomic swap into place as a local run. The removal summary is read back from the per-task
datatrove stats (`logs/<stage>/stats/NNNNN.json`), the token and document counts from the shard
files themselves (and cross-checked against the tokenizer step's stats).
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import yaml
from datatrove.pipeline.base import PipelineStep

from krllm.data.prepare.textclean import SPLITS
from krllm.errors import DataError
from krllm.runs import replace_dir, write_json

# removal reasons in pipeline order, with how the summary names them
REMOVAL_LABELS = {
    "bad_records": "malformed records (skipped)",
    "empty": "empty after cleaning",
    "too_short": "too short (< min_chars)",
    "too_long": "too long (> max_chars)",
    "low_hangul_ratio": "Hangul ratio < min_hangul_ratio",
    "exact_duplicate": "exact duplicate",
    "near_duplicate": "near duplicate (MinHash)",
}


def read_stage_counters(stats_dir: Path) -> dict[tuple[int, str], float]:
    """Sum datatrove's per-task stats files: (step index, stat label) -> total."""
    totals: dict[tuple[int, str], float] = {}
    for path in sorted(stats_dir.glob("*.json")):
        steps = json.loads(path.read_text())
        for i, step in enumerate(steps):
            for label, value in step.get("stats", {}).items():
                v = value["total"] if isinstance(value, dict) else value
                totals[(i, label)] = totals.get((i, label), 0) + v
    return totals


def publish_dir(build: Path, final: Path) -> None:
    """Swap a finished build directory into place (krllm.runs.replace_dir)."""
    replace_dir(build, final)


def _number_split_files(build: Path, split: str, itemsize: int) -> list[dict]:
    """Rename `<split>/<rank>.ds` to contiguous 00000, 00001, ... and check each file's sizes."""
    folder = build / split
    entries = []
    for i, ds in enumerate(sorted(folder.glob("*.ds")) if folder.is_dir() else []):
        index = ds.with_name(ds.name + ".index")
        target = folder / f"{i:05d}.ds"
        if ds != target:
            os.replace(ds, target)
            os.replace(index, target.with_name(target.name + ".index"))
        ends = np.fromfile(target.with_name(target.name + ".index"), dtype=np.uint64)
        n_tokens = target.stat().st_size // itemsize
        if len(ends) == 0 or int(ends[-1]) != n_tokens or target.stat().st_size % itemsize:
            raise DataError(f"{target}: token file and index disagree ({n_tokens} tokens, index ends at "
                            f"{int(ends[-1]) if len(ends) else 'nothing'}); the tokenize stage was interrupted")
        entries.append({"path": f"{split}/{target.name}", "tokens": n_tokens, "documents": int(len(ends))})
    return entries


def empty_result_message(read: int, removed: dict[str, int], n_files: int) -> str:
    if read == 0:
        return (f"no documents: the {n_files} source file(s) hold no text records (empty files, or every "
                "record was malformed and skipped); check `sources` and `text_field`")
    reasons = ", ".join(f"{REMOVAL_LABELS[k]}: {v}" for k, v in removed.items() if v) or "none"
    return (f"no documents left: read {read} from {n_files} source file(s) and removed all of them "
            f"({reasons}). Loosen `filters` (min_chars, min_hangul_ratio), or check `sources` and `text_field`")


class FinalizeShards(PipelineStep):
    """Number shard files, verify them, write manifest.json and config.yaml, then publish."""

    name = "krllm finalize shards"
    type = "📦 - FINALIZE"

    def __init__(self, build_dir: str, out_dir: str, publish: bool, manifest: dict, counters: dict,
                 work_dir: str, logs_dir: str):
        super().__init__()
        self.build_dir, self.out_dir, self.publish = build_dir, out_dir, publish
        self.base_manifest = manifest
        self.counters = counters  # name -> (stage, step index, stat label)
        self.work_dir, self.logs_dir = work_dir, logs_dir

    def _count(self, cache: dict, name: str) -> int:
        if name not in self.counters:
            return 0
        stage, index, label = self.counters[name]
        if stage not in cache:
            cache[stage] = read_stage_counters(Path(self.logs_dir) / stage / "stats")
        return int(cache[stage].get((index, label), 0))

    def run(self, data=None, rank: int = 0, world_size: int = 1):
        build = Path(self.build_dir)
        manifest = dict(self.base_manifest)
        itemsize = np.dtype(manifest["dtype"]).itemsize
        cache: dict = {}
        splits = {}
        for split in SPLITS:
            files = _number_split_files(build, split, itemsize)
            splits[split] = {"tokens": sum(f["tokens"] for f in files),
                             "documents": sum(f["documents"] for f in files), "files": files}
            expected = self._count(cache, f"{split}_documents")
            if expected != splits[split]["documents"]:
                raise DataError(f"{build / split}: shards hold {splits[split]['documents']} documents but the "
                                f"tokenize stage wrote {expected}; re-run krllm data prepare")
        removed = {k: self._count(cache, k) for k in REMOVAL_LABELS}
        read = self._count(cache, "read")
        kept = sum(s["documents"] for s in splits.values())
        if kept == 0:
            raise DataError(empty_result_message(read, removed, len(manifest["sources"])))
        examples = []
        bad_dir = Path(self.work_dir) / "bad_records"
        for p in sorted(bad_dir.glob("*.txt")) if bad_dir.is_dir() else []:
            examples.extend(p.read_text(encoding="utf-8").splitlines())
        manifest.update({
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "splits": splits,
            "documents": {"read": read, "kept": kept},
            "removed": removed,
            "bad_record_examples": examples[:20],
        })
        write_json(build / "manifest.json", manifest)
        (build / "config.yaml").write_text(
            yaml.safe_dump(manifest["config"], sort_keys=False, allow_unicode=True), encoding="utf-8")
        shutil.rmtree(self.work_dir, ignore_errors=True)
        self.stat_update("documents", value=kept)
        if self.publish:
            publish_dir(build, Path(self.out_dir))
        return
        yield  # a datatrove step is a generator; this one forwards nothing
