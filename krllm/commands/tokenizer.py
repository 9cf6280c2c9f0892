"""`krllm tokenizer train|compare|encode`: train a Korean-aware BPE, compare tokenizers, inspect one.

    krllm tokenizer train -c configs/tokenizer/ko_bpe.yaml --set vocab_size=8000 --out runs/tok_ko
    krllm tokenizer compare runs/tok_ko runs/tok_plain --corpus builtin:ko-law --json cmp.json
    krllm tokenizer encode runs/tok_ko "대한민국은 민주공화국이다."
"""

from __future__ import annotations

import argparse


TRAIN_KEYS = """config keys (YAML or --set KEY=VALUE; defaults in brackets):
  sources          list of builtin:ko-law | builtin:npc | builtin:math[:ko|en|mixed] | builtin:sentiment |
                   file.txt/.jsonl/.parquet[.gz] | directory | glob; or {path, text_field, n, seed}
                   [builtin:ko-law, builtin:npc, builtin:math:mixed]
  text_field       JSONL/parquet key holding the text, or a list of {role, content} messages [text]
  vocab_size       total tokens incl. 256 bytes + 4 special tokens, >= 261 [4096]
  min_frequency    a pair must occur this often to be merged [2]
  normalization    nfc | nfkc | none; round trip is exact on text already in this form [nfc]
  pre_tokenizer    korean (Hangul runs, single digits; no llama.cpp equivalent) | gpt2 (baseline) |
                   qwen2 (letters of any script together, single digits) | llama3 (same, 1-3 digit groups);
                   summary.json records the llama.cpp `tokenizer.ggml.pre` name [korean]
  merge_unit       byte | char (merges over whole characters, stored as byte-level BPE) [byte]
  model_max_length longest sequence in tokens, written to tokenizer_config.json [4096]
  out_dir          output directory [runs/tokenizer]; written atomically, a failed run keeps the old one
See docs/tokenizer.md."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="tok_command", metavar="ACTION", required=True)

    t = sub.add_parser("train", help="Train a byte-level BPE tokenizer and write an HF tokenizer directory.",
                       description="Train a byte-level BPE (HF tokenizers) with Korean-aware pre-tokenization, "
                       "special tokens <|endoftext|>=0 <|pad|>=1 <|im_start|>=2 <|im_end|>=3 and a ChatML chat "
                       "template. The output loads with transformers.AutoTokenizer.from_pretrained(DIR).",
                       epilog=TRAIN_KEYS, formatter_class=argparse.RawDescriptionHelpFormatter)
    t.add_argument("-c", "--config", help="YAML config (e.g. configs/tokenizer/ko_bpe.yaml); "
                   "without it the defaults train on builtin:ko-law + builtin:npc + builtin:math:mixed, vocab 4096")
    t.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set vocab_size=8000 --set normalization=nfkc "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    t.add_argument("--out", help="output directory (overrides out_dir; replaced atomically if it exists)")
    t.add_argument("-q", "--quiet", action="store_true", help="no progress bars")

    c = sub.add_parser("compare", help="Tokens per character/eojeol, bytes per token and round trip of tokenizers.",
                       description="Measure any AutoTokenizer-loadable directories on one corpus and print a table: "
                       "tokens per character, tokens per eojeol (whitespace-separated word), UTF-8 bytes per "
                       "token, exact round trip (decode(encode(doc)) == doc) and vocab size.")
    c.add_argument("dirs", nargs="+", metavar="DIR", help="tokenizer directories (tokenizer.json + tokenizer_config.json)")
    c.add_argument("--corpus", action="append", default=[], metavar="SPEC",
                   help="builtin:ko-law (default), builtin:npc, a .txt/.jsonl/.parquet file, a directory or a glob "
                   "(repeatable)")
    c.add_argument("--text-field", default="text", help="JSONL/parquet key with the text (default: text)")
    c.add_argument("--max-docs", type=int, default=0, help="use only the first N documents (0 = all, the default)")
    c.add_argument("--names", help="comma-separated display names, one per DIR (default: directory names)")
    c.add_argument("--json", dest="json_out", metavar="PATH", help="also write the numbers to this JSON file")

    e = sub.add_parser("encode", help="Show how a tokenizer splits a text (tokens and ids).")
    e.add_argument("dir", help="tokenizer directory")
    e.add_argument("text", help="text to encode")


def run(args: argparse.Namespace) -> int:
    return {"train": _train, "compare": _compare, "encode": _encode}[args.tok_command](args)


def _train(args) -> int:
    from rich.console import Console

    from krllm.config import load_config
    from krllm.tokenizer.train import TokenizerTrainConfig, train_tokenizer

    cfg = load_config(args.config, TokenizerTrainConfig, args.overrides)
    summary = train_tokenizer(args.out, cfg, progress=not args.quiet)
    out = args.out or cfg.out_dir
    console = Console()
    console.print(f"[bold]tokenizer[/bold] {out}: vocab {summary['vocab_size']:,} "
                  f"(requested {summary['requested_vocab_size']:,}), trained on {summary['corpus_chars']:,} chars "
                  f"in {summary['corpus_documents']:,} documents, {summary['train_seconds']:.1f}s")
    if "note" in summary:
        console.print(f"[yellow]note:[/yellow] {summary['note']}")
    console.print(f"next: krllm tokenizer compare {out} --corpus builtin:ko-law")
    return 0


def _compare(args) -> int:
    from rich.console import Console

    from krllm.errors import KrllmError
    from krllm.runs import write_json
    from krllm.data.sources import iter_texts
    from krllm.tokenizer.chat_template import render_chatml
    from krllm.tokenizer.compare import compare, render_table

    specs = args.corpus or ["builtin:ko-law"]
    texts: list[str] = []
    for spec in specs:
        for text in iter_texts(spec, args.text_field, render_messages=render_chatml):
            texts.append(text)
            if args.max_docs and len(texts) >= args.max_docs:
                break
        if args.max_docs and len(texts) >= args.max_docs:
            break
    if not texts:
        raise KrllmError(f"corpus {', '.join(specs)} has no text")
    names = args.names.split(",") if args.names else None
    if names and len(names) != len(args.dirs):
        raise KrllmError(f"--names has {len(names)} names for {len(args.dirs)} directories")
    stats = compare(args.dirs, texts, names, progress=True)
    console = Console()
    console.width = max(console.width, 120)  # the table has 8 columns; don't squeeze it in pipes/CI logs
    console.print(render_table(stats, ", ".join(specs)))
    if args.json_out:
        write_json(args.json_out, {"corpus": specs, "documents": len(texts), "tokenizers": [s.to_dict() for s in stats]})
    return 0


def _encode(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from krllm.tokenizer.compare import load_tokenizer

    tok = load_tokenizer(args.dir)
    ids = tok(args.text, add_special_tokens=False)["input_ids"]
    table = Table(title=f"{len(ids)} tokens for {len(args.text)} characters")
    table.add_column("#", justify="right")
    table.add_column("id", justify="right")
    table.add_column("piece")
    for i, tid in enumerate(ids):
        table.add_row(str(i), str(tid), repr(tok.decode([tid], clean_up_tokenization_spaces=False)))
    Console().print(table)
    back = tok.decode(ids, clean_up_tokenization_spaces=False)
    Console().print("round trip: " + ("exact" if back == args.text else f"CHANGED to {back!r}"))
    return 0
