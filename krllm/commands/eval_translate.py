"""`krllm eval translate`: BLEU, chrF and TER of one model's greedy translations of parallel text.

    krllm eval translate runs/translate_ko_en/sft/merged --data builtin:ko-en-help:heldout --src ko --tgt en --n 200
    krllm eval translate http://127.0.0.1:8000/v1 --data pairs.jsonl --src ko --tgt en    # a running `krllm serve`
"""

from __future__ import annotations

import argparse

EPILOG = """\
Writes OUT/eval.json (scores, sacrebleu signatures, every translation), OUT/samples.md, OUT/samples.jsonl
(source / reference / hypothesis / sentence chrF) and OUT/src.txt, ref.txt, hyp.txt, one segment a line:
`sacrebleu OUT/ref.txt -i OUT/hyp.txt -m bleu chrf ter` prints the same scores.
BLEU and chrF: 0-100, higher is better. TER: edits per reference word x 100, lower is better.
--data: a JSONL file with the --src and --tgt codes as keys ({"ko": "...", "en": "..."}), or
builtin:ko-en-help[:train|heldout] (LibreOffice help, Korean/English), or hf:NAME[:CONFIG][@SPLIT] online.
See docs/evaluation.md.
"""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.formatter_class = argparse.RawDescriptionHelpFormatter
    p.epilog = EPILOG
    p.add_argument("target", nargs="?", metavar="DIR|URL", help="model directory (HF, merged or adapter) or a served API "
                   "base URL such as http://127.0.0.1:8000/v1")
    p.add_argument("--url", help="a served OpenAI-compatible API base URL (instead of DIR)")
    p.add_argument("--data", required=True, help="pairs: JSONL, builtin:ko-en-help[:train|heldout] or hf:...")
    p.add_argument("--src", default="ko", help="source language code, also its JSONL key (default ko)")
    p.add_argument("--tgt", default="en", help="target language code, also its JSONL key (default en)")
    p.add_argument("--src-key", help="JSONL key of the source text when it is not --src")
    p.add_argument("--tgt-key", help="JSONL key of the reference when it is not --tgt")
    p.add_argument("--n", type=int, help="first N pairs (a seeded sample of N for builtin:); default all")
    p.add_argument("--seed", type=int, default=0, help="sampling seed of builtin: pairs (default 0)")
    p.add_argument("--prompt", help="prompt template with {text} for the source (default: the SFT records' "
                   "instruction, e.g. '다음 문장을 영어로 번역하세요.\\n\\n{text}')")
    p.add_argument("--system", help="system prompt, if fine-tuning used one")
    p.add_argument("--max-new-tokens", type=int, default=128, help="tokens per translation (default 128)")
    p.add_argument("--batch", type=int, default=16, help="translations decoded together (engine slots, or "
                   "parallel requests to a server; default 16)")
    p.add_argument("--tokenize", help="BLEU tokenizer (default: sacrebleu's for --tgt: 13a for en, ko-mecab for "
                   "ko); e.g. char, intl, flores200")
    p.add_argument("--device", default="cpu", help="cpu, cuda, mps or auto (default cpu)")
    p.add_argument("--api-key", help="bearer key for --url (default $KRLLM_API_KEY / $OPENAI_API_KEY)")
    p.add_argument("--served-model", help="model id at the URL (default: the first of /v1/models)")
    p.add_argument("--out", default="runs/eval_translate", help="output directory (default runs/eval_translate)")


def run(args) -> int:
    import os

    from krllm.errors import UsageError
    from krllm.eval.translate import is_url, run_translation

    target = args.url or args.target
    if not target:
        raise UsageError("give a model directory (or a served URL) to translate with, e.g. "
                         "krllm eval translate runs/x/sft/merged --data builtin:ko-en-help:heldout")
    if args.url and args.target and args.target != args.url:
        raise UsageError(f"give a model directory or --url, not both ({args.target} and {args.url})")
    if args.n is not None and args.n < 1:
        raise UsageError(f"--n {args.n}: must be at least 1")
    api_key = args.api_key or os.environ.get("KRLLM_API_KEY") or os.environ.get("OPENAI_API_KEY")
    out = run_translation(target, args.data, args.src, args.tgt, args.out, n=args.n, seed=args.seed,
                          src_key=args.src_key, tgt_key=args.tgt_key, template=args.prompt,
                          max_new_tokens=args.max_new_tokens, batch_size=args.batch, tokenize=args.tokenize,
                          system=args.system, device=args.device, api_key=api_key if is_url(target) else None,
                          served_name=args.served_model)
    s = out["translate"]["model"]
    print(f"{out['data']['n']} pairs {args.src}->{args.tgt}: BLEU {s['bleu']:.2f}  chrF {s['chrf']:.2f}  "
          f"TER {s['ter']:.2f}  ({s['signatures']['bleu']})")
    print(f"wrote {args.out}/eval.json, samples.md, samples.jsonl, hyp.txt ({s['wall_s']:.1f}s)")
    return 0
