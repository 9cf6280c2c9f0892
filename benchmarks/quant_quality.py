"""Quality of int8 / int4 weights: held-out perplexity and greedy agreement with fp32, same model.

For each model directory: perplexity on a split of token shards (krllm.eval.perplexity, the number
`krllm eval` reports) with the weights in fp32, quantized to int8, and to int4 (quantized at load,
as `--dtype int8|int4` does); then greedy continuations of prompts cut from the same split, through
krllm's engine (the C step where it is built), and how many tokens each quantized model produces
before it first departs from fp32.

    python benchmarks/quant_quality.py runs/demo_ko/pretrain/hf --shards runs/demo_ko/data --split test
    python benchmarks/quant_quality.py DIR --shards DATA --seq-len 128 --prompts 16 --new-tokens 64
"""

from __future__ import annotations

import argparse
import statistics

import torch


def measure(model_dir: str, shards, seq_len: int, max_tokens: int | None, n_prompts: int, new_tokens: int,
            group_size: int) -> dict:
    import numpy as np

    from krllm.eval.perplexity import token_perplexity
    from krllm.infer.engine import Engine
    from krllm.infer.sampling import SamplingParams
    from krllm.model.load import load
    from krllm.model.quant import model_bytes

    n = len(shards) if max_tokens is None else min(len(shards), max_tokens)
    starts = np.linspace(0, max(n - 64, 0), n_prompts).astype(int).tolist()
    prompts = [np.asarray(shards.slice(s, 32) if hasattr(shards, "slice") else shards[s:s + 32]).tolist()
               for s in starts]
    out: dict = {}
    for dtype in ("fp32", "int8", "int4"):
        lm = load(model_dir, device="cpu", dtype=dtype, group_size=group_size)
        ppl = token_perplexity(lm.model, shards, seq_len=seq_len, max_tokens=max_tokens)
        engine = Engine(lm.model, max_batch=1, max_seq_len=32 + new_tokens + 8)
        greedy = [s.output for s in engine.generate(prompts, SamplingParams(temperature=0), max_new_tokens=new_tokens,
                                                     stop_ids=())]
        out[dtype] = {"ppl": ppl["ppl"], "tokens": ppl["tokens"], "bytes": model_bytes(lm.model), "greedy": greedy,
                      "path": engine.runner.decode_path}
    for dtype in ("int8", "int4"):
        agree = [next((i for i, (a, b) in enumerate(zip(q, f)) if a != b), min(len(q), len(f)))
                 for q, f in zip(out[dtype]["greedy"], out["fp32"]["greedy"])]
        out[dtype]["agree"] = agree
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("models", nargs="+", help="HF model directories (or run directories)")
    ap.add_argument("--shards", required=True, help="token shards directory (krllm data prepare)")
    ap.add_argument("--split", default="test", help="held-out split (default test)")
    ap.add_argument("--seq-len", type=int, default=128, help="perplexity window (default 128)")
    ap.add_argument("--max-tokens", type=int, default=None, help="score at most this many tokens")
    ap.add_argument("--prompts", type=int, default=16, help="greedy prompts (32 tokens each, from the split)")
    ap.add_argument("--new-tokens", type=int, default=64, help="greedy tokens per prompt")
    ap.add_argument("--group-size", type=int, default=32, help="int4 group size (default 32)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from krllm.data.tokens.shards import TokenShards

    shards = TokenShards(args.shards, args.split)
    for m in args.models:
        r = measure(m, shards, args.seq_len, args.max_tokens, args.prompts, args.new_tokens, args.group_size)
        print(f"\n{m}: {r['fp32']['tokens']:,} held-out tokens ({args.split}), window {args.seq_len}; greedy: "
              f"{args.prompts} prompts x {args.new_tokens} tokens ({r['fp32']['path']})")
        print(f"{'dtype':>5} | {'ppl':>9} {'vs fp32':>8} | {'MiB':>7} {'vs fp32':>7} | greedy tokens equal to fp32 "
              f"(median, mean, all {args.new_tokens})")
        for dtype, s in r.items():
            rel = s["ppl"] / r["fp32"]["ppl"] - 1
            agree = (f"{statistics.median(s['agree']):.0f}, {statistics.mean(s['agree']):.1f}, "
                     f"{sum(a == args.new_tokens for a in s['agree'])}/{len(s['agree'])}" if "agree" in s else "-")
            print(f"{dtype:>5} | {s['ppl']:>9.3f} {rel:>+8.2%} | {s['bytes'] / 2**20:>7.2f} "
                  f"{s['bytes'] / r['fp32']['bytes']:>7.3f} | {agree}")


if __name__ == "__main__":
    main()
