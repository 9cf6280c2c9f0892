"""Tokenizer options vs a plain GPT-2-style byte-level BPE, measured on Korean of another source.

    KRLLM_CACHE=/tmp/kohelp_cache3 python benchmarks/tokenizer_compare.py          # vocab 4096 and 32000
    python benchmarks/tokenizer_compare.py --vocab 4096 --markdown table.md --extra ~/models/Qwen2.5-0.5B

Every option is trained here on the same texts with the same vocab size, min_frequency and NFC
normalizer; only the pre-tokenizer / merge unit differ. Two directions:
  A. train on builtin:ko-help (train pages) -> test on builtin:ko-law, on generated NPC + math
     records (seed 99) and, in-domain for reference, on ko-help's held-out pages;
  B. train on ko-law + 2000 NPC + 2000 math (the demo's corpus) -> test on ko-help's held-out pages.
`--extra DIR` adds any AutoTokenizer directory (Qwen2.5, EXAONE...; not retrained) to every table.
The `morph (kiwi)` row appears when kiwipiepy imports (`--kiwi-path DIR` adds a pip --target dir):
merges learned and applied inside kiwi's morphemes; it cannot be exported (needs kiwi at encode time).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import defaultdict
from pathlib import Path

from rich.console import Console
from rich.table import Table

OPTIONS = [  # (row name, pre_tokenizer, merge_unit)
    ("plain BPE (gpt2 regex)", "gpt2", "byte"),
    ("korean (krllm regex)", "korean", "byte"),
    ("qwen2 regex", "qwen2", "byte"),
    ("llama3 regex", "llama3", "byte"),
    ("gpt2 regex + char merges", "gpt2", "char"),
    ("qwen2 regex + char merges", "qwen2", "char"),
    ("llama3 regex + char merges", "llama3", "char"),
]


def corpora() -> dict[str, list[str]]:
    from krllm.data.sets.builtin import builtin_documents
    from krllm.data.sets.generated import generated_documents
    from krllm.data.sets.help_corpus import is_heldout, paragraphs

    pages = defaultdict(list)
    for r in paragraphs():
        if r["lang"] == "ko" and is_heldout(r["page"]):
            pages[r["page"]].append(r["ko"])
    gen = lambda n, seed: [t for s in ("builtin:npc", "builtin:math:mixed") for _, t in generated_documents(s, n=n, seed=seed)]  # noqa: E731
    return {"help_train": [t for _, t in builtin_documents("builtin:ko-help")],
            "ko-help held-out pages": ["\n".join(v) for _, v in sorted(pages.items())],
            "ko-law": [t for _, t in builtin_documents("builtin:ko-law")],
            "demo_train": [t for _, t in builtin_documents("builtin:ko-law")] + gen(2000, 0),
            "NPC + math (seed 99)": gen(500, 99)}


class _Counts:
    """tokens, eojeol, chars and exact round trips of one tokenizer on one test set."""

    def __init__(self, tokens, texts, ok, vocab):
        self.tokens, self.ok, self.docs, self.vocab = tokens, ok, len(texts), vocab
        self.chars, self.eojeol = sum(map(len, texts)), sum(len(t.split()) for t in texts)


def _count(tok, texts) -> _Counts:
    enc = tok.encode_batch(texts, add_special_tokens=False)
    ok = sum(tok.decode(e.ids, skip_special_tokens=False) == t for e, t in zip(enc, texts))
    return _Counts(sum(len(e.ids) for e in enc), texts, ok, tok.get_vocab_size())


def _kiwi_row(train, tests, vocab, kiwi_path):  # noqa: C901
    """Morphology-aware (not exportable): a marker at every kiwi morpheme start inside a Hangul run,
    merges learned and applied with the qwen2 split inside those pieces."""
    import regex
    from tokenizers import Tokenizer, pre_tokenizers

    if kiwi_path:
        sys.path.insert(0, kiwi_path)
    try:
        from kiwipiepy import Kiwi
    except ImportError:
        return None
    kiwi, hangul, mark = Kiwi(num_workers=0), regex.compile(r"\p{Hangul}"), "\x00"

    def marked(text):
        cuts = sorted({t.start for t in kiwi.tokenize(text) if 0 < t.start < len(text)
                       and hangul.match(text[t.start]) and hangul.match(text[t.start - 1])})
        bounds = [0, *cuts, len(text)]
        return mark.join(text[a:b] for a, b in zip(bounds, bounds[1:]))

    from tokenizers import decoders, models, normalizers, trainers

    from krllm.tokenizer.pretokenize import SPECIAL_TOKENS, build_pre_tokenizer

    tok = Tokenizer(models.BPE())
    tok.normalizer, tok.decoder = normalizers.NFC(), decoders.ByteLevel()
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(mark, behavior="removed"),
                                                 build_pre_tokenizer("qwen2")])
    tok.train_from_iterator([marked(t) for t in train], trainer=trainers.BpeTrainer(
        vocab_size=vocab, min_frequency=2, special_tokens=list(SPECIAL_TOKENS), show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    rows = {}
    for name, texts in tests.items():
        enc = tok.encode_batch([marked(t) for t in texts], add_special_tokens=False)
        ok = sum(tok.decode(e.ids) == t for e, t in zip(enc, texts))
        rows[name] = _Counts(sum(len(e.ids) for e in enc), texts, ok, tok.get_vocab_size())
    return rows


def run_direction(title, train, tests, vocab, extra, kiwi_path, console, md):
    from tokenizers import Tokenizer

    from krllm.tokenizer.pretokenize import LLAMA_CPP_PRE
    from krllm.tokenizer.train import train_tokenizer

    rows = []  # (name, llama.cpp pre, {test: counts})
    for name, kind, unit in OPTIONS:
        out = Path(os.environ.get("TMPDIR", "/tmp")) / f"krllm_bench_tok_{kind}_{unit}_{vocab}"
        t0 = time.perf_counter()
        train_tokenizer(out, texts=train, vocab_size=vocab, pre_tokenizer=kind, merge_unit=unit, progress=False)
        tok = Tokenizer.from_file(str(out / "tokenizer.json"))
        console.print(f"  trained {name} in {time.perf_counter() - t0:.1f}s", style="dim")
        rows.append((name, LLAMA_CPP_PRE[kind] or "no", {k: _count(tok, v) for k, v in tests.items()}))
    kiwi = _kiwi_row(train, tests, vocab, kiwi_path)
    if kiwi:
        rows.append(("morph (kiwi) + qwen2 regex", "no (needs kiwi)", kiwi))
    for d in extra:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(d, local_files_only=True)
        rows.append((f"{Path(d).name} (as shipped)", "-", {k: _count(hf.backend_tokenizer, v) for k, v in tests.items()}))

    for test in tests:
        base = rows[0][2][test]
        t = Table(title=f"{title}, vocab {vocab} -> {test} ({base.docs} docs, {base.chars:,} chars, {base.eojeol:,} eojeol)")
        cols = ["option", "vocab", "tokens/char", "tokens/eojeol", "vs plain", "round trip", "llama.cpp pre"]
        for c in cols:
            t.add_column(c, justify="left" if c in ("option", "llama.cpp pre") else "right")
        md += [f"#### {title}, vocab {vocab} → {test}", "", "| " + " | ".join(cols) + " |",
               "|---|---:|---:|---:|---:|---|---|"]
        for name, pre, res in rows:
            c = res[test]
            cells = [name, f"{c.vocab:,}", f"{c.tokens / c.chars:.3f}", f"{c.tokens / c.eojeol:.3f}",
                     f"{1 - c.tokens / base.tokens:+.1%}", f"{c.ok}/{c.docs}", pre]
            t.add_row(*cells)
            md.append("| " + " | ".join(cells) + " |")
        md.append("")
        console.print(t)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--vocab", type=int, action="append", help="vocab size (repeatable; default 4096 and 32000)")
    ap.add_argument("--extra", action="append", default=[], metavar="DIR", help="an AutoTokenizer directory to add")
    ap.add_argument("--kiwi-path", help="directory holding kiwipiepy (pip install --target DIR kiwipiepy kiwipiepy-model)")
    ap.add_argument("--markdown", help="also write the tables as Markdown to this file")
    args = ap.parse_args()

    console = Console()
    console.width = max(console.width, 130)
    c = corpora()
    held, law, gen = "ko-help held-out pages", "ko-law", "NPC + math (seed 99)"
    md: list[str] = ["'vs plain' = fewer tokens than the plain BPE row (positive = better).", ""]
    for vocab in args.vocab or [4096, 32000]:
        run_direction("A: trained on ko-help", c["help_train"], {law: c[law], gen: c[gen], held: c[held]},
                      vocab, args.extra, args.kiwi_path, console, md)
        run_direction("B: trained on ko-law + NPC + math", c["demo_train"], {held: c[held]},
                      vocab, args.extra, args.kiwi_path, console, md)
    if args.markdown:
        Path(args.markdown).write_text("\n".join(md), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
