"""Decode speed: krllm's engine vs transformers `generate`, same weights, measured side by side.

Greedy, batch 1, a 32-token prompt, 128 new tokens, EOS ignored, on the same random weights
(written with save_hf, read back by AutoModelForCausalLM and by krllm), at the same precision on
both sides: fp32, and bf16 weights when this CPU multiplies bf16 natively. Runs alternate
(ours, theirs, ours, ...) and the median of `--repeats` is reported, so a busy machine slows both
alike. Also checks that both produce the same tokens (bf16: how many of the 128 agree, since two
correct bf16 implementations round differently and a random model's near-ties then diverge).

    python benchmarks/decode.py                       # the ~31M pretraining-benchmark config and tiny
    python benchmarks/decode.py --configs tiny --repeats 5 --threads 1 --dtypes fp32

Prefill tokens/s = 32 / time to the first token; decode tokens/s = 127 / time for the rest.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time

import torch

# The ≈31M configuration of benchmarks/pretrain_throughput.py (vocab 8000, untied LM head).
BENCH_31M = dict(vocab_size=8000, hidden_size=512, intermediate_size=1376, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=512,
                 tie_word_embeddings=False)
PROMPT_LEN, NEW_TOKENS = 32, 128


def _config(name: str):
    from krllm.model.config import ModelConfig, model_config_from

    return ModelConfig(**BENCH_31M) if name == "31m" else model_config_from(name)


def _hf_times(hf, prompt: torch.Tensor) -> tuple[float, float, list[int]]:
    """-> (prefill seconds, decode seconds for NEW_TOKENS - 1 tokens, generated ids)."""
    kw = dict(do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        t0 = time.perf_counter()
        hf.generate(prompt, max_new_tokens=1, min_new_tokens=1, **kw)
        t1 = time.perf_counter()
        out = hf.generate(prompt, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, **kw)
        t2 = time.perf_counter()
    return t1 - t0, (t2 - t1) - (t1 - t0), out[0, prompt.shape[1]:].tolist()


def _our_times(engine, prompt: list[int]) -> tuple[float, float, list[int]]:
    from krllm.infer.sampling import SamplingParams

    t0 = time.perf_counter()
    seq = engine.add(prompt, SamplingParams(temperature=0), NEW_TOKENS, stop_ids=())
    while not seq.output and not seq.finished:  # prefill (in chunks: Engine.prefill_chunk) + first token
        engine.step()
    t1 = time.perf_counter()
    while not seq.finished:
        engine.step()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, seq.output


def bench(name: str, repeats: int, dtypes: list[str]) -> dict:
    """Every (side, dtype) pair runs once per repeat, in turn, so all of them see the same machine."""
    from transformers import AutoModelForCausalLM

    from krllm.infer.engine import Engine
    from krllm.model.hf import load_hf, save_hf
    from krllm.model.llama import Llama

    cfg = _config(name)
    torch.manual_seed(0)
    sides = {}
    with tempfile.TemporaryDirectory() as d:
        save_hf(Llama(cfg), d)
        for dtype in dtypes:
            torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
            sides["hf", dtype] = AutoModelForCausalLM.from_pretrained(d, dtype=torch_dtype).eval()
            sides["ours", dtype] = Engine(load_hf(d, dtype=dtype), max_batch=1,
                                          max_seq_len=PROMPT_LEN + NEW_TOKENS + 8)
    n_params = sum(p.numel() for p in sides["hf", dtypes[0]].parameters())
    prompt = torch.randint(4, cfg.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))

    def run(key, ids):
        return _hf_times(sides[key], ids) if key[0] == "hf" else _our_times(sides[key], ids[0].tolist())

    for key in sides:  # warm-up
        run(key, prompt[:, :8])
    times = {key: [] for key in sides}
    agree = {dtype: NEW_TOKENS for dtype in dtypes}
    for _ in range(repeats):
        outs = {}
        for key in sides:
            p, dt, outs[key] = run(key, prompt)
            times[key].append((p, dt))
        for dtype in dtypes:
            pairs = zip(outs["hf", dtype], outs["ours", dtype])
            agree[dtype] = min(agree[dtype], next((i for i, (a, b) in enumerate(pairs) if a != b), NEW_TOKENS))

    def rates(samples):
        return (PROMPT_LEN / statistics.median(s[0] for s in samples),
                (NEW_TOKENS - 1) / statistics.median(s[1] for s in samples))

    return {"name": name, "params": n_params, "agree": agree, "rates": {k: rates(v) for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["31m", "tiny"], help="31m and/or model presets (default both)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs per config (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's default)")
    bf16_ok = torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    ap.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"] if bf16_ok else ["fp32"],
                    help="precisions, each on both sides (default fp32, plus bf16 where the CPU has native bf16)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"greedy, batch 1, prompt {PROMPT_LEN}, {NEW_TOKENS} new tokens, EOS ignored "
          f"(median of {args.repeats} rounds; each round runs every side once)")
    header = f"{'config':>8} {'dtype':>5} {'params':>8} | {'prefill tok/s':>26} | {'decode tok/s':>26} | same tokens"
    print(header + "\n" + f"{'':>8} {'':>5} {'':>8} | {'generate':>8} {'krllm':>8} {'ratio':>8} | "
          f"{'generate':>8} {'krllm':>8} {'ratio':>8} |")
    for name in args.configs:
        r = bench(name, args.repeats, args.dtypes)
        for dtype in args.dtypes:
            (hp, hd), (op, od) = r["rates"]["hf", dtype], r["rates"]["ours", dtype]
            same = "yes" if r["agree"][dtype] == NEW_TOKENS else f"first {r['agree'][dtype]} of {NEW_TOKENS}"
            print(f"{name:>8} {dtype:>5} {r['params'] / 1e6:>7.1f}M | {hp:>8.0f} {op:>8.0f} {op / hp:>7.2f}x | "
                  f"{hd:>8.1f} {od:>8.1f} {od / hd:>7.2f}x | {same}")
        if "bf16" in args.dtypes and "fp32" in args.dtypes:
            hd, od = r["rates"]["hf", "fp32"][1], r["rates"]["ours", "bf16"][1]
            print(f"{'':>8} {'':>5} {'':>8}   defaults (generate fp32 as loaded, krllm --dtype auto = bf16): "
                  f"decode {od / hd:.2f}x")


if __name__ == "__main__":
    main()
