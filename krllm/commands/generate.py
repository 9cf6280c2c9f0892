"""`krllm generate DIR --prompt TEXT`: continue a prompt (streamed to stdout) with a model, adapter or run dir.

Runs `krllm.infer.generator.Generator` (the Python API) on a model opened by `krllm.model.load`.

    krllm generate runs/demo/hf --prompt "오늘 날씨가" --max-new-tokens 64 --temperature 0.8 --top-p 0.95
    krllm generate runs/demo/sft --chat --prompt "안녕하세요"        # wrap in the chat template
    krllm generate runs/demo/hf --prompt "가" --prompt "나" --seed 1   # several prompts, batched
"""

from __future__ import annotations

import sys
import time


def add_sampling_arguments(p, max_new_tokens: int = 128) -> None:
    """Sampling flags shared by `generate` and `chat`."""
    p.add_argument("--max-new-tokens", type=int, default=max_new_tokens,
                   help=f"new tokens at most (default {max_new_tokens})")
    p.add_argument("--temperature", type=float, default=0.8, help="0 = greedy (deterministic); default 0.8")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (default 0 = off)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass in (0, 1] (default 0.95; 1 = off)")
    p.add_argument("--min-p", type=float, default=0.0, help="drop tokens below min-p x top probability (default 0 = off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0, help="> 1 discourages repeats (default 1.0 = off)")
    p.add_argument("--seed", type=int, default=None, help="random seed for reproducible sampling (default: random)")
    p.add_argument("--stop", action="append", default=[], metavar="TEXT",
                   help="stop when this text appears (not printed; repeatable)")
    p.add_argument("--base", default=None, help="base model directory when DIR is a PEFT adapter")
    p.add_argument("--device", default="auto", help="auto (default: cuda > mps > cpu), cpu, cuda, mps")
    p.add_argument("--dtype", default="auto", help="auto, fp32, bf16, fp16, int8 or int4 (int8/int4: weights quantized at load, "
                   "see docs/quantization.md; default auto: bf16 where the device "
                   "multiplies it natively, e.g. CPUs with AVX-512 BF16, else fp32)")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (default 0 = all cores; 1 is often "
                   "faster on a machine busy with other jobs)")


def sampling_from(args):
    """SamplingParams from the flags (and --threads applied)."""
    if getattr(args, "threads", 0):
        import torch

        torch.set_num_threads(args.threads)
    from krllm.infer.generator import Generator

    return Generator.sampling(temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, min_p=args.min_p,
                              repetition_penalty=args.repetition_penalty, seed=args.seed)


def add_arguments(p) -> None:
    p.add_argument("model", help="model directory: HF model dir, PEFT adapter dir, or a run dir (merged/, hf/ "
                   "or adapter/, tried in that order)")
    p.add_argument("--prompt", action="append", default=[], help="text to continue (repeatable: batched together)")
    p.add_argument("--prompts-file", default=None, help="UTF-8 file with one prompt per line (blank lines skipped)")
    p.add_argument("--chat", action="store_true", help="treat each prompt as a user message in the chat template")
    p.add_argument("--system", default=None, help="system message for --chat")
    p.add_argument("--ignore-eos", action="store_true", help="do not stop at end-of-text tokens")
    add_sampling_arguments(p, max_new_tokens=64)


def run(args) -> int:
    from pathlib import Path

    from rich.console import Console

    from krllm.errors import DataError, KrllmError
    from krllm.infer.generator import Generator, text_prompt_ids
    from krllm.model.load import load

    prompts = list(args.prompt)
    if args.prompts_file:
        path = Path(args.prompts_file)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"{path}: cannot read prompts ({e})") from None
        prompts += [line for line in lines if line.strip()]
    if not prompts:
        raise KrllmError("no prompt: give --prompt TEXT (repeatable) or --prompts-file FILE")
    sampling = sampling_from(args)
    err = Console(stderr=True)
    lm = load(args.model, base=args.base, device=args.device, dtype=args.dtype)
    system = [{"role": "system", "content": args.system}] if args.system else []
    encoded = [lm.encode_chat(system + [{"role": "user", "content": p}]) if args.chat
               else text_prompt_ids(lm, p) for p in prompts]
    # the KV cache holds exactly what these prompts need (not the model's whole context)
    needed = max(len(e) for e in encoded) + args.max_new_tokens + 1
    gen = Generator(lm, max_batch=min(len(encoded), 32), max_seq_len=min(lm.context_length or needed, needed))
    err.print(gen.describe(), style="dim")
    t0 = time.perf_counter()
    if len(encoded) == 1:
        if not args.chat:
            sys.stdout.write(prompts[0])

        def show(_, piece: str) -> None:
            sys.stdout.write(piece)
            sys.stdout.flush()

        done = gen.complete(encoded, sampling, args.max_new_tokens, args.stop, args.ignore_eos, on_text=show)
        sys.stdout.write("\n")
    else:
        done = gen.complete(encoded, sampling, args.max_new_tokens, args.stop, args.ignore_eos)
        for i, (p, c) in enumerate(zip(prompts, done)):
            print(f"--- [{i}] finish={c.finish_reason} tokens={c.tokens}")
            print((p if not args.chat else "") + c.text)
    total = sum(c.tokens for c in done)
    dt = time.perf_counter() - t0
    err.print(f"{total} tokens in {dt:.2f}s ({total / max(dt, 1e-9):.1f} tokens/s)", style="dim")
    return 0
