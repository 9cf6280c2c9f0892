"""Decode speed: krllm's engine vs transformers `generate`, same weights, measured side by side.

Greedy, batch 1, a 32-token prompt, 128 new tokens, EOS ignored; both in fp32 on the same
random weights (written with save_hf, read back by AutoModelForCausalLM). Runs alternate
(ours, theirs, ours, ...) and the median of `--repeats` is reported, so a busy machine slows both
alike. Also checks that both produce the same tokens.

    python benchmarks/decode.py                       # the ~31M config and the tiny preset
    python benchmarks/decode.py --configs tiny --repeats 5 --threads 2 --bf16

Prefill tokens/s = 32 / time to the first token; decode tokens/s = 127 / time for the rest.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

# ≈31M parameters with a 16k vocabulary (tied): the pretraining benchmark's size class.
BENCH_31M = dict(vocab_size=16000, hidden_size=512, intermediate_size=1408, num_hidden_layers=8,
                 num_attention_heads=8, num_key_value_heads=4, max_position_embeddings=1024,
                 tie_word_embeddings=True)
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
    engine.step()  # prefill + first token
    t1 = time.perf_counter()
    while not seq.finished:
        engine.step()
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, seq.output


def bench(name: str, repeats: int, bf16: bool) -> dict:
    from transformers import AutoModelForCausalLM

    from krllm.infer.engine import Engine
    from krllm.model.hf import load_hf, save_hf
    from krllm.model.llama import Llama

    cfg = _config(name)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as d:
        save_hf(Llama(cfg), d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        ours = Engine(load_hf(d), max_batch=1, max_seq_len=PROMPT_LEN + NEW_TOKENS + 8)
        ours16 = Engine(load_hf(d, dtype="bf16"), max_batch=1, max_seq_len=PROMPT_LEN + NEW_TOKENS + 8) if bf16 else None
    n_params = sum(p.numel() for p in hf.parameters())
    prompt = torch.randint(4, cfg.vocab_size, (1, PROMPT_LEN), generator=torch.Generator().manual_seed(1))
    _hf_times(hf, prompt[:, :8])  # warm-up
    _our_times(ours, prompt[0, :8].tolist())
    if ours16:
        _our_times(ours16, prompt[0, :8].tolist())
    rows = {"hf": [], "ours": [], "ours_bf16": []}
    same = True
    for _ in range(repeats):
        hp, hd, h_out = _hf_times(hf, prompt)
        op, od, o_out = _our_times(ours, prompt[0].tolist())
        same &= h_out == o_out
        rows["hf"].append((hp, hd))
        rows["ours"].append((op, od))
        if ours16:
            rows["ours_bf16"].append(_our_times(ours16, prompt[0].tolist())[:2])

    def rates(samples):
        if not samples:
            return None
        return (PROMPT_LEN / statistics.median(s[0] for s in samples),
                (NEW_TOKENS - 1) / statistics.median(s[1] for s in samples))

    return {"name": name, "params": n_params, "same_tokens": same,
            **{k: rates(v) for k, v in rows.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--configs", nargs="+", default=["31m", "tiny"], help="31m and/or model presets (default both)")
    ap.add_argument("--repeats", type=int, default=5, help="alternating runs per config (median reported)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default 0 = torch's default)")
    ap.add_argument("--bf16", action="store_true", help="also time our engine with bf16 weights")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; greedy, batch 1, prompt {PROMPT_LEN}, "
          f"{NEW_TOKENS} new tokens, EOS ignored, fp32 (median of {args.repeats} alternating runs)")
    header = f"{'config':>8} {'params':>8} | {'prefill tok/s':>26} | {'decode tok/s':>26} | same tokens"
    print(header + "\n" + f"{'':>8} {'':>8} | {'generate':>8} {'krllm':>8} {'ratio':>8} | "
          f"{'generate':>8} {'krllm':>8} {'ratio':>8} |")
    for name in args.configs:
        r = bench(name, args.repeats, args.bf16)
        (hp, hd), (op, od) = r["hf"], r["ours"]
        print(f"{name:>8} {r['params'] / 1e6:>7.1f}M | {hp:>8.0f} {op:>8.0f} {op / hp:>7.2f}x | "
              f"{hd:>8.1f} {od:>8.1f} {od / hd:>7.2f}x | {'yes' if r['same_tokens'] else 'NO'}")
        if r["ours_bf16"]:
            bp, bd = r["ours_bf16"]
            print(f"{'':>8} {'bf16':>8} | {'':>8} {bp:>8.0f} {bp / hp:>7.2f}x | {'':>8} {bd:>8.1f} {bd / hd:>7.2f}x |"
                  " (our engine with bf16 weights vs generate fp32)")


if __name__ == "__main__":
    main()
