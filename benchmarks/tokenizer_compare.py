"""Korean-aware pre-tokenization vs a plain GPT-2-style byte-level BPE, side by side in one run.

    python benchmarks/tokenizer_compare.py                 # vocab 4096, ~10 s on 2 CPU cores
    python benchmarks/tokenizer_compare.py --vocab 2048 --markdown table.md

Both tokenizers are trained here on the same corpus (configs/tokenizer/ko_bpe.yaml's sources:
builtin:ko-law + generated NPC dialogues + generated math) with the same vocab size, min_frequency
and NFC normalizer; only the pre-tokenizer differs (ours: Hangul runs / single digits / GPT-4-style
whitespace; plain: GPT-2's ByteLevel regex). Two evaluations:
  1. builtin:ko-law, which is part of the training corpus (the issue's closing-note table);
  2. held out: both retrained without the constitution (kolaw/constitution.txt), measured on it;
  3. generated NPC dialogues + math problems from an unseen seed (the fine-tuning kind of text).
Prints tokens/char, tokens/eojeol, bytes/token, round trip and the plain/ours token ratio.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from rich.console import Console


def _train_pair(out: Path, sources: list, vocab: int, console: Console) -> tuple[Path, Path]:
    from krllm.tokenizer.train import train_tokenizer

    dirs = []
    for kind in ("korean", "gpt2"):
        d = out / kind
        t0 = time.perf_counter()
        s = train_tokenizer(d, sources=sources, vocab_size=vocab, pre_tokenizer=kind, progress=False)
        console.print(f"trained {kind:6s} vocab {s['vocab_size']:,} on {s['corpus_chars']:,} chars "
                      f"in {time.perf_counter() - t0:.1f}s")
        dirs.append(d)
    return dirs[0], dirs[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, default=4096, help="vocab size of both tokenizers (default 4096)")
    ap.add_argument("--out", default="runs/bench_tokenizer", help="where the four tokenizers are written")
    ap.add_argument("--markdown", help="also write the two tables as Markdown to this file")
    args = ap.parse_args()

    from krllm.data.sets.builtin import builtin_files
    from krllm.tokenizer.compare import compare, markdown_table, render_table

    console = Console()
    console.width = max(console.width, 120)
    generated = [{"path": "builtin:npc", "n": 2000}, {"path": "builtin:math:mixed", "n": 2000}]
    out = Path(args.out)
    md = []

    # 1. in-sample: the corpus both were trained on includes ko-law
    ours, plain = _train_pair(out / "all", ["builtin:ko-law", *generated], args.vocab, console)
    texts = [p.read_text(encoding="utf-8") for p in builtin_files("builtin:ko-law")]
    stats = compare([ours, plain], texts, names=["ours (korean)", "plain (gpt2)"])
    console.print(render_table(stats, "builtin:ko-law (in the training corpus)"))
    console.print(f"plain / ours tokens on ko-law: [bold]{stats[1].tokens / stats[0].tokens:.3f}x[/bold]")
    md += ["### builtin:ko-law (part of the training corpus)", "", markdown_table(stats), "",
           f"plain / ours tokens: {stats[1].tokens / stats[0].tokens:.3f}x", ""]

    # 2. held out: train without the constitution, measure on it
    files = builtin_files("builtin:ko-law")
    held = [f for f in files if f.name == "constitution.txt"]
    rest = [str(f) for f in files if f not in held]
    ours_h, plain_h = _train_pair(out / "heldout", rest + generated, args.vocab, console)
    texts_h = [p.read_text(encoding="utf-8") for p in held]
    stats_h = compare([ours_h, plain_h], texts_h, names=["ours (korean)", "plain (gpt2)"])
    console.print(render_table(stats_h, "kolaw/constitution.txt (held out)"))
    console.print(f"plain / ours tokens on the held-out constitution: "
                  f"[bold]{stats_h[1].tokens / stats_h[0].tokens:.3f}x[/bold]")
    md += ["### kolaw/constitution.txt (held out of training)", "", markdown_table(stats_h), "",
           f"plain / ours tokens: {stats_h[1].tokens / stats_h[0].tokens:.3f}x", ""]

    # 3. fine-tuning-style text the tokenizers never saw: NPC dialogues + math from another seed
    from krllm.data.sets.generated import generated_documents

    texts_g = [t for spec in ("builtin:npc", "builtin:math:mixed") for _, t in generated_documents(spec, n=500, seed=99)]
    stats_g = compare([ours, plain], texts_g, names=["ours (korean)", "plain (gpt2)"])
    console.print(render_table(stats_g, "generated NPC + math, seed 99 (unseen records)"))
    console.print(f"plain / ours tokens on unseen generated chat text: [bold]{stats_g[1].tokens / stats_g[0].tokens:.3f}x[/bold]")
    md += ["### generated NPC dialogues + math problems, 500 each, seed 99 (records not in training)", "",
           markdown_table(stats_g), "", f"plain / ours tokens: {stats_g[1].tokens / stats_g[0].tokens:.3f}x", ""]

    if args.markdown:
        Path(args.markdown).write_text("\n".join(md), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
