"""`krllm data prepare`: raw text -> clean -> filter -> dedupe -> split -> token shards, on datatrove.

    krllm data prepare -c configs/data/ko_pretrain.yaml --set executor.workers=4

    from krllm.data.prepare.job import prepare
    from krllm.data.prepare.config import PrepareConfig
    manifest = prepare(PrepareConfig(sources=["corpus.jsonl"], tokenizer="runs/tok_ko", out_dir="data/x"))

The pipeline is a chain of datatrove stages (the FineWeb recipe, with Korean steps):

    clean          N tasks   read sources -> KoreanCleaner -> LengthFilter -> HangulRatioFilter
                             -> intermediate JSONL (+ exact-dedupe signatures)
    exact_find     1 task    datatrove ExactFindDedups
    minhash_sigs   N tasks   re-read, drop exact dupes, MinHash signatures (eojeol 5-grams)
    minhash_buckets B tasks  datatrove MinhashDedupBuckets (one task per LSH band)
    minhash_cluster 1 task   datatrove MinhashDedupCluster
    tokenize       N tasks   re-read, drop exact + near dupes, split by document hash, tokenize
    finalize       1 task    number shards, manifest.json, config.yaml, publish

`build_plan` returns these stages as plain datatrove pipelines; `run_local` runs them with
LocalPipelineExecutor (N workers), and the same stages run under SlurmPipelineExecutor or
RayPipelineExecutor (see docs/data.md). Everything is built in a temp sibling of `out_dir` and
renamed into place at the end: a failed run leaves an existing output untouched.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from krllm.config import to_plain
from krllm.data.prepare.finalize import REMOVAL_LABELS, FinalizeShards
from krllm.data.prepare.config import PrepareConfig
from krllm.data.prepare.readers import CleanReader, InputFile, InputReader, count_lines, resolve_sources
from krllm.data.tokens.shards import MANIFEST_FORMAT, MANIFEST_VERSION, load_manifest
from krllm.errors import KrllmError
from krllm.runs import atomic_dir, hash_file

# Imported into the forkserver once (steps, datatrove, numpy, tokenizers and datatrove's dependency
# checks), so each worker forked from it starts warm.
WORKER_PRELOAD = ["__main__", "krllm.data.prepare._forkserver_warmup"]


@dataclass
class Stage:
    """One datatrove pipeline and how many tasks run it; progress is read from `progress_dir`."""

    name: str
    label: str
    pipeline: list
    tasks: int
    unit: str  # "MB" (input bytes), "docs" or "tasks"
    total: float | Callable[[], float]
    progress_dir: str


@dataclass
class Plan:
    cfg: PrepareConfig
    out_dir: Path
    build_dir: Path
    work_dir: Path
    logs_dir: Path
    sources: list[InputFile]
    tokenizer: dict
    stages: list[Stage] = field(default_factory=list)


def tokenizer_info(path: str, eos_token: str) -> dict:
    """Resolve the tokenizer file and check it can do what the shards need."""
    from tokenizers import Tokenizer

    p = Path(path)
    file = p / "tokenizer.json" if p.is_dir() else p
    if not file.is_file():
        raise KrllmError(f"tokenizer not found: {file}. Train one first (krllm tokenizer train -c "
                         "configs/tokenizer/ko_bpe.yaml) or set `tokenizer:` to a directory with tokenizer.json")
    try:
        tok = Tokenizer.from_file(str(file))
    except Exception as e:  # tokenizers raises a bare Exception on malformed JSON
        raise KrllmError(f"{file}: not a tokenizers JSON file ({e})") from None
    eos_id = tok.token_to_id(eos_token)
    if eos_id is None:
        raise KrllmError(f"{file}: has no token {eos_token!r} to end documents with; set `eos_token:`")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    return {"path": str(file.resolve()), "sha256": hash_file(file), "vocab_size": vocab,
            "eos_token": eos_token, "eos_id": eos_id}


def _count_clean_docs(folder: Path) -> Callable[[], float]:
    return lambda: float(sum(count_lines(p) for p in folder.glob("*.jsonl")))


def build_plan(cfg: PrepareConfig, build_dir: str | Path, out_dir: str | Path | None = None, *,
               publish: bool = False, logs_dir: str | Path | None = None) -> Plan:
    """The stages of one prepare run as datatrove pipelines (nothing runs yet).

    build_dir: where shards are written (a temp dir the caller renames, or, with `publish=True`,
    the finalize stage swaps it into `out_dir` itself, which is what cluster runs use; their
    datatrove logs then go to `logs_dir`, by default `<out_dir>.logs` beside the output).
    """
    from datatrove.pipeline.dedup.exact_dedup import ExactDedupFilter, ExactDedupSignature, ExactFindDedups
    from datatrove.pipeline.dedup.minhash import MinhashDedupBuckets, MinhashDedupCluster, MinhashDedupFilter

    from krllm.data.prepare import steps

    build = Path(build_dir).resolve()
    out = Path(out_dir or cfg.out_dir).resolve()
    work = build / ".work"
    if logs_dir is None:  # a publishing finalize moves build away while its own stage still logs
        logs_dir = out.parent / f"{out.name}.logs" if publish else build / "logs"
    logs = Path(logs_dir).resolve()
    sources = resolve_sources(cfg)
    tok = tokenizer_info(cfg.tokenizer, cfg.eos_token)
    n_tasks = cfg.executor.tasks or min(cfg.executor.workers, len(sources))
    plan = Plan(cfg, out, build, work, logs, sources, tok)

    def progress(name: str) -> str:
        return str(work / "progress" / name)

    counters: dict[str, tuple[str, int, str]] = {}
    exact = cfg.dedupe.exact
    clean_dir = work / "clean"

    # -- 1. read, clean, filter, keep an intermediate copy ---------------------------------------
    fl = cfg.filters
    clean = [
        InputReader([f.to_dict() for f in sources], cfg.skip_bad_records, progress("clean"), str(work / "bad_records")),
        steps.KoreanCleaner(**cfg.clean.model_dump()),
        steps.LengthFilter(fl.min_chars, fl.max_chars),
    ]
    counters["read"] = ("clean", 0, "documents")
    counters["bad_records"] = ("clean", 0, "bad_records")
    for reason in ("empty", "too_short", "too_long"):
        counters[reason] = ("clean", 2, f"dropped_{reason}")
    if fl.min_hangul_ratio > 0:
        clean.append(steps.HangulRatioFilter(fl.min_hangul_ratio))
        counters["low_hangul_ratio"] = ("clean", len(clean) - 1, "dropped_low_hangul_ratio")
    clean.append(steps.CleanWriter(str(clean_dir)))
    if exact:
        clean.append(ExactDedupSignature(str(work / "exact_sigs"), config=steps.exact_dedupe_config()))
    plan.stages.append(Stage("clean", "read + clean + filter", clean, n_tasks, "MB",
                             float(sum(f.size for f in sources)), progress("clean")))

    if exact:
        plan.stages.append(Stage("exact_find", "exact duplicates", [
            ExactFindDedups(str(work / "exact_sigs"), str(work / "exact_dups"), config=steps.exact_dedupe_config())],
            1, "tasks", 1.0, str(logs / "exact_find" / "completions")))

    def reread(stage: str) -> list:
        out_steps: list = [CleanReader(str(clean_dir), progress(stage))]
        if exact:
            out_steps.append(ExactDedupFilter(str(work / "exact_dups"), config=steps.exact_dedupe_config()))
        return out_steps

    n_docs = _count_clean_docs(clean_dir)
    d = cfg.dedupe
    if d.minhash:
        mh = steps.minhash_config(d.ngrams, d.buckets, d.hashes_per_bucket, d.seed)
        plan.stages.append(Stage("minhash_sigs", "MinHash signatures",
                                 reread("minhash_sigs") + [steps.KoreanMinhashSignature(str(work / "mh_sigs"), mh)],
                                 n_tasks, "docs", n_docs, progress("minhash_sigs")))
        plan.stages.append(Stage("minhash_buckets", "MinHash buckets", [
            MinhashDedupBuckets(str(work / "mh_sigs"), str(work / "mh_buckets"), config=mh)],
            d.buckets, "tasks", float(d.buckets), str(logs / "minhash_buckets" / "completions")))
        plan.stages.append(Stage("minhash_cluster", "MinHash clusters", [
            MinhashDedupCluster(str(work / "mh_buckets"), str(work / "mh_remove"), config=mh)],
            1, "tasks", 1.0, str(logs / "minhash_cluster" / "completions")))

    # -- last pass: dedupe filters, split, tokenize ----------------------------------------------
    tokenize = reread("tokenize")
    if exact:
        counters["exact_duplicate"] = ("tokenize", 1, "dropped")
    if d.minhash:
        tokenize.append(MinhashDedupFilter(str(work / "mh_remove")))
        counters["near_duplicate"] = ("tokenize", len(tokenize) - 1, "dropped")
    sp = cfg.split
    tokenize.append(steps.SplitShardWriter(str(build), tok["path"], cfg.eos_token, sp.val, sp.test, sp.seed,
                                           cfg.tokenize_batch_size, text_is_nfc=cfg.clean.normalization != "none",
                                           rust_threads=cfg.executor.workers == 1))
    for split in ("train", "val", "test"):
        counters[f"{split}_documents"] = ("tokenize", len(tokenize) - 1, f"{split}_documents")
    plan.stages.append(Stage("tokenize", "dedupe + split + tokenize", tokenize, n_tasks, "docs", n_docs,
                             progress("tokenize")))

    manifest = {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "krllm_version": _version(),
        "tokenizer": tok,
        "dtype": "uint32" if tok["vocab_size"] > 65536 else "uint16",
        "sources": [{"name": f.name, "path": f.path, "format": f.format, "bytes": f.size, "sha256": f.sha256}
                    for f in sources],
        "config": to_plain(cfg),
    }
    plan.stages.append(Stage("finalize", "check shards + manifest", [
        FinalizeShards(str(build), str(out), publish, manifest, counters, str(work), str(logs))],
        1, "tasks", 1.0, str(logs / "finalize" / "completions")))
    return plan


def _version() -> str:
    from krllm import __version__

    return __version__


def run_local(plan: Plan, console=None, verbose: bool = False, worker_check=None) -> None:
    """Run every stage of `plan` in order with datatrove's LocalPipelineExecutor.

    worker_check: a `WorkerStartCheck` already started (by `prepare`), else the check runs here."""
    from krllm.data.prepare.progress import QuietLocalExecutor, check_worker_start, make_progress, stage_progress

    ex = plan.cfg.executor
    if ex.workers > 1 and any(st.tasks > 1 for st in plan.stages):
        if worker_check is not None:
            worker_check.wait()
        else:
            check_worker_start(ex.start_method, WORKER_PRELOAD)
    progress = make_progress(console) if console is not None else None
    with progress if progress is not None else contextlib.nullcontext():
        for st in plan.stages:
            executor = QuietLocalExecutor(
                st.pipeline, tasks=st.tasks, workers=min(ex.workers, st.tasks), logging_dir=str(plan.logs_dir / st.name),
                start_method=ex.start_method, skip_completed=False, console_level="INFO" if verbose else "WARNING")
            total = st.total() if callable(st.total) else st.total
            with stage_progress(progress, st.label, st.progress_dir, total, st.unit,
                                count_files=st.unit == "tasks"):
                executor.run()


def prepare(cfg: PrepareConfig, console=None, verbose: bool = False) -> dict:
    """Run the whole pipeline locally into `cfg.out_dir`; return the manifest.

    console: a rich Console for progress bars and the summary table (None = silent).
    """
    from krllm.data.prepare.progress import WorkerStartCheck, refuse_in_worker

    refuse_in_worker()
    out = Path(cfg.out_dir)
    # with >1 worker a pool will almost surely start (MinHash buckets alone run several tasks):
    # check that workers start while the plan is being built
    ex = cfg.executor
    worker_check = WorkerStartCheck(ex.start_method, WORKER_PRELOAD) if ex.workers > 1 else None
    try:
        with atomic_dir(out) as build:
            plan = build_plan(cfg, build, out)
            if console is not None:
                mb = sum(f.size for f in plan.sources) / 1e6
                console.print(f"[bold]krllm data prepare[/]: {len(plan.sources)} file(s), {mb:,.1f} MB -> {out} "
                              f"({cfg.executor.workers} worker(s), {plan.stages[0].tasks} task(s); "
                              f"logs in {out / 'logs'})")
            run_local(plan, console, verbose, worker_check)
    finally:
        if worker_check is not None:
            worker_check.wait(raise_error=False)  # never leave the check running behind another error
    manifest = load_manifest(out)
    if console is not None:
        console.print(summary_table(manifest))
    return manifest


def summary_table(manifest: dict):
    """A rich table: what was removed and why, and what went into each split."""
    from rich.table import Table

    read = manifest["documents"]["read"]
    table = Table(title="krllm data prepare", show_lines=False)
    table.add_column("")
    table.add_column("documents", justify="right")
    table.add_column("% of read", justify="right")
    table.add_column("tokens", justify="right")

    def pct(n: int) -> str:
        return f"{100 * n / read:.1f}%" if read else "-"

    table.add_row("read", f"{read:,}", pct(read), "")
    for key, label in REMOVAL_LABELS.items():
        n = manifest["removed"].get(key, 0)
        if key == "bad_records":
            table.add_row(f"[red]{label}[/]", f"{n:,}", "", "") if n else None
            continue
        table.add_row(f"  removed: {label}", f"{n:,}", pct(n), "")
    for split, s in manifest["splits"].items():
        table.add_row(f"[bold]{split}[/] ({len(s['files'])} file(s))", f"{s['documents']:,}", pct(s["documents"]),
                      f"{s['tokens']:,}")
    kept = manifest["documents"]["kept"]
    total_tokens = sum(s["tokens"] for s in manifest["splits"].values())
    table.add_row("[bold]kept[/]", f"{kept:,}", pct(kept), f"{total_tokens:,}")
    return table

