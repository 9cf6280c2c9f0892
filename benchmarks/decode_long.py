"""Long prompts: prefill and decode speed of krllm fp32 / bf16 against transformers and llama.cpp, same weights.

Greedy, batch 1, prompts of 32, 1,024 and 4,096 tokens, 128 new tokens, EOS ignored, on the ≈31M
benchmark config (benchmarks/decode.py's BENCH_31M, with room for 4K positions), random weights
written once with save_hf. transformers `generate` reads that directory (fp32, and bf16 where the
CPU has native bf16); llama.cpp (llama-cpp-python, its default batch and KV-cache settings) reads GGUF
files krllm.export.gguf wrote from it (f32 and q8_0). Every side runs once per round, in turn, and
the median of `--repeats` rounds is reported, so a busy machine slows all sides alike.

Prefill tokens/s = prompt tokens / time to the first token; decode tokens/s = 127 / time for the rest
(each of them reads the whole KV cache of the prompt: at 4K that is most of a small model's traffic).

    python benchmarks/decode_long.py                          # 32, 1024, 4096
    python benchmarks/decode_long.py --prompts 1024 --repeats 3 --sides krllm-fp32 llama.cpp-f32

Targets (issue 19), at 1,024 and 4,096: krllm fp32 prefill >= 1.2x llama.cpp f32 and >= 1.5x
transformers fp32; krllm fp32 decode >= 1.2x llama.cpp f32; krllm bf16 decode >= llama.cpp q8_0.
krllm sides use `Engine(kv_dtype="auto")`: an fp32 KV cache for fp32 weights, fp16 for bf16 weights where
the C step does all attention (AVX-512 BF16, as here; the start-up line says); `-kv16` / `-kv32` force
fp16 / fp32 (llama.cpp keeps an f16 cache by default).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
from pathlib import Path

import torch

from decode import BENCH_31M, NEW_TOKENS, _hf_times, _our_times  # benchmarks/decode.py
from decode_quant import LlamaCppSide, llama_cpp_unavailable

SIDES = ("transformers-fp32", "transformers-bf16", "krllm-fp32", "krllm-fp32-kv16", "krllm-bf16", "krllm-bf16-kv32",
         "llama.cpp-f32", "llama.cpp-q8_0")
TARGETS = (  # (ours, theirs, phase, at least)
    ("krllm-fp32", "llama.cpp-f32", "prefill", 1.2), ("krllm-fp32", "transformers-fp32", "prefill", 1.5),
    ("krllm-fp32", "llama.cpp-f32", "decode", 1.2), ("krllm-bf16", "llama.cpp-q8_0", "decode", 1.0),
    # with an fp16 KV cache, as llama.cpp keeps its own by default
    ("krllm-fp32-kv16", "llama.cpp-f32", "decode", 1.2))


def _bf16_native() -> bool:
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


def write_model(out: Path, max_len: int) -> Path:
    from krllm.infer.testing import tiny_tokenizer_dir
    from krllm.model.config import ModelConfig
    from krllm.model.hf import save_hf
    from krllm.model.llama import Llama

    torch.manual_seed(0)
    model = Llama(ModelConfig(**{**BENCH_31M, "max_position_embeddings": max_len}))
    return save_hf(model, out / "hf", tokenizer_dir=tiny_tokenizer_dir(out / "tok"))


class HfSide:
    def __init__(self, model_dir: Path, dtype: torch.dtype):
        from transformers import AutoModelForCausalLM

        self.model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval()

    def times(self, prompt: list[int]) -> tuple[float, float, list[int]]:
        return _hf_times(self.model, torch.tensor([prompt]))


class KrllmSide:
    def __init__(self, model_dir: Path, dtype: str, max_len: int, kv_dtype: str = "auto"):
        from krllm.infer.engine import Engine
        from krllm.model.load import load

        self.engine = Engine(load(model_dir, device="cpu", dtype=dtype).model, max_batch=1, max_seq_len=max_len,
                             kv_dtype=kv_dtype)

    def times(self, prompt: list[int]) -> tuple[float, float, list[int]]:
        return _our_times(self.engine, prompt)


class LongLlamaCpp(LlamaCppSide):
    """llama.cpp with a context for the longest prompt and its own default batch sizes (n_batch: smaller ones)."""

    def __init__(self, path: Path, threads: int, n_ctx: int, n_batch: int | None = None):
        import llama_cpp

        batch = {} if n_batch is None else {"n_batch": n_batch, "n_ubatch": n_batch}
        self.llm = llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads, verbose=False,
                                   **batch)
        self.n_vocab = self.llm.n_vocab()


def make_sides(names: list[str], d: Path, threads: int, max_len: int) -> dict:
    model_dir = write_model(d, max_len)
    sides = {}
    for name in names:
        kind, dtype = name.split("-", 1)
        if kind == "transformers":
            sides[name] = HfSide(model_dir, {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
        elif kind == "krllm":
            dtype, _, kv = dtype.partition("-")
            sides[name] = KrllmSide(model_dir, dtype, max_len, {"kv16": "fp16", "kv32": "fp32"}.get(kv, "auto"))
        else:
            from krllm.export.gguf import export_gguf

            # llama.cpp q8_0 dies with SIGILL inside libggml-cpu on multi-token batches at a 1K context on this
            # machine (tried batches of 32, 16 and 8; its 32-token prompts in decode_quant.py run): its
            # prompts go one token a batch, so its prefill column understates llama.cpp; its decode, the
            # q8_0 target, is unaffected
            n_batch = 1 if dtype == "q8_0" else None
            sides[name] = LongLlamaCpp(Path(export_gguf(model_dir, d / f"model-{dtype}.gguf", dtype)), threads, max_len,
                                       n_batch)
    return sides


def bench(prompt_len: int, sides: dict, repeats: int) -> dict:
    prompt = torch.randint(4, BENCH_31M["vocab_size"], (prompt_len,),
                           generator=torch.Generator().manual_seed(prompt_len)).tolist()
    for side in sides.values():  # warm-up at this length (buffers, caches)
        side.times(prompt)
    times: dict = {name: [] for name in sides}
    outs: dict = {}
    for _ in range(repeats):
        for name, side in sides.items():
            p, dt, outs[name] = side.times(prompt)
            times[name].append((p, dt))
    rates = {name: {"prefill": prompt_len / statistics.median(s[0] for s in t),
                    "decode": (NEW_TOKENS - 1) / statistics.median(s[1] for s in t)} for name, t in times.items()}
    agree = {}
    for name in sides:  # same-precision references: how many greedy tokens match
        ref = {"fp32": "transformers-fp32", "f32": "transformers-fp32", "bf16": "transformers-bf16"}.get(
            name.split("-")[1])
        if ref in outs and ref != name:
            agree[name] = next((i for i, (a, b) in enumerate(zip(outs[name], outs[ref])) if a != b), NEW_TOKENS)
    return {"prompt": prompt_len, "rates": rates, "agree": agree}


def report(r: dict) -> None:
    print(f"\nprompt {r['prompt']} tokens, {NEW_TOKENS} new")
    print(f"{'side':>18} | {'prefill tok/s':>13} {'decode tok/s':>12} | greedy tokens = transformers")
    for name, s in r["rates"].items():
        agree = f"{r['agree'][name]} of {NEW_TOKENS}" if name in r["agree"] else "-"
        print(f"{name:>18} | {s['prefill']:>13.0f} {s['decode']:>12.0f} | {agree}")
    for ours, theirs, phase, want in TARGETS:
        if ours in r["rates"] and theirs in r["rates"]:
            ratio = r["rates"][ours][phase] / r["rates"][theirs][phase]
            print(f"  {phase} {ours} / {theirs}: {ratio:.2f}x (target >= {want}x: "
                  f"{'met' if ratio >= want else 'NOT met'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prompts", nargs="+", type=int, default=[32, 1024, 4096], help="prompt lengths in tokens")
    ap.add_argument("--repeats", type=int, default=3, help="alternating rounds (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="threads for every side (default: torch's default)")
    ap.add_argument("--sides", nargs="+", choices=SIDES, help="default: all that can run here")
    ap.add_argument("--json", metavar="FILE", help="also write the results here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    names = args.sides or [s for s in SIDES if "bf16" not in s or _bf16_native()]
    why_not = llama_cpp_unavailable()
    if why_not:
        print(f"llama.cpp sides skipped: {why_not}")
        names = [n for n in names if not n.startswith("llama.cpp")]
    from krllm.infer import native

    print(f"torch {torch.__version__}, {threads} threads, load average {os.getloadavg()[0]:.1f}, C step "
          f"{native.features()}; greedy, batch 1, {NEW_TOKENS} new tokens, EOS ignored "
          f"(median of {args.repeats} alternating rounds)")
    max_len = max(args.prompts) + NEW_TOKENS + 8
    results = []
    with tempfile.TemporaryDirectory() as d:
        sides = make_sides(names, Path(d), threads, max_len)
        for n in args.prompts:
            results.append(bench(n, sides, args.repeats))
            report(results[-1])
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
