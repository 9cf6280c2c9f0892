"""Quantized decode speed: krllm fp32 / bf16 / int8 / int4 and llama.cpp f32 / q8_0 / q4_0, same weights.

Greedy, batch 1, a 32-token prompt, 128 new tokens, EOS ignored (benchmarks/decode.py's settings and
its ≈31M config, BENCH_31M), random weights written once with save_hf; krllm loads them with
`--dtype` fp32 / bf16 / int8 / int4 (quantized at load), llama.cpp (llama-cpp-python) reads GGUF files
that krllm.export.gguf.export_gguf wrote from the same directory. Runs alternate (every side once per
round, median of `--repeats`), so a busy machine slows all sides alike. Without llama-cpp-python or
krllm.export.gguf the llama.cpp columns are skipped, and the output says so.

Reported per side: decode tokens/s (127 tokens after the first), prefill tokens/s, model bytes (the
weights in memory: krllm's tensors, llama.cpp's GGUF file), peak RSS of a separate process that loads
the model and generates once (`--rss`, on by default), and how many greedy tokens agree with the same
runtime's full-precision side.

    python benchmarks/decode_quant.py                            # 31m and medium
    python benchmarks/decode_quant.py --configs 31m --repeats 3 --no-rss
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from decode import NEW_TOKENS, PROMPT_LEN, _config, _our_times  # benchmarks/decode.py: BENCH_31M and its settings

OURS = ("fp32", "bf16", "int8", "int4")
THEIRS = ("f32", "q8_0", "q4_0")
PAIRS = {"int8": "q8_0", "int4": "q4_0", "fp32": "f32"}  # the comparisons the targets name


def llama_cpp_unavailable() -> str | None:
    """Why the llama.cpp side cannot run here (None: it can)."""
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        return "llama-cpp-python is not installed (pip install 'krllm[test]')"
    try:
        from krllm.export.gguf import export_gguf  # noqa: F401
    except ImportError:
        return "krllm.export.gguf is not in this checkout"
    return None


def write_model(name: str, out: Path) -> Path:
    """Random weights of config `name` with a (tiny) tokenizer, as an HF directory."""
    from krllm.infer.testing import tiny_tokenizer_dir
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama

    torch.manual_seed(0)
    model = Llama(_config(name))
    return save_hf(model, out / "hf", tokenizer_dir=tiny_tokenizer_dir(out / "tok"))


def krllm_side(model_dir: Path, dtype: str):
    from krllm.infer.engine import Engine
    from krllm.model.load import load
    from krllm.model.quant import model_bytes

    lm = load(model_dir, device="cpu", dtype=dtype)
    engine = Engine(lm.model, max_batch=1, max_seq_len=PROMPT_LEN + NEW_TOKENS + 8)
    return engine, model_bytes(lm.model), engine.runner.decode_path


class LlamaCppSide:
    """A GGUF through llama-cpp-python's low-level eval: greedy argmax of the last logits, one token a call."""

    def __init__(self, path: Path, threads: int):
        import llama_cpp

        self.llm = llama_cpp.Llama(str(path), n_ctx=PROMPT_LEN + NEW_TOKENS + 8, n_batch=PROMPT_LEN,
                                   n_threads=threads, n_threads_batch=threads, verbose=False)
        self.n_vocab = self.llm.n_vocab()

    def _next(self) -> int:
        import numpy as np

        return int(np.ctypeslib.as_array(self.llm._ctx.get_logits(), shape=(self.n_vocab,)).argmax())

    def times(self, prompt: list[int]) -> tuple[float, float, list[int]]:
        self.llm.reset()
        t0 = time.perf_counter()
        self.llm.eval(prompt)
        out = [self._next()]
        t1 = time.perf_counter()
        while len(out) < NEW_TOKENS:
            self.llm.eval([out[-1]])
            out.append(self._next())
        t2 = time.perf_counter()
        return t1 - t0, t2 - t1, out


def export_ggufs(model_dir: Path, out: Path) -> dict[str, Path]:
    from krllm.export.gguf import export_gguf

    return {t: Path(export_gguf(model_dir, out / f"model-{t}.gguf", t)) for t in THEIRS}


def peak_rss_mib(side: str, dtype: str, path: Path, threads: int) -> float:
    """Peak RSS of a fresh process that loads this side and generates once (MiB)."""
    cmd = [sys.executable, __file__, "--_child", side, dtype, str(path), "--threads", str(threads)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=600)
    if done.returncode != 0:
        raise RuntimeError(f"peak RSS child {side} {dtype} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])["peak_rss_mib"]


def _child(side: str, dtype: str, path: str, threads: int) -> None:
    prompt = list(range(4, 4 + PROMPT_LEN))
    if side == "krllm":
        engine, _, _ = krllm_side(Path(path), dtype)
        _our_times(engine, prompt)
    else:
        LlamaCppSide(Path(path), threads).times(prompt)
    print(json.dumps({"peak_rss_mib": _vm_hwm_kib() / 1024}))


def _vm_hwm_kib() -> float:
    """This process's peak RSS since exec (VmHWM; ru_maxrss would include the parent's at fork)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: KiB on Linux, bytes on macOS


def bench(name: str, repeats: int, threads: int, rss: bool) -> dict:
    cfg = _config(name)
    why_not = llama_cpp_unavailable()
    with tempfile.TemporaryDirectory() as d:
        model_dir = write_model(name, Path(d))
        sides, info = {}, {}
        for dtype in OURS:
            engine, nbytes, path = krllm_side(model_dir, dtype)
            sides["krllm", dtype] = engine
            info["krllm", dtype] = {"bytes": nbytes, "path": path}
        ggufs = export_ggufs(model_dir, Path(d)) if why_not is None else {}
        for t, p in ggufs.items():
            sides["llama.cpp", t] = LlamaCppSide(p, threads)
            info["llama.cpp", t] = {"bytes": p.stat().st_size, "path": "llama.cpp"}
        prompt = torch.randint(4, cfg.vocab_size, (PROMPT_LEN,), generator=torch.Generator().manual_seed(1)).tolist()

        def run(key, ids):
            return _our_times(sides[key], ids) if key[0] == "krllm" else sides[key].times(ids)

        for key in sides:  # warm-up
            run(key, prompt[:8])
        times: dict = {key: [] for key in sides}
        outs: dict = {}
        for _ in range(repeats):
            for key in sides:
                p, dt, outs[key] = run(key, prompt)
                times[key].append((p, dt))
        if rss:
            for key in sides:
                where = model_dir if key[0] == "krllm" else ggufs[key[1]]
                info[key]["rss"] = peak_rss_mib(key[0], key[1], where, threads)
    ref = {"krllm": outs["krllm", "fp32"], "llama.cpp": outs.get(("llama.cpp", "f32"))}
    for key in sides:
        a, b = outs[key], ref[key[0]]
        info[key]["agree"] = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), NEW_TOKENS)
        ps, ds = [s[0] for s in times[key]], [s[1] for s in times[key]]
        info[key]["prefill"] = PROMPT_LEN / statistics.median(ps)
        info[key]["decode"] = (NEW_TOKENS - 1) / statistics.median(ds)
    return {"name": name, "params": sum(p.numel() for p in _params(cfg)), "sides": info, "llama_cpp": why_not}


def _params(cfg):
    from krllm.model.llama import Llama

    with torch.device("meta"):
        return list(Llama(cfg).parameters())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["31m", "medium"], help="31m and/or model presets")
    ap.add_argument("--repeats", type=int, default=5, help="alternating rounds (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="threads for both runtimes (default: torch's default)")
    ap.add_argument("--no-rss", dest="rss", action="store_false", help="skip the peak-RSS child processes")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    ap.add_argument("--_child", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    if args._child:
        return _child(*args._child, threads)
    from krllm.infer import native

    print(f"torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}, C step "
          f"{native.features()}; greedy, batch 1, prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, EOS ignored "
          f"(median of {args.repeats} alternating rounds)")
    results = []
    for name in args.configs:
        r = bench(name, args.repeats, threads, args.rss)
        results.append(r)
        if r["llama_cpp"]:
            print(f"llama.cpp sides skipped: {r['llama_cpp']}")
        fp32 = r["sides"]["krllm", "fp32"]
        print(f"\n{name} ({r['params'] / 1e6:.1f}M params)")
        print(f"{'side':>16} | {'decode tok/s':>12} {'prefill tok/s':>13} | {'MiB':>7} {'vs fp32':>7} | "
              f"{'peak RSS MiB':>12} | same greedy tokens")
        for (side, dtype), s in r["sides"].items():
            rss = f"{s['rss']:>12.0f}" if "rss" in s else f"{'-':>12}"
            print(f"{side + ' ' + dtype:>16} | {s['decode']:>12.0f} {s['prefill']:>13.0f} | "
                  f"{s['bytes'] / 2**20:>7.1f} {s['bytes'] / fp32['bytes']:>7.3f} | {rss} | "
                  f"{s['agree']} of {NEW_TOKENS}")
        ours = {d: r["sides"]["krllm", d]["decode"] for d in OURS}
        print("krllm decode ratios: " + ", ".join(f"{d}/fp32 {ours[d] / ours['fp32']:.2f}x" for d in OURS[1:])
              + f", int8/bf16 {ours['int8'] / ours['bf16']:.2f}x, int4/bf16 {ours['int4'] / ours['bf16']:.2f}x")
        if not r["llama_cpp"]:
            print("krllm vs llama.cpp decode: " + ", ".join(
                f"{d}/{t} {ours[d] / r['sides']['llama.cpp', t]['decode']:.2f}x" for d, t in PAIRS.items())
                + "  (targets: int8/q8_0 >= 1.3x, int4/q4_0 >= 1.2x)")
    if args.json:
        Path(args.json).write_text(json.dumps([{**r, "sides": {" ".join(k): v for k, v in r["sides"].items()}}
                                               for r in results], indent=1))


if __name__ == "__main__":
    main()
