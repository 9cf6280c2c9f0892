"""Where the C decode step pays: one decode step of B rows, C step vs the PyTorch/oneDNN path.

Both run in the same ModelRunner on the same weights (the ~31M config of benchmarks/decode.py),
B slots at different positions, alternating per round; the fastest of `--rounds` is reported.
A step of few rows is bound by reading the weights (the C step streams them once, in one call);
a step of many rows is bound by arithmetic (oneDNN's GEMM, and in bf16 its native bf16 dot
products, win there). `ModelRunner.native_max_rows` is set from this crossover.

    python benchmarks/decode_batch.py                    # fp32 and bf16, B = 1..32
    python benchmarks/decode_batch.py --dtypes fp32 --rows 1 8 16 --threads 1
"""

from __future__ import annotations

import argparse
import os
import time

import torch
from decode import BENCH_31M


def step_ms(runner, tokens: torch.Tensor, steps: int) -> float:
    B = tokens.shape[0]
    for s in range(B):
        runner.cache.lengths[s] = 40 + s  # every row at its own position: the general (masked) case
    t = time.perf_counter()
    for _ in range(steps):
        runner.decode(tokens, B)
    return (time.perf_counter() - t) / steps * 1e3


def main() -> None:
    from krllm.infer.runner import ModelRunner
    from krllm.model.config import ModelConfig
    from krllm.model.llama import Llama

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dtypes", nargs="+", choices=["fp32", "bf16"], default=["fp32", "bf16"])
    ap.add_argument("--rows", nargs="+", type=int, default=[1, 2, 4, 8, 12, 16, 24, 32])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=5, help="decode steps per measurement")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's default)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f}; "
          f"ms per decode step (fastest of {args.rounds} rounds of {args.steps} steps)")
    print(f"{'dtype':>5} {'rows':>4} | {'C step':>8} {'PyTorch':>8} | {'C speed-up':>10} | path the runner takes")
    for dtype in args.dtypes:
        torch.manual_seed(0)
        model = Llama(ModelConfig(**BENCH_31M)).eval().to({"fp32": torch.float32, "bf16": torch.bfloat16}[dtype])
        runner = ModelRunner(model, n_slots=max(args.rows), max_seq_len=256)
        if runner.native is None:
            raise SystemExit("the C decode step is not available here (no C compiler, or KRLLM_NATIVE=0)")
        chosen = runner.native_max_rows
        for B in args.rows:
            tokens = torch.randint(5, BENCH_31M["vocab_size"], (B,))
            times = {"c": [], "torch": []}
            for _ in range(args.rounds):
                for side, limit in (("c", B), ("torch", 0)):
                    runner.native_max_rows = limit
                    step_ms(runner, tokens, 1)  # warm-up
                    times[side].append(step_ms(runner, tokens, args.steps))
            c, t = min(times["c"]), min(times["torch"])
            path = "C step" if B <= chosen else "PyTorch"
            print(f"{dtype:>5} {B:>4} | {c:>8.2f} {t:>8.2f} | {t / c:>9.2f}x | {path}")
        runner.native_max_rows = chosen


if __name__ == "__main__":
    main()
