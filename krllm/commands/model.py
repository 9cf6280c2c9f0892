"""`krllm model info|presets`: exact parameter counts and memory estimates, before training anything.

    krllm model info configs/model/small.yaml                      # counts + memory at batch 8 x 1024
    krllm model info tiny --vocab-size 16000 --batch-size 16 --seq-len 512
    krllm model info configs/model/large.yaml --dtype bf16 --set num_hidden_layers=12
    krllm model info runs/demo/hf                                   # a saved HF directory
    krllm model presets                                             # all presets side by side
"""

from __future__ import annotations

import argparse
import json

EPILOG = """\
MODEL is a preset name (tiny, small, medium, large), a model YAML (configs/model/*.yaml; may say
`preset: NAME` plus overrides) or an HF model directory (its config.json).
Counts are exact and checked against the model built on the meta device (no memory used).
Memory: training = weights + grads + AdamW (2 states) + activations saved for backward + logits and
their gradient, at --batch-size x --seq-len tokens, no activation checkpointing (formula in
docs/model.md); inference = weights + KV cache for --batch-size sequences of --seq-len tokens + logits.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    info = sub.add_parser("info", help="parameter counts and memory estimates of one model",
                          description="Exact parameter counts (embedding, per layer, total) and memory estimates.",
                          epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    info.add_argument("model", metavar="MODEL", help="preset name, model YAML or HF model directory")
    _common(info)
    info.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                      help="override a model field, e.g. --set num_hidden_layers=6 (repeatable)")
    info.add_argument("--json", action="store_true", help="print the numbers as JSON instead of tables")
    presets = sub.add_parser("presets", help="every preset's size and memory side by side",
                             description="Every preset's parameter count and memory estimate side by side.",
                             epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(presets)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vocab-size", type=int, metavar="N",
                   help="vocabulary size (your tokenizer's; default: the preset's / file's value)")
    p.add_argument("--batch-size", type=int, default=8, metavar="B",
                   help="sequences per step for the memory estimate (default: 8)")
    p.add_argument("--seq-len", type=int, default=1024, metavar="T",
                   help="tokens per sequence for the memory estimate (default: 1024)")
    p.add_argument("--dtype", choices=["fp32", "bf16", "fp16"], default="fp32",
                   help="parameter and compute dtype for the memory estimate (default: fp32, as on CPU)")


def load_model_config(spec: str, overrides=(), vocab_size: int | None = None):
    """Preset / YAML / HF directory -> ModelConfig."""
    from pathlib import Path

    from krllm.model.config import model_config_from

    if Path(spec).is_dir():
        from krllm.model.hf import config_from_hf_dir

        return model_config_from(config_from_hf_dir(spec), overrides, vocab_size)
    return model_config_from(spec, overrides, vocab_size)


def instantiated_counts(cfg) -> tuple[int, int]:
    """(total, without embeddings) as the real `Llama` reports them, built on the meta device (instant)."""
    import torch

    from krllm.model.llama import Llama

    with torch.device("meta"):
        model = Llama(cfg)
    return model.num_parameters(), model.num_parameters(exclude_embeddings=True)


def report(cfg, batch_size: int, seq_len: int, dtype: str) -> dict:
    from krllm.errors import KrllmError
    from krllm.model.sizing import count_parameters, estimate_memory

    if batch_size <= 0 or seq_len <= 0:
        raise KrllmError("--batch-size and --seq-len must be positive")
    counts = count_parameters(cfg)
    built, built_non_emb = instantiated_counts(cfg)
    if (built, built_non_emb) != (counts.total, counts.non_embedding):
        raise KrllmError(f"internal error: analytic count {counts.total} != instantiated model {built}")
    mem = estimate_memory(cfg, batch_size, seq_len, dtype)
    return {
        "config": cfg.model_dump(mode="json"),
        "parameters": {
            "embedding": counts.embedding, "per_layer": {"attention": counts.attention, "mlp": counts.mlp,
                                                        "norms": counts.norms, "total": counts.per_layer},
            "layers": counts.layers, "num_layers": counts.num_layers, "final_norm": counts.final_norm,
            "lm_head": 0 if counts.tied else counts.lm_head, "total": counts.total,
            "total_tied": counts.total_tied, "total_untied": counts.total_untied,
            "non_embedding": counts.non_embedding, "instantiated": built,
        },
        "memory": {"dtype": dtype, "batch_size": batch_size, "seq_len": seq_len,
                   "training": {"weights": mem.weights, "grads": mem.grads, "adamw": mem.optimizer,
                                "activations": mem.activations, "logits_peak": mem.logits_peak,
                                "total": mem.training},
                   "inference": {"weights": mem.weights, "kv_cache": mem.kv_cache, "logits": mem.infer_logits,
                                 "total": mem.inference}},
    }


def _print_info(rep: dict, title: str) -> None:
    from rich.console import Console
    from rich.table import Table

    from krllm.model.sizing import human_bytes, human_count

    c, p, m = rep["config"], rep["parameters"], rep["memory"]
    console = Console()
    shape = (f"hidden {c['hidden_size']}, {c['num_hidden_layers']} layers, {c['num_attention_heads']} heads "
             f"({c['num_key_value_heads']} kv, head_dim {c['head_dim']}), MLP {c['intermediate_size']}, "
             f"vocab {c['vocab_size']}, rope_theta {c['rope_theta']:g}, "
             f"{'tied' if c['tie_word_embeddings'] else 'untied'} embeddings")
    console.print(f"[bold]{title}[/]: {shape}", highlight=False)

    t = Table(title="Parameters (exact)", title_justify="left")
    t.add_column("part")
    t.add_column("count", justify="right")
    t.add_column("≈", justify="right")
    t.add_column("share", justify="right")
    total = p["total"]

    def row(name, n, share=True, style=None):
        t.add_row(name, f"{n:,}", human_count(n), f"{100 * n / total:.1f}%" if share else "", style=style)

    row("embedding (V x C)", p["embedding"])
    pl = p["per_layer"]
    row("  per layer: attention", pl["attention"], share=False)
    row("  per layer: MLP", pl["mlp"], share=False)
    row("  per layer: 2 norms", pl["norms"], share=False)
    row("  one layer", pl["total"], share=False)
    row(f"{p['num_layers']} layers", p["layers"])
    row("final norm", p["final_norm"])
    row("lm_head" + (" (tied)" if c["tie_word_embeddings"] else ""), p["lm_head"])
    row("total", total, style="bold")
    row("  without embeddings", p["non_embedding"])
    row("  if tied", p["total_tied"], share=False)
    row("  if untied", p["total_untied"], share=False)
    t.caption = f"the model built on the meta device reports {p['instantiated']:,}"
    console.print(t)

    mt = Table(title=f"Memory estimate ({m['dtype']}, batch {m['batch_size']} x seq {m['seq_len']} tokens)",
               title_justify="left")
    mt.add_column("training step")
    mt.add_column("", justify="right")
    mt.add_column("inference (KV cache)")
    mt.add_column("", justify="right")
    tr, inf = m["training"], m["inference"]
    left = [("weights", tr["weights"]), ("grads", tr["grads"]), ("AdamW states (2)", tr["adamw"]),
            ("activations", tr["activations"]), ("logits + grad (peak)", tr["logits_peak"])]
    right = [("weights", inf["weights"]), ("KV cache", inf["kv_cache"]), ("prefill logits", inf["logits"])]
    for i in range(len(left)):
        ln, lv = left[i]
        rn, rv = right[i] if i < len(right) else ("", None)
        mt.add_row(ln, human_bytes(lv), rn, human_bytes(rv) if rv is not None else "")
    mt.add_row("total", human_bytes(tr["total"]), "total", human_bytes(inf["total"]), style="bold")
    mt.caption = "activations: no checkpointing, flash SDPA (no T x T); formula in docs/model.md"
    console.print(mt)


def _print_presets(args) -> None:
    from rich.console import Console
    from rich.table import Table

    from krllm.model.config import PRESETS
    from krllm.model.sizing import human_bytes, human_count

    t = Table(title=f"Presets (memory: {args.dtype}, batch {args.batch_size} x seq {args.seq_len})",
              title_justify="left")
    for col in ("preset", "C x L, H/H_kv, I", "vocab", "params", "non-emb", "train", "infer"):
        t.add_column(col, justify="left" if col in ("preset", "C x L, H/H_kv, I") else "right")
    for name in PRESETS:
        cfg = load_model_config(name, (), args.vocab_size)
        rep = report(cfg, args.batch_size, args.seq_len, args.dtype)
        p, m = rep["parameters"], rep["memory"]
        t.add_row(name, f"{cfg.hidden_size}x{cfg.num_hidden_layers}, {cfg.num_attention_heads}/{cfg.kv_heads}, "
                  f"{cfg.intermediate_size}", str(cfg.vocab_size),
                  human_count(p["total"]) + (" tied" if cfg.tie_word_embeddings else ""),
                  human_count(p["non_embedding"]), human_bytes(m["training"]["total"]),
                  human_bytes(m["inference"]["total"]))
    t.caption = "exact counts: krllm model info PRESET"
    Console().print(t)


def run(args: argparse.Namespace) -> int:
    if args.action == "presets":
        _print_presets(args)
        return 0
    cfg = load_model_config(args.model, args.overrides, args.vocab_size)
    rep = report(cfg, args.batch_size, args.seq_len, args.dtype)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        _print_info(rep, args.model)
    return 0
