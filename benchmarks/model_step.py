"""Our Llama vs transformers' LlamaForCausalLM (SDPA) on the same weights, measured side by side.

    python benchmarks/model_step.py                       # tiny preset, batch 8 x 256, 2 threads
    python benchmarks/model_step.py --preset small --batch-size 4 --seq-len 512 --repeats 5

Prints median milliseconds of (a) a training step (forward + loss + backward) and (b) greedy
decoding of --new-tokens tokens with a KV cache (ours: static KVCache; transformers: generate()),
and the ratio transformers / ours (> 1 means ours is faster). The two run interleaved, so load on
a shared machine hits both alike. Numbers depend on the machine; ratios are what to compare.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny", help="model preset (default: tiny)")
    ap.add_argument("--vocab-size", type=int, default=8000, help="vocabulary size (default: 8000)")
    ap.add_argument("--batch-size", type=int, default=8, help="training sequences per step (default: 8)")
    ap.add_argument("--seq-len", type=int, default=256, help="training tokens per sequence (default: 256)")
    ap.add_argument("--new-tokens", type=int, default=64, help="tokens to decode (default: 64)")
    ap.add_argument("--repeats", type=int, default=5, help="timed repeats of each (default: 5; median shown)")
    ap.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from transformers import LlamaConfig, LlamaForCausalLM

    from krllm.model.config import model_config_from
    from krllm.model.cache import KVCache
    from krllm.model.llama import Llama

    torch.manual_seed(0)
    cfg = model_config_from(args.preset, vocab_size=args.vocab_size)
    ours = Llama(cfg)
    d = {k: v for k, v in cfg.to_hf_dict().items() if k not in ("architectures", "model_type")}
    hf = LlamaForCausalLM(LlamaConfig(**d, attn_implementation="sdpa"))
    sd = ours.state_dict()
    if cfg.tie_word_embeddings:
        sd.pop("lm_head.weight")
    hf.load_state_dict(sd, strict=False)
    ids = torch.randint(0, cfg.vocab_size, (args.batch_size, args.seq_len))
    targets = torch.cat([ids[:, 1:], torch.full((args.batch_size, 1), -100)], dim=1)

    def step_ours():
        ours.zero_grad(set_to_none=True)
        ours(ids, targets)[1].backward()

    def step_hf():
        hf.zero_grad(set_to_none=True)
        hf(ids, labels=ids).loss.backward()

    prompt = ids[:1, :32]

    @torch.no_grad()
    def decode_ours():
        cache = KVCache(cfg, 1, prompt.shape[1] + args.new_tokens)
        logits, _ = ours(prompt, cache=cache)
        for _ in range(args.new_tokens - 1):
            nxt = logits[:, -1].argmax(-1, keepdim=True)
            logits, _ = ours(nxt, cache=cache)

    @torch.no_grad()
    def decode_hf():
        hf.generate(prompt, max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, do_sample=False,
                    pad_token_id=cfg.pad_token_id)

    ours.eval(), hf.eval()
    rows = []
    for name, a, b in (("train step (fwd+loss+bwd)", step_ours, step_hf), (f"decode {args.new_tokens} tokens", decode_ours, decode_hf)):
        a(), b()  # warm-up
        ta, tb = [], []
        for _ in range(args.repeats):
            for fn, acc in ((a, ta), (b, tb)):
                t0 = time.perf_counter()
                fn()
                acc.append(time.perf_counter() - t0)
        rows.append((name, statistics.median(ta) * 1e3, statistics.median(tb) * 1e3))
    print(f"{args.preset}: {ours.num_parameters():,} params, batch {args.batch_size} x {args.seq_len}, "
          f"{args.threads} threads, median of {args.repeats}")
    print(f"{'':28s} {'krllm ms':>10s} {'transformers ms':>16s} {'ratio':>7s}")
    for name, ma, mb in rows:
        print(f"{name:28s} {ma:10.1f} {mb:16.1f} {mb / ma:6.2f}x")


if __name__ == "__main__":
    main()
