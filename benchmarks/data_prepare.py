"""Benchmark `krllm data prepare` against a bare `tokenizers` batch-encode of the same text.

    python benchmarks/data_prepare.py                # 50 MB corpus, 2 workers, 3 rounds (~4-6 min on 2 cores)
    python benchmarks/data_prepare.py --mb 20 --small-mb 5 --rounds 1

What it does, in one run:
1. builds a corpus from the built-in law text (builtin:ko-law): its sentences are shuffled and
   recombined into documents of 5-40 sentences (paragraphs of 2-8), so exact and near-duplicate
   removal keep almost all of it; written as 8 JSONL files (a 10 MB and a 50 MB corpus);
2. trains the project tokenizer (configs/tokenizer/ko_bpe.yaml settings, vocab 4096) on builtin:ko-law;
3. `--rounds` times, alternating which side goes first (the machine may be shared):
   - the bare side: one process, `Tokenizer.from_file(tokenizer.json).encode_batch_fast` over the
     document texts of the 50 MB corpus, already in memory, in batches of 1000 (the fastest plain way
     to tokenize this text), with one thread (TOKENIZERS_PARALLELISM=false: the target's baseline)
     and with tokenizers' default Rust threads; plus, for reference, one thread with the tokenizer's
     NFC normalizer switched off (what `prepare` does on its already-NFC cleaned text);
   - the whole `prepare()` (sources hashed, cleaned, filtered, exact + MinHash deduped, split,
     tokenized, manifest) on the same corpus with `--workers` workers;
   each round gives a paired ratio prepare MB/s / bare MB/s; the table shows the median of each;
4. runs `prepare()` on the 10 MB and the 50 MB corpus in fresh processes and samples the peak
   resident memory (RSS) and CPU time of the whole process tree (parent + forkserver + workers)
   every 50 ms.

It prints MB/s of both, their ratio (target >= 0.8x) and peak RSS at 10 vs 50 MB (target: flat).
On a shared machine the ratio only means something when both cores are free: one busy core halves
what 2 workers get but leaves the 1-thread baseline untouched. The table shows, per round, how many
cores the bare encode with tokenizers' default threads got, as a probe of that.
The bare side encodes every input document; `prepare` tokenizes the ones dedupe kept (the token
counts of both are printed), so if anything the comparison favours the bare side slightly.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

FILES = 8


def sentences() -> list[str]:
    from krllm.data.sets.builtin import builtin_files

    text = "\n".join(p.read_text(encoding="utf-8") for p in builtin_files("builtin:ko-law"))
    parts = re.split(r"(?<=[.다])\s+", text)
    out = sorted({" ".join(p.split()) for p in parts if len(p.split()) >= 3})
    return out


def build_corpus(folder: Path, mb: float, seed: int = 0) -> int:
    """Write FILES JSONL files with ~mb megabytes of recombined documents; return bytes of text."""
    sents = sentences()
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    files = [open(folder / f"part_{i:02d}.jsonl", "w", encoding="utf-8") for i in range(FILES)]
    size, n = 0, 0
    try:
        while size < mb * 1e6:
            paragraphs = []
            for _ in range(rng.randint(1, 5)):
                paragraphs.append(" ".join(rng.choice(sents) for _ in range(rng.randint(2, 8))))
            doc = "\n".join(paragraphs)
            files[n % FILES].write(json.dumps({"text": doc}, ensure_ascii=False) + "\n")
            size += len(doc.encode("utf-8"))
            n += 1
    finally:
        for f in files:
            f.close()
    return size


def read_texts(folder: Path) -> list[str]:
    texts = []
    for p in sorted(folder.glob("*.jsonl")):
        with open(p, encoding="utf-8") as f:
            texts.extend(json.loads(line)["text"] for line in f)
    return texts


def bare_encode(tokenizer_json: Path, texts: list[str], threads: bool = True,
                normalizer: bool = True) -> tuple[float, int, float]:
    """(wall seconds, tokens, CPU seconds of this process incl. tokenizers' threads).

    threads=False sets TOKENIZERS_PARALLELISM=false for the call: one thread, like a plain loop.
    normalizer=False drops the tokenizer's normalizer (NFC) first, as prepare does on cleaned text."""
    import resource

    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(tokenizer_json))
    if not normalizer:
        tok.normalizer = None
    saved = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true" if threads else "false"
    try:
        return _bare_encode(tok, texts, resource)
    finally:
        if saved is None:
            os.environ.pop("TOKENIZERS_PARALLELISM")
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = saved


def _bare_encode(tok, texts, resource):
    r0 = resource.getrusage(resource.RUSAGE_SELF)
    t0 = time.perf_counter()
    n = 0
    for i in range(0, len(texts), 1000):
        n += sum(len(e.ids) for e in tok.encode_batch_fast(texts[i:i + 1000]))
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_SELF)
    return wall, n, (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)


def run_prepare(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    from krllm.data.prepare.job import prepare
    from krllm.data.prepare.config import PrepareConfig

    cfg = PrepareConfig(sources=[str(corpus)], tokenizer=str(tokenizer), out_dir=str(out),
                        executor={"workers": workers})
    t0 = time.perf_counter()
    manifest = prepare(cfg)
    return {"seconds": time.perf_counter() - t0, "manifest": manifest}


def peak_rss_of_run(corpus: Path, tokenizer: Path, out: Path, workers: int) -> dict:
    """Run prepare in a fresh process; sample the RSS of its whole process tree."""
    import psutil

    code = (f"import sys; sys.path.insert(0, {str(Path(__file__).parent)!r})\n"
            "if __name__ == '__main__':\n"
            "    import data_prepare as b, json, pathlib\n"
            f"    r = b.run_prepare(pathlib.Path({str(corpus)!r}), pathlib.Path({str(tokenizer)!r}), "
            f"pathlib.Path({str(out)!r}), {workers})\n"
            "    print(json.dumps({'seconds': r['seconds'], 'kept': r['manifest']['documents']['kept']}))\n")
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(proc.pid)
    peak_total, peak_single = 0, 0
    cpu: dict[int, float] = {}  # pid -> last seen user+system seconds
    done = threading.Event()

    def sample():
        nonlocal peak_total, peak_single
        while not done.is_set():
            try:
                procs = [root] + root.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                        t = p.cpu_times()
                        cpu[p.pid] = t.user + t.system
                    except psutil.Error:
                        pass
                peak_total = max(peak_total, sum(rss))
                peak_single = max(peak_single, max(rss, default=0))
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    stdout, stderr = proc.communicate()
    done.set()
    th.join()
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed:\n{stderr}")
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"peak_tree_mb": peak_total / 1e6, "peak_process_mb": peak_single / 1e6, "cpu_s": sum(cpu.values()),
            **result}


BARE = {  # label -> bare_encode keyword arguments
    "1 thread": {"threads": False},
    "default threads": {"threads": True},
    "1 thread, no NFC": {"threads": False, "normalizer": False},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=float, default=50.0, help="size of the big corpus in MB of text (default 50)")
    ap.add_argument("--small-mb", type=float, default=10.0, help="size of the small corpus for the RSS check (default 10)")
    ap.add_argument("--workers", type=int, default=2, help="prepare workers (default 2)")
    ap.add_argument("--rounds", type=int, default=3, help="timed rounds of bare encode + prepare, alternating "
                    "which goes first; medians are reported (default 3)")
    ap.add_argument("--work", help="working directory (default: a temp dir, removed at the end)")
    args = ap.parse_args()

    from krllm.tokenizer.train import train_tokenizer

    tmp = tempfile.TemporaryDirectory(prefix="krllm_bench_") if not args.work else None
    work = Path(args.work or tmp.name)
    print(f"building corpora in {work} ...", flush=True)
    big_bytes = build_corpus(work / "big", args.mb)
    small_bytes = build_corpus(work / "small", args.small_mb, seed=1)
    tok_dir = work / "tok"
    if not (tok_dir / "tokenizer.json").exists():
        train_tokenizer(tok_dir, vocab_size=4096, sources=["builtin:ko-law"], progress=False)
    tok = tok_dir / "tokenizer.json"

    texts = read_texts(work / "big")
    mb = big_bytes / 1e6
    loads = [os.getloadavg()[0]]
    bare: dict[str, list[tuple[float, float]]] = {label: [] for label in BARE}  # label -> [(wall, cpu)]
    ours: list[float] = []
    ratios: dict[str, list[float]] = {label: [] for label in BARE}
    bare_tokens = 0
    m: dict = {}
    for r in range(args.rounds):
        def run_bare():
            nonlocal bare_tokens
            for label, kw in BARE.items():
                wall, bare_tokens, cpu = bare_encode(tok, texts, **kw)
                bare[label].append((wall, cpu))
                print(f"  bare tokenizers encode_batch_fast ({label}): {mb / wall:.2f} MB/s "
                      f"({cpu / wall:.2f} cores busy)", flush=True)

        def run_ours(r=r):
            nonlocal m
            out = work / f"out_big_{r}"  # a fresh output: replacing an old one (rmtree) is not timed
            res = run_prepare(work / "big", tok_dir, out, args.workers)
            shutil.rmtree(out)
            m = res["manifest"]
            ours.append(res["seconds"])
            print(f"  krllm data prepare ({args.workers} workers): {mb:.1f} MB in {res['seconds']:.1f}s = "
                  f"{mb / res['seconds']:.2f} MB/s; kept {m['documents']['kept']:,}/{m['documents']['read']:,} "
                  f"documents", flush=True)

        print(f"round {r + 1}/{args.rounds} (load {os.getloadavg()[0]:.1f})", flush=True)
        for side in ((run_bare, run_ours) if r % 2 == 0 else (run_ours, run_bare)):
            side()
        for label in BARE:
            ratios[label].append(bare[label][-1][0] / ours[-1])
        loads.append(os.getloadavg()[0])
    texts.clear()  # free the memory before the RSS runs
    ours_tokens = sum(s["tokens"] for s in m["splits"].values()) - m["documents"]["kept"]  # minus eos

    small = peak_rss_of_run(work / "small", tok_dir, work / "out_small", args.workers)
    big = peak_rss_of_run(work / "big", tok_dir, work / "out_big2", args.workers)
    print()
    print("| measure | value |")
    print("|---|---|")
    print(f"| corpus | {mb:.1f} MB of text, {m['documents']['read']:,} documents in {FILES} JSONL files; "
          f"dedupe kept {m['documents']['kept']:,} |")
    print(f"| machine load (1-min average) at the start and after each round | "
          f"{' / '.join(f'{x:.1f}' for x in loads)} on {os.cpu_count()} cores |")
    free = [c / w for w, c in bare["default threads"]]
    print(f"| cores the machine gave tokenizers' default threads, per round (2.0 = both cores free; near 1.0 = "
          f"another job held a core, and {args.workers} workers cannot beat 1 thread) | "
          f"{', '.join(f'{x:.2f}' for x in free)} |")
    med = statistics.median(ours)
    print(f"| `krllm data prepare`, {args.workers} workers, whole pipeline; median of {args.rounds} | "
          f"**{mb / med:.2f} MB/s** ({med:.1f} s; rounds: {', '.join(f'{x:.1f}' for x in ours)} s) |")
    for label in BARE:
        wall = statistics.median(w for w, _ in bare[label])
        cores = statistics.median(c / w for w, c in bare[label])
        note = " (target >= 0.8)" if label == "1 thread" else (" (reference)" if "NFC" in label else "")
        print(f"| bare `tokenizers` encode_batch_fast, 1 process, {label}; median | {mb / wall:.2f} MB/s "
              f"({wall:.1f} s, {cores:.2f} cores busy) |")
        print(f"| ratio prepare / bare {label}{note}; median of the {args.rounds} paired rounds | "
              f"**{statistics.median(ratios[label]):.2f}x** ({', '.join(f'{x:.2f}' for x in ratios[label])}) |")
    bare_cpu = statistics.median(c for _, c in bare["1 thread"])
    print(f"| tokens: prepare (kept docs, without eos) / bare (all docs) | {ours_tokens:,} / {bare_tokens:,} |")
    print(f"| CPU seconds, whole process tree (sampled every 50 ms): prepare / bare encode | {big['cpu_s']:.1f} / "
          f"{bare_cpu:.1f} (1 thread) = {big['cpu_s'] / bare_cpu:.2f}x the work |")
    print(f"| peak RSS, process tree, {small_bytes / 1e6:.0f} MB input | {small['peak_tree_mb']:.0f} MB "
          f"(largest process {small['peak_process_mb']:.0f} MB) |")
    print(f"| peak RSS, process tree, {mb:.0f} MB input | {big['peak_tree_mb']:.0f} MB "
          f"(largest process {big['peak_process_mb']:.0f} MB) |")
    print(f"| RSS ratio {mb:.0f} MB / {small_bytes / 1e6:.0f} MB input (target: flat ~1.0) | "
          f"**{big['peak_tree_mb'] / small['peak_tree_mb']:.2f}x** |")
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
