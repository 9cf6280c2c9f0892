"""`krllm data prepare|info|fetch`: raw text -> token shards on datatrove; inspect a shard directory;
download a built-in corpus ahead of time.

    krllm data prepare -c configs/data/ko_pretrain.yaml --set executor.workers=4 --out data/ko
    krllm data info data/ko --decode 2
    krllm data fetch ko-help
"""

from __future__ import annotations

import argparse


def config_keys_help() -> str:
    """Every key of the prepare config with its default and description, read from the schema."""
    from pydantic import BaseModel

    from krllm.data.prepare.config import PrepareConfig, SourceConfig

    lines = ["config keys (YAML or --set KEY=VALUE; defaults in brackets):"]

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, field in model.model_fields.items():
            key = prefix + name
            sub = field.annotation
            if isinstance(sub, type) and issubclass(sub, BaseModel):
                walk(sub, key + ".")
                continue
            default = field.get_default(call_default_factory=True)
            if name == "sources":
                default = "builtin:ko-law"
                desc = ("list of files, directories, globs, builtin:ko-law, builtin:ko-help; or mappings {" +
                        ", ".join(SourceConfig.model_fields) + "}")
            else:
                desc = field.description or ""
            lines.append(f"  {key:<26} {desc} [{default}]")

    walk(PrepareConfig, "")
    lines.append("See docs/data.md and the commented configs/data/ko_pretrain.yaml.")
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "prepare", help="Clean, filter, dedupe (exact + MinHash), split and tokenize text into memmap shards.",
        description="Run the datatrove pipeline: read sources (txt, jsonl, parquet, builtin:ko-law) -> Korean cleaning "
        "(HTML, control characters, NFC/NFKC, whitespace) -> length and Hangul-ratio filters -> exact and MinHash "
        "near-duplicate removal -> stable train/val/test split by document hash -> token shards "
        "(OUT/{train,val,test}/NNNNN.ds + .ds.index) and OUT/manifest.json. OUT is built in a temporary "
        "directory and swapped in at the end: a failed run leaves an existing OUT untouched.",
        epilog=config_keys_help(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--config", help="YAML config, e.g. configs/data/ko_pretrain.yaml (without it: the defaults, "
                   "builtin:ko-law with tokenizer runs/tok_ko into data/ko_pretrain)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key, e.g. --set filters.min_chars=50 --set split.val=0.05 "
                   "(repeatable; KEY={a: 1} merges into section KEY)")
    p.add_argument("--out", help="output directory (overrides out_dir)")
    p.add_argument("--tokenizer", help="tokenizer directory or tokenizer.json (overrides tokenizer)")
    p.add_argument("--workers", type=int, help="worker processes (overrides executor.workers; default 2)")
    p.add_argument("--skip-bad-records", action="store_true",
                   help="skip and count malformed records (bad JSON, missing field, invalid UTF-8) instead of "
                   "stopping at the first one with its file:line")
    p.add_argument("-v", "--verbose", action="store_true", help="also show datatrove's per-task logs on the console")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars or summary table")

    i = sub.add_parser("info", help="Check a prepared shard directory and print its counts (optionally decode documents).",
                       description="Validate OUT/manifest.json against the shard files (sizes, document index, "
                       "end-of-document tokens) and print per-split documents and tokens, the removal summary "
                       "and the sources.")
    i.add_argument("dir", help="directory written by `krllm data prepare`")
    i.add_argument("--split", default="train", choices=("train", "val", "test"), help="split to decode from (default: train)")
    i.add_argument("--decode", type=int, default=0, metavar="N", help="print the first N documents of --split, decoded")
    i.add_argument("--verify", action="store_true", help="also scan every token (ids < vocab size); reads all shards")


    f = sub.add_parser("fetch", help="Download and cache builtin:ko-help / builtin:ko-en-help now (else: on first use).",
                       description="Fetch Debian's libreoffice-help-ko and libreoffice-help-en-us packages with "
                       "`apt-get download` (no root needed once package lists exist), parse the help pages once and "
                       "cache Korean text and Korean-English pairs under $KRLLM_CACHE (default "
                       "$XDG_CACHE_HOME/krllm or ~/.cache/krllm). A cache that is there is never downloaded again.")
    f.add_argument("name", choices=("ko-help",), help="ko-help: builtin:ko-help and builtin:ko-en-help (one source)")
    f.add_argument("--deb", action="append", default=[], metavar="FILE",
                   help="use these .deb files (both packages) instead of apt-get, e.g. downloaded by hand on macOS")
    f.add_argument("--force", action="store_true", help="rebuild the cache even if it is there")


def run(args: argparse.Namespace) -> int:
    return {"prepare": _prepare, "info": _info, "fetch": _fetch}[args.data_command](args)


def _fetch(args) -> int:
    from krllm.data.sets.help_corpus import fetch, read_manifest

    out = fetch(debs=args.deb or None, force=args.force)
    m = read_manifest()
    c = m["counts"]
    src = ", ".join(f"{s['package']} {s['version']}" for s in m["source"].values())
    print(f"{out}\n  source: {src} ({m['license'].split()[0]})\n"
          f"  builtin:ko-help: {c['ko_help_text']['documents']:,} pages, {c['ko_help_text']['chars']:,} characters, "
          f"{c['ko_help_text']['hangul_syllables']:,} Hangul syllables (held-out pages excluded)\n"
          f"  builtin:ko-en-help: {c['pairs']['train']:,} train + {c['pairs']['heldout']:,} held-out pairs")
    return 0


def _prepare(args) -> int:
    from rich.console import Console

    from krllm.config import load_config
    from krllm.data.prepare.job import prepare
    from krllm.data.prepare.config import PrepareConfig

    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.tokenizer:
        overrides.append(f"tokenizer={args.tokenizer}")
    if args.workers is not None:
        overrides.append(f"executor.workers={args.workers}")
    if args.skip_bad_records:
        overrides.append("skip_bad_records=true")
    cfg = load_config(args.config, PrepareConfig, overrides)
    console = None if args.quiet else Console(stderr=False)
    manifest = prepare(cfg, console=console, verbose=args.verbose)
    if console is not None:
        console.print(f"wrote {cfg.out_dir} (manifest.json, config.yaml, logs/); next: krllm data info {cfg.out_dir} "
                      "--decode 1")
    else:
        kept = manifest["documents"]["kept"]
        tokens = sum(s["tokens"] for s in manifest["splits"].values())
        print(f"{cfg.out_dir}: {kept} documents, {tokens} tokens")
    return 0


def _info(args) -> int:
    from rich.console import Console
    from rich.table import Table

    from krllm.data.prepare.job import summary_table
    from krllm.data.tokens.shards import TokenShards

    console = Console()
    shards = {s: TokenShards(args.dir, s, allow_empty=True) for s in ("train", "val", "test")}
    if args.verify:
        for s in shards.values():
            s.verify()
    m = shards["train"].manifest
    console.print(summary_table(m))
    tok = m["tokenizer"]
    console.print(f"tokenizer {tok['path']} (vocab {tok['vocab_size']:,}, sha256 {tok['sha256'][:12]}…), dtype {m['dtype']}, "
                  f"eos {tok['eos_token']}={tok['eos_id']}" + (" — all tokens verified" if args.verify else ""))
    src = Table(title="sources")
    for col in ("file", "format", "MB", "sha256"):
        src.add_column(col)
    for f in m["sources"]:
        src.add_row(f["name"], f["format"], f"{f['bytes'] / 1e6:.2f}", f["sha256"][:12] + "…")
    console.print(src)
    if args.decode:
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(tok["path"])
        sh = shards[args.split]
        for d in range(min(args.decode, sh.num_documents)):
            ids = sh.document(d)[:-1].tolist()  # without the end-of-document token
            console.rule(f"{args.split} document {d} ({len(ids)} tokens)")
            console.print(tokenizer.decode(ids, skip_special_tokens=False), markup=False, highlight=False)
    return 0
